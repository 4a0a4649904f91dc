// Scalar element access for CPU kernels that are not on a hot vector path (the reference, the
// score post-processing of unfused_cpu, the test harness).
#pragma once

#include <cstdint>
#include <cstring>

#include "attend/params.h"
#include "attend/tensor.h"

namespace attend::cpu {

inline double load(const void* base, dtype t, std::int64_t offset) {
  switch (t) {
    case dtype::f32: return static_cast<const float*>(base)[offset];
    case dtype::f16: return f16_to_float(static_cast<const std::uint16_t*>(base)[offset]);
    case dtype::bf16: return bf16_to_float(static_cast<const std::uint16_t*>(base)[offset]);
    case dtype::i32: return static_cast<const std::int32_t*>(base)[offset];
    case dtype::boolean: return static_cast<const std::uint8_t*>(base)[offset] != 0 ? 1.0 : 0.0;
  }
  return 0;
}

inline void store(void* base, dtype t, std::int64_t offset, double value) {
  const float f = static_cast<float>(value);
  switch (t) {
    case dtype::f32: static_cast<float*>(base)[offset] = f; return;
    case dtype::f16: static_cast<std::uint16_t*>(base)[offset] = float_to_f16(f); return;
    case dtype::bf16: static_cast<std::uint16_t*>(base)[offset] = float_to_bf16(f); return;
    case dtype::i32: static_cast<std::int32_t*>(base)[offset] = static_cast<std::int32_t>(value); return;
    case dtype::boolean: static_cast<std::uint8_t*>(base)[offset] = value != 0; return;
  }
}

// The exponent bits of an f32, bf16 or f16 element: all set means Inf or NaN (the non-finite
// scans of flash_cpu, Note [Flash masked non-finite V]).
constexpr std::uint32_t non_finite_exponent(dtype t) {
  return t == dtype::f32 ? 0x7f800000u : t == dtype::bf16 ? 0x7f80u : t == dtype::f16 ? 0x7c00u : 0u;
}

// Offset of mask element (b, h, i, j) in local positions of sequence b.
inline std::int64_t mask_offset(const problem& p, std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) {
  return b * p.mask.batch + h * p.mask.head + i * p.mask.q + j * p.mask.kv;
}

// Whether query row i (local, of sequence b, head h) has a key that neither the band nor the mask
// removes. A float backend whose row came out empty although it has one saw its scores overflow
// to -inf (scale * q.k past float's range, Note [Score pipeline]): that row is NaN, not "no
// visible key". Called for empty rows only (O(Skv)).
inline bool row_has_live_key(const problem& p, std::int64_t b, std::int64_t h, std::int64_t i) {
  const std::int64_t lq = p.len_q(b), lk = p.len_kv(b);
  const key_range r = visible_keys(p.params, i, lq, lk);
  if (r.hi <= r.lo) return false;
  if (p.maybe_mask == nullptr) return true;
  for (std::int64_t j = r.lo; j < r.hi; ++j) {
    const double m = load(p.maybe_mask, p.mask_dtype, mask_offset(p, b, h, i, j));
    if (p.mask_dtype == dtype::boolean ? m != 0 : m > -__builtin_inf()) return true;
  }
  return false;
}

// Number of OpenMP threads a call uses: the caller's request, else the OpenMP default.
int thread_count(int requested);

}  // namespace attend::cpu
