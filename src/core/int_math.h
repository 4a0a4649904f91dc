// Integer helpers of the planners (flash_cpu's plan, flash_cuda's workspace plan).
#pragma once

#include <type_traits>

namespace attend {

// ceil(a / b) for a >= 0, b > 0.
// The second argument takes the first's type (literals and narrower types convert).
template <class T>
constexpr T ceil_div(T a, std::type_identity_t<T> b) {
  return (a + b - 1) / b;
}
// The smallest multiple of m that is >= x (x >= 0, m > 0).
template <class T>
constexpr T round_up(T x, std::type_identity_t<T> m) {
  return ceil_div(x, m) * m;
}

}  // namespace attend
