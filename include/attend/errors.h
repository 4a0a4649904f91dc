// attend/errors.h: the typed exceptions every entry point throws.
//
// attend never calls exit() and never asserts on user input. Bad input throws
// attend::invalid_argument; a valid call that no backend can run throws attend::unsupported,
// which carries every backend's rejection reason; a failure while running (a CUDA error, an
// allocation that failed) throws attend::runtime_error.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace attend {

// Base of every attend exception, so callers can catch them all at once.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The call is malformed: shapes, dtypes, devices, strides, pointers or options are wrong.
class invalid_argument : public error {
 public:
  using error::error;
};

// One backend's answer to "can you run this call?" when the answer is no.
struct rejection {
  std::string backend;
  std::string reason;
};

// The call is well formed but no (allowed) backend supports it. what() lists every reason.
class unsupported : public error {
 public:
  unsupported(const std::string& summary, std::vector<rejection> rejections);
  const std::vector<rejection>& rejections() const noexcept { return rejections_; }

 private:
  std::vector<rejection> rejections_;
};

// Something failed while running a supported call (device error, out of memory, ...).
class runtime_error : public error {
 public:
  using error::error;
};

}  // namespace attend
