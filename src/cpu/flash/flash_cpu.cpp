// Backend `flash_cpu`: fused, tiled attention with online softmax (FlashAttention-style) on the
// CPU. The Sq×Skv score matrix never exists: each thread holds one K/V tile's scores for one
// work item at a time (Note [Flash tiles] in plan.cpp). This file is the driver: it plans the
// work and workspace, spreads work items over OpenMP threads, and merges split-KV partials
// (Note [Flash split KV]). The kernels are in kernel_impl.h, instantiated per instruction set.
//
// Shapes and semantics: attend/params.h. Threads: run_context::num_threads (0: OpenMP default).
// Instruction set: the best the CPU reports; ATTEND_CPU_ISA=scalar|avx2|avx512 lowers it.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>
#include <string>

#include "attend/backend.h"
#include "attend/errors.h"
#include "attend/merge.h"
#include "core/int_math.h"
#include "cpu/backends.h"
#include "cpu/elements.h"
#include "cpu/flash/plan.h"

namespace attend::cpu {
namespace {

using flash::item;
using flash::tile_config;

// Note [Flash split KV]: when there are too few work items for the threads (decode: one query
// row per head), each item's keys are split into `splits` chunks that run as separate pieces and
// write normalised partial rows plus their LSE; merge_row (Note [LSE merge], attend/merge.h) then
// combines them. This is flash-decoding on the CPU. Limitation: a row whose scores all sit near
// -FLT_MAX (every key carries the dtype's lowest value as an additive bias, the usual padding
// value) has pieces whose LSE cannot hold log(sum) in one number: such a piece writes its bias
// and ln l apart, and the merge weighs the pieces by their key counts (Note [Split clamped rows],
// attend/merge.h), so the row is the reference's average of V over its keys.
// Why 2 pieces per thread: dynamic scheduling can then even out uneven pieces.
constexpr std::int64_t k_pieces_per_thread = 2;
// Why 512 keys: below this a split's fixed cost (packing Q, the partial rows, the merge) is no
// longer small next to its share of the K/V stream.
constexpr std::int64_t k_min_split_keys = 512;

struct work_plan {
  tile_config tiles;
  std::int64_t items = 0;   // (q tile, kv head) pairs
  std::int64_t splits = 1;  // KV chunks per item
  std::size_t scratch_offset = 0, partial_offset = 0, total_bytes = 0;
};

std::int64_t q_tiles(const problem& p, const tile_config& c, std::int64_t b) { return ceil_div(p.len_q(b), c.block_q); }
std::int64_t head_blocks(const problem& p, const tile_config& c) { return ceil_div(p.num_heads_kv, c.heads_per_item); }
// Floats of one piece's partial output: [heads][rows][Dv], then [heads][rows] LSE, then
// [heads][rows] of the LSE's second part (Note [Split clamped rows]).
std::int64_t piece_floats(const problem& p, const tile_config& c) {
  return c.heads_per_item * c.rows * (p.head_dim_v + 2);
}

// Whether V holds no Inf or NaN over the keys of every sequence (the exponent test of the kernel's
// per-tile scan, has_non_finite; Note [Flash masked non-finite V]).
bool v_all_finite(const problem& p, int threads) {
  const auto exp_mask = non_finite_exponent(p.dtype);
  auto scan = [&](auto bits_of_one) {
    using bits_t = decltype(bits_of_one);
    const auto* v = static_cast<const bits_t*>(p.params.v.data);
    bool bad = false;
    for (std::int64_t b = 0; b < p.batch && !bad; ++b) {
      const bits_t* seq = v + b * p.v.batch + p.start_kv(b) * p.v.seq;
      const std::int64_t keys = p.len_kv(b);
#pragma omp parallel for num_threads(threads) schedule(static) reduction(|| : bad)
      for (std::int64_t j = 0; j < keys; ++j)
        for (std::int64_t h = 0; h < p.num_heads_kv; ++h) {
          const bits_t* row = seq + j * p.v.seq + h * p.v.head;
          for (std::int64_t d = 0; d < p.head_dim_v; ++d) bad = bad || (row[d * p.v.dim] & exp_mask) == exp_mask;
        }
    }
    return !bad;
  };
  switch (p.dtype) {
    case dtype::f32: return scan(std::uint32_t{});
    case dtype::bf16:
    case dtype::f16: return scan(std::uint16_t{});
    default: return false;
  }
}

work_plan plan_work(const problem& p, int threads, flash::isa target) {
  work_plan w;
  w.tiles = flash::make_tile_config(p, target);
  std::int64_t tiles = 0;
  for (std::int64_t b = 0; b < p.batch; ++b) tiles += q_tiles(p, w.tiles, b);
  w.items = tiles * head_blocks(p, w.tiles);
  if (w.items > 0 && w.items < k_pieces_per_thread * threads)
    w.splits = std::max<std::int64_t>(
        1, std::min(ceil_div(k_pieces_per_thread * threads, w.items), p.seqlen_kv / k_min_split_keys));
  w.scratch_offset = round_up(static_cast<std::size_t>(p.batch + 1) * sizeof(std::int64_t), 64);
  w.partial_offset = w.scratch_offset + static_cast<std::size_t>(threads) * w.tiles.bytes_per_thread;
  const std::size_t partial_floats =
      w.splits > 1 ? static_cast<std::size_t>(w.items * w.splits * piece_floats(p, w.tiles)) : 0;
  w.total_bytes = w.partial_offset + round_up(partial_floats * sizeof(float), 64);
  return w;
}

class flash_backend final : public backend {
 public:
  flash_backend() {
    traits_.description = "fused tiled attention, online softmax, AVX-512 (bf16 dot) / AVX2 / scalar, OpenMP";
    traits_.devices = {device_kind::cpu};
    traits_.dtypes = {dtype::f32, dtype::f16, dtype::bf16};
    traits_.features = feature_set::all();
    traits_.min_head_dim = 1;
    // Why 1024: the per-thread scratch (Q panel and K/V tiles) grows with the head dim; beyond
    // this it no longer fits the L2 the tiles are sized for.
    traits_.max_head_dim = 1024;
    traits_.priority = 50;  // preferred over unfused_cpu (10)
  }
  std::string_view name() const override { return "flash_cpu"; }
  const backend_traits& traits() const override { return traits_; }

  std::size_t workspace_bytes(const problem& p, int num_threads) const override {
    return plan_work(p, thread_count(num_threads), flash::chosen_isa()).total_bytes;
  }

  void run(const problem& p, const run_context& ctx) const override {
    const int threads = thread_count(ctx.num_threads);
    work_plan w = plan_work(p, threads, flash::chosen_isa());
    // Under a mask, tiles whose P has a zero scan their V tile for Inf/NaN (Note [Flash masked
    // non-finite V]), once for every row block of a sequence: where a sequence has several, one
    // scan of V first spares them (masked calls 1.12-1.24x at S = 2048; bench/RESULTS.md).
    // A decode call (one row block) scans each tile once anyway.
    if (p.maybe_mask != nullptr && w.items > p.batch * head_blocks(p, w.tiles)) w.tiles.v_finite = v_all_finite(p, threads);
    if (ctx.workspace.size() < w.total_bytes)
      throw runtime_error("flash_cpu: workspace of " + std::to_string(ctx.workspace.size()) + " bytes; needs " +
                          std::to_string(w.total_bytes));
    std::byte* base = ctx.workspace.data();
    auto* prefix = reinterpret_cast<std::int64_t*>(base);
    prefix[0] = 0;
    for (std::int64_t b = 0; b < p.batch; ++b) prefix[b + 1] = prefix[b] + q_tiles(p, w.tiles, b);
    auto* partial = reinterpret_cast<float*>(base + w.partial_offset);
    const std::int64_t splits = w.splits, piece = piece_floats(p, w.tiles), hpi = w.tiles.heads_per_item;
    const flash::item_kernel kernel = flash::kernel_for(w.tiles.target);
    const std::int64_t pieces = w.items * splits;

    // Piece t: item t / splits, KV chunk t % splits. Items run the last query tiles of a
    // sequence first (the longest under top-left causal), so dynamic scheduling ends evenly.
    // Why head-major (all query tiles of a KV head block, then the next block): the threads then
    // sweep the same head's K/V at the same time and it stays in L3 (fp32 D=128 S=4096: 4 MiB of
    // K+V per head, against 64 MiB for all 16 heads), instead of every item streaming its head
    // from DRAM; the K/V tile loads were the largest stall left in the profile.
    const std::int64_t all_tiles = prefix[p.batch];
    auto item_of = [&](std::int64_t index, std::int64_t split) {
      item it;
      it.hk = index / all_tiles * hpi;
      it.hk_count = std::min(hpi, p.num_heads_kv - it.hk);
      const std::int64_t tile = index % all_tiles;
      it.b = std::upper_bound(prefix, prefix + p.batch + 1, tile) - prefix - 1;
      const std::int64_t count = prefix[it.b + 1] - prefix[it.b];
      it.q_begin = (count - 1 - (tile - prefix[it.b])) * w.tiles.block_q;
      it.q_count = std::min(w.tiles.block_q, p.len_q(it.b) - it.q_begin);
      const std::int64_t len_kv = p.len_kv(it.b);
      const std::int64_t chunk = ceil_div(ceil_div(len_kv, splits), w.tiles.block_kv) * w.tiles.block_kv;
      it.kv_begin = std::min(split * chunk, len_kv);
      it.kv_end = std::min(it.kv_begin + chunk, len_kv);
      if (splits > 1) {
        it.maybe_partial_out = partial + (index * splits + split) * piece;
        it.maybe_partial_lse = it.maybe_partial_out + hpi * w.tiles.rows * p.head_dim_v;
        it.maybe_partial_lse_low = it.maybe_partial_lse + hpi * w.tiles.rows;
      }
      return it;
    };

#pragma omp parallel num_threads(threads)
    {
      std::byte* mine = base + w.scratch_offset + static_cast<std::size_t>(omp_get_thread_num()) * w.tiles.bytes_per_thread;
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t t = 0; t < pieces; ++t) kernel(p, w.tiles, item_of(t / splits, t % splits), mine);
    }
    if (splits > 1) merge(p, w, item_of, partial, threads);
  }

 private:
  template <class item_fn>
  static void merge(const problem& p, const work_plan& w, const item_fn& item_of, const float* partial, int threads) {
    const std::int64_t dv = p.head_dim_v, rows = w.tiles.rows, splits = w.splits, gs = p.group_size;
    const std::int64_t hpi = w.tiles.heads_per_item, piece = piece_floats(p, w.tiles);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t t = 0; t < w.items * hpi * rows; ++t) {
      const std::int64_t index = t / (hpi * rows), hh = t / rows % hpi, m = t % rows;
      const item it = item_of(index, 0);
      if (hh >= it.hk_count || m >= it.q_count * gs) continue;
      const float* first = partial + index * splits * piece;
      const std::int64_t row = hh * rows + m, lse_at = hpi * rows * dv + row, low_at = lse_at + hpi * rows;
      const std::int64_t h = (it.hk + hh) * gs + m % gs, i = it.q_begin + m / gs, q_row = p.start_q(it.b) + i;
      const std::int64_t o = it.b * p.out.batch + q_row * p.out.seq + h * p.out.head;
      double lse = merge_row(
          splits, dv, [&](std::int64_t s) { return double{first[s * piece + lse_at]}; },
          [&](std::int64_t s) { return double{first[s * piece + low_at]}; },
          [&](std::int64_t s, std::int64_t d) { return double{first[s * piece + row * dv + d]}; },
          [&](std::int64_t d, double x) { store(p.params.out.data, p.dtype, o + d * p.out.dim, x); });
      // Every piece empty although the row has a key: the scores overflowed to -inf (as in
      // run_item's finalise).
      if (lse == -__builtin_inf() && row_has_live_key(p, it.b, h, i)) {
        lse = __builtin_nan("");
        for (std::int64_t d = 0; d < dv; ++d) store(p.params.out.data, p.dtype, o + d * p.out.dim, lse);
      }
      if (p.maybe_lse)
        p.maybe_lse[it.b * p.lse_batch_stride + h * p.lse_head_stride + q_row * p.lse_seq_stride] = static_cast<float>(lse);
    }
  }

 protected:
  bool check_limits(const problem& p, diagnostics& diag) const override {
    constexpr std::int64_t k_max_keys = std::numeric_limits<std::int32_t>::max() - 2 * 64;
    if (p.seqlen_kv > k_max_keys)
      diag.reject("sequence length (keys) must be at most 2^31 - 129 = " + std::to_string(k_max_keys) +
                  " (32-bit band bounds, two 64-key tiles of room); got " + std::to_string(p.seqlen_kv));
    return diag.ok();
  }

 private:
  backend_traits traits_;
};

}  // namespace

std::shared_ptr<const backend> make_flash_backend() { return std::make_shared<flash_backend>(); }

}  // namespace attend::cpu
