#include "attend/check.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <tuple>

#include <unistd.h>

#include "attend/attend.h"
#include "cpu/elements.h"
#include "cpu/reference.h"

namespace attend::testing {

tolerance tolerance_for(dtype t) {
  switch (t) {
    case dtype::f32: return {2e-5, 2e-4, 1e-4, 1e-5};
    case dtype::f16: return {2e-3, 4e-3, 1e-3, 1e-4};
    case dtype::bf16: return {1.6e-2, 1.6e-2, 1e-3, 1e-4};
    default: return {0, 0, 0, 0};
  }
}

std::string case_spec::describe() const {
  std::ostringstream os;
  os << to_string(dtype) << ' ' << to_string(layout);
  if (varlen_q.empty())
    os << " B=" << batch << " Sq=" << seqlen_q << " Skv=" << seqlen_kv;
  else {
    os << " varlen q=(";
    for (std::size_t i = 0; i < varlen_q.size(); ++i) os << (i ? "," : "") << varlen_q[i];
    os << ") kv=(";
    for (std::size_t i = 0; i < varlen_kv.size(); ++i) os << (i ? "," : "") << varlen_kv[i];
    os << ")";
  }
  os << " Hq=" << heads_q << " Hkv=" << heads_kv << " D=" << head_dim_qk;
  if (head_dim_v != head_dim_qk) os << " Dv=" << head_dim_v;
  if (causal) os << " causal";
  if (window_left >= 0 || window_right >= 0) os << " window=(" << window_left << "," << window_right << ")";
  if (causal || window_left >= 0 || window_right >= 0) os << ' ' << to_string(alignment);
  if (mask != mask_type::none) os << (mask == mask_type::keep ? " keep-mask" : " additive-mask");
  if (mask == mask_type::additive && mask_dtype != dtype::f32) os << "(" << to_string(mask_dtype) << ")";
  if (mask == mask_type::additive && mask_lowest) os << "(lowest)";
  if (mask_keys_outer) os << "(key-major)";
  if (mask_rows_repeat) os << "(rows-repeat)";
  if (mask_one_head && !mask_broadcast) os << "(one head)";
  if (mask_broadcast || mask_key_only) os << (!mask_key_only ? "[Sq,Skv]" : mask_broadcast ? "[1,Skv]" : "[B,H,1,Skv]");
  if (fully_masked_rows) os << " +masked-rows";
  if (softcap > 0) os << " softcap=" << softcap;
  if (strided) os << " strided";
  if (aligned_gaps && !strided) os << " aligned-gaps";
  if (!lse) os << " no-lse";
  return os.str();
}

std::vector<std::int32_t> cumulative_offsets(const std::vector<std::int32_t>& lengths) {
  std::vector<std::int32_t> offsets(1, 0);
  for (std::int32_t length : lengths) offsets.push_back(offsets.back() + length);
  return offsets;
}

std::vector<case_spec> default_grid(std::uint64_t seed, bool quick) {
  std::vector<case_spec> base;
  auto add = [&](std::string name, auto&& edit) {
    case_spec c;
    c.name = std::move(name);
    edit(c);
    base.push_back(std::move(c));
  };
  add("single", [](case_spec& c) { c.head_dim_qk = c.head_dim_v = 8; });
  add("mqa-17", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 17; c.heads_q = 4; c.heads_kv = 1; c.head_dim_qk = c.head_dim_v = 64; c.batch = 2; });
  add("gqa8-d128", [](case_spec& c) { c.seqlen_q = 33; c.seqlen_kv = 65; c.heads_q = 8; c.heads_kv = 1; c.head_dim_qk = c.head_dim_v = 128; });
  add("causal-tl-short-q", [](case_spec& c) { c.seqlen_q = 17; c.seqlen_kv = 130; c.causal = true; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("causal-br-short-q", [](case_spec& c) { c.seqlen_q = 17; c.seqlen_kv = 130; c.causal = true; c.alignment = alignment::bottom_right; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("causal-br-long-q", [](case_spec& c) { c.seqlen_q = 130; c.seqlen_kv = 17; c.causal = true; c.alignment = alignment::bottom_right; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 80; });
  add("window-tl", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 97; c.window_left = 16; c.window_right = 8; c.head_dim_qk = c.head_dim_v = 64; c.heads_q = 2; });
  add("window-causal-br", [](case_spec& c) { c.seqlen_q = 40; c.seqlen_kv = 97; c.causal = true; c.window_left = 20; c.alignment = alignment::bottom_right; c.head_dim_qk = c.head_dim_v = 64; });
  add("additive-mask-masked-rows", [](case_spec& c) { c.seqlen_q = 17; c.seqlen_kv = 45; c.mask = mask_type::additive; c.fully_masked_rows = true; c.heads_q = 4; c.heads_kv = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("keep-mask-broadcast", [](case_spec& c) { c.seqlen_q = 33; c.seqlen_kv = 33; c.mask = mask_type::keep; c.mask_broadcast = true; c.fully_masked_rows = true; c.heads_q = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("additive-mask-bf16-key-padding", [](case_spec& c) { c.seqlen_q = 33; c.seqlen_kv = 70; c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.mask_key_only = true; c.fully_masked_rows = true; c.heads_q = 2; c.batch = 3; c.head_dim_qk = c.head_dim_v = 64; });
  add("additive-mask-lowest", [](case_spec& c) { c.seqlen_q = 19; c.seqlen_kv = 40; c.mask = mask_type::additive; c.mask_lowest = true; c.fully_masked_rows = true; c.heads_q = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  // Decode-shaped, so flash_cpu and flash_cuda split the keys: the row of only lowest-value keys
  // must merge its splits by their key counts (Note [Split clamped rows]), and 3001 keys split
  // unevenly at any count (weighing the splits equally would not match the reference).
  add("additive-mask-lowest-decode", [](case_spec& c) { c.seqlen_q = 1; c.seqlen_kv = 3001; c.mask = mask_type::additive; c.mask_lowest = true; c.fully_masked_rows = true; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("additive-mask-key-major", [](case_spec& c) { c.seqlen_q = 21; c.seqlen_kv = 150; c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.mask_keys_outer = true; c.fully_masked_rows = true; c.heads_q = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("additive-mask-f16", [](case_spec& c) { c.seqlen_q = 20; c.seqlen_kv = 37; c.mask = mask_type::additive; c.mask_dtype = dtype::f16; c.heads_q = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("key-padding-mask", [](case_spec& c) { c.seqlen_q = 70; c.seqlen_kv = 150; c.mask = mask_type::keep; c.mask_key_only = true; c.fully_masked_rows = true; c.heads_q = 4; c.heads_kv = 2; c.batch = 2; c.causal = true; c.alignment = alignment::bottom_right; c.head_dim_qk = c.head_dim_v = 64; });
  // Key-padding masks materialised per query row: per (batch, head), two of whose pairs drop every
  // key; and [B, 1, Sq, Skv] as Hugging Face builds it, whose second batch drops every key.
  add("keep-mask-rows-repeat", [](case_spec& c) { c.seqlen_q = 33; c.seqlen_kv = 150; c.mask = mask_type::keep; c.mask_rows_repeat = true; c.fully_masked_rows = true; c.heads_q = 4; c.heads_kv = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("keep-mask-hf", [](case_spec& c) { c.seqlen_q = 36; c.seqlen_kv = 150; c.mask = mask_type::keep; c.mask_one_head = true; c.mask_rows_repeat = true; c.fully_masked_rows = true; c.heads_q = 4; c.heads_kv = 2; c.batch = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("softcap", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 64; c.softcap = 1.5; c.head_dim_qk = c.head_dim_v = 64; c.heads_q = 2; });
  add("dv-differs", [](case_spec& c) { c.seqlen_q = 31; c.seqlen_kv = 47; c.head_dim_qk = 64; c.head_dim_v = 32; c.heads_q = 4; c.heads_kv = 2; });
  add("varlen", [](case_spec& c) { c.varlen_q = {5, 0, 17, 64}; c.varlen_kv = {7, 3, 0, 64}; c.causal = true; c.alignment = alignment::bottom_right; c.heads_q = 4; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 64; });
  // Decode-shaped varlen: flash_cpu splits the keys of items that hold several KV heads and
  // fewer queries than a tile (Note [Flash head blocks]).
  add("varlen-decode-split", [](case_spec& c) { c.varlen_q = {1, 2}; c.varlen_kv = {1024, 1100}; c.heads_q = 2; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 8; });
  add("varlen-mask", [](case_spec& c) { c.varlen_q = {9, 1, 20}; c.varlen_kv = {30, 0, 20}; c.mask = mask_type::keep; c.fully_masked_rows = true; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 64; });
  add("strided-bhsd", [](case_spec& c) { c.layout = layout::bhsd; c.strided = true; c.seqlen_q = 19; c.seqlen_kv = 41; c.heads_q = 4; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 64; c.causal = true; });
  add("strided-bshd", [](case_spec& c) { c.strided = true; c.seqlen_q = c.seqlen_kv = 23; c.heads_q = 2; c.head_dim_qk = 80; c.head_dim_v = 80; c.batch = 2; });
  // Slices of wider tensors whose strides stay 16-byte aligned (kernels that need aligned strides
  // take them), with head dims below a tile width and head_dim_v != head_dim_qk: out's gaps must
  // stay unwritten (check_backend).
  add("aligned-gaps-dv48", [](case_spec& c) { c.aligned_gaps = true; c.seqlen_q = 70; c.seqlen_kv = 45; c.heads_q = 4; c.heads_kv = 2; c.head_dim_qk = 80; c.head_dim_v = 48; c.batch = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("aligned-gaps-varlen", [](case_spec& c) { c.aligned_gaps = true; c.varlen_q = {70, 1, 0, 33}; c.varlen_kv = {40, 17, 5, 33}; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 40; });
  if (!quick) {
    add("s501-gqa4-d80", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 501; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 80; });
    add("s501-causal-d128", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 501; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 128; c.causal = true; });
    add("decode", [](case_spec& c) { c.seqlen_q = 1; c.seqlen_kv = 1000; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 128; c.causal = true; c.alignment = alignment::bottom_right; c.batch = 2; });
  }
  std::vector<case_spec> grid;
  std::uint64_t index = 0;
  for (dtype t : {dtype::f32, dtype::f16, dtype::bf16}) {
    for (const case_spec& c : base) {
      case_spec x = c;
      x.dtype = t;
      x.seed = seed * 1000003u + index++;
      grid.push_back(std::move(x));
    }
  }
  return grid;
}

// ---------------------------------------------------------------------------------------------

struct case_data::impl {
  case_spec spec;
  std::vector<std::byte> q, k, v, out, mask;
  std::vector<float> lse;
  std::vector<std::int32_t> cu_q, cu_kv;
  attention_params params;
  std::vector<double> ref_out, ref_lse;
};

namespace {

void fill_random(std::vector<std::byte>& buf, dtype t, std::int64_t count, std::mt19937_64& rng) {
  buf.assign(static_cast<std::size_t>(count) * size_bytes(t), std::byte{0});
  std::normal_distribution<double> normal(0.0, 1.0);
  for (std::int64_t i = 0; i < count; ++i) cpu::store(buf.data(), t, i, normal(rng));
}

// A view over `buf` with logical sizes `sizes`; `order` lists the logical dims from outermost to
// innermost in memory; padding adds extra elements after each dim (except the outermost).
tensor_view make_view(std::vector<std::byte>& buf, dtype t, std::array<std::int64_t, 4> sizes, int rank,
                      std::array<int, 4> order, std::int64_t pad, std::int64_t dim_step, std::mt19937_64& rng) {
  tensor_view view;
  view.dtype = t;
  view.rank = rank;
  for (int i = 0; i < rank; ++i) view.sizes[i] = sizes[i];
  std::int64_t stride = dim_step;
  for (int pos = rank - 1; pos >= 0; --pos) {
    const int d = order[pos];
    view.strides[d] = stride;
    stride = std::max<std::int64_t>(stride * sizes[d] + pad, 1);
  }
  fill_random(buf, t, std::max<std::int64_t>(stride, 1), rng);
  view.data = buf.data();
  return view;
}

}  // namespace

namespace {

// A case's sequence counts and lengths (varlen: from its lengths), as case_data lays it out.
struct case_extents {
  std::int64_t batch = 0, rows_q = 0, rows_kv = 0, max_q = 0, max_kv = 0;
};
// The mask's [batch, heads, rows] as case_data stores it (its keys: max_kv).
std::array<std::int64_t, 3> mask_dims(const case_spec& spec, const case_extents& e) {
  return {spec.mask_broadcast ? 1 : e.batch, spec.mask_broadcast || spec.mask_one_head ? 1 : spec.heads_q,
          spec.mask_key_only ? 1 : e.max_q};
}

// The extents of a case, checked: a spec whose sizes are negative, whose varlen lengths are
// negative, unpaired or past int32 offsets, or whose host buffers (inputs with their padding,
// out, lse, mask and the fp64 reference: an upper bound computed without overflow) would not fit
// this machine's memory is refused here, before any size is multiplied or allocated: a wrapped
// size would be undefined behaviour, and a failed allocation under a sanitizer is a crash, not an
// error.
case_extents checked_extents(const case_spec& spec) {
  const auto fail = [&](const std::string& why) {
    throw invalid_argument((spec.name.empty() ? std::string("case: ") : "case '" + spec.name + "': ") + why);
  };
  for (const auto& [what, n] : {std::pair{"batch", spec.batch}, {"seqlen_q", spec.seqlen_q}, {"seqlen_kv", spec.seqlen_kv},
                                {"heads_q", spec.heads_q}, {"heads_kv", spec.heads_kv}, {"head_dim_qk", spec.head_dim_qk},
                                {"head_dim_v", spec.head_dim_v}})
    if (n < 0) fail(std::string(what) + " must be >= 0; got " + std::to_string(n));
  case_extents e{spec.batch, 0, 0, spec.seqlen_q, spec.seqlen_kv};
  bool overflow = false;
  const auto mul = [&](std::int64_t a, std::int64_t b) {
    std::int64_t r = 0;
    overflow = overflow || __builtin_mul_overflow(a, b, &r);
    return r;
  };
  const auto add = [&](std::int64_t a, std::int64_t b) {
    std::int64_t r = 0;
    overflow = overflow || __builtin_add_overflow(a, b, &r);
    return r;
  };
  if (!spec.varlen_q.empty()) {
    if (spec.varlen_kv.size() != spec.varlen_q.size())
      throw invalid_argument("case_spec: varlen_q and varlen_kv must list as many sequences");
    e.batch = static_cast<std::int64_t>(spec.varlen_q.size());
    e.max_q = e.max_kv = 0;
    for (const auto& [what, lengths, rows, longest] :
         {std::tuple{"varlen_q", &spec.varlen_q, &e.rows_q, &e.max_q}, {"varlen_kv", &spec.varlen_kv, &e.rows_kv, &e.max_kv}}) {
      for (const std::int32_t l : *lengths) {
        if (l < 0) fail(std::string(what) + ": a length is negative (" + std::to_string(l) + ")");
        *rows += l;
        *longest = std::max<std::int64_t>(*longest, l);
      }
      if (*rows > std::numeric_limits<std::int32_t>::max())
        fail(std::string(what) + ": the lengths add up to " + std::to_string(*rows) + "; the offsets are int32");
    }
  } else {
    e.rows_q = mul(spec.batch, spec.seqlen_q);
    e.rows_kv = mul(spec.batch, spec.seqlen_kv);
  }
  const std::int64_t pad = spec.strided ? 3 : spec.aligned_gaps ? 8 : 0, elem = size_bytes(spec.dtype);
  // a 4-d input or output with `pad` after each dim, every `step`-th element
  const auto tensor = [&](std::int64_t rows, std::int64_t heads, std::int64_t dim, std::int64_t step) {
    return mul(mul(mul(add(rows, pad), add(heads, pad)), mul(add(dim, pad), step)), elem);
  };
  std::int64_t bytes = add(add(tensor(e.rows_q, spec.heads_q, spec.head_dim_qk, 1), tensor(e.rows_kv, spec.heads_kv, spec.head_dim_qk, 1)),
                           add(tensor(e.rows_kv, spec.heads_kv, spec.head_dim_v, spec.strided ? 2 : 1),
                               tensor(e.rows_q, spec.heads_q, spec.head_dim_v, 1)));
  bytes = add(bytes, mul(mul(e.rows_q, spec.heads_q), 4 + (spec.compute_reference ? 8 : 0)));  // lse, reference lse
  if (spec.compute_reference) bytes = add(bytes, mul(mul(mul(e.rows_q, spec.heads_q), spec.head_dim_v), 8));
  if (spec.mask != mask_type::none) {
    const auto [mb, mh, mq] = mask_dims(spec, e);
    const std::int64_t mask_elem = size_bytes(spec.mask == mask_type::keep ? dtype::boolean : spec.mask_dtype);
    bytes = add(bytes, mul(mul(mul(mb, mh), mq), mul(e.max_kv, mask_elem)));
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  const double memory = pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
  if (overflow || (memory > 0 && static_cast<double>(bytes) > memory)) {
    std::ostringstream os;
    os << "its host buffers need " << (overflow ? std::string("more than 2^63") : std::to_string(bytes))
       << " bytes; this machine has " << static_cast<std::int64_t>(memory) << " bytes of memory";
    fail(os.str());
  }
  return e;
}

}  // namespace

case_data::case_data(const case_spec& spec) : impl_(std::make_unique<impl>()) {
  const case_extents e = checked_extents(spec);
  impl& m = *impl_;
  m.spec = spec;
  std::mt19937_64 rng(spec.seed);
  const bool varlen = !spec.varlen_q.empty();
  attention_params& a = m.params;
  a.layout = spec.layout;
  a.causal = spec.causal;
  a.alignment = spec.alignment;
  a.window_left = spec.window_left;
  a.window_right = spec.window_right;
  a.softcap = spec.softcap;
  a.maybe_scale = spec.maybe_scale;

  const std::int64_t rows_q = e.rows_q, rows_kv = e.rows_kv, max_q = e.max_q, max_kv = e.max_kv, batch = e.batch;
  if (varlen) {
    m.cu_q = cumulative_offsets(spec.varlen_q);
    m.cu_kv = cumulative_offsets(spec.varlen_kv);
    a.maybe_cu_seqlens_q = tensor_view::contiguous(m.cu_q.data(), dtype::i32, {batch + 1});
    a.maybe_cu_seqlens_kv = tensor_view::contiguous(m.cu_kv.data(), dtype::i32, {batch + 1});
    a.max_seqlen_q = max_q;
    a.max_seqlen_kv = max_kv;
  }

  // Logical sizes in the call's layout, and the memory order of each tensor.
  const std::int64_t pad = spec.strided ? 3 : spec.aligned_gaps ? 8 : 0;
  const std::array<int, 4> natural3{0, 1, 2, 3};
  auto qkv_view = [&](std::vector<std::byte>& buf, std::int64_t seq, std::int64_t heads, std::int64_t dim,
                      std::array<int, 4> order, std::int64_t step) {
    if (varlen) {
      const bool swap = order[1] == 2;  // packed [total, H, D] stored heads-outermost
      return make_view(buf, spec.dtype, {seq, heads, dim, 0}, 3, swap ? std::array<int, 4>{1, 0, 2, 3} : natural3, pad, step, rng);
    }
    const std::array<std::int64_t, 4> sizes = spec.layout == layout::bshd ? std::array<std::int64_t, 4>{spec.batch, seq, heads, dim}
                                                                            : std::array<std::int64_t, 4>{spec.batch, heads, seq, dim};
    return make_view(buf, spec.dtype, sizes, 4, order, pad, step, rng);
  };
  const std::array<int, 4> natural{0, 1, 2, 3};
  // strided: k stored with its dims 1 and 2 swapped in memory; v with every other element.
  const std::array<int, 4> swapped = spec.strided ? std::array<int, 4>{0, 2, 1, 3} : natural;
  const std::int64_t sq = varlen ? rows_q : spec.seqlen_q, skv = varlen ? rows_kv : spec.seqlen_kv;
  a.q = qkv_view(m.q, sq, spec.heads_q, spec.head_dim_qk, natural, 1);
  a.k = qkv_view(m.k, skv, spec.heads_kv, spec.head_dim_qk, swapped, 1);
  a.v = qkv_view(m.v, skv, spec.heads_kv, spec.head_dim_v, natural, spec.strided ? 2 : 1);
  a.out = qkv_view(m.out, sq, spec.heads_q, spec.head_dim_v, natural, 1);

  if (spec.lse) {
    m.lse.assign(static_cast<std::size_t>(std::max<std::int64_t>(rows_q * spec.heads_q, 1)), 0.0f);
    a.maybe_lse = varlen ? tensor_view::contiguous(m.lse.data(), dtype::f32, {spec.heads_q, rows_q})
                         : tensor_view::contiguous(m.lse.data(), dtype::f32, {spec.batch, spec.heads_q, spec.seqlen_q});
  }

  if (spec.mask != mask_type::none) {
    const dtype mt = spec.mask == mask_type::keep ? dtype::boolean : spec.mask_dtype;
    const auto [mb, mh, mq] = mask_dims(spec, e);
    const std::int64_t count = mb * mh * mq * max_kv;
    m.mask.assign(static_cast<std::size_t>(std::max<std::int64_t>(count, 1)) * size_bytes(mt), std::byte{0});
    std::uniform_real_distribution<double> uniform(0.0, 1.0);
    std::normal_distribution<double> normal(0.0, 1.0);
    for (std::int64_t r = 0; r < mb * mh * mq; ++r) {
      const bool row_masked = spec.fully_masked_rows && (r % 5 == 1);
      for (std::int64_t j = 0; j < max_kv; ++j) {
        const auto at = [&](std::int64_t row) { return spec.mask_keys_outer ? j * mb * mh * mq + row : row * max_kv + j; };
        double value;
        if (spec.mask_rows_repeat && r % mq != 0)
          value = cpu::load(m.mask.data(), mt, at(r - r % mq));  // the first row of its (batch, head)
        else if (mt == dtype::boolean)
          value = !row_masked && uniform(rng) < 0.8 ? 1.0 : 0.0;
        else
          value = row_masked || uniform(rng) < 0.1
                      ? (spec.mask_lowest ? static_cast<double>(std::numeric_limits<float>::lowest())
                                          : -std::numeric_limits<double>::infinity())
                      : normal(rng);
        cpu::store(m.mask.data(), mt, at(r), value);
      }
    }
    a.maybe_mask = spec.mask_broadcast ? tensor_view::contiguous(m.mask.data(), mt, {mq, max_kv})
                                       : tensor_view::contiguous(m.mask.data(), mt, {mb, mh, mq, max_kv});
    if (spec.mask_keys_outer) {  // row-major over the leading dims, the key dim outermost
      std::int64_t stride = 1;
      for (int d = a.maybe_mask.rank - 2; d >= 0; --d) {
        a.maybe_mask.strides[static_cast<std::size_t>(d)] = stride;
        stride *= a.maybe_mask.sizes[static_cast<std::size_t>(d)];
      }
      a.maybe_mask.strides[static_cast<std::size_t>(a.maybe_mask.rank - 1)] = stride;
    }
  }

  // The fp64 oracle.
  if (!spec.compute_reference) return;
  const problem p = make_problem(a);
  const std::int64_t dv = spec.head_dim_v, hq = spec.heads_q;
  m.ref_out.assign(static_cast<std::size_t>(rows_q * hq * dv), 0.0);
  m.ref_lse.assign(static_cast<std::size_t>(rows_q * hq), 0.0);
#pragma omp parallel
  {
    std::vector<double> scores(static_cast<std::size_t>(std::max<std::int64_t>(max_kv, 1)));
#pragma omp for schedule(dynamic) collapse(2)
    for (std::int64_t b = 0; b < batch; ++b)
      for (std::int64_t h = 0; h < hq; ++h)
        for (std::int64_t i = 0; i < p.len_q(b); ++i) {
          const std::int64_t row = varlen ? p.start_q(b) + i : b * spec.seqlen_q + i;
          cpu::reference_row(p, b, h, i, scores, &m.ref_out[static_cast<std::size_t>((row * hq + h) * dv)],
                             &m.ref_lse[static_cast<std::size_t>(row * hq + h)]);
        }
  }
}

case_data::~case_data() = default;
const case_spec& case_data::spec() const noexcept { return impl_->spec; }
const attention_params& case_data::params() const noexcept { return impl_->params; }
const std::vector<double>& case_data::reference_out() const {
  if (!impl_->spec.compute_reference) throw invalid_argument("case_data: built without a reference");
  return impl_->ref_out;
}
const std::vector<double>& case_data::reference_lse() const {
  if (!impl_->spec.compute_reference) throw invalid_argument("case_data: built without a reference");
  return impl_->ref_lse;
}

namespace {
std::size_t extent_bytes(const tensor_view& t) {
  if (t.empty() || t.numel() == 0) return 0;
  std::int64_t last = 0;
  for (int i = 0; i < t.rank; ++i) last += (t.sizes[i] - 1) * t.strides[i];
  return static_cast<std::size_t>(last + 1) * size_bytes(t.dtype);
}
}  // namespace

void poison_outputs(const attention_params& host) {
  for (const tensor_view* t : {&host.out, &host.maybe_lse})
    if (const std::size_t bytes = extent_bytes(*t)) std::memset(t->data, 0xff, bytes);  // NaN in every float type
}

device_copy::device_copy(const case_data& data, memory_resource& memory, device d) : memory_(memory), device_(d) {
  const attention_params& host = data.params();
  poison_outputs(host);
  params_ = host;
  params_.q = upload(host.q);
  params_.k = upload(host.k);
  params_.v = upload(host.v);
  params_.out = upload(host.out);
  params_.maybe_lse = upload(host.maybe_lse);
  params_.maybe_mask = upload(host.maybe_mask);
  params_.maybe_cu_seqlens_q = upload(host.maybe_cu_seqlens_q);
  params_.maybe_cu_seqlens_kv = upload(host.maybe_cu_seqlens_kv);
}

device_copy::~device_copy() {
  for (void* p : owned_) memory_.deallocate(p);
}

tensor_view device_copy::upload(const tensor_view& host) {
  tensor_view t = host;
  if (host.empty()) return t;
  t.device = device_;
  const std::size_t bytes = extent_bytes(host);
  t.data = memory_.allocate(std::max<std::size_t>(bytes, 1));
  owned_.push_back(t.data);
  memory_.copy(t.data, host.data, bytes, copy_direction::host_to_device);
  return t;
}

void device_copy::download_outputs(const case_data& data) {
  memory_.synchronize();
  const attention_params& host = data.params();
  memory_.copy(host.out.data, params_.out.data, extent_bytes(host.out), copy_direction::device_to_host);
  if (!host.maybe_lse.empty())
    memory_.copy(host.maybe_lse.data, params_.maybe_lse.data, extent_bytes(host.maybe_lse), copy_direction::device_to_host);
}

double time_backend(const backend& b, const problem& p, int num_threads, double min_seconds, int min_reps,
                    void* maybe_cuda_stream) {
  run_options options;
  options.num_threads = num_threads;
  options.maybe_cuda_stream = maybe_cuda_stream;
  memory_resource* memory = b.memory_for(p.device);
  run_on(b, p, options);  // warm-up: workspace, caches, lazy initialisation
  if (memory) memory->synchronize();
  // The runs stop at min_reps and min_seconds both met, or at max_runs (10^6, 8 MB of samples, or min_reps if more): past
  // that a tiny call is timed well enough, and min_seconds is not met (time_backend's contract).
  const std::size_t max_runs = std::max<std::size_t>(1000000, static_cast<std::size_t>(std::max(min_reps, 0)));
  std::vector<double> samples;
  double total = 0;
  while (static_cast<int>(samples.size()) < min_reps || total < min_seconds) {
    const auto t0 = std::chrono::steady_clock::now();
    run_on(b, p, options);
    if (memory) memory->synchronize();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    samples.push_back(s);
    total += s;
    if (samples.size() >= max_runs) break;
  }
  std::nth_element(samples.begin(), samples.begin() + static_cast<std::ptrdiff_t>(samples.size() / 2), samples.end());
  return samples[samples.size() / 2];
}

comparison check_backend(const backend& candidate, const case_data& data, int num_threads) {
  const case_spec& spec = data.spec();
  const attention_params& host = data.params();
  run_options options;
  options.num_threads = num_threads;
  if (spec.device.kind == device_kind::cpu) {
    poison_outputs(host);
    run_on(candidate, make_problem(host), options);
  } else {
    memory_resource* memory = candidate.memory_for(spec.device);
    if (memory == nullptr) throw runtime_error("backend '" + std::string(candidate.name()) + "' cannot reach " + to_string(spec.device));
    device_copy dev(data, *memory, spec.device);
    run_on(candidate, make_problem(dev.params()), options);
    dev.download_outputs(data);
  }
  return compare_outputs(data);
}

comparison compare_outputs(const case_data& data) {
  const case_spec& spec = data.spec();
  const attention_params& host = data.params();
  const problem p = make_problem(host);
  comparison c;
  c.ok = true;
  // The elements of out's extent that are not its elements (the gaps of padded strides) must keep
  // their poison: a backend writes its output's elements and nothing else.
  if (const std::size_t bytes = extent_bytes(host.out); bytes > static_cast<std::size_t>(host.out.numel()) * size_bytes(host.out.dtype)) {
    const std::size_t eb = size_bytes(host.out.dtype);
    std::vector<bool> element(bytes / eb, false);
    for (std::int64_t b = 0; b < p.batch; ++b)
      for (std::int64_t i = 0; i < p.len_q(b); ++i)
        for (std::int64_t h = 0; h < p.num_heads_q; ++h)
          for (std::int64_t d = 0; d < p.head_dim_v; ++d)
            element[static_cast<std::size_t>(b * p.out.batch + (p.start_q(b) + i) * p.out.seq + h * p.out.head +
                                             d * p.out.dim)] = true;
    const auto* raw = static_cast<const unsigned char*>(host.out.data);
    for (std::size_t e = 0; e < element.size() && c.ok; ++e)
      if (!element[e])
        for (std::size_t k = 0; k < eb; ++k)
          if (raw[e * eb + k] != 0xff) {
            c.ok = false;
            c.detail = "out: the element at offset " + std::to_string(e) + " lies in a gap of the strides but was written";
            break;
          }
  }
  const tolerance tol = tolerance_for(spec.dtype);
  const std::vector<double>& ref = data.reference_out();
  const std::vector<double>& ref_lse = data.reference_lse();
  const std::int64_t hq = p.num_heads_q, dv = p.head_dim_v;
  auto note = [&](std::int64_t b, std::int64_t i, std::int64_t h, std::int64_t d, double got, double want, const char* what) {
    if (!c.detail.empty()) return;
    std::ostringstream os;
    os << what << " mismatch at b=" << b << " i=" << i << " h=" << h;
    if (d >= 0) os << " d=" << d;
    os << ": got " << got << ", want " << want;
    c.detail = os.str();
  };
  for (std::int64_t b = 0; b < p.batch; ++b) {
    for (std::int64_t i = 0; i < p.len_q(b); ++i) {
      const std::int64_t row = p.is_varlen ? p.start_q(b) + i : b * p.seqlen_q + i;
      for (std::int64_t h = 0; h < hq; ++h) {
        for (std::int64_t d = 0; d < dv; ++d) {
          const double want = ref[static_cast<std::size_t>((row * hq + h) * dv + d)];
          const double got = cpu::load(host.out.data, p.dtype,
                                       b * p.out.batch + (p.start_q(b) + i) * p.out.seq + h * p.out.head + d * p.out.dim);
          const double err = std::abs(got - want);
          const double allowed = tol.atol + tol.rtol * std::abs(want);
          if (std::isnan(got) != std::isnan(want) || (!std::isnan(want) && !(err <= allowed))) {
            c.ok = false;
            note(b, i, h, d, got, want, "out");
          }
          if (!std::isnan(err)) {
            c.max_abs_error = std::max(c.max_abs_error, err);
            c.worst_ratio = std::max(c.worst_ratio, err / allowed);
          }
        }
        if (p.maybe_lse) {
          const double want = ref_lse[static_cast<std::size_t>(row * hq + h)];
          const double got =
              p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (p.start_q(b) + i) * p.lse_seq_stride];
          const bool both_neg_inf = std::isinf(want) && want < 0 && std::isinf(got) && got < 0;
          const double err = both_neg_inf ? 0.0 : std::abs(got - want);
          const double allowed = tol.lse_atol + tol.lse_rtol * (std::isfinite(want) ? std::abs(want) : 0.0);
          if (std::isnan(got) != std::isnan(want) || (!std::isnan(want) && !(err <= allowed))) {
            c.ok = false;
            note(b, i, h, -1, got, want, "lse");
          }
          if (std::isfinite(err)) c.max_lse_error = std::max(c.max_lse_error, err);
        }
      }
    }
  }
  return c;
}

}  // namespace attend::testing
