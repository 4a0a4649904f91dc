// flash_cpu portable path: the generic kernel with one-float "vectors". Runs anywhere; forced
// with ATTEND_CPU_ISA=scalar.
#include "cpu/flash/kernel_impl.h"

namespace attend::cpu::flash {
namespace {

struct ops_scalar {
  static constexpr int k_width = 1;
  // Why 4 and 4: portable path; 16 scalar accumulators, as many as the compiler keeps in
  // registers on common targets.
  static constexpr int k_qk_keys = 4;
  static constexpr int k_pv_rows = 4;
  static constexpr bool k_bf16_dot = false;
  using vf = float;
  using vi = std::int32_t;
  using vm = bool;
  static vf zero() { return 0.0f; }
  static vf set1(float x) { return x; }
  static vf load(const float* p) { return *p; }
  static void store(float* p, vf v) { *p = v; }
  template <class E>
  static vf load_cvt(const typename E::storage* p) { return to_float<E>(*p); }
  static vf fma(vf a, vf b, vf c) { return a * b + c; }
  static vf mul(vf a, vf b) { return a * b; }
  static vf add(vf a, vf b) { return a + b; }
  static vf sub(vf a, vf b) { return a - b; }
  static vf max(vf a, vf b) { return a > b ? a : b; }
  static vf exp2(vf x) { return __builtin_exp2f(x); }
  static float hsum(vf x) { return x; }
  static vi load_i(const std::int32_t* p) { return *p; }
  static vf band(vf s, std::int32_t j, vi lo, vi hi) { return j >= lo && j < hi ? s : k_neg_inf; }
  static vf band_lanes(vf s, std::int32_t j, std::int32_t lo, std::int32_t hi) { return band(s, j, lo, hi); }
  static bool any_nan(vf s) { return s != s; }
  static float hmax(vf x) { return x; }
  static vm nan_none() { return false; }
  static vm nan_acc(vm acc, vf s) { return acc || s != s; }
  static void nan_store(float* flags, vm acc) {
    if (acc) *flags = 1.0f;
  }
  static vf zero_if_neg_inf(vf x) { return x == k_neg_inf ? 0.0f : x; }
};

}  // namespace

void run_item_scalar(const problem& p, const tile_config& c, const item& it, std::byte* scratch) {
  run_item_dispatch<ops_scalar>(p, c, it, scratch);
}

}  // namespace attend::cpu::flash
