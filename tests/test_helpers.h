// Small helpers shared by the C++ tests.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "attend/attend.h"
#include "attend/check.h"

namespace attend::test {

// A fresh seed per run (printed by the caller), or ATTEND_TEST_SEED to reproduce one.
std::uint64_t test_seed();

// Dense f32 bshd tensors with their own storage.
struct dense_call {
  std::int64_t b, sq, skv, hq, hkv, d, dv;
  std::vector<float> q, k, v, out;
  std::vector<float> lse;
  attention_params params;

  dense_call(std::int64_t b_, std::int64_t sq_, std::int64_t skv_, std::int64_t hq_, std::int64_t hkv_, std::int64_t d_,
             std::int64_t dv_, std::uint64_t seed = 1);
};

// A CPU backend for tests: its name, the given dtypes, every feature (tests narrow traits_ in
// their constructor); a test overrides run() and whatever it probes.
class cpu_backend : public backend {
 public:
  explicit cpu_backend(std::string name, std::vector<dtype> dtypes = {dtype::f32}) : name_(std::move(name)) {
    traits_.devices = {device_kind::cpu};
    traits_.dtypes = std::move(dtypes);
    traits_.features = feature_set::all();
  }
  std::string_view name() const override { return name_; }
  const backend_traits& traits() const override { return traits_; }

 protected:
  backend_traits traits_;

 private:
  std::string name_;
};

}  // namespace attend::test
