// Small helpers shared by the C++ tests.
#pragma once

#include <cstdint>
#include <random>
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

}  // namespace attend::test
