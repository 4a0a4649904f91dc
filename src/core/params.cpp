// Validation of attention_params into a problem (Note [Validation]).
//
// Every check names the argument and what was expected, and throws attend::invalid_argument.
// Checks that depend on what a backend can do (head dims, dtypes per device, features) are not
// here: they are the backends' rejections, so `explain` can report them.
#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>
#include <sstream>
#include <string>
#include <utility>

#include "attend/errors.h"
#include "attend/params.h"
#include "core/views.h"

namespace attend {

std::string_view to_string(layout l) noexcept { return l == layout::bshd ? "bshd" : "bhsd"; }
std::string_view to_string(alignment a) noexcept {
  return a == alignment::top_left ? "top_left" : "bottom_right";
}

std::string_view to_string(feature f) noexcept {
  switch (f) {
    case feature::causal: return "causal";
    case feature::window: return "window";
    case feature::mask_additive: return "additive mask";
    case feature::mask_keep: return "boolean mask";
    case feature::gqa: return "gqa";
    case feature::softcap: return "softcap";
    case feature::lse: return "lse";
    case feature::varlen: return "varlen";
    case feature::head_dim_v_differs: return "head_dim_v != head_dim_qk";
    case feature::bottom_right: return "bottom_right alignment";
  }
  return "?";
}

std::string to_string(feature_set fs) {
  std::string s;
  for (int i = 0; i < k_num_features; ++i) {
    const auto f = static_cast<feature>(1u << i);
    if (!fs.has(f)) continue;
    if (!s.empty()) s += ", ";
    s += to_string(f);
  }
  return s.empty() ? "none" : s;
}

namespace {
[[noreturn]] void fail(const std::string& message) { throw invalid_argument(message); }
}  // namespace

namespace detail {
namespace {

// A double as the shortest text that reads back as it (std::to_string's %f would print 3e38 with
// 39 digits and 1e-300 as 0.000000).
std::string number_string(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

std::string shape_string(const tensor_view& t) {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < t.rank; ++i) os << (i ? ", " : "") << t.sizes[i];
  os << ']';
  return os.str();
}

}  // namespace

// Rank, sizes, strides, pointer and alignment of one view; returns its element count.
std::int64_t check_view(const tensor_view& t, const char* name) {
  if (size_bytes(t.dtype) == 0)
    fail(std::string(name) + ": dtype is not an attend::dtype value; got " + std::to_string(static_cast<int>(t.dtype)));
  if (t.rank < 1 || t.rank > tensor_view::k_max_rank)
    fail(std::string(name) + ": rank must be between 1 and 4; got " + std::to_string(t.rank));
  // Sizes first: a negative size would otherwise be reported as whatever stride it came with.
  for (int i = 0; i < t.rank; ++i)
    if (t.sizes[i] < 0) fail(std::string(name) + ": sizes must be non-negative; got " + shape_string(t));
  std::int64_t numel = 1;
  for (int i = 0; i < t.rank; ++i) {
    if (t.strides[i] < 0)
      fail(std::string(name) + ": strides must be non-negative; got stride " +
           std::to_string(t.strides[i]) + " in dimension " + std::to_string(i));
    if (__builtin_mul_overflow(numel, t.sizes[i], &numel))
      fail(std::string(name) + ": element count overflows 64 bits; shape " + shape_string(t));
  }
  // The largest offset must fit too (element offsets and byte offsets are 64-bit).
  if (numel > 0) {
    std::int64_t last = 0;
    for (int i = 0; i < t.rank; ++i) {
      std::int64_t step = 0;
      if (__builtin_mul_overflow(t.sizes[i] - 1, t.strides[i], &step) ||
          __builtin_add_overflow(last, step, &last))
        fail(std::string(name) + ": offsets overflow 64 bits; shape " + shape_string(t));
    }
    std::int64_t bytes = 0;
    if (__builtin_mul_overflow(last + 1, static_cast<std::int64_t>(size_bytes(t.dtype)), &bytes))
      fail(std::string(name) + ": byte size overflows 64 bits; shape " + shape_string(t));
    if (t.data == nullptr) fail(std::string(name) + ": data is null but the tensor has elements");
    if (reinterpret_cast<std::uintptr_t>(t.data) % size_bytes(t.dtype) != 0)
      fail(std::string(name) + ": data must be aligned to its element size (" +
           std::to_string(size_bytes(t.dtype)) + " bytes)");
  }
  if (t.device.kind != device_kind::cpu && t.device.kind != device_kind::cuda)
    fail(std::string(name) + ": device kind must be cpu or cuda; got " +
         std::to_string(static_cast<int>(t.device.kind)));
  if (t.device.index < 0)
    fail(std::string(name) + ": device index must be non-negative; got " + std::to_string(t.device.index));
  return numel;
}

// [first byte, one past last byte] a view can touch; empty for zero elements.
std::pair<std::uintptr_t, std::uintptr_t> byte_span(const tensor_view& t) {
  if (t.numel() == 0 || t.data == nullptr) return {0, 0};
  std::int64_t last = 0;
  for (int i = 0; i < t.rank; ++i) last += (t.sizes[i] - 1) * t.strides[i];
  const auto begin = reinterpret_cast<std::uintptr_t>(t.data);
  return {begin, begin + static_cast<std::uintptr_t>((last + 1) * static_cast<std::int64_t>(size_bytes(t.dtype)))};
}

// Note [Exact overlap]: two views whose byte spans intersect may still share no byte: slices of one
// buffer side by side (q, k, v and out as b[:, :, 0..3] of a packed [B, S, 4, H, D], or out as the
// second half of each row whose first half is q). They share a byte iff some element address of
// b minus some element address of a, D = (b0 - a0) + sum_j y_j sb_j - sum_i x_i sa_i, lies in
// (-eb, ea) (byte strides, element sizes ea and eb). Terms with the same stride merge into one
// with a range of coefficients (-(n - 1) .. m - 1 for a dimension both have), then a depth-first
// search takes them largest stride first, each coefficient only where the smaller terms can still
// bring D into the interval, and only while the interval holds a multiple of the smaller terms'
// gcd (so views on interleaved element offsets, even against odd, are told apart at once). For
// the views above (nested strides) each level leaves one or two coefficients and the search is
// short; one that would take more than k_overlap_budget steps answers "overlaps", the safe side.
// An output's own elements must be distinct (one element written by two rows is a race): the
// same search for a nonzero coefficient vector whose sum is 0, once per choice of the first
// nonzero coefficient (positive: -d is a solution too), after the common nested case passes a
// direct test.
namespace {
// Sums of two views' byte spans (each below 2^63, check_view) need more than 64 bits.
__extension__ typedef __int128 wide;
constexpr int k_max_terms = 2 * tensor_view::k_max_rank;
struct overlap_term {
  wide stride;  // bytes (elements for an output's own check), > 0
  wide lo, hi;  // coefficient range
};
constexpr std::int64_t k_overlap_budget = 1 << 20;

// Whether sum_k z_k stride_k, z_k in [lo_k, hi_k], can land in [lo, hi] from `start`.
class term_search {
 public:
  // Terms with the same stride merge (their coefficient ranges add).
  void add(wide stride, wide lo, wide hi) {
    int j = 0;
    while (j < n_ && terms_[j].stride != stride) ++j;
    if (j == n_) terms_[n_++] = {stride, 0, 0};
    terms_[j].lo += lo;
    terms_[j].hi += hi;
  }
  bool reach(wide start, wide lo, wide hi) {
    for (int i = 1; i < n_; ++i)  // insertion sort, largest stride first: at most 8 terms
      for (int j = i; j > 0 && terms_[j].stride > terms_[j - 1].stride; --j) std::swap(terms_[j], terms_[j - 1]);
    rest_lo_[n_] = rest_hi_[n_] = rest_gcd_[n_] = rest_fixed_[n_] = 0;
    for (int k = n_ - 1; k >= 0; --k) {
      const bool one_value = terms_[k].lo == terms_[k].hi;
      rest_lo_[k] = rest_lo_[k + 1] + terms_[k].stride * terms_[k].lo;
      rest_hi_[k] = rest_hi_[k + 1] + terms_[k].stride * terms_[k].hi;
      rest_gcd_[k] = gcd(rest_gcd_[k + 1], one_value ? 0 : terms_[k].stride);
      rest_fixed_[k] = rest_fixed_[k + 1] + (one_value ? terms_[k].stride * terms_[k].lo : 0);
    }
    lo_ = lo;
    hi_ = hi;
    budget_ = k_overlap_budget;
    return from(0, start);
  }
 private:
  static wide gcd(wide a, wide b) {
    while (b != 0) {
      const wide r = a % b;
      a = b;
      b = r;
    }
    return a;
  }
  static wide floor_div(wide x, wide d) { return x >= 0 ? x / d : -((-x + d - 1) / d); }
  bool from(int k, wide cur) {
    if (--budget_ < 0) return true;
    // What the terms from k on must add: [lo_ - cur, hi_ - cur], within their range, and (the sum
    // of the terms with a one-value range aside) a multiple of the others' gcd.
    const wide need_lo = lo_ - cur, need_hi = hi_ - cur;
    if (need_hi < rest_lo_[k] || need_lo > rest_hi_[k]) return false;
    if (k == n_) return true;
    const wide g = rest_gcd_[k], fixed = rest_fixed_[k];
    if (g > 0 && floor_div(need_hi - fixed, g) < -floor_div(-(need_lo - fixed), g)) return false;
    const wide st = terms_[k].stride;
    // st z in [need_lo - rest_hi[k+1], need_hi - rest_lo[k+1]]
    const wide want_lo = need_lo - rest_hi_[k + 1], want_hi = need_hi - rest_lo_[k + 1];
    const wide z_lo = std::max(terms_[k].lo, -floor_div(-want_lo, st)), z_hi = std::min(terms_[k].hi, floor_div(want_hi, st));
    for (wide z = z_lo; z <= z_hi; ++z)
      if (from(k + 1, cur + st * z)) return true;
    return false;
  }

  std::array<overlap_term, k_max_terms> terms_{};
  // Over the terms from k on: the least and most they add, the gcd of the strides whose
  // coefficient can vary, and the sum of the others (one value each).
  std::array<wide, k_max_terms + 1> rest_lo_{}, rest_hi_{}, rest_gcd_{}, rest_fixed_{};
  int n_ = 0;
  wide lo_ = 0, hi_ = 0;
  std::int64_t budget_ = 0;
};
}  // namespace

void check_apart_from_call(const tensor_view& t, const attention_params& a, const char* name) {
  for (auto [v, what] : {std::pair{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"}, {&a.maybe_lse, "lse"},
                         {&a.maybe_mask, "mask"}, {&a.maybe_cu_seqlens_q, "cu_seqlens_q"},
                         {&a.maybe_cu_seqlens_kv, "cu_seqlens_kv"}})
    if (v != &t && !v->empty() && overlaps(t, *v)) fail(std::string(name) + ": memory overlaps " + what);
}

bool overlaps(const tensor_view& a, const tensor_view& b) {
  if (a.device != b.device) return false;
  const auto [a0, a1] = byte_span(a);
  const auto [b0, b1] = byte_span(b);
  if (!(a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1)) return false;
  // Spans intersect: search for a shared byte (Note [Exact overlap]).
  term_search search;
  auto add = [&](const tensor_view& v, int sign) {
    const auto e = static_cast<wide>(size_bytes(v.dtype));
    for (int i = 0; i < v.rank; ++i)
      if (v.sizes[i] > 1 && v.strides[i] != 0) {
        const wide span = v.sizes[i] - 1;
        search.add(v.strides[i] * e, sign > 0 ? 0 : -span, sign > 0 ? span : 0);
      }
  };
  add(b, +1);
  add(a, -1);
  const auto ea = static_cast<wide>(size_bytes(a.dtype)), eb = static_cast<wide>(size_bytes(b.dtype));
  return search.reach(static_cast<wide>(b0) - static_cast<wide>(a0), 1 - eb, ea - 1);
}

// An output must not write one element twice (Note [Exact overlap]).
void check_no_self_overlap(const tensor_view& t, const char* name) {
  if (t.numel() == 0) return;  // nothing is written
  std::array<std::pair<std::int64_t, std::int64_t>, tensor_view::k_max_rank> dims{};
  int n = 0;
  for (int i = 0; i < t.rank; ++i)
    if (t.sizes[i] > 1) dims[n++] = {t.strides[i], t.sizes[i]};
  for (int i = 1; i < n; ++i)  // insertion sort: at most 4 dims
    for (int j = i; j > 0 && dims[j] < dims[j - 1]; --j) std::swap(dims[j], dims[j - 1]);
  // The common case: sorted by stride, each steps past the whole extent of the smaller ones.
  bool nested = true;
  std::int64_t extent = 1;
  for (int i = 0; i < n && nested; ++i) {
    nested = dims[i].first >= extent;
    extent = dims[i].first * dims[i].second;
  }
  if (nested) return;
  // Otherwise: is there a nonzero d, |d_i| < size_i, with sum d_i stride_i = 0? A zero stride (the
  // smallest, first) is one at once; else the first nonzero coefficient may be taken positive.
  auto repeats = [&] {
    if (dims[0].first == 0) return true;
    for (int first = 0; first < n; ++first) {
      term_search search;  // dimensions before `first` have coefficient 0
      for (int i = first; i < n; ++i) search.add(dims[i].first, i == first ? 1 : 1 - dims[i].second, dims[i].second - 1);
      if (search.reach(0, 0, 0)) return true;
    }
    return false;
  };
  if (repeats()) fail(std::string(name) + ": strides make elements overlap (an output needs distinct elements)");
}

}  // namespace detail

namespace {
using detail::check_apart_from_call;
using detail::check_no_self_overlap;
using detail::check_view;
using detail::overlaps;
using detail::number_string;
using detail::shape_string;

struct geometry {
  std::int64_t batch, seq, heads, dim;
  strides_bshd strides;
};

// Reads a dense q/k/v/out view in `l` layout or a packed varlen view.
geometry read_geometry(const tensor_view& t, const char* name, layout l, bool varlen) {
  if (varlen) {
    if (t.rank != 3)
      fail(std::string(name) + ": varlen tensors must be packed [total, heads, head_dim]; got " +
           shape_string(t));
    return {1, t.sizes[0], t.sizes[1], t.sizes[2], {0, t.strides[0], t.strides[1], t.strides[2]}};
  }
  if (t.rank != 4)
    fail(std::string(name) + ": must be rank 4 ([B, S, H, D] for bshd, [B, H, S, D] for bhsd); got " +
         shape_string(t));
  if (l == layout::bshd)
    return {t.sizes[0], t.sizes[1], t.sizes[2], t.sizes[3],
            {t.strides[0], t.strides[1], t.strides[2], t.strides[3]}};
  return {t.sizes[0], t.sizes[2], t.sizes[1], t.sizes[3],
          {t.strides[0], t.strides[2], t.strides[1], t.strides[3]}};
}

std::string dims_string(const geometry& g, layout l, bool varlen) {
  std::ostringstream os;
  if (varlen)
    os << "[total=" << g.seq << ", H=" << g.heads << ", D=" << g.dim << ']';
  else if (l == layout::bshd)
    os << "[B=" << g.batch << ", S=" << g.seq << ", H=" << g.heads << ", D=" << g.dim << ']';
  else
    os << "[B=" << g.batch << ", H=" << g.heads << ", S=" << g.seq << ", D=" << g.dim << ']';
  return os.str();
}

// Reads cumulative offsets (host only) and checks they start at 0, never decrease, and end at
// the packed length. Returns the longest sequence.
std::int64_t check_offsets(const std::int32_t* cu, std::int64_t count, std::int64_t total, const char* name) {
  if (cu[0] != 0) fail(std::string(name) + ": must start at 0; got " + std::to_string(cu[0]));
  std::int64_t longest = 0;
  for (std::int64_t b = 0; b + 1 < count; ++b) {
    if (cu[b + 1] < cu[b])
      fail(std::string(name) + ": offsets must not decrease; got " + std::to_string(cu[b]) + " then " +
           std::to_string(cu[b + 1]) + " at index " + std::to_string(b));
    longest = std::max<std::int64_t>(longest, cu[b + 1] - cu[b]);
  }
  if (cu[count - 1] != total)
    fail(std::string(name) + ": last offset must equal the packed length " + std::to_string(total) + "; got " +
         std::to_string(cu[count - 1]));
  return longest;
}

}  // namespace

problem make_problem(const attention_params& params) {
  problem p;
  p.params = params;
  const attention_params& a = params;

  const bool has_cu_q = !a.maybe_cu_seqlens_q.empty();
  const bool has_cu_kv = !a.maybe_cu_seqlens_kv.empty();
  if (has_cu_q != has_cu_kv)
    fail("cu_seqlens_q and cu_seqlens_kv: give both (varlen) or neither");
  p.is_varlen = has_cu_q;
  if (a.layout != layout::bshd && a.layout != layout::bhsd)
    fail("layout: must be bshd or bhsd; got the value " + std::to_string(static_cast<int>(a.layout)));
  if (a.alignment != alignment::top_left && a.alignment != alignment::bottom_right)
    fail("alignment: must be top_left or bottom_right; got the value " + std::to_string(static_cast<int>(a.alignment)));

  if (p.is_varlen && a.layout != layout::bshd)
    fail("layout: varlen tensors are packed [total, heads, head_dim], which is bshd; got bhsd");
  check_view(a.q, "q");
  check_view(a.k, "k");
  check_view(a.v, "v");
  check_view(a.out, "out");

  // dtypes and devices
  if (!is_floating(a.q.dtype))
    fail("q: dtype must be f32, f16 or bf16; got " + std::string(to_string(a.q.dtype)));
  for (auto [t, name] : {std::pair{&a.k, "k"}, {&a.v, "v"}, {&a.out, "out"}}) {
    if (t->dtype != a.q.dtype)
      fail(std::string(name) + ": dtype must match q (" + std::string(to_string(a.q.dtype)) + "); got " +
           std::string(to_string(t->dtype)));
    if (t->device != a.q.device)
      fail(std::string(name) + ": device must match q (" + to_string(a.q.device) + "); got " +
           to_string(t->device));
  }
  p.dtype = a.q.dtype;
  p.device = a.q.device;

  const geometry q = read_geometry(a.q, "q", a.layout, p.is_varlen);
  const geometry k = read_geometry(a.k, "k", a.layout, p.is_varlen);
  const geometry v = read_geometry(a.v, "v", a.layout, p.is_varlen);
  const geometry o = read_geometry(a.out, "out", a.layout, p.is_varlen);
  const auto dims = [&](const geometry& g) { return dims_string(g, a.layout, p.is_varlen); };

  if (k.batch != q.batch || v.batch != q.batch || o.batch != q.batch)
    fail("k, v, out: batch must match q's " + std::to_string(q.batch) + "; got k " + dims(k) + ", v " + dims(v) +
         ", out " + dims(o));
  if (k.seq != v.seq) fail("v: sequence length must match k's; got k " + dims(k) + ", v " + dims(v));
  if (k.heads != v.heads) fail("v: heads must match k's; got k " + dims(k) + ", v " + dims(v));
  if (k.dim != q.dim) fail("k: head_dim must match q's " + std::to_string(q.dim) + "; got k " + dims(k));
  if (o.seq != q.seq || o.heads != q.heads || o.dim != v.dim)
    fail("out: must be " + std::string(p.is_varlen ? "[total_q, Hq, Dv]" : "q's shape with v's head_dim") +
         " = " + dims(geometry{q.batch, q.seq, q.heads, v.dim, {}}) + "; got " + dims(o));
  if (k.heads == 0 && q.heads != 0) fail("k: heads must be >= 1; got 0");
  if (k.heads != 0 && q.heads % k.heads != 0)
    fail("q, k: query heads must be a multiple of key/value heads (GQA/MQA); got Hq=" + std::to_string(q.heads) +
         ", Hkv=" + std::to_string(k.heads));

  p.num_heads_q = q.heads;
  p.num_heads_kv = k.heads;
  p.group_size = k.heads > 0 && q.heads > 0 ? q.heads / k.heads : 1;  // no query heads: nothing to group
  p.head_dim_qk = q.dim;
  p.head_dim_v = v.dim;
  p.q = q.strides;
  p.k = k.strides;
  p.v = v.strides;
  p.out = o.strides;

  // out must be writable without races and must not alias anything it reads (the mask's view
  // is checked first: the overlap test reads its sizes and strides).
  if (!a.maybe_mask.empty()) check_view(a.maybe_mask, "mask");
  check_no_self_overlap(a.out, "out");
  for (auto [t, name] : {std::pair{&a.q, "q"}, {&a.k, "k"}, {&a.v, "v"}, {&a.maybe_mask, "mask"}})
    if (!t->empty() && overlaps(a.out, *t)) fail(std::string("out: memory overlaps ") + name);

  // varlen offsets
  // A varlen mask is [B, Hq, max_seqlen_q, max_seqlen_kv] as given; where the host reads the
  // offsets, the problem carries the real longest sequences instead, so a loose bound (a bucket
  // size) shapes the mask and nothing else: backends' limits, workspaces and work follow the real
  // lengths (a bound of 2^31 - 1 over 5-row sequences was refused by flash_cpu and asked the
  // reference for 34 GB before).
  if (p.is_varlen) {
    for (auto [t, name] : {std::pair{&a.maybe_cu_seqlens_q, "cu_seqlens_q"}, {&a.maybe_cu_seqlens_kv, "cu_seqlens_kv"}}) {
      check_view(*t, name);
      if (t->rank != 1 || t->sizes[0] < 1)
        fail(std::string(name) + ": must be rank 1 [batch + 1]; got " + shape_string(*t));
      if (t->dtype != dtype::i32)
        fail(std::string(name) + ": dtype must be i32; got " + std::string(to_string(t->dtype)));
      if (t->device != p.device)
        fail(std::string(name) + ": device must match q (" + to_string(p.device) + "); got " + to_string(t->device));
      if (t->strides[0] != 1 && t->sizes[0] > 1) fail(std::string(name) + ": must be contiguous");
      if (overlaps(a.out, *t)) fail(std::string("out: memory overlaps ") + name);
    }
    if (a.maybe_cu_seqlens_q.sizes[0] != a.maybe_cu_seqlens_kv.sizes[0])
      fail("cu_seqlens_kv: must have as many entries as cu_seqlens_q (" +
           std::to_string(a.maybe_cu_seqlens_q.sizes[0]) + "); got " + std::to_string(a.maybe_cu_seqlens_kv.sizes[0]));
    p.batch = a.maybe_cu_seqlens_q.sizes[0] - 1;
    p.total_q = q.seq;
    p.total_kv = k.seq;
    p.maybe_cu_seqlens_q = static_cast<const std::int32_t*>(a.maybe_cu_seqlens_q.data);
    p.maybe_cu_seqlens_kv = static_cast<const std::int32_t*>(a.maybe_cu_seqlens_kv.data);
    if (a.max_seqlen_q < 0 || a.max_seqlen_kv < 0) fail("max_seqlen_q/kv: must be non-negative");
    // A loose bound (a bucket size, as FlashAttention callers pass for static shapes) is fine, but
    // offsets are int32: no sequence is longer than 2^31 - 1, and a larger bound would only wrap
    // the sizes of work and workspaces computed from it.
    constexpr std::int64_t k_longest = std::numeric_limits<std::int32_t>::max();
    if (a.max_seqlen_q > k_longest || a.max_seqlen_kv > k_longest)
      fail("max_seqlen_q/kv: at most 2^31 - 1 (offsets are int32); got (" + std::to_string(a.max_seqlen_q) + ", " +
           std::to_string(a.max_seqlen_kv) + ")");
    if (p.device.kind == device_kind::cpu) {
      // Note [Host offsets]: the offsets are copied, and the copy is checked and then read by the
      // backends. Reading the caller's array again after the check let a change in between (a
      // thread writing it while the GIL is released) send the kernels out of bounds: a crash, where
      // a racing caller should get garbage values at worst.
      const auto count = static_cast<std::size_t>(p.batch + 1);
      auto copy = std::make_shared<std::int32_t[]>(2 * count);
      std::memcpy(copy.get(), p.maybe_cu_seqlens_q, count * sizeof(std::int32_t));
      std::memcpy(copy.get() + count, p.maybe_cu_seqlens_kv, count * sizeof(std::int32_t));
      p.maybe_cu_seqlens_q = copy.get();
      p.maybe_cu_seqlens_kv = copy.get() + count;
      p.host_offsets = std::move(copy);
      const std::int64_t longest_q = check_offsets(p.maybe_cu_seqlens_q, p.batch + 1, p.total_q, "cu_seqlens_q");
      const std::int64_t longest_kv = check_offsets(p.maybe_cu_seqlens_kv, p.batch + 1, p.total_kv, "cu_seqlens_kv");
      if ((a.max_seqlen_q != 0 && a.max_seqlen_q < longest_q) || (a.max_seqlen_kv != 0 && a.max_seqlen_kv < longest_kv))
        fail("max_seqlen_q/kv: smaller than the longest sequence (" + std::to_string(longest_q) + ", " +
             std::to_string(longest_kv) + ")");
      p.seqlen_q = longest_q;
      p.seqlen_kv = longest_kv;
    } else {
      if ((a.max_seqlen_q == 0 && p.total_q > 0) || (a.max_seqlen_kv == 0 && p.total_kv > 0))
        fail("max_seqlen_q/kv: required when cu_seqlens live on " + to_string(p.device));
      p.seqlen_q = a.max_seqlen_q;
      p.seqlen_kv = a.max_seqlen_kv;
    }
  } else {
    p.batch = q.batch;
    p.seqlen_q = q.seq;
    p.seqlen_kv = k.seq;
    if (!a.maybe_cu_seqlens_q.empty() || a.max_seqlen_q != 0 || a.max_seqlen_kv != 0)
      fail("max_seqlen_q/kv: only meaningful with cu_seqlens (varlen)");
  }

  // options
  // Kernels compute in float, the scale in log2 units (scale x log2 e): beyond that range it would
  // be inf there; the same for softcap.
  constexpr double k_float_max = std::numeric_limits<float>::max();
  if (a.maybe_scale && !(std::abs(*a.maybe_scale) <= k_float_max / std::numbers::log2e))
    fail("scale: must be finite (within float's range in log2 units, |scale| <= 2.3e38); got " +
         number_string(*a.maybe_scale));
  p.scale = a.maybe_scale ? *a.maybe_scale : (p.head_dim_qk > 0 ? 1.0 / std::sqrt(static_cast<double>(p.head_dim_qk)) : 1.0);
  // A softcap below float's smallest normal would round to 0 (off) in the kernels.
  if (a.softcap > 0.0 && a.softcap < std::numeric_limits<float>::min())
    fail("softcap: must be 0 (off) or at least 1.2e-38 (float's smallest normal); got " + number_string(a.softcap));
  if (!(a.softcap >= 0.0) || !(a.softcap <= k_float_max))
    fail("softcap: must be finite and >= 0 (0 disables it), within float's range (<= 3.4e38); got " + number_string(a.softcap));
  if (a.window_left < -1 || a.window_right < -1)
    fail("window: bounds must be >= 0, or -1 for unbounded; got (" + std::to_string(a.window_left) + ", " +
         std::to_string(a.window_right) + ")");
  // A bound past every key of every row is the same band as one just past them: clamp there, so
  // band arithmetic (key_band_of: diagonal +- bound) cannot overflow. The feature stays `window`.
  {
    std::int64_t reach = 0;
    if (__builtin_add_overflow(p.is_varlen ? p.total_q : p.seqlen_q, p.is_varlen ? p.total_kv : p.seqlen_kv, &reach) ||
        reach > (std::int64_t{1} << 61))
      reach = std::int64_t{1} << 61;
    p.params.window_left = std::min(a.window_left, reach + 1);
    p.params.window_right = std::min(a.window_right, reach + 1);
  }

  // lse
  if (!a.maybe_lse.empty()) {
    check_view(a.maybe_lse, "lse");
    if (a.maybe_lse.dtype != dtype::f32)
      fail("lse: dtype must be f32; got " + std::string(to_string(a.maybe_lse.dtype)));
    if (a.maybe_lse.device != p.device)
      fail("lse: device must match q (" + to_string(p.device) + "); got " + to_string(a.maybe_lse.device));
    const tensor_view& l = a.maybe_lse;
    if (p.is_varlen) {
      if (l.rank != 2 || l.sizes[0] != p.num_heads_q || l.sizes[1] != p.total_q)
        fail("lse: must be [Hq, total_q] = [" + std::to_string(p.num_heads_q) + ", " + std::to_string(p.total_q) +
             "] for varlen; got " + shape_string(l));
      p.lse_head_stride = l.strides[0];
      p.lse_seq_stride = l.strides[1];
    } else {
      if (l.rank != 3 || l.sizes[0] != p.batch || l.sizes[1] != p.num_heads_q || l.sizes[2] != p.seqlen_q)
        fail("lse: must be [B, Hq, Sq] = [" + std::to_string(p.batch) + ", " + std::to_string(p.num_heads_q) + ", " +
             std::to_string(p.seqlen_q) + "]; got " + shape_string(l));
      p.lse_batch_stride = l.strides[0];
      p.lse_head_stride = l.strides[1];
      p.lse_seq_stride = l.strides[2];
    }
    check_no_self_overlap(l, "lse");
    check_apart_from_call(l, a, "lse");
    p.maybe_lse = static_cast<float*>(l.data);
  }

  // mask: broadcastable to [B, Hq, Sq, Skv] (varlen: [B, Hq, max_seqlen_q, max_seqlen_kv])
  if (!a.maybe_mask.empty()) {
    const tensor_view& m = a.maybe_mask;
    check_view(m, "mask");
    if (m.dtype == dtype::i32)
      fail("mask: dtype must be bool (keep-mask) or f32/f16/bf16 (additive); got i32");
    if (m.device != p.device)
      fail("mask: device must match q (" + to_string(p.device) + "); got " + to_string(m.device));
    // varlen: the given bound where there is one (the offsets on a device: the problem's lengths)
    const std::int64_t full[4] = {p.batch, p.num_heads_q, p.is_varlen && a.max_seqlen_q != 0 ? a.max_seqlen_q : p.seqlen_q,
                                  p.is_varlen && a.max_seqlen_kv != 0 ? a.max_seqlen_kv : p.seqlen_kv};
    std::int64_t strides[4] = {0, 0, 0, 0};
    for (int i = 0; i < m.rank; ++i) {
      const int target = 4 - m.rank + i;
      if (m.sizes[i] == full[target]) {
        strides[target] = full[target] == 1 ? 0 : m.strides[i];
      } else if (m.sizes[i] == 1) {
        strides[target] = 0;
      } else {
        fail("mask: shape " + shape_string(m) + " does not broadcast to [B, Hq, Sq, Skv] = [" + std::to_string(full[0]) +
             ", " + std::to_string(full[1]) + ", " + std::to_string(full[2]) + ", " + std::to_string(full[3]) + "]");
      }
    }
    p.maybe_mask = m.data;
    p.mask_dtype = m.dtype;
    p.mask = {strides[0], strides[1], strides[2], strides[3]};
  }

  // features used
  feature_set f;
  if (a.causal) f = f | feature::causal;
  if (a.window_left >= 0 || a.window_right >= 0) f = f | feature::window;
  if ((a.causal || a.window_left >= 0 || a.window_right >= 0) && a.alignment == alignment::bottom_right)
    f = f | feature::bottom_right;
  if (p.maybe_mask) f = f | (p.mask_dtype == dtype::boolean ? feature::mask_keep : feature::mask_additive);
  if (p.group_size != 1) f = f | feature::gqa;
  if (a.softcap > 0) f = f | feature::softcap;
  if (p.maybe_lse) f = f | feature::lse;
  if (p.is_varlen) f = f | feature::varlen;
  if (p.head_dim_v != p.head_dim_qk) f = f | feature::head_dim_v_differs;
  p.features = f;
  return p;
}

std::int64_t problem::len_q(std::int64_t b) const {
  return is_varlen ? maybe_cu_seqlens_q[b + 1] - maybe_cu_seqlens_q[b] : seqlen_q;
}
std::int64_t problem::len_kv(std::int64_t b) const {
  return is_varlen ? maybe_cu_seqlens_kv[b + 1] - maybe_cu_seqlens_kv[b] : seqlen_kv;
}
std::int64_t problem::start_q(std::int64_t b) const { return is_varlen ? maybe_cu_seqlens_q[b] : 0; }
std::int64_t problem::start_kv(std::int64_t b) const { return is_varlen ? maybe_cu_seqlens_kv[b] : 0; }

double problem::flops() const {
  if (device.kind != device_kind::cpu && is_varlen) return nominal_flops();
  double pairs = 0;
  for (std::int64_t b = 0; b < batch; ++b) {
    const std::int64_t lq = len_q(b), lk = len_kv(b);
    for (std::int64_t i = 0; i < lq; ++i) {
      const key_range r = visible_keys(params, i, lq, lk);
      pairs += static_cast<double>(r.hi - r.lo);
    }
  }
  return 2.0 * pairs * static_cast<double>(num_heads_q) * static_cast<double>(head_dim_qk + head_dim_v);
}

double problem::nominal_flops() const {
  double f = 2.0 * static_cast<double>(batch) * static_cast<double>(num_heads_q) * static_cast<double>(seqlen_q) *
             static_cast<double>(seqlen_kv) * static_cast<double>(head_dim_qk + head_dim_v);
  return params.causal ? f / 2 : f;
}

}  // namespace attend
