#include <cstdlib>
#include <iostream>

#include "test_helpers.h"

namespace attend::test {

std::uint64_t test_seed() {
  static const std::uint64_t seed = [] {
    if (const char* env = std::getenv("ATTEND_TEST_SEED")) return static_cast<std::uint64_t>(std::strtoull(env, nullptr, 10));
    std::random_device rd;
    const std::uint64_t s = (static_cast<std::uint64_t>(rd()) << 16) ^ rd();
    std::cout << "[ seed     ] ATTEND_TEST_SEED=" << s << '\n';
    return s;
  }();
  return seed;
}

dense_call::dense_call(std::int64_t b_, std::int64_t sq_, std::int64_t skv_, std::int64_t hq_, std::int64_t hkv_,
                       std::int64_t d_, std::int64_t dv_, std::uint64_t seed)
    : b(b_), sq(sq_), skv(skv_), hq(hq_), hkv(hkv_), d(d_), dv(dv_) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  auto fill = [&](std::vector<float>& x, std::int64_t n) {
    x.resize(static_cast<std::size_t>(n));
    for (float& e : x) e = normal(rng);
  };
  fill(q, b * sq * hq * d);
  fill(k, b * skv * hkv * d);
  fill(v, b * skv * hkv * dv);
  out.assign(static_cast<std::size_t>(b * sq * hq * dv), 0.0f);
  lse.assign(static_cast<std::size_t>(b * hq * sq), 0.0f);
  params.q = tensor_view::contiguous(q.data(), dtype::f32, {b, sq, hq, d});
  params.k = tensor_view::contiguous(k.data(), dtype::f32, {b, skv, hkv, d});
  params.v = tensor_view::contiguous(v.data(), dtype::f32, {b, skv, hkv, dv});
  params.out = tensor_view::contiguous(out.data(), dtype::f32, {b, sq, hq, dv});
  params.maybe_lse = tensor_view::contiguous(lse.data(), dtype::f32, {b, hq, sq});
}

}  // namespace attend::test
