// attend::merge_partials: Note [LSE merge] (attend/merge.h) over host tensors.
#include "attend/merge.h"

#include <string>

#include "attend/errors.h"
#include "core/views.h"
#include "cpu/elements.h"

namespace attend {
namespace {

bool is_float(dtype t) { return t == dtype::f32 || t == dtype::f16 || t == dtype::bf16; }

void require(bool ok, const std::string& what) {
  if (!ok) throw invalid_argument("merge_partials: " + what);
}

}  // namespace

void merge_partials(std::span<const tensor_view> outs, std::span<const tensor_view> lses, const tensor_view& out,
                    const tensor_view& maybe_lse) {
  require(!outs.empty(), "needs at least one part; got none");
  require(outs.size() == lses.size(), "needs one lse per part; got " + std::to_string(outs.size()) + " outs and " +
                                          std::to_string(lses.size()) + " lses");
  // Each view on its own first (rank, sizes, strides, null and misaligned data: Note
  // [Validation]); the shape checks below describe() them.
  detail::check_view(out, "merge_partials: out");
  if (!maybe_lse.empty()) detail::check_view(maybe_lse, "merge_partials: lse");
  for (std::size_t s = 0; s < outs.size(); ++s) {
    detail::check_view(outs[s], ("merge_partials: outs[" + std::to_string(s) + "]").c_str());
    detail::check_view(lses[s], ("merge_partials: lses[" + std::to_string(s) + "]").c_str());
  }
  // A cpu view of `rank` dimensions with memory behind it (none needed when empty).
  auto cpu_view = [](const tensor_view& t, int rank) {
    return t.rank == rank && (t.data != nullptr || t.numel() == 0) && t.device.kind == device_kind::cpu;
  };
  require(cpu_view(out, 4) && is_float(out.dtype),
          "out must be a cpu [B, Sq, H, Dv] f32/f16/bf16 tensor; got " + out.describe());
  const std::int64_t b = out.sizes[0], sq = out.sizes[1], h = out.sizes[2], dv = out.sizes[3];
  auto check_lse = [&](const tensor_view& l, const std::string& name) {
    require(cpu_view(l, 3) && l.dtype == dtype::f32 && l.sizes[0] == b && l.sizes[1] == h && l.sizes[2] == sq,
            name + " must be a cpu f32 [" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(sq) +
                "] tensor (B, H, Sq of out); got " + l.describe());
  };
  for (std::size_t s = 0; s < outs.size(); ++s) {
    const tensor_view& o = outs[s];
    require(cpu_view(o, 4) && is_float(o.dtype) && o.sizes == out.sizes,
            "outs[" + std::to_string(s) + "] must be a cpu f32/f16/bf16 tensor shaped like out (" + out.describe() +
                "); got " + o.describe());
    check_lse(lses[s], "lses[" + std::to_string(s) + "]");
  }
  if (!maybe_lse.empty()) check_lse(maybe_lse, "lse");
  auto non_negative = [&](const tensor_view& t) {
    for (int d = 0; d < t.rank; ++d)
      require(t.strides[static_cast<std::size_t>(d)] >= 0, "strides must be non-negative; got " + t.describe());
  };
  non_negative(out);
  non_negative(maybe_lse);
  for (std::size_t s = 0; s < outs.size(); ++s) {
    non_negative(outs[s]);
    non_negative(lses[s]);
  }
  // The outputs are written while the parts are read: no element twice, and no memory shared
  // with a part unless the output *is* that part (merging in place: each row reads all parts
  // before it writes).
  detail::check_no_self_overlap(out, "merge_partials: out");
  if (!maybe_lse.empty()) {
    detail::check_no_self_overlap(maybe_lse, "merge_partials: lse");
    require(!detail::overlaps(maybe_lse, out), "lse: memory overlaps out");
  }
  auto same = [](const tensor_view& x, const tensor_view& y) {
    return x.data == y.data && x.dtype == y.dtype && x.device == y.device && x.rank == y.rank && x.sizes == y.sizes &&
           x.strides == y.strides;
  };
  for (std::size_t s = 0; s < outs.size(); ++s)
    for (const tensor_view* part : {&outs[s], &lses[s]}) {
      require(same(out, *part) || !detail::overlaps(out, *part),
              "out: memory overlaps part " + std::to_string(s) + " (other than being that part)");
      require(maybe_lse.empty() || same(maybe_lse, *part) || !detail::overlaps(maybe_lse, *part),
              "lse: memory overlaps part " + std::to_string(s) + " (other than being that part)");
    }

  const auto parts = static_cast<std::int64_t>(outs.size());
  auto at = [](const tensor_view& t, std::int64_t i0, std::int64_t i1, std::int64_t i2, std::int64_t i3 = 0) {
    return i0 * t.strides[0] + i1 * t.strides[1] + i2 * t.strides[2] + (t.rank == 4 ? i3 * t.strides[3] : 0);
  };
  for (std::int64_t bi = 0; bi < b; ++bi)
    for (std::int64_t i = 0; i < sq; ++i)
      for (std::int64_t hi = 0; hi < h; ++hi) {
        const double l = merge_row(
            parts, dv,
            [&](std::int64_t s) {
              const tensor_view& t = lses[static_cast<std::size_t>(s)];
              return cpu::load(t.data, t.dtype, at(t, bi, hi, i));
            },
            [&](std::int64_t s, std::int64_t d) {
              const tensor_view& t = outs[static_cast<std::size_t>(s)];
              return cpu::load(t.data, t.dtype, at(t, bi, i, hi, d));
            },
            [&](std::int64_t d, double x) { cpu::store(out.data, out.dtype, at(out, bi, i, hi, d), x); });
        if (!maybe_lse.empty()) cpu::store(maybe_lse.data, dtype::f32, at(maybe_lse, bi, hi, i), l);
      }
}

}  // namespace attend
