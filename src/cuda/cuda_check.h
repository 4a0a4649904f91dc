// Checked CUDA calls for host code: every failing runtime call becomes attend::runtime_error
// naming the call, the file and line, and CUDA's own message.
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "attend/errors.h"

namespace attend::cuda {

[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const char* file, int line) {
  throw runtime_error(std::string(what) + " failed at " + file + ":" + std::to_string(line) + ": " +
                      cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")");
}

// Makes device `index` current for a scope and restores the caller's device afterwards.
class device_guard {
 public:
  explicit device_guard(int index) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    if (previous_ != index) {
      const cudaError_t e = cudaSetDevice(index);
      if (e != cudaSuccess) throw_cuda_error(e, "cudaSetDevice", __FILE__, __LINE__);
      changed_ = previous_ >= 0;
    }
  }
  ~device_guard() {
    if (changed_) static_cast<void>(cudaSetDevice(previous_));
  }
  device_guard(const device_guard&) = delete;
  device_guard& operator=(const device_guard&) = delete;

 private:
  int previous_ = 0;
  bool changed_ = false;
};

}  // namespace attend::cuda

#define ATTEND_CUDA_CHECK(call)                                                          \
  do {                                                                                   \
    const cudaError_t attend_cuda_status_ = (call);                                      \
    if (attend_cuda_status_ != cudaSuccess)                                              \
      ::attend::cuda::throw_cuda_error(attend_cuda_status_, #call, __FILE__, __LINE__); \
  } while (0)

// After a kernel launch: the launch error (bad configuration, too much shared memory, ...).
#define ATTEND_CUDA_CHECK_LAUNCH(what) ATTEND_CUDA_CHECK((static_cast<void>(what), cudaGetLastError()))
