// Checks of single tensor views, shared by make_problem (params.cpp, Note [Validation]) and
// merge_partials (merge.cpp). Each throws attend::invalid_argument naming `name`.
#pragma once

#include <cstdint>

#include "attend/params.h"
#include "attend/tensor.h"

namespace attend::detail {

// Rank, sizes, strides, pointer and alignment of one view; returns its element count.
std::int64_t check_view(const tensor_view& t, const char* name);
// Whether two views on one device share a byte: exact (Note [Exact overlap] in params.cpp), so
// slices of one buffer side by side do not overlap; "yes" when the search would be too long.
bool overlaps(const tensor_view& a, const tensor_view& b);
// An output must not write one element twice.
void check_no_self_overlap(const tensor_view& t, const char* name);
// Memory a call writes (`t`, named `name`: lse, a caller's workspace) must share no byte with any
// other tensor of the call (q, k, v, out, lse, mask, varlen offsets; `t` itself skipped).
void check_apart_from_call(const tensor_view& t, const attention_params& a, const char* name);

}  // namespace attend::detail
