// flash_cuda tensor-core kernel (FlashAttention-2 style forward), one template per (dtype, width)
// at the tile shape of Note [Tile sizes] (flash.h). Instantiated only by the translation units
// generated from flash_kernels.txt (and, at other tile shapes, by bench/flash_tune.cu).
//
// One CTA: block_m query rows of one (batch, query head); warp w owns rows
// [w * rows_per_warp, (w + 1) * rows_per_warp), one or two m16 row blocks. Each visible key tile
// of block_n keys: S = Q K^T by mma.m16n8k16 (fp32 accumulation; each K fragment feeds every row
// block of the warp), mask/band/softcap only where the tile is not fully visible, online softmax
// in registers in log2 units with ex2.approx, O += P V with P taken straight from the S
// accumulators as the A operand (rounded to the input dtype). K and V tiles are double-buffered
// through 16-byte cp.async; shared-memory rows are XOR-swizzled in 16-byte chunks so ldmatrix
// reads of 8 rows hit 8 different bank groups. Q fragments stay in registers for the whole key
// loop where they fit (flash_q_in_registers). The output is staged through the warp's own rows of
// the Q tile and stored in 16-byte coalesced vectors. Head dims below the width are zero-filled in
// shared memory, so the padded k-steps add zeros; SkipPadded (flash_skip_padded_steps) skips them
// at run time instead, at the price of splitting the unrolled MMA chain into basic blocks.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <type_traits>

#include "cuda/cuda_check.h"
#include "cuda/flash_common.cuh"

namespace attend::cuda {
namespace tc {

__device__ __forceinline__ void cp_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
// cp.async of Bytes (4 or 8) bytes of which the first src_bytes are read and the rest zero-filled.
template <int Bytes>
__device__ __forceinline__ void cp_async_zfill(void* dst, const void* src, int src_bytes) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(smem_addr(dst)), "l"(src), "n"(Bytes), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(std::uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}

template <typename T>
__device__ __forceinline__ void mma16816(float (&c)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Element (row, chunk) of a swizzled [rows][Width] tile: chunk c of row r lives at c ^ (r & 7).
template <int Width, typename T>
__device__ __forceinline__ T* tile_at(T* tile, int row, int chunk) {
  return tile + row * Width + ((chunk ^ (row & 7)) << 3);
}

// One 16-byte chunk of a tile: 8 elements from `src`, dim_stride apart (one cp.async when `vec`).
template <typename T>
__device__ __forceinline__ void load_chunk(T* dst, const T* src, std::int64_t dim_stride, bool vec) {
  if (vec) {
    cp_async16(dst, src);
  } else {
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[e] = src[e * dim_stride];
  }
}
template <typename T>
__device__ __forceinline__ void zero_chunk(T* dst) {
  *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
}

// Loads rows [0, Rows) x [0, Width) of a [seq, dim] matrix into a swizzled tile. Thread x owns
// chunk x % chunks of rows x / chunks + k * (Threads / chunks): one running source pointer, so no
// per-chunk 64-bit addresses stay live across the key loop. Rows at or past `rows_valid` and dims
// at or past `dim` are zero (so padded lanes add nothing and no stale NaN reaches the tensor cores).
template <int Rows, int Width, int Threads, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* g, std::int64_t row_stride, std::int64_t dim_stride,
                                          int rows_valid, int dim, bool vec) {
  constexpr int chunks = Width / 8;
  static_assert(Threads % chunks == 0 && Rows % (Threads / chunks) == 0, "every thread loads whole rows' chunks");
  constexpr int rows_step = Threads / chunks;
  const int r0 = static_cast<int>(threadIdx.x) / chunks, ch = static_cast<int>(threadIdx.x) % chunks;
  const bool dim_ok = ch * 8 < dim;
  const T* src = g + r0 * row_stride + static_cast<std::int64_t>(ch) * 8 * dim_stride;
  const std::int64_t src_step = rows_step * row_stride;
#pragma unroll
  for (int it = 0; it < Rows / rows_step; ++it, src += src_step) {
    const int r = r0 + it * rows_step;
    T* dst = tile_at<Width>(tile, r, ch);
    if (r < rows_valid && dim_ok)
      load_chunk(dst, src, dim_stride, vec);
    else
      zero_chunk(dst);
  }
}

// The same for rows at addresses of their own: row_at(r) is row r's first element, or nullptr for
// a row to zero-fill (the packed rows of Note [Decode GQA packing], loaded once per CTA).
template <int Rows, int Width, int Threads, typename T, typename RowAt>
__device__ __forceinline__ void load_rows(T* tile, int dim, bool vec, std::int64_t dim_stride, RowAt&& row_at) {
  constexpr int chunks = Width / 8;
  constexpr int rows_step = Threads / chunks;
  static_assert(Threads % chunks == 0 && Rows % rows_step == 0, "every thread loads whole rows' chunks");
  const int r0 = static_cast<int>(threadIdx.x) / chunks, ch = static_cast<int>(threadIdx.x) % chunks;
#pragma unroll
  for (int it = 0; it < Rows / rows_step; ++it) {
    T* dst = tile_at<Width>(tile, r0 + it * rows_step, ch);
    const T* row = row_at(r0 + it * rows_step);
    if (row != nullptr && ch * 8 < dim)
      load_chunk(dst, row + static_cast<std::int64_t>(ch) * 8 * dim_stride, dim_stride, vec);
    else
      zero_chunk(dst);
  }
}

// The staged mask terms of one row of a tile (Note [mma.sync staged masks]): pair nb of this
// thread's row at `src` (its slot of the row's first pair; pairs are Threads slots apart).
template <int NB, int Threads>
__device__ __forceinline__ void staged_terms(const unsigned char* src, mask_kind kind, float (&add)[NB][2]) {
  if (kind == mask_kind::add_f32) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const float2 v = *reinterpret_cast<const float2*>(src + nb * Threads * 8);
      add[nb][0] = v.x;
      add[nb][1] = v.y;
    }
  } else {
    const bool bf = kind == mask_kind::add_bf16;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb) {
      const std::uint32_t w = *reinterpret_cast<const std::uint32_t*>(src + nb * Threads * 4);
      if (bf) {
        add[nb][0] = __uint_as_float(w << 16);
        add[nb][1] = __uint_as_float(w & 0xffff0000u);
      } else {
        const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
        add[nb][0] = f.x;
        add[nb][1] = f.y;
      }
    }
  }
}

}  // namespace tc

// Note [mma.sync staged masks]: an additive mask without softcap whose key pairs are aligned copy
// units (p.mask_pairs: contiguous along keys, even strides, base aligned to a pair) reaches the
// scores through shared memory: with each K/V tile, every thread copies the mask terms of its own
// rows and columns (two keys per copy: 8 bytes of f32, 4 of f16/bf16) with cp.async into its own
// slots of the tile's stage, so the loads run under the previous tile's work, off the critical
// path, and no other thread reads them (the wait before the tile's __syncthreads orders them). The
// slots are laid out [pair][thread], so a warp's reads of one pair are consecutive words. Keys past
// len_kv are zero-filled (read, and dropped by the band). Reading the terms from global memory
// after S = Q K^T instead (the extras path, which other masks still take) left the kernel stalled
// on them (bench/RESULTS.md). Only where two CTAs per SM still fit (tc_mode_for, flash.h).

// Note [mma.sync mask bits]: a boolean mask without softcap, with a row per query or one for all
// (packed_mask, flash_backend.cpp: not [B, H, Sq, 1], constant along keys), reaches this kernel
// packed, as the Hopper kernel reads it (Note [Hopper row masks], flash_sm90.cuh; the same launch_mask_bits and
// workspace layout, bit j % 32 of word j / 32 of a row = keep key j, rows padded to 128 keys). Each
// thread loads its rows' words of a tile (one or two per row) before the tile's S = Q K^T, so their
// latency runs under the MMAs, and selects -inf at the dropped keys in the band path. A tile that
// is inside every row's band and whose bits keep every key of the warp's rows (a warp vote) takes
// the unmasked path. Reading the bytes element by element instead (the extras path, which a
// boolean mask with softcap still takes) left the kernel stalled on the mask loads (bench/RESULTS.md).
// Note [CTA order]: blockIdx.x walks the row blocks of one (head, batch) from the last to the
// first. Under causal masking the last row block sees the most keys, so the longest CTAs start
// first and the short ones fill the tail of the last wave; neighbouring CTAs share K/V in L2
// either way.
// Mode (tc_mode), a kernel of its own each, so that the registers of one path do not weigh on the
// others: plain (the band only), bits (a boolean mask read from its packed bits, Note [mma.sync
// mask bits]), staged (an additive mask through shared memory, Note [mma.sync staged masks]) and
// extras (any other mask or softcap: score_of's steps beyond the scale, a row's mask terms read
// element by element, mask_row_terms). Pack: the CTA's rows are (query row, head) pairs of one KV
// head (Note [Decode GQA packing], flash.h); a mask's row is then read per packed row.
template <elem E, int Width, int Warps, int BlockM, int BlockN, bool SkipPadded, tc_mode Mode, bool Pack = false>
__global__ void __launch_bounds__(Warps * 32, Warps <= 4 ? 2 : 1) flash_tc_kernel(const flash_params p) {
  using T = typename elem_traits<E>::type;
  constexpr int threads = Warps * 32;
  constexpr int rows = BlockM / Warps;  // per warp
  constexpr int mb_count = rows / 16;
  constexpr int nb_count = BlockN / 8;
  constexpr int kq_count = Width / 16;
  constexpr int nd_count = Width / 8;
  constexpr bool q_regs = flash_q_in_registers(Width, rows, BlockN);
  static_assert(Width % 64 == 0, "the swizzle needs at least 8 chunks of 16 bytes per row");
  static_assert(BlockN % 16 == 0 && rows % 16 == 0 && (mb_count == 1 || mb_count == 2), "tile shape");
  constexpr bool extras = Mode == tc_mode::extras, packed = Mode == tc_mode::bits, staged = Mode == tc_mode::staged;
  constexpr bool terms = extras || staged;  // every tile takes the per-element score path
  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* s_q = reinterpret_cast<T*>(smem_raw);
  T* s_k = s_q + BlockM * Width;        // 2 stages
  T* s_v = s_k + 2 * BlockN * Width;    // 2 stages
  unsigned char* s_m = reinterpret_cast<unsigned char*>(s_v + 2 * BlockN * Width);  // staged: 2 stages

  const int b = static_cast<int>(blockIdx.z) / p.num_splits, split = static_cast<int>(blockIdx.z) % p.num_splits;
  const seq_bounds sb = bounds_of(p, b);
  // The CTA's rows of the sequence: its query rows, or with Pack (query row, head) pairs, row r
  // being query row r / group of head hk * group + r % group (Note [Decode GQA packing]).
  const int group = Pack ? p.group_size : 1;
  const int len_rows = sb.len_q * group;
  const int h = Pack ? -1 : static_cast<int>(blockIdx.y);  // Pack: per row, head_of
  const int hk = Pack ? static_cast<int>(blockIdx.y) : h / p.group_size;
  auto query_of = [&](int r) { return Pack ? r / group : r; };
  auto head_of = [&](int r) { return Pack ? hk * group + r % group : h; };
  const int m0 = static_cast<int>(gridDim.x - 1 - blockIdx.x) * BlockM;  // Note [CTA order]
  if (m0 >= len_rows) return;  // varlen: this sequence is shorter than max_seqlen_q
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int warp_row0 = warp * rows;                      // first row of this warp within the CTA
  const bool warp_live = m0 + warp_row0 < len_rows;       // warp-uniform: has at least one real row

  // Visible key tiles of the CTA's rows: bands are monotone in the row (Note [Causal alignment]).
  const int m_last = min(m0 + BlockM, len_rows) - 1;
  const band first = visible(p, query_of(m0), sb.len_q, sb.len_kv), last = visible(p, query_of(m_last), sb.len_q, sb.len_kv);
  const std::int64_t key_lo = first.lo, key_hi = last.hi;
  int t_begin = 0, t_end = 0;
  if (key_hi > key_lo) {
    t_begin = static_cast<int>(key_lo / BlockN);
    t_end = static_cast<int>((key_hi + BlockN - 1) / BlockN);
  }
  if (p.num_splits > 1) {  // Note [Split KV]: contiguous ranges of tiles per split
    const int per = (t_end - t_begin + p.num_splits - 1) / p.num_splits;
    t_begin = min(t_end, t_begin + split * per);
    t_end = min(t_end, t_begin + per);
  }
  // A tile [n0, n0 + block_n) needs no per-element test when every row sees all of it.
  // (Bands lie within [0, len_kv], so these bounds and key positions fit int32.)
  const int full_lo = static_cast<int>(last.lo), full_hi = static_cast<int>(first.hi);

  const T* k = static_cast<const T*>(p.k) + b * p.k_stride[0] + sb.start_kv * p.k_stride[1] + hk * p.k_stride[2];
  const T* v = static_cast<const T*>(p.v) + b * p.v_stride[0] + sb.start_kv * p.v_stride[1] + hk * p.v_stride[2];

  if constexpr (Pack) {
    tc::load_rows<BlockM, Width, threads>(s_q, p.head_dim_qk, p.q_vec, p.q_stride[3], [&](int r) -> const T* {
      const int pr = m0 + r;
      if (pr >= len_rows) return nullptr;
      return static_cast<const T*>(p.q) + b * p.q_stride[0] + (sb.start_q + query_of(pr)) * p.q_stride[1] +
             head_of(pr) * p.q_stride[2];
    });
  } else {
    const T* q = static_cast<const T*>(p.q) + b * p.q_stride[0] + (sb.start_q + m0) * p.q_stride[1] + h * p.q_stride[2];
    tc::load_tile<BlockM, Width, threads>(s_q, q, p.q_stride[1], p.q_stride[3], sb.len_q - m0, p.head_dim_qk, p.q_vec);
  }
  const int i_base = m0 + warp_row0 + lane / 4;  // rows i_base + 16 mb + 8 r
  // Note [mma.sync staged masks]: pair bytes, one stage's bytes, and this thread's first slot.
  const int pair_bytes = tc_mask_pair_bytes(p.mask);
  const int m_stage_bytes = tc_staged_stage_bytes(Warps, BlockM, BlockN, pair_bytes);
  unsigned char* const m_slot = s_m + threadIdx.x * pair_bytes;
  auto load_mask = [&](int t, int stage) {
    const int es = pair_bytes / 2, col0 = t * BlockN + (lane & 3) * 2;
    const char* const base = static_cast<const char*>(p.maybe_mask) + (b * p.mask_stride[0] + (Pack ? 0 : h) * p.mask_stride[1]) * es;
#pragma unroll
    for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int ic = min(i_base + 16 * mb + 8 * r, len_rows - 1);  // a row past the sequence reads the last one's
        const char* row = Pack ? base + (head_of(ic) * p.mask_stride[1] + query_of(ic) * p.mask_stride[2]) * es
                               : base + ic * p.mask_stride[2] * es;
#pragma unroll
        for (int nb = 0; nb < nb_count; ++nb) {
          const int col = col0 + nb * 8, keys = min(max(sb.len_kv - col, 0), 2);
          unsigned char* dst = m_slot + stage * m_stage_bytes + ((mb * 2 + r) * nb_count + nb) * threads * pair_bytes;
          const char* src = keys > 0 ? row + static_cast<std::int64_t>(col) * es : row;
          if (pair_bytes == 8)
            tc::cp_async_zfill<8>(dst, src, keys * es);
          else
            tc::cp_async_zfill<4>(dst, src, keys * es);
        }
      }
  };
  auto load_kv = [&](int t, int stage) {
    if constexpr (staged) load_mask(t, stage);
    const std::int64_t n0 = static_cast<std::int64_t>(t) * BlockN;
    const int valid = static_cast<int>(sb.len_kv - n0);
    tc::load_tile<BlockN, Width, threads>(s_k + stage * BlockN * Width, k + n0 * p.k_stride[1], p.k_stride[1],
                                          p.k_stride[3], valid, p.head_dim_qk, p.k_vec);
    tc::load_tile<BlockN, Width, threads>(s_v + stage * BlockN * Width, v + n0 * p.v_stride[1], p.v_stride[1],
                                          p.v_stride[3], valid, p.head_dim_v, p.v_vec);
  };
  if (t_begin < t_end) load_kv(t_begin, 0);
  tc::cp_async_commit();

  float o[mb_count][nd_count][4];
#pragma unroll
  for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
    for (int nd = 0; nd < nd_count; ++nd) o[mb][nd][0] = o[mb][nd][1] = o[mb][nd][2] = o[mb][nd][3] = 0.0f;
  float row_m[mb_count][2], row_l[mb_count][2];
#pragma unroll
  for (int mb = 0; mb < mb_count; ++mb) row_m[mb][0] = row_m[mb][1] = k_neg_inf, row_l[mb][0] = row_l[mb][1] = 0.0f;
  std::uint32_t q_frag[q_regs ? mb_count : 1][q_regs ? kq_count : 1][4];
  static_assert(!packed || BlockN % 32 == 0, "a tile covers whole 32-key words of the packed mask");
  const float scale_log2 = attend::cuda::scale_log2(p);
  const int dqk_steps = k16_steps(p.head_dim_qk), dv_steps = k16_steps(p.head_dim_v);  // if SkipPadded
  // Keys any row of this warp sees (bands are monotone in the row): a tile outside them is skipped
  // by the warp, e.g. the upper half of a causal diagonal tile pair for the CTA's first warps.
  const int warp_row_last = min(m0 + warp_row0 + rows, len_rows) - 1;
  const int warp_key_lo = static_cast<int>(visible(p, query_of(m0 + warp_row0), sb.len_q, sb.len_kv).lo);
  const int warp_key_hi = static_cast<int>(visible(p, query_of(warp_row_last), sb.len_q, sb.len_kv).hi);
  // Note [mma.sync mask bits]: the packed row of this thread's first row; its others are 8, 16 and
  // 24 rows on (a row past the sequence reads the last row's; the band drops it anyway). Those
  // offsets fit an int: a row has at most 2^26 words (Skv < 2^31).
  // With Pack, each row's own (head, query row) instead.
  const int bits_r0 = min(i_base, len_rows - 1);
  const std::uint32_t* bits_row0 = nullptr;
  if constexpr (packed && !Pack)
    bits_row0 = p.maybe_mask_bits + b * p.mask_bits_stride[0] + h * p.mask_bits_stride[1] + bits_r0 * p.mask_bits_stride[2];

  for (int t = t_begin; t < t_end; ++t) {
    tc::cp_async_wait_all();
    __syncthreads();  // tile t (and Q) is in shared memory; every warp is done with tile t - 1's stage
    const int stage = (t - t_begin) & 1;
    if (t + 1 < t_end) load_kv(t + 1, stage ^ 1);
    tc::cp_async_commit();
    if (!warp_live) continue;  // rows past the sequence (decode, short varlen): loads only
    const T* c_k = s_k + stage * BlockN * Width;
    const T* c_v = s_v + stage * BlockN * Width;
    if constexpr (q_regs) {
      if (t == t_begin) {
#pragma unroll
        for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
          for (int kk = 0; kk < kq_count; ++kk)
            tc::ldmatrix_x4(q_frag[mb][kk], tc::tile_at<Width>(s_q, warp_row0 + mb * 16 + (lane & 15), kk * 2 + (lane >> 4)));
      }
    }
    const int n0 = t * BlockN;
    if (n0 >= warp_key_hi || n0 + BlockN <= warp_key_lo) continue;  // no row of this warp sees the tile

    // Packed keep bits of the tile for this thread's rows, loaded before the MMAs so that their
    // latency runs under them (Note [mma.sync mask bits]).
    std::uint32_t tb[packed ? mb_count : 1][2][packed ? BlockN / 32 : 1];
    if constexpr (packed) {
      const int row_words = static_cast<int>(p.mask_bits_stride[2]);
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int ic = min(i_base + 16 * mb + 8 * r, len_rows - 1);
          const std::uint32_t* row =
              Pack ? p.maybe_mask_bits + b * p.mask_bits_stride[0] + head_of(ic) * p.mask_bits_stride[1] +
                         query_of(ic) * p.mask_bits_stride[2]
                   : bits_row0 + (ic - bits_r0) * row_words;
          if constexpr (BlockN == 64) {
            const uint2 w = __ldg(reinterpret_cast<const uint2*>(row + n0 / 32));
            tb[mb][r][0] = w.x;
            tb[mb][r][1] = w.y;
          } else {
#pragma unroll
            for (int w = 0; w < BlockN / 32; ++w) tb[mb][r][w] = __ldg(row + n0 / 32 + w);
          }
        }
    }

    float s[mb_count][nb_count][4];
#pragma unroll
    for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
      for (int nb = 0; nb < nb_count; ++nb) s[mb][nb][0] = s[mb][nb][1] = s[mb][nb][2] = s[mb][nb][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kq_count; ++kk) {
      if constexpr (SkipPadded) {
        if (kk >= dqk_steps) break;
      }
      std::uint32_t a[mb_count][4];
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb) {
        if constexpr (q_regs) {
#pragma unroll
          for (int e = 0; e < 4; ++e) a[mb][e] = q_frag[mb][kk][e];
        } else {
          tc::ldmatrix_x4(a[mb], tc::tile_at<Width>(s_q, warp_row0 + mb * 16 + (lane & 15), kk * 2 + (lane >> 4)));
        }
      }
#pragma unroll
      for (int nb2 = 0; nb2 < BlockN / 16; ++nb2) {
        std::uint32_t bf[4];
        tc::ldmatrix_x4(bf, tc::tile_at<Width>(c_k, nb2 * 16 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
#pragma unroll
        for (int mb = 0; mb < mb_count; ++mb) {
          tc::mma16816<T>(s[mb][2 * nb2], a[mb], bf[0], bf[1]);
          tc::mma16816<T>(s[mb][2 * nb2 + 1], a[mb], bf[2], bf[3]);
        }
      }
    }

    bool full = !terms && n0 >= full_lo && n0 + BlockN <= full_hi;
    if constexpr (packed) {  // and every bit of the warp's rows set: a warp vote, so the branch is uniform
      std::uint32_t kept = ~0u;
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int w = 0; w < BlockN / 32; ++w) kept &= tb[mb][r][w];
      full = __all_sync(0xffffffffu, full && kept == ~0u);
    }
    if (full) {
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
        for (int nb = 0; nb < nb_count; ++nb)
#pragma unroll
          for (int e = 0; e < 4; ++e) s[mb][nb][e] *= scale_log2;
    } else if (!terms) {
      // Band only (causal diagonal, window edges, the last partial tile, rows past the sequence):
      // per row, the visible columns relative to this thread's first column, so each element is
      // two compares against compile-time offsets. With packed bits, also the key's bit: element c
      // of n8 block nb is key 8 nb + 2 (lane % 4) + c of the tile, bit 8 (nb % 4) + c of word nb / 4
      // shifted right by 2 (lane % 4). A dropped key's -inf is selected, so a NaN or Inf in k
      // there does not reach the row.
      const int col_base = n0 + (lane & 3) * 2;
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int i = i_base + 16 * mb + 8 * r;
          const bool row_ok = i < len_rows;
          const band bd = visible(p, Pack ? (row_ok ? query_of(i) : 0) : i, sb.len_q, sb.len_kv);
          const int lo = row_ok ? static_cast<int>(bd.lo) - col_base : 0;
          const int hi = row_ok ? static_cast<int>(bd.hi) - col_base : 0;
#pragma unroll
          for (int nb = 0; nb < nb_count; ++nb)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float& x = s[mb][nb][2 * r + c];
              bool keep = nb * 8 + c >= lo && nb * 8 + c < hi;
              if constexpr (packed) keep = keep && ((tb[mb][r][nb / 4] >> (2 * (lane & 3) + 8 * (nb % 4) + c)) & 1u);
              x = keep ? x * scale_log2 : k_neg_inf;
            }
        }
    } else {
      // Mask and/or softcap, as score_of (Note [Score pipeline]), with each row's mask terms loaded
      // for the whole tile first (mask_row_terms). Band compares are relative to this thread's
      // first column, as above (64-bit key indices cost this path registers and spills).
      const int col_base = n0 + (lane & 3) * 2;
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int i = i_base + 16 * mb + 8 * r;
          const bool row_ok = i < len_rows;
          const band bd = visible(p, Pack ? (row_ok ? query_of(i) : 0) : i, sb.len_q, sb.len_kv);
          const int lo = row_ok ? static_cast<int>(bd.lo) - col_base : 0;
          const int hi = row_ok ? static_cast<int>(bd.hi) - col_base : 0;
          float add[nb_count][2];
          if constexpr (staged) {  // this thread's own slots (Note [mma.sync staged masks])
            const unsigned char* src = m_slot + stage * m_stage_bytes + (mb * 2 + r) * nb_count * threads * pair_bytes;
            tc::staged_terms<nb_count, threads>(src, p.mask, add);
          } else {
            const int ic = Pack ? min(i, len_rows - 1) : i;  // (with no keys to read past the sequence)
            mask_row_terms<nb_count>(p, b, head_of(ic), query_of(ic), col_base, row_ok ? sb.len_kv : 0, add);
          }
#pragma unroll
          for (int nb = 0; nb < nb_count; ++nb)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
              float& x = s[mb][nb][2 * r + c];
              // log2 units, clamped (Note [GPU clamped scores]); every element, outside the select
              const float z = staged ? to_log2_units(x * p.scale + add[nb][c])  // additive, no softcap
                                     : to_log2_units(with_mask_term(scaled_score(p, x), add[nb][c], p.mask == mask_kind::keep_u8));
              x = nb * 8 + c >= lo && nb * 8 + c < hi ? z : k_neg_inf;
            }
        }
    }

    // Online softmax (log2 units). A row with no visible key so far keeps m = -inf and uses 0 as
    // its reference so exp2 never sees (-inf) - (-inf). row_l holds this thread's partial sum (its
    // quad's other columns are added once, in the epilogue).
#pragma unroll
    for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = row_m[mb][r];
#pragma unroll
        for (int nb = 0; nb < nb_count; ++nb) mx = fmaxf(mx, fmaxf(s[mb][nb][2 * r], s[mb][nb][2 * r + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_use = mx == k_neg_inf ? 0.0f : mx;
        const float alpha = exp2_approx(row_m[mb][r] - m_use);
        row_m[mb][r] = mx;
        float sum = 0.0f;
#pragma unroll
        for (int nb = 0; nb < nb_count; ++nb)
#pragma unroll
          for (int c = 0; c < 2; ++c) {
            const float pr = exp2_approx(s[mb][nb][2 * r + c] - m_use);
            s[mb][nb][2 * r + c] = pr;
            sum += pr;
          }
        row_l[mb][r] = row_l[mb][r] * alpha + sum;
#pragma unroll
        for (int nd = 0; nd < nd_count; ++nd) {
          o[mb][nd][2 * r] *= alpha;
          o[mb][nd][2 * r + 1] *= alpha;
        }
      }

    // O += P V: the S accumulators of two adjacent n8 blocks are the A fragment of one k16 step.
#pragma unroll
    for (int kk = 0; kk < BlockN / 16; ++kk) {
      std::uint32_t a[mb_count][4];
#pragma unroll
      for (int mb = 0; mb < mb_count; ++mb) {
        a[mb][0] = pack2<T>(s[mb][2 * kk][0], s[mb][2 * kk][1]);
        a[mb][1] = pack2<T>(s[mb][2 * kk][2], s[mb][2 * kk][3]);
        a[mb][2] = pack2<T>(s[mb][2 * kk + 1][0], s[mb][2 * kk + 1][1]);
        a[mb][3] = pack2<T>(s[mb][2 * kk + 1][2], s[mb][2 * kk + 1][3]);
      }
#pragma unroll
      for (int nd2 = 0; nd2 < Width / 16; ++nd2) {
        if constexpr (SkipPadded) {
          if (nd2 >= dv_steps) break;
        }
        std::uint32_t bf[4];
        tc::ldmatrix_x4_trans(bf, tc::tile_at<Width>(c_v, kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, nd2 * 2 + (lane >> 4)));
#pragma unroll
        for (int mb = 0; mb < mb_count; ++mb) {
          tc::mma16816<T>(o[mb][2 * nd2], a[mb], bf[0], bf[1]);
          tc::mma16816<T>(o[mb][2 * nd2 + 1], a[mb], bf[2], bf[3]);
        }
      }
    }
  }
  tc::cp_async_wait_all();
  // Every thread's copies (Q's too, when no key tile ran) have landed and every warp is past its
  // last read of shared memory: the Q tile can be reused to stage the output.
  __syncthreads();
  if (!warp_live) return;

  // Epilogue: normalise, write out (or the split's fp32 partial) and the LSE.
  const int col0 = (lane & 3) * 2;
#pragma unroll
  for (int mb = 0; mb < mb_count; ++mb)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float l = row_l[mb][r];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int i = i_base + 16 * mb + 8 * r;
      const float inv = l == 0.0f ? 0.0f : 1.0f / l;  // fully masked: out 0; NaN stays NaN
      float lse = l == 0.0f ? k_neg_inf : row_m[mb][r] * k_ln2 + logf(l);
      float lse_low = 0.0f;  // a split's lse is lse + lse_low (Note [Split clamped rows])
      if constexpr (terms) {  // Note [GPU clamped scores]
        if (clamped_row(p, row_m[mb][r], l) && i < len_rows) {
          const band bd = visible(p, query_of(i), sb.len_q, sb.len_kv);
          // the keys of this CTA's tiles (a split's share under split-KV)
          const float bias = clamped_row_bias(p, b, head_of(i), query_of(i), max(bd.lo, std::int64_t{t_begin} * BlockN),
                                              min(bd.hi, std::int64_t{t_end} * BlockN));
          lse_low = logf(l);
          lse = p.num_splits > 1 ? bias : bias + lse_low;
        }
      }
      if (p.num_splits > 1) {
        if (i >= len_rows) continue;
        const std::int64_t row =
            ((static_cast<std::int64_t>(split) * p.batch + b) * p.num_heads_q + head_of(i)) * p.seqlen_q + query_of(i);
        float* po = p.maybe_partial_out + row * p.head_dim_v;
#pragma unroll
        for (int nd = 0; nd < nd_count; ++nd) {
          const int d = nd * 8 + col0;
          if (d < p.head_dim_v)
            *reinterpret_cast<float2*>(po + d) = make_float2(o[mb][nd][2 * r] * inv, o[mb][nd][2 * r + 1] * inv);
        }
        if ((lane & 3) == 0) {
          p.maybe_partial_lse[row] = lse;
          p.maybe_partial_lse_low[row] = lse_low;
        }
      } else {
        // Stage the row in this warp's own rows of the Q tile (no other warp touches them now).
        const int row_in_cta = warp_row0 + 16 * mb + 8 * r + lane / 4;
#pragma unroll
        for (int nd = 0; nd < nd_count; ++nd)
          *reinterpret_cast<std::uint32_t*>(tc::tile_at<Width>(s_q, row_in_cta, nd) + col0) =
              pack2<T>(o[mb][nd][2 * r] * inv, o[mb][nd][2 * r + 1] * inv);
        if (p.maybe_lse && (lane & 3) == 0 && i < len_rows)
          p.maybe_lse[b * p.lse_batch_stride + head_of(i) * p.lse_head_stride + (sb.start_q + query_of(i)) * p.lse_seq_stride] = lse;
      }
    }
  if (p.num_splits > 1) return;
  __syncwarp();
  // The warp's rows, 16 bytes per lane per step: consecutive lanes write consecutive chunks of a row.
  T* const out = static_cast<T*>(p.out) + b * p.out_stride[0] + sb.start_q * p.out_stride[1];
#pragma unroll
  for (int it = 0; it < rows * nd_count / 32; ++it) {
    const int c = it * 32 + lane;
    const int rr = c / nd_count, ch = c % nd_count;
    const int i = m0 + warp_row0 + rr;
    if (i >= len_rows || ch * 8 >= p.head_dim_v) continue;
    const T* src = tc::tile_at<Width>(s_q, warp_row0 + rr, ch);
    T* dst = out + query_of(i) * p.out_stride[1] + head_of(i) * p.out_stride[2];
    if (p.out_vec) {
      *reinterpret_cast<uint4*>(dst + ch * 8) = *reinterpret_cast<const uint4*>(src);
    } else {
#pragma unroll
      for (int e = 0; e < 8; ++e) dst[(ch * 8 + e) * p.out_stride[3]] = src[e];
    }
  }
}

template <elem E, int Width, int Warps, int BlockM, int BlockN, bool SkipPadded>
void launch_flash_tc_tile(const flash_params& p, void* stream) {
  constexpr int smem = flash_smem_bytes_for(Width, BlockM, BlockN);
  // Note [Decode GQA packing]: a CTA per BlockM packed rows of a KV head (only the decode tile
  // instantiates the packed kernel).
  constexpr bool can_pack = BlockM == k_flash_decode_rows;
  const bool pack = can_pack && p.pack_gqa;
  if (p.pack_gqa && !can_pack) throw std::logic_error("flash_cuda: GQA packing planned off the decode tile");
  const std::int64_t rows = std::int64_t{p.seqlen_q} * (pack ? p.group_size : 1);
  const dim3 grid(static_cast<unsigned>((rows + BlockM - 1) / BlockM),
                  static_cast<unsigned>(pack ? p.num_heads_kv : p.num_heads_q), static_cast<unsigned>(p.batch * p.num_splits));
  const auto s = static_cast<cudaStream_t>(stream);
  // A kernel of mode M with `bytes` of shared memory, its limit set once to `limit` (the largest
  // any call of M asks for); packed (Note [Decode GQA packing]) when the plan says so.
  auto launch = [&](auto mode, int limit, int bytes) {
    constexpr tc_mode M = decltype(mode)::value;
    if constexpr (can_pack) {
      if (pack) {
        constexpr auto kernel = &flash_tc_kernel<E, Width, Warps, BlockM, BlockN, SkipPadded, M, true>;
        allow_dynamic_smem<kernel>(limit);
        kernel<<<grid, Warps * 32, bytes, s>>>(p);
        return;
      }
    }
    constexpr auto kernel = &flash_tc_kernel<E, Width, Warps, BlockM, BlockN, SkipPadded, M>;
    allow_dynamic_smem<kernel>(limit);
    kernel<<<grid, Warps * 32, bytes, s>>>(p);
  };
  switch (tc_mode_for(p, p.maybe_mask_bits != nullptr, Width, Warps, BlockM, BlockN)) {
    case tc_mode::bits:
      launch_mask_bits(p, stream);  // Note [mma.sync mask bits]
      launch(std::integral_constant<tc_mode, tc_mode::bits>{}, smem, smem);
      break;
    case tc_mode::staged:  // Note [mma.sync staged masks]: the f32 size is the largest
      launch(std::integral_constant<tc_mode, tc_mode::staged>{}, smem + 2 * tc_staged_stage_bytes(Warps, BlockM, BlockN, 8),
             smem + 2 * tc_staged_stage_bytes(Warps, BlockM, BlockN, tc_mask_pair_bytes(p.mask)));
      break;
    case tc_mode::extras: launch(std::integral_constant<tc_mode, tc_mode::extras>{}, smem, smem); break;
    case tc_mode::plain: launch(std::integral_constant<tc_mode, tc_mode::plain>{}, smem, smem); break;
  }
  ATTEND_CUDA_CHECK(cudaGetLastError());
}

template <elem E, int Width>
void launch_flash_tc(const flash_params& p, void* stream) {
  launch_flash_tc_tile<E, Width, flash_warps(Width), flash_block_m(Width), flash_block_n(Width),
                       flash_skip_padded_steps(Width)>(p, stream);
}

template <elem E, int Width>
void launch_flash_tc_decode(const flash_params& p, void* stream) {  // Note [Decode tile]
  launch_flash_tc_tile<E, Width, flash_decode_warps(Width), flash_decode_block_m(Width), flash_decode_block_n(Width),
                       flash_skip_padded_steps(Width)>(p, stream);
}

}  // namespace attend::cuda
