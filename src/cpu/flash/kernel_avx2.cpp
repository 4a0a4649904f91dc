// flash_cpu AVX2 + FMA path (8 floats per register). Compiled with -mavx2 -mfma -mf16c only for
// this file (Note [Flash ISA translation units] in plan.h). bf16/f16 inputs are widened to f32
// in registers.
#include <immintrin.h>

#include "cpu/flash/exp2_poly.h"
#include "cpu/flash/kernel_impl.h"

namespace attend::cpu::flash {
namespace {

struct ops_avx2 {
  static constexpr int k_width = 8;
  // Why 2 and 2: with the 4-vector row/column blocks of the generic kernel, 2 × 4 = 8
  // accumulators + 4 operands + 1 broadcast fit the 16 ymm registers (4 × 4 spilled; fp32 D=128
  // S=1024 H=16, 1 thread, ATTEND_CPU_ISA=avx2: 59 -> 81 GFLOP/s together with the packed V tile).
  static constexpr int k_qk_keys = 2;
  static constexpr int k_pv_rows = 2;
  static constexpr bool k_bf16_dot = false;
  using vf = __m256;
  using vi = __m256i;
  using vm = __m256;
  static vf zero() { return _mm256_setzero_ps(); }
  static vf set1(float x) { return _mm256_set1_ps(x); }
  static vf load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, vf v) { _mm256_storeu_ps(p, v); }
  template <class E>
  static vf load_cvt(const typename E::storage* p) {
    if constexpr (E::k_dtype == dtype::f32) {
      return _mm256_loadu_ps(p);
    } else if constexpr (E::k_dtype == dtype::bf16) {
      const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    } else {
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    }
  }
  static vf fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
  static vf mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
  static vf add(vf a, vf b) { return _mm256_add_ps(a, b); }
  static vf sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
  static vf max(vf a, vf b) { return _mm256_max_ps(a, b); }
  static vf exp2(vf x) {
    // Below -127, 2^n has a zero exponent field: exactly 0 (NaN lanes also land here; the
    // caller tracks NaN separately).
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
    const vf n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const vf f = _mm256_sub_ps(x, n);
    vf r = _mm256_set1_ps(k_exp2_c5);
    r = _mm256_fmadd_ps(r, f, _mm256_set1_ps(k_exp2_c4));
    r = _mm256_fmadd_ps(r, f, _mm256_set1_ps(k_exp2_c3));
    r = _mm256_fmadd_ps(r, f, _mm256_set1_ps(k_exp2_c2));
    r = _mm256_fmadd_ps(r, f, _mm256_set1_ps(k_exp2_c1));
    r = _mm256_fmadd_ps(r, f, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(r, _mm256_castsi256_ps(bits));
  }
  static float hsum(vf x) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // out[0, 4) = the horizontal sums of a, b, c, d.
  static void hsum4(vf a, vf b, vf c, vf d, float* out) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  static vi load_i(const std::int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static vf band(vf s, std::int32_t j, vi lo, vi hi) {
    const __m256i jv = _mm256_set1_epi32(j);
    const __m256i visible = _mm256_andnot_si256(_mm256_cmpgt_epi32(lo, jv), _mm256_cmpgt_epi32(hi, jv));
    return _mm256_blendv_ps(_mm256_set1_ps(k_neg_inf), s, _mm256_castsi256_ps(visible));
  }
  // s where key j + lane is in [lo, hi), else -inf (keys in lanes, Note [Flash narrow softmax]).
  static vf band_lanes(vf s, std::int32_t j, std::int32_t lo, std::int32_t hi) {
    const __m256i jv = _mm256_add_epi32(_mm256_set1_epi32(j), _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0));
    const __m256i visible = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), jv),
                                                _mm256_cmpgt_epi32(_mm256_set1_epi32(hi), jv));
    return _mm256_blendv_ps(_mm256_set1_ps(k_neg_inf), s, _mm256_castsi256_ps(visible));
  }
  static bool any_nan(vf s) { return _mm256_movemask_ps(_mm256_cmp_ps(s, s, _CMP_UNORD_Q)) != 0; }
  static float hmax(vf x) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
  }
  static vm nan_none() { return _mm256_setzero_ps(); }
  static vm nan_acc(vm acc, vf s) { return _mm256_or_ps(acc, _mm256_cmp_ps(s, s, _CMP_UNORD_Q)); }
  static void nan_store(float* flags, vm acc) {
    _mm256_storeu_ps(flags, _mm256_blendv_ps(_mm256_loadu_ps(flags), _mm256_set1_ps(1.0f), acc));
  }
  static vf zero_if_neg_inf(vf x) {
    return _mm256_blendv_ps(x, _mm256_setzero_ps(), _mm256_cmp_ps(x, _mm256_set1_ps(k_neg_inf), _CMP_EQ_OQ));
  }
};

}  // namespace

void run_item_avx2(const problem& p, const tile_config& c, const item& it, std::byte* scratch) {
  run_item_dispatch<ops_avx2>(p, c, it, scratch);
}

}  // namespace attend::cpu::flash
