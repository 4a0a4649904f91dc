// Note [Flash exp2 polynomial]: 2^x = 2^n · 2^f with n = round(x), f in [-1/2, 1/2], and 2^f by
// its degree-5 Taylor polynomial in f·ln 2. Worst relative error ≈ (ln2/2)^6/6! · 2^(1/2) ≈ 3.4e-6,
// far inside the f32 tolerance (rtol 2e-4) and one FMA cheaper than degree 6. The vector paths
// clamp x from below so that 2^n flushes to exactly 0 (masked keys get weight 0, Note [Flash exp]).
// Included by the ISA translation units only (internal linkage).
#pragma once

namespace attend::cpu::flash {
namespace {

constexpr float k_exp2_c1 = 0.693147180559945f;   // ln2
constexpr float k_exp2_c2 = 0.240226506959101f;   // ln2^2 / 2
constexpr float k_exp2_c3 = 0.0555041086648216f;  // ln2^3 / 6
constexpr float k_exp2_c4 = 0.00961812910762848f; // ln2^4 / 24
constexpr float k_exp2_c5 = 0.00133335581464284f; // ln2^5 / 120

}  // namespace
}  // namespace attend::cpu::flash
