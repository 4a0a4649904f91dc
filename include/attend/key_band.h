// attend/key_band.h: the visible-key band of one query row (Note [Causal alignment] in
// attend/params.h), on scalars. The one definition: attend::visible_keys (C++) and the CUDA
// kernels (C++17 device code, through --expt-relaxed-constexpr) call it; the Hopper kernel uses a
// 32-bit form of it (sm90_band_of, Note [Hopper 32-bit bands] in src/cuda/flash.h) that a host
// test compares against it.
#pragma once

#include <cstdint>

namespace attend {

// Visible keys [lo, hi) of query row i among len_q queries and len_kv keys; hi <= lo: none.
// Precondition: diagonal +- window bound must not overflow 64 bits. make_problem clamps the bounds
// it hands to backends to just past every key (at most 2^61 + 1), which gives the same band.
struct key_band {
  std::int64_t lo, hi;
};
constexpr key_band key_band_of(std::int64_t i, std::int64_t len_q, std::int64_t len_kv, bool causal,
                               bool bottom_right, std::int64_t window_left, std::int64_t window_right) {
  const std::int64_t diag = i + (bottom_right ? len_kv - len_q : 0);
  // Causal caps the right bound at the diagonal; a window_right >= 0 cannot extend it.
  const std::int64_t right = causal ? 0 : window_right;
  key_band r{0, len_kv};
  if (window_left >= 0 && diag - window_left > r.lo) r.lo = diag - window_left;
  if (right >= 0 && diag + right + 1 < r.hi) r.hi = diag + right + 1;
  if (r.hi < r.lo) r.hi = r.lo;
  return r;
}

}  // namespace attend
