// flash_cpu AVX-512 path (16 floats per register), with AVX512-BF16 dot products (vdpbf16ps)
// for bf16 inputs when the CPU has them. Compiled with -mavx512* flags only for this file
// (Note [Flash ISA translation units] in plan.h).
// GCC 12's AVX-512 intrinsics self-initialise "undefined" registers (`__m512 __Y = __Y;`), which
// -Wmaybe-uninitialized reports once inlined (GCC PR 105593); the warning is false.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include "cpu/flash/exp2_poly.h"
#include "cpu/flash/kernel_impl.h"

namespace attend::cpu::flash {
namespace {

std::uint32_t load_u32(const std::uint16_t* p) {
  std::uint32_t x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

__m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh&>(x); }

// St[r][0, MV·16) = Σ_pairs K[r][2t, 2t+1] · Qp[t][0, MV·16)[2] (bf16 pairs, f32 accumulate).
template <int NR, int MV>
void qk_bf16_block(const std::uint16_t* qp, std::int64_t ldq_pairs, const std::uint16_t* k, std::int64_t ldk,
                   std::int64_t pairs, float* st, std::int64_t lds) {
  __m512 acc[NR][MV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_setzero_ps();
  for (std::int64_t t = 0; t < pairs; ++t) {
    __m512i q[MV];
    for (int v = 0; v < MV; ++v) q[v] = _mm512_loadu_si512(qp + (t * ldq_pairs + v * 16) * 2);
    for (int r = 0; r < NR; ++r) {
      const __m512i kb = _mm512_set1_epi32(static_cast<int>(load_u32(k + r * ldk + 2 * t)));
      for (int v = 0; v < MV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], as_bh(kb), as_bh(q[v]));
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < MV; ++v) _mm512_storeu_ps(st + r * lds + v * 16, acc[r][v]);
}

template <int NR>
void qk_bf16_rows(const std::uint16_t* qp, std::int64_t rp, const std::uint16_t* k, std::int64_t ldk,
                  std::int64_t pairs, float* st, std::int64_t mvecs) {
  std::int64_t v0 = 0;
  for (; v0 + 4 <= mvecs; v0 += 4) qk_bf16_block<NR, 4>(qp + v0 * 32, rp, k, ldk, pairs, st + v0 * 16, rp);
  switch (mvecs - v0) {
    case 3: qk_bf16_block<NR, 3>(qp + v0 * 32, rp, k, ldk, pairs, st + v0 * 16, rp); break;
    case 2: qk_bf16_block<NR, 2>(qp + v0 * 32, rp, k, ldk, pairs, st + v0 * 16, rp); break;
    case 1: qk_bf16_block<NR, 1>(qp + v0 * 32, rp, k, ldk, pairs, st + v0 * 16, rp); break;
    default: break;
  }
}

// O[r][0, EV·16) = alpha[r]·O[r] + Σ_pairs P[r][2t, 2t+1] · Vp[t][0, EV·16)[2].
template <int MR, int EV>
void pv_bf16_block(const std::uint16_t* pp, std::int64_t ldp_pairs, const std::uint16_t* vp, std::int64_t ldv_pairs,
                   std::int64_t pairs, float* o, std::int64_t ldo, const float* alpha) {
  __m512 acc[MR][EV];
  for (int r = 0; r < MR; ++r) {
    const __m512 a = _mm512_set1_ps(alpha[r]);
    for (int e = 0; e < EV; ++e) acc[r][e] = _mm512_mul_ps(_mm512_loadu_ps(o + r * ldo + e * 16), a);
  }
  for (std::int64_t t = 0; t < pairs; ++t) {
    __m512i vv[EV];
    for (int e = 0; e < EV; ++e) vv[e] = _mm512_loadu_si512(vp + (t * ldv_pairs + e * 16) * 2);
    for (int r = 0; r < MR; ++r) {
      const __m512i pb = _mm512_set1_epi32(static_cast<int>(load_u32(pp + (t * ldp_pairs + r) * 2)));
      for (int e = 0; e < EV; ++e) acc[r][e] = _mm512_dpbf16_ps(acc[r][e], as_bh(pb), as_bh(vv[e]));
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int e = 0; e < EV; ++e) _mm512_storeu_ps(o + r * ldo + e * 16, acc[r][e]);
}

template <int MR>
void pv_bf16_cols(const std::uint16_t* pp, std::int64_t rp, const std::uint16_t* vp, std::int64_t dv_pad,
                  std::int64_t pairs, float* o, std::int64_t ldo, const float* alpha, std::int64_t evecs) {
  std::int64_t e0 = 0;
  for (; e0 + 4 <= evecs; e0 += 4) pv_bf16_block<MR, 4>(pp, rp, vp + e0 * 32, dv_pad, pairs, o + e0 * 16, ldo, alpha);
  switch (evecs - e0) {
    case 3: pv_bf16_block<MR, 3>(pp, rp, vp + e0 * 32, dv_pad, pairs, o + e0 * 16, ldo, alpha); break;
    case 2: pv_bf16_block<MR, 2>(pp, rp, vp + e0 * 32, dv_pad, pairs, o + e0 * 16, ldo, alpha); break;
    case 1: pv_bf16_block<MR, 1>(pp, rp, vp + e0 * 32, dv_pad, pairs, o + e0 * 16, ldo, alpha); break;
    default: break;
  }
}

struct ops_avx512 {
  static constexpr int k_width = 16;
  // Why 6 and 6 (Note [Flash micro-kernel shapes]): 6 keys × 4 vectors of rows (Q·Kᵀ) and
  // 6 rows × 4 vectors of head_dim (P·V) are 24 accumulators + 4 operands + 1 broadcast of the
  // 32 zmm registers: 10 loads per 24 FMAs, against 8 per 16 with 4 × 4.
  static constexpr int k_qk_keys = 6;
  static constexpr int k_pv_rows = 6;
  static constexpr bool k_bf16_dot = true;
  using vf = __m512;
  using vi = __m512i;
  using vm = __mmask16;
  static vf zero() { return _mm512_setzero_ps(); }
  static vf set1(float x) { return _mm512_set1_ps(x); }
  static vf load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, vf v) { _mm512_storeu_ps(p, v); }
  template <class E>
  static vf load_cvt(const typename E::storage* p) {
    if constexpr (E::k_dtype == dtype::f32) {
      return _mm512_loadu_ps(p);
    } else if constexpr (E::k_dtype == dtype::bf16) {
      const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
    } else {
      return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    }
  }
  static vf fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
  static vf mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
  static vf add(vf a, vf b) { return _mm512_add_ps(a, b); }
  static vf sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
  static vf max(vf a, vf b) { return _mm512_max_ps(a, b); }
  static vf exp2(vf x) {
    // scalef(p, n) with n <= -160 underflows to exactly 0 (NaN lanes also land here; the caller
    // tracks NaN separately).
    x = _mm512_max_ps(x, _mm512_set1_ps(-160.0f));
    const vf n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = _mm512_sub_ps(x, n);
    vf r = _mm512_set1_ps(k_exp2_c5);
    r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(k_exp2_c4));
    r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(k_exp2_c3));
    r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(k_exp2_c2));
    r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(k_exp2_c1));
    r = _mm512_fmadd_ps(r, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(r, n);
  }
  static float hsum(vf x) { return _mm512_reduce_add_ps(x); }
  // out[0, 4) = the horizontal sums of a, b, c, d.
  static void hsum4(vf a, vf b, vf c, vf d, float* out) {
    const __m256 x0 = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m256 x1 = _mm256_add_ps(_mm512_castps512_ps256(b), _mm512_extractf32x8_ps(b, 1));
    const __m256 x2 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps(c, 1));
    const __m256 x3 = _mm256_add_ps(_mm512_castps512_ps256(d), _mm512_extractf32x8_ps(d, 1));
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(x0, x1), _mm256_hadd_ps(x2, x3));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  static vi load_i(const std::int32_t* p) { return _mm512_loadu_si512(p); }
  static vf band(vf s, std::int32_t j, vi lo, vi hi) {
    const __m512i jv = _mm512_set1_epi32(j);
    const __mmask16 visible = _mm512_cmp_epi32_mask(lo, jv, _MM_CMPINT_LE) & _mm512_cmp_epi32_mask(jv, hi, _MM_CMPINT_LT);
    return _mm512_mask_blend_ps(visible, _mm512_set1_ps(k_neg_inf), s);
  }
  // s where key j + lane is in [lo, hi), else -inf (keys in lanes, Note [Flash narrow softmax]).
  static vf band_lanes(vf s, std::int32_t j, std::int32_t lo, std::int32_t hi) {
    const __m512i jv = _mm512_add_epi32(_mm512_set1_epi32(j), _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
    const __mmask16 visible = _mm512_cmp_epi32_mask(_mm512_set1_epi32(lo), jv, _MM_CMPINT_LE) &
                              _mm512_cmp_epi32_mask(jv, _mm512_set1_epi32(hi), _MM_CMPINT_LT);
    return _mm512_mask_blend_ps(visible, _mm512_set1_ps(k_neg_inf), s);
  }
  static bool any_nan(vf s) { return _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q) != 0; }
  static float hmax(vf x) { return _mm512_reduce_max_ps(x); }
  static vm nan_none() { return 0; }
  static vm nan_acc(vm acc, vf s) { return static_cast<vm>(acc | _mm512_cmp_ps_mask(s, s, _CMP_UNORD_Q)); }
  static void nan_store(float* flags, vm acc) { _mm512_mask_storeu_ps(flags, acc, _mm512_set1_ps(1.0f)); }
  static vf zero_if_neg_inf(vf x) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(k_neg_inf), _CMP_EQ_OQ), x, _mm512_setzero_ps());
  }

  // ---- bf16 dot-product path (Note [Flash bf16 pairs]) ----
  // Note [Flash bf16 pairs]: vdpbf16ps multiplies adjacent bf16 pairs, so both products pair up
  // their reduction dimension: Q as [D/2][rows][2] against K rows (d pairs are already adjacent
  // in a contiguous K row), P as [keys/2][rows][2] against V as [keys/2][Dv][2].
  static void qk_bf16(const std::uint16_t* qp, std::int64_t rp, const std::uint16_t* k, std::int64_t ldk,
                      std::int64_t pairs, std::int64_t nk, float* st) {
    const std::int64_t mvecs = rp / 16;
    // 6 keys per block: Note [Flash micro-kernel shapes] in kernel_impl.h.
    std::int64_t n0 = 0;
    for (; n0 + k_qk_keys <= nk; n0 += k_qk_keys) qk_bf16_rows<k_qk_keys>(qp, rp, k + n0 * ldk, ldk, pairs, st + n0 * rp, mvecs);
    for (; n0 + 2 <= nk; n0 += 2) qk_bf16_rows<2>(qp, rp, k + n0 * ldk, ldk, pairs, st + n0 * rp, mvecs);
    if (n0 < nk) qk_bf16_rows<1>(qp, rp, k + n0 * ldk, ldk, pairs, st + n0 * rp, mvecs);
  }
  // P (f32, [keys][rows]) -> bf16 pairs [keys/2][rows][2]; an odd last key pairs with 0.
  static void pack_p_pairs(const float* st, std::int64_t rp, std::int64_t nk, std::uint16_t* pp) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7,
                                                22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (std::int64_t t = 0; 2 * t < nk; ++t) {
      for (std::int64_t m0 = 0; m0 < rp; m0 += 16) {
        const __m512 even = _mm512_loadu_ps(st + 2 * t * rp + m0);
        const __m512 odd = 2 * t + 1 < nk ? _mm512_loadu_ps(st + (2 * t + 1) * rp + m0) : _mm512_setzero_ps();
        const __m512bh both = _mm512_cvtne2ps_pbh(odd, even);
        _mm512_storeu_si512(pp + (t * rp + m0) * 2,
                            _mm512_permutexvar_epi16(interleave, reinterpret_cast<const __m512i&>(both)));
      }
    }
  }
  // V rows (bf16, row stride ld, element stride ds) -> pairs [keys/2][dv_pad][2], zero padded.
  static void pack_v_pairs(const std::uint16_t* v, std::int64_t ld, std::int64_t ds, std::int64_t nk, std::int64_t dv,
                           std::int64_t dv_pad, std::uint16_t* vp) {
    for (std::int64_t t = 0; 2 * t < nk; ++t) {
      const std::uint16_t* r0 = v + 2 * t * ld;
      const std::uint16_t* maybe_r1 = 2 * t + 1 < nk ? v + (2 * t + 1) * ld : nullptr;
      std::uint16_t* dst = vp + t * dv_pad * 2;
      std::int64_t e = 0;
      if (ds == 1) {
        for (; e + 16 <= dv; e += 16) {
          const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + e));
          const __m256i b = maybe_r1 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(maybe_r1 + e)) : _mm256_setzero_si256();
          const __m256i lo = _mm256_unpacklo_epi16(a, b), hi = _mm256_unpackhi_epi16(a, b);
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e * 2), _mm256_permute2x128_si256(lo, hi, 0x20));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + e * 2 + 16), _mm256_permute2x128_si256(lo, hi, 0x31));
        }
      }
      for (; e < dv; ++e) {
        dst[e * 2] = r0[e * ds];
        dst[e * 2 + 1] = maybe_r1 ? maybe_r1[e * ds] : std::uint16_t{0};
      }
      for (; e < dv_pad; ++e) dst[e * 2] = dst[e * 2 + 1] = 0;
    }
  }
  static void pv_bf16(const std::uint16_t* pp, std::int64_t rp, const std::uint16_t* vp, std::int64_t dv_pad,
                      std::int64_t pairs, float* o, std::int64_t ldo, const float* alpha, std::int64_t rows,
                      std::int64_t evecs) {
    std::int64_t m0 = 0;
    for (; m0 + k_pv_rows <= rows; m0 += k_pv_rows)
      pv_bf16_cols<k_pv_rows>(pp + m0 * 2, rp, vp, dv_pad, pairs, o + m0 * ldo, ldo, alpha + m0, evecs);
    for (; m0 + 2 <= rows; m0 += 2) pv_bf16_cols<2>(pp + m0 * 2, rp, vp, dv_pad, pairs, o + m0 * ldo, ldo, alpha + m0, evecs);
    if (m0 < rows) pv_bf16_cols<1>(pp + m0 * 2, rp, vp, dv_pad, pairs, o + m0 * ldo, ldo, alpha + m0, evecs);
  }
};

}  // namespace

void run_item_avx512(const problem& p, const tile_config& c, const item& it, std::byte* scratch) {
  run_item_dispatch<ops_avx512>(p, c, it, scratch);
}

}  // namespace attend::cpu::flash
