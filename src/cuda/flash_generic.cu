// flash_cuda's scalar paths: the fp32 kernel (exact fp32 arithmetic, any strides; one warp per
// query row, online softmax over chunks of 32 keys) and the split-KV merge (Note [Split KV]).
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "cuda/cuda_check.h"
#include "cuda/flash_common.cuh"

namespace attend::cuda {
namespace {

constexpr int k_rows_per_block = 4;  // why: one warp per row; 4 warps keep a CTA small enough that
                                     // short sequences still spread over every SM.
constexpr int k_max_dim_per_lane = 8;  // head dims up to 256 = 8 values per lane

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <typename T>
__global__ void __launch_bounds__(k_rows_per_block * 32) flash_generic_kernel(const flash_params p) {
  __shared__ float s_q[k_rows_per_block][256];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const seq_bounds sb = bounds_of(p, b);
  const int i = static_cast<int>(blockIdx.x) * k_rows_per_block + warp;
  if (i >= sb.len_q) return;  // warp-uniform; only warp-level synchronisation follows
  const int hk = h / p.group_size;
  const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + (sb.start_q + i) * p.q_stride[1] + h * p.q_stride[2];
  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + sb.start_kv * p.k_stride[1] + hk * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + sb.start_kv * p.v_stride[1] + hk * p.v_stride[2];
  for (int d = lane; d < p.head_dim_qk; d += 32) s_q[warp][d] = to_float(q[d * p.q_stride[3]]);
  __syncwarp();

  const band vis = visible(p, i, sb.len_q, sb.len_kv);
  float m = k_neg_inf, l = 0.0f;
  float o[k_max_dim_per_lane];
#pragma unroll
  for (int r = 0; r < k_max_dim_per_lane; ++r) o[r] = 0.0f;
  for (std::int64_t j0 = vis.lo; j0 < vis.hi; j0 += 32) {
    const std::int64_t j = j0 + lane;
    float s = k_neg_inf;
    if (j < vis.hi) {
      const T* kr = k + j * p.k_stride[1];
      float dot = 0.0f;
      for (int d = 0; d < p.head_dim_qk; ++d) dot = fmaf(s_q[warp][d], to_float(kr[d * p.k_stride[3]]), dot);
      s = score_of(p, dot, b, h, i, j);
    }
    const float m_new = fmaxf(m, warp_max(s));
    const float m_use = m_new == k_neg_inf ? 0.0f : m_new;
    const float alpha = expf(m - m_use);
    const float pj = expf(s - m_use);
    l = l * alpha + warp_sum(pj);
#pragma unroll
    for (int r = 0; r < k_max_dim_per_lane; ++r) o[r] *= alpha;
    const int n = static_cast<int>(vis.hi - j0 < 32 ? vis.hi - j0 : 32);
    for (int t = 0; t < n; ++t) {
      const float pt = __shfl_sync(0xffffffffu, pj, t);
      if (pt == 0.0f) continue;  // like the reference: a key of weight 0 contributes nothing
      const T* vr = v + (j0 + t) * p.v_stride[1];
#pragma unroll
      for (int r = 0; r < k_max_dim_per_lane; ++r) {
        const int d = lane + 32 * r;
        if (d < p.head_dim_v) o[r] = fmaf(pt, to_float(vr[d * p.v_stride[3]]), o[r]);
      }
    }
    m = m_new;
  }
  const float inv = l == 0.0f ? 0.0f : 1.0f / l;
  T* out = static_cast<T*>(p.out) + b * p.out_stride[0] + (sb.start_q + i) * p.out_stride[1] + h * p.out_stride[2];
#pragma unroll
  for (int r = 0; r < k_max_dim_per_lane; ++r) {
    const int d = lane + 32 * r;
    if (d < p.head_dim_v) out[d * p.out_stride[3]] = from_float<T>(o[r] * inv);
  }
  if (p.maybe_lse && lane == 0)
    p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (sb.start_q + i) * p.lse_seq_stride] =
        l == 0.0f ? k_neg_inf : m + logf(l);
}

// The split-KV merge (Note [Split KV] in flash_backend.cpp): split s of row (b, h, i) wrote its
// normalised output o_s and lse_s, merged as in Note [LSE merge] (attend/merge.h: the same rule,
// written again here because .cu files are C++17 and merge.h is C++20): weights
// exp(lse_s - max + low_s) normalised by their sum, low_s the second part of a split's lse: ln l_s
// for a row of only clamped scores (Note [GPU clamped scores]), whose lse_s is its bias near
// -FLT_MAX alone, else 0 (Note [Split clamped rows]), so such a row's splits weigh by their keys.
// One warp per row. Lane s holds split s's lse and weight (and lane s - 32 split s's, up to
// k_flash_max_splits = 64), so the splits' lse are read by one load per lane, their max and sum
// are warp reductions, and each split's weight is computed once; the output then walks the splits
// with a lane's up-to-8 dims of a split loaded together and the splits unrolled, so its loads are
// in flight together. (The first version read every split's lse serially, once for the max and
// again per weight and per dim: a chain of ~4 x splits dependent L2 reads per row, 40-100 us a
// call on the H200, the merge costing more than the split saved at B = 8, Sq = 1, Skv = 32768.)
template <typename T>
__global__ void __launch_bounds__(k_rows_per_block * 32) flash_combine_kernel(const flash_params p) {
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int h = static_cast<int>(blockIdx.y), b = static_cast<int>(blockIdx.z);
  const seq_bounds sb = bounds_of(p, b);
  const int i = static_cast<int>(blockIdx.x) * k_rows_per_block + warp;
  if (i >= sb.len_q) return;
  const std::int64_t split_rows = static_cast<std::int64_t>(p.batch) * p.num_heads_q * p.seqlen_q;
  const std::int64_t row = (static_cast<std::int64_t>(b) * p.num_heads_q + h) * p.seqlen_q + i;
  static_assert(k_flash_max_splits <= 64, "a lane holds two splits' weights");
  const int splits = p.num_splits;
  float lse[2], low[2];
#pragma unroll
  for (int k = 0; k < 2; ++k) {
    const int s = lane + 32 * k;
    lse[k] = s < splits ? p.maybe_partial_lse[s * split_rows + row] : k_neg_inf;
    low[k] = s < splits ? p.maybe_partial_lse_low[s * split_rows + row] : 0.0f;
  }
  const bool nan = __any_sync(0xffffffffu, isnan(lse[0]) || isnan(lse[1]));
  const float lmax = warp_max(fmaxf(lse[0], lse[1]));
  // relative to the largest split's (Note [Split clamped rows]); 0 for splits past the last
  float w[2] = {0.0f, 0.0f};
  float total_lse, sum = 0.0f;
  if (nan) {
    total_lse = __int_as_float(0x7fc00000);
  } else if (lmax == k_neg_inf) {
    total_lse = k_neg_inf;
  } else {
#pragma unroll
    for (int k = 0; k < 2; ++k)
      if (lane + 32 * k < splits) w[k] = expf(lse[k] - lmax + low[k]);
    sum = warp_sum(w[0] + w[1]);
    total_lse = lmax + logf(sum);
  }
  float acc[k_max_dim_per_lane];
#pragma unroll
  for (int k = 0; k < k_max_dim_per_lane; ++k) acc[k] = 0.0f;
  if (!nan && total_lse != k_neg_inf) {
#pragma unroll 4
    for (int s = 0; s < splits; ++s) {
      const float ws = __shfl_sync(0xffffffffu, s < 32 ? w[0] : w[1], s & 31);
      if (ws == 0.0f) continue;  // a split that saw no key (or weighs nothing) adds nothing
      const float* part = p.maybe_partial_out + (s * split_rows + row) * p.head_dim_v;
#pragma unroll
      for (int k = 0; k < k_max_dim_per_lane; ++k) {
        const int d = lane + 32 * k;
        if (d < p.head_dim_v) acc[k] = fmaf(ws, part[d], acc[k]);
      }
    }
  }
  T* out = static_cast<T*>(p.out) + b * p.out_stride[0] + (sb.start_q + i) * p.out_stride[1] + h * p.out_stride[2];
#pragma unroll
  for (int k = 0; k < k_max_dim_per_lane; ++k) {
    const int d = lane + 32 * k;
    if (d >= p.head_dim_v) break;
    const float v = nan ? total_lse : total_lse == k_neg_inf ? 0.0f : acc[k] / sum;
    out[d * p.out_stride[3]] = from_float<T>(v);
  }
  if (p.maybe_lse && lane == 0)
    p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (sb.start_q + i) * p.lse_seq_stride] = total_lse;
}

// Note [Hopper row masks], the packing (which Note [mma.sync mask bits] reads too): one thread per
// 32-key word of a row, blockIdx.y (striding) over the mask's rows (one per (batch, head) of a
// key-padding mask), so a row's (batch, head, query) is decoded once per block and not per word.
// A row contiguous along keys with a 16-byte aligned start (the usual case) is read 16 keys per
// load, each byte's "!= 0" gathered into bits by a compare and a multiply; any other row, and the
// row's last partial word, key by key through mask_term_at. Keys past Skv, in the row's padding to
// 128 keys, are dropped. (The first version, a warp per word and a ballot over one byte per lane
// with the decode per word, took 900 us for an 8 x 4096 x 4096 mask: a quarter of the call.)
__device__ __forceinline__ std::uint32_t nonzero_byte_bits(std::uint32_t x) {
  // 0x01 in each nonzero byte, then bytes 0..3 to bits 28..31 (the other partial products land
  // below bit 28 at distinct positions, so nothing carries into them).
  return ((__vcmpne4(x, 0u) & 0x01010101u) * 0x10204080u) >> 28;
}
__device__ __forceinline__ std::uint32_t nonzero_byte_bits(const uint4& v) {
  return nonzero_byte_bits(v.x) | nonzero_byte_bits(v.y) << 4 | nonzero_byte_bits(v.z) << 8 |
         nonzero_byte_bits(v.w) << 12;
}
__global__ void mask_bits_kernel(const flash_params p, std::int64_t rows) {
  const std::int64_t per_row = mask_bits_words_per_row(p.seqlen_kv), heads = mask_heads(p), rows_per_head = mask_rows(p);
  const std::int64_t word = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (word >= per_row) return;
  const std::int64_t j0 = word * 32;
  const auto* mask = static_cast<const std::uint8_t*>(p.maybe_mask);
  for (std::int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const std::int64_t i = row % rows_per_head, bh = row / rows_per_head;
    const std::uint8_t* src = mask + (bh / heads) * p.mask_stride[0] + (bh % heads) * p.mask_stride[1] + i * p.mask_stride[2];
    std::uint32_t bits = 0;
    if (p.mask_stride[3] == 1 && j0 + 32 <= p.seqlen_kv && reinterpret_cast<std::uintptr_t>(src) % 16 == 0) {
      const auto* v = reinterpret_cast<const uint4*>(src + j0);
      bits = nonzero_byte_bits(__ldg(v)) | nonzero_byte_bits(__ldg(v + 1)) << 16;
    } else {
      const std::int64_t n = std::min<std::int64_t>(32, p.seqlen_kv - j0);
      for (std::int64_t k = 0; k < n; ++k)
        bits |= (mask_term_at<mask_kind::keep_u8>(src, (j0 + k) * p.mask_stride[3]) == 0.0f ? 1u : 0u) << k;
    }
    p.maybe_mask_bits[row * per_row + word] = bits;
  }
}

dim3 row_grid(const flash_params& p) {
  return dim3(static_cast<unsigned>((p.seqlen_q + k_rows_per_block - 1) / k_rows_per_block),
              static_cast<unsigned>(p.num_heads_q), static_cast<unsigned>(p.batch));
}

}  // namespace

void launch_flash_generic(elem e, const flash_params& p, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (e) {
    case elem::f32: flash_generic_kernel<float><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
    case elem::f16: flash_generic_kernel<__half><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
    case elem::bf16: flash_generic_kernel<__nv_bfloat16><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
  }
  ATTEND_CUDA_CHECK(cudaGetLastError());
}

void launch_mask_bits(const flash_params& p, void* stream) {
  const std::int64_t words = mask_bits_words_total(p);
  if (words == 0) return;  // no keys (or no rows): nothing to pack
  const std::int64_t per_row = mask_bits_words_per_row(p.seqlen_kv), rows = words / per_row;
  // Short rows (few words) get a narrow block, so most of its threads have a word.
  const int threads = static_cast<int>(std::min<std::int64_t>(128, (per_row + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>((per_row + threads - 1) / threads), static_cast<unsigned>(std::min<std::int64_t>(rows, 65535)));
  mask_bits_kernel<<<grid, threads, 0, static_cast<cudaStream_t>(stream)>>>(p, rows);
  ATTEND_CUDA_CHECK(cudaGetLastError());
}

void launch_flash_combine(elem e, const flash_params& p, void* stream) {
  // the merge holds two splits' weights a lane (num_splits in flash_backend.cpp never plans more)
  if (p.num_splits < 1 || p.num_splits > k_flash_max_splits)
    throw std::logic_error("flash_cuda: split-KV merge of " + std::to_string(p.num_splits) + " splits (1 to " +
                           std::to_string(k_flash_max_splits) + ")");
  const auto s = static_cast<cudaStream_t>(stream);
  switch (e) {
    case elem::f32: flash_combine_kernel<float><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
    case elem::f16: flash_combine_kernel<__half><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
    case elem::bf16: flash_combine_kernel<__nv_bfloat16><<<row_grid(p), k_rows_per_block * 32, 0, s>>>(p); break;
  }
  ATTEND_CUDA_CHECK(cudaGetLastError());
}

}  // namespace attend::cuda
