// The exact reference: one query row at a time, fp64 accumulation, no tiling, no tricks.
#pragma once

#include <cstdint>
#include <span>

#include "attend/params.h"

namespace attend::cpu {

// Computes row i of head h of sequence b of `p`: writes head_dim_v outputs to `out_row` and
// the natural-log LSE to `lse`. `scores` holds at least len_kv(b) doubles of scratch.
// A row with no visible key gives out_row = 0 and lse = -inf (Note [Score pipeline]).
void reference_row(const problem& p, std::int64_t b, std::int64_t h, std::int64_t i, std::span<double> scores,
                   double* out_row, double* lse);

}  // namespace attend::cpu
