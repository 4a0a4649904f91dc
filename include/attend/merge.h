// attend/merge.h: combining attention computed over disjoint key sets (split-KV, context
// parallelism, composite strategies) by log-sum-exp.
//
// Note [LSE merge]: if part s attended over key set K_s (the K_s disjoint, their union K) and
// returned its normalised output o_s and log-sum-exp l_s, then attention over K is
//     l = log Σ_s exp(l_s),    o = Σ_s exp(l_s - l) · o_s.
// Computed around the largest l_s (no overflow). A part that saw no key has l_s = -inf and weight
// 0; when every part is empty the row is o = 0, l = -inf (attend's convention for a row without
// visible keys); a NaN l_s makes the row NaN (o and l), as NaN inputs do everywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>

#include "attend/tensor.h"

namespace attend {

// One row of Note [LSE merge]: `parts` partials of `dv` values. lse(s) gives l_s, value(s, d) gives
// o_s[d] (read only where the weight is non-zero), emit(d, x) receives o[d]. Returns l.
//
// Note [Split clamped rows]: a part may give its l_s as an unevaluated sum lse(s) + low(s) (low
// finite, 0 for most parts), weighed by exp(lse(s) - top + low(s)), top the largest lse(s). The
// split-KV paths of flash_cpu and flash_cuda use it for a row whose every score was clamped (an
// additive bias near float's lowest value, the usual padding value: Note [Flash clamped rows],
// [GPU clamped scores]): its l_s is that bias plus ln of its key count, and at -3.4e38 the count
// is below the ulp of float and double alike, so a single number would weigh every part equally,
// not by the keys each saw. With lse(s) the bias and low(s) the ln of the count, the parts weigh
// as the reference weighs their keys. The returned l is top + ln Σ weights, which at that
// magnitude is the bias, as the reference's lse is.
template <class Lse, class Low, class Value, class Emit>
double merge_row(std::int64_t parts, std::int64_t dv, Lse&& lse, Low&& low, Value&& value, Emit&& emit) {
  constexpr double neg_inf = -std::numeric_limits<double>::infinity();
  double top = neg_inf;
  bool is_nan = false;
  for (std::int64_t s = 0; s < parts; ++s) {
    const double l = lse(s);
    is_nan = is_nan || std::isnan(l);
    if (l > top) top = l;
  }
  if (is_nan || top == neg_inf) {
    const double fill = is_nan ? std::numeric_limits<double>::quiet_NaN() : 0.0;
    for (std::int64_t d = 0; d < dv; ++d) emit(d, fill);
    return is_nan ? std::numeric_limits<double>::quiet_NaN() : neg_inf;
  }
  // Weights exp(l_s - top) once per part (kept for the first k_kept parts; more are recomputed).
  constexpr std::int64_t k_kept = 64;
  double kept[k_kept];
  auto weight = [&](std::int64_t s) { return s < k_kept ? kept[s] : std::exp(lse(s) - top + low(s)); };
  double total = 0;
  for (std::int64_t s = 0; s < parts; ++s) {
    const double w = std::exp(lse(s) - top + low(s));
    if (s < k_kept) kept[s] = w;
    total += w;
  }
  for (std::int64_t d = 0; d < dv; ++d) {
    double acc = 0;
    for (std::int64_t s = 0; s < parts; ++s)
      if (const double w = weight(s); w != 0) acc += w * value(s, d);
    emit(d, acc / total);
  }
  return top + std::log(total);
}
template <class Lse, class Value, class Emit>
double merge_row(std::int64_t parts, std::int64_t dv, Lse&& lse, Value&& value, Emit&& emit) {
  return merge_row(parts, dv, lse, [](std::int64_t) { return 0.0; }, value, emit);
}

// Note [LSE merge] over whole tensors on the host. outs[s]: [B, Sq, H, Dv] (f32, f16 or bf16, any
// non-negative strides); lses[s]: [B, H, Sq] f32; out: [B, Sq, H, Dv] (f32, f16 or bf16), may be
// one of outs[s]; maybe_lse: [B, H, Sq] f32 or empty. Throws attend::invalid_argument naming the
// argument when shapes, dtypes or devices disagree (at least one part; cpu tensors only).
void merge_partials(std::span<const tensor_view> outs, std::span<const tensor_view> lses, const tensor_view& out,
                    const tensor_view& maybe_lse = {});

}  // namespace attend
