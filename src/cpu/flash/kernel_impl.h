// The flash_cpu work-item kernel, generic over a vector-ops policy `O` (Note [Flash ISA
// translation units] in plan.h). Not an ordinary header: each ISA translation unit includes it
// once, then defines its `ops` struct and instantiates run_item_typed<ops, E>. Everything here
// has internal linkage.
//
// Per item (rows = every query head of one KV head × block_q positions, Note [Flash GQA]):
//   pack Q once; for each K/V tile of block_kv keys inside the rows' union band:
//     St[key][row] = K·Qᵀ (micro-kernel, rows in vector lanes)
//     online softmax down each row (vectorised over rows), P overwrites St
//     O[row][:] = alpha·O + P·V (micro-kernel, head_dim in vector lanes)
//   finalise: out = O / l, lse = m + log l (or partial rows for the split-KV merge).
//
// Note [Flash GQA]: the rows of an item are ordered m = qi · group_size + g, so all query heads
// of a group sit side by side and share one packed K/V tile; K and V are read once per group.
// Note [Flash exp]: scores are kept in log2 units (multiplied by log2 e) so the softmax uses
// exp2; O::exp2 returns exactly 0 for -inf (masked keys never leak weight).
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "attend/params.h"
#include "attend/tensor.h"
#include "cpu/elements.h"
#include "cpu/flash/plan.h"

namespace attend::cpu::flash {
namespace {

constexpr float k_log2e = 1.44269504088896340736f;
constexpr float k_ln2 = 0.693147180559945309417f;
constexpr float k_neg_inf = -__builtin_inff();
// The lowest natural-units score whose log2-units value (x log2 e) is still finite.
constexpr float k_lowest_natural = std::numeric_limits<float>::lowest() / k_log2e;
// That score in log2 units: a row whose running max is at or below it saw only clamped scores
// (Note [Flash clamped rows]).
constexpr float k_lowest_log2 = k_lowest_natural * k_log2e;
constexpr float k_nan = __builtin_nanf("");

std::int64_t imin(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
std::int64_t imax(std::int64_t a, std::int64_t b) { return a > b ? a : b; }

// Element types of q/k/v/out.
struct e_f32 {
  using storage = float;
  static constexpr dtype k_dtype = dtype::f32;
};
struct e_bf16 {
  using storage = std::uint16_t;
  static constexpr dtype k_dtype = dtype::bf16;
};
struct e_f16 {
  using storage = std::uint16_t;
  static constexpr dtype k_dtype = dtype::f16;
};

float bf16_bits_to_float(std::uint16_t bits) {
  const std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <class E>
float to_float(typename E::storage x) {
  if constexpr (E::k_dtype == dtype::f32)
    return x;
  else if constexpr (E::k_dtype == dtype::bf16)
    return bf16_bits_to_float(x);
  else
    return f16_to_float(x);
}

// attend::float_to_bf16 (round to nearest even, NaN stays a quiet NaN), inline here so the
// output loop of the finalise step vectorises: the out-of-line call per element was ≈ 4% of
// bf16 causal D=128 S=4096 (perf).
std::uint16_t bf16_from_float(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  return static_cast<std::uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <class E>
typename E::storage from_float(float x) {
  if constexpr (E::k_dtype == dtype::f32)
    return x;
  else if constexpr (E::k_dtype == dtype::bf16)
    return bf16_from_float(x);
  else
    return float_to_f16(x);
}

// Mask element `offset` of a mask of dtype T as a float (a boolean one as 1 or 0).
template <dtype T>
float mask_term(const void* mask, std::int64_t offset) {
  if constexpr (T == dtype::f32) return static_cast<const float*>(mask)[offset];
  if constexpr (T == dtype::f16) return f16_to_float(static_cast<const std::uint16_t*>(mask)[offset]);
  if constexpr (T == dtype::bf16) return bf16_bits_to_float(static_cast<const std::uint16_t*>(mask)[offset]);
  if constexpr (T == dtype::boolean) return static_cast<const std::uint8_t*>(mask)[offset] != 0 ? 1.0f : 0.0f;
  return 0.0f;
}
float mask_value(const problem& p, std::int64_t offset) {
  switch (p.mask_dtype) {
    case dtype::f32: return mask_term<dtype::f32>(p.maybe_mask, offset);
    case dtype::f16: return mask_term<dtype::f16>(p.maybe_mask, offset);
    case dtype::bf16: return mask_term<dtype::bf16>(p.maybe_mask, offset);
    case dtype::boolean: return mask_term<dtype::boolean>(p.maybe_mask, offset);
    default: return 0.0f;
  }
}

// ---- packing -------------------------------------------------------------------------------

// dst[0, n) = row (element stride `stride`) as f32, dst[n, n_pad) = 0.
template <class O, class E>
void pack_row_f32(const typename E::storage* src, std::int64_t stride, std::int64_t n, std::int64_t n_pad, float* dst) {
  constexpr std::int64_t w = O::k_width;
  std::int64_t d = 0;
  if (stride == 1)
    for (; d + w <= n; d += w) O::store(dst + d, O::template load_cvt<E>(src + d));
  for (; d < n; ++d) dst[d] = to_float<E>(src[d * stride]);
  for (; d < n_pad; ++d) dst[d] = 0.0f;
}

// ---- micro-kernels -------------------------------------------------------------------------

// St[r][0, MV·W) = Σ_d K[r][d] · Qt[d][0, MV·W) for NR keys: keys broadcast, rows in lanes.
template <class O, int NR, int MV>
void qk_block(const float* qt, std::int64_t ldq, const float* k, std::int64_t ldk, std::int64_t dqk, float* st,
              std::int64_t lds) {
  constexpr int w = O::k_width;
  typename O::vf acc[NR][MV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < MV; ++v) acc[r][v] = O::zero();
  for (std::int64_t d = 0; d < dqk; ++d) {
    typename O::vf q[MV];
    for (int v = 0; v < MV; ++v) q[v] = O::load(qt + d * ldq + v * w);
    for (int r = 0; r < NR; ++r) {
      const typename O::vf kb = O::set1(k[r * ldk + d]);
      for (int v = 0; v < MV; ++v) acc[r][v] = O::fma(kb, q[v], acc[r][v]);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < MV; ++v) O::store(st + r * lds + v * w, acc[r][v]);
}

// One row chunk of MV vectors against all nk keys, O::k_qk_keys keys per block. The chunk's
// packed Q (MV·W rows × dqk) stays in L1 while the key blocks stream past it
// (Note [Flash micro-kernel shapes]).
template <class O, int MV>
void qk_chunk(const float* qt, std::int64_t ldq, const float* k, std::int64_t ldk, std::int64_t dqk, std::int64_t nk,
              float* st, std::int64_t lds) {
  constexpr int nr = O::k_qk_keys;
  std::int64_t n0 = 0;
  for (; n0 + nr <= nk; n0 += nr) qk_block<O, nr, MV>(qt, ldq, k + n0 * ldk, ldk, dqk, st + n0 * lds, lds);
  if constexpr (nr > 4) {  // 64 keys = 10 × 6 + 4
    if (n0 + 4 <= nk) qk_block<O, 4, MV>(qt, ldq, k + n0 * ldk, ldk, dqk, st + n0 * lds, lds), n0 += 4;
  }
  for (; n0 + 2 <= nk; n0 += 2) qk_block<O, 2, MV>(qt, ldq, k + n0 * ldk, ldk, dqk, st + n0 * lds, lds);
  if (n0 < nk) qk_block<O, 1, MV>(qt, ldq, k + n0 * ldk, ldk, dqk, st + n0 * lds, lds);
}

// Wide Q·Kᵀ: St[n][m] for n < nk, m < rows_pad, from Qt[d][m] and f32 key rows.
// Note [Flash micro-kernel shapes]: the row chunk (4 vectors = 64 rows on AVX-512: 32 KiB of
// packed Q at D=128) is the outer loop and the keys the inner one, so the chunk stays in L1
// while each K row is read once per chunk; with keys outer, the whole 64 KiB Q panel streamed
// through L1 once per key block and every Q load came from L2. The key block (O::k_qk_keys) and
// the P·V row block (O::k_pv_rows) are as wide as the register file allows, and V tiles are
// packed contiguously for wide items (v_direct in run_item_typed). Together, fp32 D=128, H=16,
// S=2048, 1 thread (thread CPU time): 149 -> 186 GFLOP/s; a dependency-free FMA loop peaks at
// ~270 GFLOP/s per core, and perf puts both micro-kernels near that. With head-major items
// (flash_cpu.cpp), fp32 D=128 S=4096, 2 threads: P·V 43%, Q·Kᵀ 42%, softmax 8.5%, packing and
// the rest 6% of flash_cpu's time.
template <class O>
void qk_wide(const float* qt, std::int64_t rows_pad, const float* k, std::int64_t ldk, std::int64_t dqk,
             std::int64_t nk, float* st) {
  constexpr std::int64_t w = O::k_width;
  const std::int64_t mvecs = rows_pad / w;
  std::int64_t v0 = 0;
  for (; v0 + 4 <= mvecs; v0 += 4) qk_chunk<O, 4>(qt + v0 * w, rows_pad, k, ldk, dqk, nk, st + v0 * w, rows_pad);
  switch (mvecs - v0) {
    case 3: qk_chunk<O, 3>(qt + v0 * w, rows_pad, k, ldk, dqk, nk, st + v0 * w, rows_pad); break;
    case 2: qk_chunk<O, 2>(qt + v0 * w, rows_pad, k, ldk, dqk, nk, st + v0 * w, rows_pad); break;
    case 1: qk_chunk<O, 1>(qt + v0 * w, rows_pad, k, ldk, dqk, nk, st + v0 * w, rows_pad); break;
    default: break;
  }
}

// Narrow Q·Kᵀ (few rows): St[n][m] = dot(Q[m], K[n]) along head_dim in lanes; K read in its own
// dtype and converted in registers (decode streams K once, straight from the caller's tensor).
// Why 16 rows: decode walks K/V rows that sit a whole token apart (bshd: Hkv·D elements), so
// every row starts a new page and the hardware prefetcher does not follow; 16 rows (8 KiB of f32
// D=128 rows) in flight per thread cover DRAM latency × per-core bandwidth (≈ 100 ns × 20 GB/s).
constexpr std::int64_t k_prefetch_rows = 16;

// Prefetches `bytes` from `p` (never faults, also past the end of a tensor).
void prefetch_bytes(const void* p, std::int64_t bytes) {
  const auto at = reinterpret_cast<std::uintptr_t>(p);
  for (std::int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(reinterpret_cast<const void*>(at + static_cast<std::uintptr_t>(off)));
}

template <class O, class E>
void qk_narrow(const float* q, std::int64_t ldq, std::int64_t rows, const typename E::storage* k, std::int64_t ldk,
               std::int64_t dqk_pad, std::int64_t nk, float* st, std::int64_t lds, std::int64_t ldm, const void* maybe_v_rows,
               std::int64_t v_row_stride_bytes, std::int64_t v_row_bytes, bool prefetch_k = true) {
  constexpr std::int64_t w = O::k_width;
  const auto k_row_stride_bytes = static_cast<std::int64_t>(sizeof(typename E::storage)) * ldk;
  const std::int64_t k_row_bytes = static_cast<std::int64_t>(sizeof(typename E::storage)) * dqk_pad;
  std::int64_t n0 = 0;
  if constexpr (O::k_width >= 8) {
    // Keys in lanes (lds == 1, Note [Flash narrow softmax]): 4 keys at a time, one Q load per 4
    // K loads, and the 4 dot products reduced together into 4 adjacent scores (O::hsum4) instead
    // of one full horizontal sum per key.
    if (lds == 1) {
      for (; n0 + 4 <= nk; n0 += 4) {
        for (std::int64_t n = n0; n < n0 + 4; ++n) {
          if (prefetch_k) prefetch_bytes(reinterpret_cast<const char*>(k + n * ldk) + k_prefetch_rows * k_row_stride_bytes, k_row_bytes);
          if (maybe_v_rows) prefetch_bytes(static_cast<const char*>(maybe_v_rows) + n * v_row_stride_bytes, v_row_bytes);
        }
        const typename E::storage* kr = k + n0 * ldk;
        for (std::int64_t m = 0; m < rows; ++m) {
          const float* qr = q + m * ldq;
          typename O::vf a0 = O::zero(), a1 = O::zero(), a2 = O::zero(), a3 = O::zero();
          for (std::int64_t d = 0; d < dqk_pad; d += w) {
            const typename O::vf qv = O::load(qr + d);
            a0 = O::fma(qv, O::template load_cvt<E>(kr + d), a0);
            a1 = O::fma(qv, O::template load_cvt<E>(kr + ldk + d), a1);
            a2 = O::fma(qv, O::template load_cvt<E>(kr + 2 * ldk + d), a2);
            a3 = O::fma(qv, O::template load_cvt<E>(kr + 3 * ldk + d), a3);
          }
          O::hsum4(a0, a1, a2, a3, st + m * ldm + n0);
        }
      }
    }
  }
  for (std::int64_t n = n0; n < nk; ++n) {
    const typename E::storage* kr = k + n * ldk;
    // K rows ahead (into the next tile), and this tile's V rows, which P·V reads next.
    if (prefetch_k) prefetch_bytes(reinterpret_cast<const char*>(kr) + k_prefetch_rows * k_row_stride_bytes, k_row_bytes);
    if (maybe_v_rows) prefetch_bytes(static_cast<const char*>(maybe_v_rows) + n * v_row_stride_bytes, v_row_bytes);
    for (std::int64_t m = 0; m < rows; ++m) {
      const float* qr = q + m * ldq;
      typename O::vf a0 = O::zero(), a1 = O::zero();
      std::int64_t d = 0;
      for (; d + 2 * w <= dqk_pad; d += 2 * w) {
        a0 = O::fma(O::load(qr + d), O::template load_cvt<E>(kr + d), a0);
        a1 = O::fma(O::load(qr + d + w), O::template load_cvt<E>(kr + d + w), a1);
      }
      if (d < dqk_pad) a0 = O::fma(O::load(qr + d), O::template load_cvt<E>(kr + d), a0);
      st[n * lds + m * ldm] = O::hsum(O::add(a0, a1));
    }
  }
}

// O[r][0, EV·W) = alpha[r]·O[r] + Σ_n P[n][r] · V[n][0, EV·W) for MR rows: P broadcast, head_dim
// in lanes; V read in its own dtype.
template <class O, class E, int MR, int EV>
void pv_block(const float* pt, std::int64_t ldp, const typename E::storage* v, std::int64_t ldv, std::int64_t nk,
              float* o, std::int64_t ldo, const float* alpha) {
  constexpr int w = O::k_width;
  typename O::vf acc[MR][EV];
  for (int r = 0; r < MR; ++r) {
    const typename O::vf a = O::set1(alpha[r]);
    for (int e = 0; e < EV; ++e) acc[r][e] = O::mul(O::load(o + r * ldo + e * w), a);
  }
  for (std::int64_t n = 0; n < nk; ++n) {
    typename O::vf vv[EV];
    for (int e = 0; e < EV; ++e) vv[e] = O::template load_cvt<E>(v + n * ldv + e * w);
    for (int r = 0; r < MR; ++r) {
      const typename O::vf pb = O::set1(pt[n * ldp + r]);
      for (int e = 0; e < EV; ++e) acc[r][e] = O::fma(pb, vv[e], acc[r][e]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int e = 0; e < EV; ++e) O::store(o + r * ldo + e * w, acc[r][e]);
}

template <class O, class E, int MR>
void pv_cols(const float* pt, std::int64_t ldp, const typename E::storage* v, std::int64_t ldv, std::int64_t nk,
             float* o, std::int64_t ldo, const float* alpha, std::int64_t evecs) {
  constexpr std::int64_t w = O::k_width;
  std::int64_t e0 = 0;
  for (; e0 + 4 <= evecs; e0 += 4) pv_block<O, E, MR, 4>(pt, ldp, v + e0 * w, ldv, nk, o + e0 * w, ldo, alpha);
  switch (evecs - e0) {
    case 3: pv_block<O, E, MR, 3>(pt, ldp, v + e0 * w, ldv, nk, o + e0 * w, ldo, alpha); break;
    case 2: pv_block<O, E, MR, 2>(pt, ldp, v + e0 * w, ldv, nk, o + e0 * w, ldo, alpha); break;
    case 1: pv_block<O, E, MR, 1>(pt, ldp, v + e0 * w, ldv, nk, o + e0 * w, ldo, alpha); break;
    default: break;
  }
}

// O[m][:] for m < rows (rounded up to the row block; padded rows have P = 0), O::k_pv_rows rows
// per block (Note [Flash micro-kernel shapes]).
template <class O, class E>
void pv_all(const float* pt, std::int64_t ldp, const typename E::storage* v, std::int64_t ldv, std::int64_t nk,
            float* o, std::int64_t ldo, const float* alpha, std::int64_t rows, std::int64_t evecs) {
  constexpr int mr = O::k_pv_rows;
  std::int64_t m0 = 0;
  for (; m0 + mr <= rows; m0 += mr) pv_cols<O, E, mr>(pt + m0, ldp, v, ldv, nk, o + m0 * ldo, ldo, alpha + m0, evecs);
  for (; m0 + 2 <= rows; m0 += 2) pv_cols<O, E, 2>(pt + m0, ldp, v, ldv, nk, o + m0 * ldo, ldo, alpha + m0, evecs);
  if (m0 < rows) pv_cols<O, E, 1>(pt + m0, ldp, v, ldv, nk, o + m0 * ldo, ldo, alpha + m0, evecs);
}

// ---- online softmax ------------------------------------------------------------------------

struct row_state {
  float* max_log2;  // running max (log2 units)
  float* sum;       // running Σ exp2(s - max)
  float* alpha;     // this tile's rescale of O
  float* nan;       // 1 when a visible score was NaN
  std::int32_t* lo;  // visible keys [lo, hi), local positions
  std::int32_t* hi;
};

// The next K/V tile's rows, fetched while this tile's softmax runs (Note [Flash prefetch]).
struct next_rows {
  const char* maybe_k = nullptr;
  const char* maybe_v = nullptr;
  std::int64_t count = 0, k_stride_bytes = 0, k_row_bytes = 0, v_stride_bytes = 0, v_row_bytes = 0;
};

// St (scores; log2 units after `mult`) -> P in place, updating the row state. `full`: every key
// of the tile is visible to every row (no band test).
// Note [Flash prefetch]: K/V rows of one head sit a token apart (bshd: Hkv·D elements), so for
// long sequences each row starts a new page and the hardware prefetcher stops; the first
// exp pass of each tile therefore prefetches the next tile's K and V rows, one row per key, so
// they arrive while this tile's P·V and the next Q·Kᵀ run.
template <class O>
void softmax_tile(float* st, std::int64_t rows_pad, std::int64_t nk, std::int64_t j0, bool full, float mult,
                  const row_state& rs, const next_rows& next) {
  using vf = typename O::vf;
  const vf vmult = O::set1(mult);
  for (std::int64_t m0 = 0; m0 < rows_pad; m0 += O::k_width) {
    vf tmax = O::set1(k_neg_inf);
    typename O::vm nan = O::nan_none();
    if (full) {
      for (std::int64_t n = 0; n < nk; ++n) {
        float* sp = st + n * rows_pad + m0;
        const vf s = O::mul(O::load(sp), vmult);
        nan = O::nan_acc(nan, s);
        tmax = O::max(tmax, s);
        O::store(sp, s);
      }
    } else {
      const typename O::vi lo = O::load_i(rs.lo + m0), hi = O::load_i(rs.hi + m0);
      for (std::int64_t n = 0; n < nk; ++n) {
        float* sp = st + n * rows_pad + m0;
        const vf s = O::band(O::mul(O::load(sp), vmult), static_cast<std::int32_t>(j0 + n), lo, hi);
        nan = O::nan_acc(nan, s);
        tmax = O::max(tmax, s);
        O::store(sp, s);
      }
    }
    const vf m_old = O::load(rs.max_log2 + m0);
    const vf m_new = O::max(m_old, tmax);
    const vf m_use = O::zero_if_neg_inf(m_new);  // all masked so far: exp2(-inf - 0) = 0
    const vf a = O::exp2(O::sub(m_old, m_use));
    vf sum = O::zero();
    if (m0 == 0) {
      for (std::int64_t n = 0; n < next.count; ++n) {
        if (next.maybe_k) prefetch_bytes(next.maybe_k + n * next.k_stride_bytes, next.k_row_bytes);
        if (next.maybe_v) prefetch_bytes(next.maybe_v + n * next.v_stride_bytes, next.v_row_bytes);
      }
    }
    for (std::int64_t n = 0; n < nk; ++n) {
      float* sp = st + n * rows_pad + m0;
      const vf pr = O::exp2(O::sub(O::load(sp), m_use));
      sum = O::add(sum, pr);
      O::store(sp, pr);
    }
    O::store(rs.sum + m0, O::fma(O::load(rs.sum + m0), a, sum));
    O::store(rs.max_log2 + m0, m_new);
    O::store(rs.alpha + m0, a);
    O::nan_store(rs.nan + m0, nan);
  }
}

// Note [Flash narrow softmax]: decode items have one (or a few) query rows per KV head and
// head-blocked tiles of 4 keys, so softmax_tile (rows in lanes) ran every exp and max on a
// vector with one live lane, once per key. Here each row's scores of a tile sit in one vector,
// keys in lanes (st_lanes[m][0, nk)); one exp2 covers the tile, lanes outside [nk) or the band
// get -inf (weight 0), and alpha is 1 without an exp while the row's max does not move. P goes
// back to st[n][m] for pv_all. Decode f32 (Sq=1, Skv=32768, H=32, D=128), 1 thread: 21.8 ->
// 26 GB/s (plain read of K and V: 39 GB/s).
template <class O>
void softmax_lanes(const float* st_lanes, float* st, std::int64_t rp, std::int64_t rows, std::int64_t nk,
                   std::int64_t j0, float mult, const row_state& rs) {
  using vf = typename O::vf;
  constexpr std::int64_t w = O::k_width;
  const vf vmult = O::set1(mult);
  for (std::int64_t m = 0; m < rows; ++m) {
    const std::int32_t lo = rs.lo[m], hi = static_cast<std::int32_t>(imin(rs.hi[m], j0 + nk));
    const vf s = O::band_lanes(O::mul(O::load(st_lanes + m * w), vmult), static_cast<std::int32_t>(j0), lo, hi);
    if (O::any_nan(s)) rs.nan[m] = 1.0f;
    const float m_old = rs.max_log2[m], tmax = O::hmax(s);
    const float m_new = tmax > m_old ? tmax : m_old;
    const float m_use = m_new == k_neg_inf ? 0.0f : m_new;  // all masked so far: exp2(-inf - 0) = 0
    const float a = m_new == m_old ? 1.0f : __builtin_exp2f(m_old - m_use);
    const vf pr = O::exp2(O::sub(s, O::set1(m_use)));
    alignas(64) float lane[w];
    O::store(lane, pr);
    for (std::int64_t n = 0; n < nk; ++n) st[n * rp + m] = lane[n];
    rs.sum[m] = rs.sum[m] * a + O::hsum(pr);
    rs.max_log2[m] = m_new;
    rs.alpha[m] = a;
  }
}

// Note [Flash masked non-finite V]: a masked key has P = 0 exactly, but 0 x NaN (or Inf) in the
// vectorised P·V would still poison its row, where the reference leaves every zero-weight key out
// (padding slots of a KV cache often hold garbage, masked by -inf or by a large finite negative
// bias such as the dtype's lowest value). Tiles that can hold masked keys (a band edge inside the
// tile for one of the item's rows, or any tile under a mask tensor) whose P has a zero for a real
// row are scanned for non-finite V values, an integer test on the exponent bits that costs ~1/rows
// of the tile's P·V; a tile that has one takes pv_guarded, a scalar P·V that skips P = 0 terms, as
// the reference does. Keys with P > 0 still contribute (NaN stays NaN). Padding rows do not count:
// a decode item (one row padded to a vector) once scanned every tile, and its V scan, as long as
// the P·V, cost bf16 decode ~20% (H = 32, D = 128, Skv = 32768: 24 -> 29 GB/s on one thread).
// Every row block of a sequence scanned the same V tiles again, so a masked call whose sequences
// have several row blocks scans V once first (v_all_finite, flash_cpu.cpp): with no Inf or NaN
// there, no tile scans (tile_config::v_finite; masked calls 1.12-1.24x at S = 2048).
bool any_zero_p(const float* st, std::int64_t rp, std::int64_t rows, std::int64_t nk) {
  bool zero = false;
  for (std::int64_t n = 0; n < nk; ++n)
    for (std::int64_t m = 0; m < rows; ++m) zero |= st[n * rp + m] == 0.0f;
  return zero;
}

template <class E>
bool has_non_finite(const typename E::storage* v, std::int64_t seq_stride, std::int64_t dim_stride, std::int64_t nk,
                    std::int64_t dv) {
  using st_t = typename E::storage;
  using bits_t = std::conditional_t<sizeof(st_t) == 4, std::uint32_t, std::uint16_t>;
  constexpr auto exp_mask = static_cast<bits_t>(non_finite_exponent(E::k_dtype));
  for (std::int64_t n = 0; n < nk; ++n) {
    const st_t* row = v + n * seq_stride;
    unsigned bad = 0;
    for (std::int64_t d = 0; d < dv; ++d) {
      bits_t u;
      std::memcpy(&u, row + d * dim_stride, sizeof u);
      bad |= (u & exp_mask) == exp_mask ? 1u : 0u;
    }
    if (bad != 0) return true;
  }
  return false;
}

// O = alpha·O + P·V over one tile, leaving out P = 0 terms (Note [Flash masked non-finite V]).
template <class E>
void pv_guarded(const problem& p, const float* st, std::int64_t rp, std::int64_t rows, const typename E::storage* vt,
                std::int64_t nk, float* o, std::int64_t ldo, const row_state& rs) {
  const std::int64_t dv = p.head_dim_v;
  for (std::int64_t m = 0; m < rows; ++m) {
    float* orow = o + m * ldo;
    for (std::int64_t d = 0; d < dv; ++d) orow[d] *= rs.alpha[m];
    for (std::int64_t n = 0; n < nk; ++n) {
      const float pm = st[n * rp + m];
      if (pm == 0.0f) continue;
      const typename E::storage* vr = vt + n * p.v.seq;
      for (std::int64_t d = 0; d < dv; ++d) orow[d] += pm * to_float<E>(vr[d * p.v.dim]);
    }
  }
}

// ---- the work item -------------------------------------------------------------------------

// One KV head's part of an item: its packed Q, output rows and softmax state.
struct head_part {
  float* qbuf;
  float* obuf;
  row_state rs;
};

head_part head_part_at(const tile_config& c, std::byte* scratch, std::int64_t hh) {
  std::byte* base = scratch + c.head_offset + static_cast<std::size_t>(hh) * c.head_bytes;
  float* state = reinterpret_cast<float*>(base + c.state_offset);
  const std::int64_t rp = c.rows_pad;
  return {reinterpret_cast<float*>(base + c.q_offset), reinterpret_cast<float*>(base + c.o_offset),
          row_state{state, state + rp, state + 2 * rp, state + 3 * rp, reinterpret_cast<std::int32_t*>(state + 4 * rp),
                    reinterpret_cast<std::int32_t*>(state + 5 * rp)}};
}

// Note [Flash head blocks]: an item covers KV heads [hk, hk + hk_count). For each K/V tile the
// heads run one after another, so in a bshd tensor (heads adjacent within a token) the tile's
// K/V rows of all heads form one contiguous region read in one sweep; one head per item would
// instead touch a new page per row. Used for decode-shaped (narrow) items.
template <class O, class E>
void run_item_typed(const problem& p, const tile_config& c, const item& it, std::byte* scratch) {
  using st_t = typename E::storage;
  constexpr std::int64_t w = O::k_width;
  const attention_params& a = p.params;
  const std::int64_t gs = p.group_size, rows = gs * it.q_count, rp = c.rows_pad;
  const std::int64_t dqk = p.head_dim_qk, dv = p.head_dim_v, bkv = c.block_kv;
  const std::int64_t b = it.b;
  const std::int64_t q_start = p.start_q(b), kv_start = p.start_kv(b);
  const auto* q_src = static_cast<const st_t*>(a.q.data);
  const auto* k_base = static_cast<const st_t*>(a.k.data) + b * p.k.batch + kv_start * p.k.seq;
  const auto* v_base = static_cast<const st_t*>(a.v.data) + b * p.v.batch + kv_start * p.v.seq;

  float* kbuf = reinterpret_cast<float*>(scratch + c.k_offset);
  float* vbuf = reinterpret_cast<float*>(scratch + c.v_offset);
  float* st = reinterpret_cast<float*>(scratch + c.s_offset);
  float* st_lanes = st + bkv * rp;  // [rows][w] (plan.cpp sizes the score region for both)
  auto* pbuf = reinterpret_cast<std::uint16_t*>(scratch + c.p_offset);

  // Row bands (the same for every head), the union of keys any row sees, and the keys every
  // row sees.
  // all_lo/all_hi count the padding rows (which see nothing), real_lo/real_hi only the item's rows.
  std::int64_t union_lo = it.kv_end, union_hi = it.kv_begin, all_lo = it.kv_begin, all_hi = it.kv_end;
  std::int64_t real_lo = it.kv_begin, real_hi = it.kv_end;
  const head_part first = head_part_at(c, scratch, 0);
  for (std::int64_t m = 0; m < rp; ++m) {
    std::int64_t lo = 0, hi = 0;
    if (m < rows) {
      const key_range r = row_keys(p, b, it.q_begin + m / gs);
      lo = imax(r.lo, it.kv_begin);
      hi = imax(imin(r.hi, it.kv_end), lo);
      if (hi > lo) union_lo = imin(union_lo, lo), union_hi = imax(union_hi, hi);
      real_lo = imax(real_lo, lo);
      real_hi = imin(real_hi, hi);
    }
    all_lo = imax(all_lo, lo);
    all_hi = imin(all_hi, hi);
    first.rs.lo[m] = static_cast<std::int32_t>(lo);
    first.rs.hi[m] = static_cast<std::int32_t>(hi);
  }

  // Per head: state, zeroed output rows, packed Q.
  for (std::int64_t hh = 0; hh < it.hk_count; ++hh) {
    const head_part hp = head_part_at(c, scratch, hh);
    const std::int64_t hk = it.hk + hh;
    for (std::int64_t m = 0; m < rp; ++m) {
      hp.rs.lo[m] = first.rs.lo[m];
      hp.rs.hi[m] = first.rs.hi[m];
      hp.rs.max_log2[m] = k_neg_inf;
      hp.rs.sum[m] = 0.0f;
      hp.rs.nan[m] = 0.0f;
    }
    for (std::int64_t i = 0; i < rows * c.dv_pad; ++i) hp.obuf[i] = 0.0f;
    auto q_row = [&](std::int64_t m) -> const st_t* {
      const std::int64_t h = hk * gs + m % gs;
      return m < rows ? q_src + b * p.q.batch + (q_start + it.q_begin + m / gs) * p.q.seq + h * p.q.head : nullptr;
    };
    if (c.narrow) {
      for (std::int64_t m = 0; m < rows; ++m) pack_row_f32<O, E>(q_row(m), p.q.dim, dqk, c.dqk_pad, hp.qbuf + m * c.dqk_pad);
      continue;
    }
    // Wide items store Q transposed ([d][rows]). Why 8 rows × 16 dims per block: Q rows sit a
    // token apart (often a multiple of 4 KiB, one L1 set), and a row-at-a-time transpose wrote
    // across the whole 64 KiB panel per row, missing L1 on every store; a block touches 8 source
    // lines and 16 destination lines.
    constexpr std::int64_t k_tr_rows = 8, k_tr_dims = 16;
    const bool q_pairs = p.q.dim == 1 && dqk == c.dqk_pad;  // bf16: contiguous rows, even head dim
    for (std::int64_t m0 = 0; m0 < rp; m0 += k_tr_rows) {
      for (std::int64_t d0 = 0; d0 < c.dqk_pad; d0 += k_tr_dims) {
        for (std::int64_t m = m0; m < imin(m0 + k_tr_rows, rp); ++m) {
          const st_t* qr = q_row(m);
          const std::int64_t d_end = imin(d0 + k_tr_dims, c.dqk_pad);
          if (c.bf16_dot) {
            if constexpr (E::k_dtype == dtype::bf16) {
              if (q_pairs) {  // whole (d, d+1) pairs as one 32-bit word
                auto* qp32 = reinterpret_cast<std::uint32_t*>(hp.qbuf);
                for (std::int64_t d = d0; d < d_end; d += 2) {
                  std::uint32_t pair = 0;
                  if (qr) std::memcpy(&pair, qr + d, sizeof pair);
                  qp32[(d / 2) * rp + m] = pair;
                }
              } else {
                auto* qp = reinterpret_cast<std::uint16_t*>(hp.qbuf);
                for (std::int64_t d = d0; d < d_end; ++d)
                  qp[((d / 2) * rp + m) * 2 + (d & 1)] = qr && d < dqk ? qr[d * p.q.dim] : std::uint16_t{0};
              }
            }
          } else {
            for (std::int64_t d = d0; d < imin(d_end, dqk); ++d) hp.qbuf[d * rp + m] = qr ? to_float<E>(qr[d * p.q.dim]) : 0.0f;
          }
        }
      }
    }
  }

  const bool prepass = a.softcap > 0 || p.maybe_mask != nullptr;
  const float mult = prepass ? k_log2e : static_cast<float>(p.scale) * k_log2e;
  const bool k_direct_f32 = E::k_dtype == dtype::f32 && p.k.dim == 1;
  const bool k_direct_typed = p.k.dim == 1 && dqk % w == 0;
  const bool k_direct_pairs = E::k_dtype == dtype::bf16 && p.k.dim == 1 && dqk % 2 == 0;
  // Wide items pack each V tile into contiguous rows (vbuf) before P·V even when the caller's
  // rows could be read in place: V rows of one head sit a token apart (bshd f32, H=16, D=128:
  // 8 KiB), so a tile's rows all fall into the same few L1 sets and every P·V pass over the tile
  // missed L1; packed, the 32 KiB tile stays in L1 for all row blocks (Note [Flash micro-kernel
  // shapes]). Narrow (decode) items read each V row once: in place.
  const bool v_direct = p.v.dim == 1 && dv % w == 0 && (c.narrow || p.v.seq == dv);
  const std::int64_t evecs = c.dv_pad / w;

  for (std::int64_t j0 = union_lo; j0 < union_hi; j0 += bkv) {
    const std::int64_t nk = imin(bkv, union_hi - j0);
    const bool full = rows == rp && j0 >= all_lo && j0 + nk <= all_hi;
    // Every row of the item sees every key of the tile: no band zeroes a P (padding rows are not
    // multiplied by V; Note [Flash masked non-finite V]).
    const bool band_full = j0 >= real_lo && j0 + nk <= real_hi;
    // Head-blocked items (Note [Flash head blocks]): the next tile's K and V rows of all the
    // item's heads form one contiguous span each; prefetch it in slices, one per head, so it
    // streams in sequentially while this tile's heads run.
    const bool sweep = it.hk_count > 1 && p.k.dim == 1 && p.v.dim == 1 && j0 + nk < union_hi;
    const auto k_span = static_cast<std::int64_t>(sizeof(st_t)) * bkv * p.k.seq;
    const auto v_span = static_cast<std::int64_t>(sizeof(st_t)) * bkv * p.v.seq;
    for (std::int64_t hh = 0; hh < it.hk_count; ++hh) {
      const head_part hp = head_part_at(c, scratch, hh);
      const row_state& rs = hp.rs;
      const std::int64_t hk = it.hk + hh;
      const st_t* kt = k_base + hk * p.k.head + j0 * p.k.seq;
      const st_t* vt = v_base + hk * p.v.head + j0 * p.v.seq;
      if (sweep) {
        const char* k_next = reinterpret_cast<const char*>(k_base + it.hk * p.k.head + (j0 + nk) * p.k.seq);
        const char* v_next = reinterpret_cast<const char*>(v_base + it.hk * p.v.head + (j0 + nk) * p.v.seq);
        prefetch_bytes(k_next + k_span * hh / it.hk_count, k_span / it.hk_count);
        prefetch_bytes(v_next + v_span * hh / it.hk_count, v_span / it.hk_count);
      }

      // S = K·Qᵀ. Narrow tiles of at most one vector of keys without a prepass put the keys in
      // the lanes instead (st_lanes[m][n], Note [Flash narrow softmax]).
      const bool lanes = c.narrow && !prepass && nk <= w;
      const std::int64_t s_key = lanes ? 1 : rp, s_row = lanes ? w : 1;
      float* s_out = lanes ? st_lanes : st;
      if (c.narrow) {
        const auto v_stride_bytes = static_cast<std::int64_t>(sizeof(st_t)) * p.v.seq;
        const std::int64_t v_bytes = p.v.dim == 1 ? static_cast<std::int64_t>(sizeof(st_t)) * dv : 0;
        if (k_direct_typed && sweep) {
          qk_narrow<O, E>(hp.qbuf, c.dqk_pad, rows, kt, p.k.seq, c.dqk_pad, nk, s_out, s_key, s_row, nullptr, 0, 0, false);
        } else if (k_direct_typed) {
          qk_narrow<O, E>(hp.qbuf, c.dqk_pad, rows, kt, p.k.seq, c.dqk_pad, nk, s_out, s_key, s_row, vt, v_stride_bytes, v_bytes);
        } else {
          for (std::int64_t n = 0; n < nk; ++n) pack_row_f32<O, E>(kt + n * p.k.seq, p.k.dim, dqk, c.dqk_pad, kbuf + n * c.dqk_pad);
          qk_narrow<O, e_f32>(hp.qbuf, c.dqk_pad, rows, kbuf, c.dqk_pad, c.dqk_pad, nk, s_out, s_key, s_row, vt, v_stride_bytes, v_bytes);
        }
      } else if (c.bf16_dot) {
        if constexpr (O::k_bf16_dot && E::k_dtype == dtype::bf16) {
          const std::uint16_t* kp = kt;
          std::int64_t ldk = p.k.seq;
          if (!k_direct_pairs) {
            auto* kb = reinterpret_cast<std::uint16_t*>(kbuf);
            for (std::int64_t n = 0; n < nk; ++n)
              for (std::int64_t d = 0; d < c.dqk_pad; ++d)
                kb[n * c.dqk_pad + d] = d < dqk ? kt[n * p.k.seq + d * p.k.dim] : std::uint16_t{0};
            kp = kb;
            ldk = c.dqk_pad;
          }
          O::qk_bf16(reinterpret_cast<const std::uint16_t*>(hp.qbuf), rp, kp, ldk, c.dqk_pad / 2, nk, st);
        }
      } else if (k_direct_f32) {
        qk_wide<O>(hp.qbuf, rp, reinterpret_cast<const float*>(kt), p.k.seq, dqk, nk, st);
      } else {
        for (std::int64_t n = 0; n < nk; ++n) pack_row_f32<O, E>(kt + n * p.k.seq, p.k.dim, dqk, dqk, kbuf + n * dqk);
        qk_wide<O>(hp.qbuf, rp, kbuf, dqk, dqk, nk, st);
      }

      // Scale, softcap and mask in natural units (rare features; scalar). A row's mask offset is
      // computed once a tile and the dtype decided once a tile, not a division, a modulo and a
      // switch per score, and a row's terms are read in order: masked calls ran 1.22-1.47x faster,
      // then additive ones 1.40-1.61x more (bench/RESULTS.md, "Masked calls: the mask walk" and
      // "Masks that vary by row: row by row").
      if (prepass) {
        const float scale = static_cast<float>(p.scale), cap = static_cast<float>(a.softcap);
        const bool keep = p.mask_dtype == dtype::boolean;
        // A term the same for every row of the tile's column (a key mask [B, 1 or H, 1, Skv]
        // under MHA, or [B, 1, 1, Skv] under GQA) without softcap: one term a column, the rows in
        // a loop the compiler vectorises (1.25-1.47x on key-masked MHA calls, bench/RESULTS.md).
        const bool column_terms = p.maybe_mask && p.mask.q == 0 && (p.mask.head == 0 || gs == 1) && !(cap > 0);
        auto pass = [&](auto term) {
          if (column_terms) {
            for (std::int64_t n = 0; n < nk; ++n) {
              const float mv = term(mask_offset(p, b, hk * gs, it.q_begin, j0 + n));
              float* col = st + n * rp;
              if (keep && mv == 0.0f) {
                for (std::int64_t m = 0; m < rows; ++m) col[m] = k_neg_inf;
              } else if (keep) {
                for (std::int64_t m = 0; m < rows; ++m) col[m] *= scale;
              } else {
                for (std::int64_t m = 0; m < rows; ++m) {  // (the clamp as below)
                  const float pre = col[m] * scale, s = pre + mv;
                  col[m] = pre > k_neg_inf && mv > k_neg_inf && s < k_lowest_natural ? k_lowest_natural : s;
                }
              }
            }
            return;
          }
          if (!p.maybe_mask) {  // softcap alone: along the tile's columns
            for (std::int64_t n = 0; n < nk; ++n)
              for (std::int64_t m = 0; m < rows; ++m) st[n * rp + m] = cap * __builtin_tanhf(st[n * rp + m] * scale / cap);
            return;
          }
          // Row by row: a row's mask terms are adjacent along keys in the usual layouts.
          for (std::int64_t m = 0; m < rows; ++m) {
            const std::int64_t at = mask_offset(p, b, hk * gs + m % gs, it.q_begin + m / gs, j0);
            for (std::int64_t n = 0; n < nk; ++n) {
              float s = st[n * rp + m] * scale;
              if (cap > 0) s = cap * __builtin_tanhf(s / cap);
              const float mv = term(at + n * p.mask.kv);
              if (keep) {
                s = mv != 0.0f ? s : k_neg_inf;
              } else {
                // A finite score plus a finite bias (the dtype's lowest value is the usual padding
                // bias) stays finite in log2 units: below k_lowest_natural it would become -inf
                // there and read as "no key", where the reference weighs such keys.
                const float pre = s;
                s += mv;
                if (pre > k_neg_inf && mv > k_neg_inf && s < k_lowest_natural) s = k_lowest_natural;
              }
              st[n * rp + m] = s;
            }
          }
        };
        const void* mask = p.maybe_mask;
        switch (mask ? p.mask_dtype : dtype::f32) {
          case dtype::f16: pass([&](std::int64_t o) { return mask_term<dtype::f16>(mask, o); }); break;
          case dtype::bf16: pass([&](std::int64_t o) { return mask_term<dtype::bf16>(mask, o); }); break;
          case dtype::boolean: pass([&](std::int64_t o) { return mask_term<dtype::boolean>(mask, o); }); break;
          default: pass([&](std::int64_t o) { return mask_term<dtype::f32>(mask, o); }); break;  // f32, or no mask (never read)
        }
      }

      next_rows next;
      if (!c.narrow && j0 + nk < union_hi) {  // narrow items prefetch inside qk_narrow
        const auto esize = static_cast<std::int64_t>(sizeof(st_t));
        next.count = imin(bkv, union_hi - j0 - nk);
        if (p.k.dim == 1) next.maybe_k = reinterpret_cast<const char*>(kt + nk * p.k.seq);
        if (p.v.dim == 1) next.maybe_v = reinterpret_cast<const char*>(vt + nk * p.v.seq);
        next.k_stride_bytes = esize * p.k.seq;
        next.v_stride_bytes = esize * p.v.seq;
        next.k_row_bytes = esize * dqk;
        next.v_row_bytes = esize * dv;
      }
      if (lanes)
        softmax_lanes<O>(st_lanes, st, rp, rows, nk, j0, mult, rs);
      else
        softmax_tile<O>(st, rp, nk, j0, full, mult, rs, next);

      // O = alpha·O + P·V
      if (!c.v_finite && (!band_full || p.maybe_mask != nullptr) && any_zero_p(st, rp, rows, nk) &&
          has_non_finite<E>(vt, p.v.seq, p.v.dim, nk, dv)) {
        pv_guarded<E>(p, st, rp, rows, vt, nk, hp.obuf, c.dv_pad, rs);
        continue;
      }
      if (c.bf16_dot) {
        if constexpr (O::k_bf16_dot && E::k_dtype == dtype::bf16) {
          O::pack_p_pairs(st, rp, nk, pbuf);
          auto* vp = reinterpret_cast<std::uint16_t*>(vbuf);
          O::pack_v_pairs(vt, p.v.seq, p.v.dim, nk, dv, c.dv_pad, vp);
          O::pv_bf16(pbuf, rp, vp, c.dv_pad, (nk + 1) / 2, hp.obuf, c.dv_pad, rs.alpha, rows, evecs);
        }
      } else if (v_direct) {
        pv_all<O, E>(st, rp, vt, p.v.seq, nk, hp.obuf, c.dv_pad, rs.alpha, rows, evecs);
      } else {
        for (std::int64_t n = 0; n < nk; ++n) pack_row_f32<O, E>(vt + n * p.v.seq, p.v.dim, dv, c.dv_pad, vbuf + n * c.dv_pad);
        pv_all<O, e_f32>(st, rp, vbuf, c.dv_pad, nk, hp.obuf, c.dv_pad, rs.alpha, rows, evecs);
      }
    }
  }

  // Note [Flash clamped rows]: an additive bias near float's lowest value (the usual padding
  // value) puts a score below k_lowest_natural, where log2 units would overflow; the score is
  // clamped there, so such keys keep their (equal) weight and out is the reference's. But a row
  // whose every visible score was clamped has m at the clamp, not at its true maximum, and
  // (m + log2 l)·ln 2 would read about -2.36e38 where the reference's lse is near the bias
  // (-3.4e38 for float's lowest). Its lse is the largest bias over its visible keys plus ln l
  // instead: at that magnitude the score's own part (|scale·q·k| < 1e31) is below float's ulp, as
  // it is below double's in the reference, and every clamped key counts once in l. A split-KV
  // piece gives the bias and ln l apart, for the merge to weigh pieces by their key counts (Note
  // [Split clamped rows], attend/merge.h).
  auto clamped_row_bias = [&](std::int64_t h, std::int64_t i, std::int64_t lo, std::int64_t hi) {
    float bias = k_neg_inf;
    for (std::int64_t j = lo; j < hi; ++j) {
      const float mv = mask_value(p, mask_offset(p, b, h, i, j));
      bias = mv > bias ? mv : bias;
    }
    return bias;
  };

  // Finalise: out = O / l, lse = (m + log2 l) · ln 2; NaN rows NaN; rows that saw nothing 0, -inf.
  // A row whose largest score is +inf (an inf input, a +inf additive mask, or scores past float's
  // range) is NaN as in the reference: its weights are inf / inf, not "nothing seen".
  for (std::int64_t hh = 0; hh < it.hk_count; ++hh) {
    const head_part hp = head_part_at(c, scratch, hh);
    const std::int64_t hk = it.hk + hh;
    for (std::int64_t m = 0; m < rows; ++m) {
      const std::int64_t h = hk * gs + m % gs, i = it.q_begin + m / gs;
      const float l = hp.rs.sum[m];
      bool is_nan = hp.rs.nan[m] != 0.0f || l != l || hp.rs.max_log2[m] == -k_neg_inf;
      // An empty row with a key the band and mask leave: its scores overflowed to -inf. (Split-KV
      // pieces may be empty legitimately; their merge applies the same test.)
      if (!is_nan && !(l > 0.0f) && !it.maybe_partial_out && row_has_live_key(p, b, h, i)) is_nan = true;
      const bool empty = !is_nan && !(l > 0.0f);
      const float inv = is_nan ? k_nan : empty ? 0.0f : 1.0f / l;
      float lse = is_nan ? k_nan : empty ? k_neg_inf : (hp.rs.max_log2[m] + __builtin_log2f(l)) * k_ln2;
      float lse_low = 0.0f;  // a piece's lse is lse + lse_low (Note [Split clamped rows])
      if (!is_nan && !empty && p.maybe_mask && p.mask_dtype != dtype::boolean && hp.rs.max_log2[m] <= k_lowest_log2) {
        const float bias = clamped_row_bias(h, i, hp.rs.lo[m], hp.rs.hi[m]);  // Note [Flash clamped rows]
        lse_low = __builtin_logf(l);
        lse = it.maybe_partial_out ? bias : bias + lse_low;
      }
      const float* orow = hp.obuf + m * c.dv_pad;
      if (it.maybe_partial_out) {
        // Laid out per head at the tile's full row count (c.rows), as the merge reads them: an item
        // with fewer queries (the last tile of a sequence, a short varlen sequence) has fewer rows.
        float* po = it.maybe_partial_out + (hh * c.rows + m) * dv;
        for (std::int64_t d = 0; d < dv; ++d) po[d] = is_nan ? k_nan : orow[d] * inv;
        it.maybe_partial_lse[hh * c.rows + m] = lse;
        it.maybe_partial_lse_low[hh * c.rows + m] = lse_low;
        continue;
      }
      st_t* out = static_cast<st_t*>(a.out.data) + b * p.out.batch + (q_start + i) * p.out.seq + h * p.out.head;
      if (is_nan)
        for (std::int64_t d = 0; d < dv; ++d) out[d * p.out.dim] = from_float<E>(k_nan);
      else if (p.out.dim == 1)
        for (std::int64_t d = 0; d < dv; ++d) out[d] = from_float<E>(orow[d] * inv);
      else
        for (std::int64_t d = 0; d < dv; ++d) out[d * p.out.dim] = from_float<E>(orow[d] * inv);
      if (p.maybe_lse) p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (q_start + i) * p.lse_seq_stride] = lse;
    }
  }
}

template <class O>
void run_item_dispatch(const problem& p, const tile_config& c, const item& it, std::byte* scratch) {
  switch (p.dtype) {
    case dtype::f32: run_item_typed<O, e_f32>(p, c, it, scratch); break;
    case dtype::bf16: run_item_typed<O, e_bf16>(p, c, it, scratch); break;
    case dtype::f16: run_item_typed<O, e_f16>(p, c, it, scratch); break;
    default: break;
  }
}

}  // namespace
}  // namespace attend::cpu::flash
