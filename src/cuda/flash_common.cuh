// Device helpers shared by the flash_cuda kernels: element conversion, sequence bounds (dense or
// varlen), the visible-key band (Note [Causal alignment] in attend/params.h) and score
// post-processing (Note [Score pipeline]).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <atomic>
#include <cstdint>
#include <type_traits>

#include "attend/key_band.h"
#include "cuda/cuda_check.h"
#include "cuda/flash.h"

namespace attend::cuda {

template <elem E> struct elem_traits;
template <> struct elem_traits<elem::f32> { using type = float; };
template <> struct elem_traits<elem::f16> { using type = __half; };
template <> struct elem_traits<elem::bf16> { using type = __nv_bfloat16; };

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

inline constexpr float k_neg_inf = -__builtin_huge_valf();
inline constexpr float k_ln2 = 0.6931471805599453f;

// Where sequence b lives: first packed row and length, for q and kv.
struct seq_bounds {
  std::int64_t start_q = 0, start_kv = 0;
  int len_q = 0, len_kv = 0;
};
__device__ __forceinline__ seq_bounds bounds_of(const flash_params& p, int b) {
  seq_bounds s;
  if (p.maybe_cu_seqlens_q) {
    s.start_q = p.maybe_cu_seqlens_q[b];
    s.len_q = p.maybe_cu_seqlens_q[b + 1] - p.maybe_cu_seqlens_q[b];
    s.start_kv = p.maybe_cu_seqlens_kv[b];
    s.len_kv = p.maybe_cu_seqlens_kv[b + 1] - p.maybe_cu_seqlens_kv[b];
  } else {
    s.len_q = p.seqlen_q;
    s.len_kv = p.seqlen_kv;
  }
  return s;
}

// 2^x on the special-function unit (flush-to-zero; 2^-inf = +0, NaN stays NaN). Its ~2 ulp error
// is far below the bf16/f16 rounding that P gets before the second MMA.
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

template <typename T>
__device__ __forceinline__ std::uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const std::uint32_t*>(&v);
  }
}

// Lets `Kernel` use `bytes` of dynamic shared memory on the current device: one
// cudaFuncSetAttribute per (kernel, device), not a driver call per launch (the attribute holds for
// the device's context).
template <auto Kernel>
void allow_dynamic_smem(int bytes) {
  static std::atomic<std::uint64_t> done{0};  // bit d: set on device d (devices >= 64: every time)
  int dev = 0;
  ATTEND_CUDA_CHECK(cudaGetDevice(&dev));
  const std::uint64_t bit = dev < 64 ? std::uint64_t{1} << dev : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return;
  ATTEND_CUDA_CHECK(
      cudaFuncSetAttribute(reinterpret_cast<const void*>(Kernel), cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.fetch_or(bit, std::memory_order_release);
}

// Shared-memory address of a generic pointer into shared memory (for PTX operands).
__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

// Visible keys [lo, hi) of query row i (local position); hi <= lo: none.
using band = key_band;
__device__ __forceinline__ band visible(const flash_params& p, std::int64_t i, int len_q, int len_kv) {
  return key_band_of(i, len_q, len_kv, p.causal, p.bottom_right, p.window_left, p.window_right);
}

// The mask term at element offset o of a mask of kind K: the additive value, or -inf (0) for a
// false (true) keep-mask entry; read through the read-only cache (the mask is an input).
template <mask_kind K>
__device__ __forceinline__ float mask_term_at(const void* mask, std::int64_t o) {
  if constexpr (K == mask_kind::keep_u8)
    return __ldg(static_cast<const std::uint8_t*>(mask) + o) != 0 ? 0.0f : k_neg_inf;
  else if constexpr (K == mask_kind::add_f32)
    return __ldg(static_cast<const float*>(mask) + o);
  else if constexpr (K == mask_kind::add_f16)
    return __half2float(__ldg(static_cast<const __half*>(mask) + o));
  else if constexpr (K == mask_kind::add_bf16)
    return __bfloat162float(__ldg(static_cast<const __nv_bfloat16*>(mask) + o));
  else
    return 0.0f;
}

// Mask value of (b, h, i, j): additive term, or -inf for a false keep-mask entry.
__device__ __forceinline__ float mask_term(const flash_params& p, int b, int h, std::int64_t i, std::int64_t j) {
  const std::int64_t o = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + j * p.mask_stride[3];
  switch (p.mask) {
    case mask_kind::keep_u8: return mask_term_at<mask_kind::keep_u8>(p.maybe_mask, o);
    case mask_kind::add_f32: return mask_term_at<mask_kind::add_f32>(p.maybe_mask, o);
    case mask_kind::add_f16: return mask_term_at<mask_kind::add_f16>(p.maybe_mask, o);
    case mask_kind::add_bf16: return mask_term_at<mask_kind::add_bf16>(p.maybe_mask, o);
    case mask_kind::none: break;
  }
  return 0.0f;
}

// The mask terms (as mask_term) of row i at this thread's columns col0 + 8 nb + c (c < 2) of a
// tile, 0 where there is no mask and at columns >= len_kv (never read there: pass 0 for a row
// outside the sequence). One 64-bit offset per row, and every load of the row issued before any is
// used, so their latencies overlap (the mma.sync kernel's masked tiles were bound by them).
// mask_row_terms_of reads one mask kind K; with Unit (the caller checked that the mask is
// contiguous along keys, the usual case) at compile-time offsets from the row's first column.
template <int NB, mask_kind K, bool Unit>
__device__ __forceinline__ void mask_row_terms_of(const flash_params& p, int b, int h, std::int64_t i, std::int64_t col0,
                                                  std::int64_t len_kv, float (&add)[NB][2]) {
  const std::int64_t js = Unit ? 1 : p.mask_stride[3];
  const std::int64_t row = b * p.mask_stride[0] + h * p.mask_stride[1] + i * p.mask_stride[2] + col0 * js;
  const std::int64_t avail = len_kv - col0;  // offsets below it are keys
#pragma unroll
  for (int nb = 0; nb < NB; ++nb)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int o = 8 * nb + c;
      add[nb][c] = o < avail ? mask_term_at<K>(p.maybe_mask, row + (Unit ? o : o * js)) : 0.0f;
    }
}
template <int NB>
__device__ __forceinline__ void mask_row_terms(const flash_params& p, int b, int h, std::int64_t i, std::int64_t col0,
                                               std::int64_t len_kv, float (&add)[NB][2]) {
  using K = mask_kind;
  const bool unit = p.mask_stride[3] == 1;
  auto read = [&](auto k) {
    if (unit)
      mask_row_terms_of<NB, decltype(k)::value, true>(p, b, h, i, col0, len_kv, add);
    else
      mask_row_terms_of<NB, decltype(k)::value, false>(p, b, h, i, col0, len_kv, add);
  };
  switch (p.mask) {
    case K::keep_u8: read(std::integral_constant<K, K::keep_u8>{}); break;
    case K::add_f32: read(std::integral_constant<K, K::add_f32>{}); break;
    case K::add_f16: read(std::integral_constant<K, K::add_f16>{}); break;
    case K::add_bf16: read(std::integral_constant<K, K::add_bf16>{}); break;
    case K::none: mask_row_terms_of<NB, K::none, true>(p, b, h, i, col0, len_kv, add); break;
  }
}

// A raw dot product scaled and soft-capped (Note [Score pipeline]), natural-log units: the score
// before its mask term.
__device__ __forceinline__ float scaled_score(const flash_params& p, float dot) {
  float s = dot * p.scale;
  if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
  return s;
}

// Score s with its mask term t: a false keep-mask entry (t = -inf) makes it -inf whatever s is (a
// NaN score there does not reach the row, as in the reference); an additive term is added.
__device__ __forceinline__ float with_mask_term(float s, float t, bool keep) {
  return keep && t == k_neg_inf ? k_neg_inf : s + t;
}

// Score of a visible pair from the raw dot product, natural-log units.
__device__ __forceinline__ float score_of(const flash_params& p, float dot, int b, int h, std::int64_t i, std::int64_t j) {
  float s = scaled_score(p, dot);
  if (p.mask != mask_kind::none) s = with_mask_term(s, mask_term(p, b, h, i, j), p.mask == mask_kind::keep_u8);
  return s;
}

// Note [GPU clamped scores] (as Note [Flash clamped rows] on the CPU): the tensor-core kernels
// work in log2 units, where a natural score below k_lowest_natural (an additive bias near float's
// lowest value, the usual padding value) would overflow to -inf and read as "no key". It is
// clamped there instead, so such keys keep their weight; a row whose every visible score was
// clamped then reports its largest bias plus ln l as lse (clamped_row_lse), the reference's.
constexpr float k_lowest_natural = -3.40282346638528859812e+38f / k_log2e;
constexpr float k_lowest_log2 = k_lowest_natural * k_log2e;
// A natural score in log2 units, clamped as Note [GPU clamped scores] says (-inf and NaN pass).
__device__ __forceinline__ float to_log2_units(float z) {
  return (z < k_lowest_natural && z != k_neg_inf ? k_lowest_natural : z) * k_log2e;
}
// Whether a row of running max m (log2 units) and sum l saw only clamped scores: an additive mask
// (only its terms are clamped) and m at the clamp.
__device__ __forceinline__ bool clamped_row(const flash_params& p, float m, float l) {
  return l > 0.0f && m <= k_lowest_log2 && p.mask != mask_kind::none && p.mask != mask_kind::keep_u8;
}
// The largest additive bias over keys [lo, hi) (local positions) of a row whose running max is at
// the clamp; its lse is that plus ln l (a split-KV partial keeps the two apart: Note [Split
// clamped rows], attend/merge.h).
__device__ __forceinline__ float clamped_row_bias(const flash_params& p, int b, int h, std::int64_t i, std::int64_t lo,
                                                  std::int64_t hi) {
  float bias = k_neg_inf;
  for (std::int64_t j = lo; j < hi; ++j) bias = fmaxf(bias, mask_term(p, b, h, i, j));
  return bias;
}
__device__ __forceinline__ float clamped_row_lse(const flash_params& p, int b, int h, std::int64_t i, std::int64_t lo,
                                                 std::int64_t hi, float l) {
  return clamped_row_bias(p, b, h, i, lo, hi) + logf(l);
}

}  // namespace attend::cuda
