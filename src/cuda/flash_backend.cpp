// Backend `flash_cuda`: host side. Turns the validated problem into flash_params, picks the path
// (on Hopper the wgmma/TMA kernel where sm90_kernel_for allows it, else tensor cores for f16/bf16
// at an instantiated width, the scalar fp32 kernel otherwise), plans the split-KV workspace and
// launches on the caller's stream.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>

#include "attend/backend.h"
#include "core/int_math.h"
#include "cuda/backends.h"
#include "cuda/cuda_check.h"
#include "cuda/flash.h"

namespace attend::cuda {
namespace {

struct tc_entry {
  elem e;
  int width;
  void (*launch)(const flash_params&, void*);
  void (*launch_decode)(const flash_params&, void*);  // Note [Decode tile]
};
// The rows of flash_kernels.txt (generated header), so dispatch and instantiation cannot drift.
constexpr tc_entry k_tc_table[] = {
#define ATTEND_FLASH_ROW(E, W) {elem::E, W, &launch_flash_tc<elem::E, W>, &launch_flash_tc_decode<elem::E, W>},
#define ATTEND_FLASH_SM90_ROW(E, W)
#include "cuda/flash_dispatch.inc"
#undef ATTEND_FLASH_SM90_ROW
#undef ATTEND_FLASH_ROW
};

// The Hopper kernels (the `sm90` rows; none unless the build's architectures include sm_90a),
// ended by a null entry.
struct sm90_entry {
  elem e;
  int width;
  bool (*launch)(const flash_params&, void*);
};
constexpr sm90_entry k_sm90_table[] = {
#define ATTEND_FLASH_ROW(E, W)
#define ATTEND_FLASH_SM90_ROW(E, W) {elem::E, W, &launch_flash_sm90<elem::E, W>},
#include "cuda/flash_dispatch.inc"
#undef ATTEND_FLASH_SM90_ROW
#undef ATTEND_FLASH_ROW
    {elem::f32, 0, nullptr},
};

elem elem_of(dtype t) { return t == dtype::f16 ? elem::f16 : t == dtype::bf16 ? elem::bf16 : elem::f32; }

// The narrowest instantiated width covering both head dims, or nullptr (scalar path). Dispatch
// decision: every feature (masks, windows, softcap, GQA, varlen, LSE, head_dim_v != head_dim_qk,
// any strides, split-KV) runs on the tensor-core kernel; masks and softcap take one of its masked
// score paths (tc_mode_for, flash.h), causal/window edges its band-only path. Only fp32 inputs take the
// scalar kernel (flash_generic.cu): mma.sync has no fp32 operands, and tf32 would not be exact
// fp32 arithmetic.
const tc_entry* tc_kernel_for(const problem& p) {
  if (p.dtype == dtype::f32) return nullptr;
  const tc_entry* best = nullptr;
  for (const tc_entry& e : k_tc_table)
    if (e.e == elem_of(p.dtype) && e.width >= std::max(p.head_dim_qk, p.head_dim_v) && (!best || e.width < best->width))
      best = &e;
  return best;
}

// Attribute `Attr` of device `index`, cached per device (indices from 64 on are asked each time).
template <cudaDeviceAttr Attr>
int device_attribute(int index) {
  static std::array<std::atomic<int>, 64> cache{};  // value + 1; 0: not asked yet
  const bool cached = index >= 0 && index < static_cast<int>(cache.size());
  if (cached)
    if (const int v = cache[static_cast<std::size_t>(index)].load(); v != 0) return v - 1;
  int v = 0;
  ATTEND_CUDA_CHECK(cudaDeviceGetAttribute(&v, Attr, index));
  if (cached) cache[static_cast<std::size_t>(index)].store(v + 1);
  return v;
}
// Compute capability (major * 10 + minor) of device `index`.
int compute_capability(int index) {
  return device_attribute<cudaDevAttrComputeCapabilityMajor>(index) * 10 +
         device_attribute<cudaDevAttrComputeCapabilityMinor>(index);
}
int sm_count(int index) { return device_attribute<cudaDevAttrMultiProcessorCount>(index); }

// The tile a call of the mma.sync kernel runs on: Note [Tile sizes], or Note [Decode tile].
struct tc_tile {
  int warps, block_m, block_n;
};
tc_tile tile_of(const problem& p, const tc_entry& kernel) {
  const int w = kernel.width;
  if (flash_decode_tile(p.seqlen_q)) return {flash_decode_warps(w), flash_decode_block_m(w), flash_decode_block_n(w)};
  return {flash_warps(w), flash_block_m(w), flash_block_n(w)};
}
// CTAs of the tile that fit an SM of the device.
int ctas_per_sm(const tc_tile& t, int width, int device_index) {
  if (t.warps == flash_warps(width) && t.block_m == flash_block_m(width)) return 2;  // Note [Tile sizes]: registers
  const int per_sm = device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>(device_index);
  const int reserved = device_attribute<cudaDevAttrReservedSharedMemoryPerBlock>(device_index);
  const int bytes = flash_smem_bytes_for(width, t.block_m, t.block_n);
  // why 8: a one-warp CTA of up to 255 registers a thread; 8 of them fill the SM's 64K registers
  return std::clamp(per_sm / (bytes + reserved), 1, 8 / t.warps);
}

// Whether the call's decode tile packs the query heads of a KV head into its rows (Note [Decode
// GQA packing], flash.h).
bool pack_gqa(const problem& p, const tc_entry* kernel) {
  return kernel != nullptr && flash_pack_gqa(flash_decode_tile(p.seqlen_q), p.group_size);
}
// Whether a packed call stays on the decode tile where the Hopper kernel could take it unsplit: when
// a KV head's packed rows fit two CTAs, which then stream each K/V tile once a CTA for the whole
// group (the Hopper kernel streams it once per query head). On the H200 (bf16, D = 128, 32:8
// heads, bench/RESULTS.md), packed against the Hopper kernel: 256 x 1 x 2048 (4 rows a KV head)
// 0.61 against 1.34 ms; 256 x 5 x 2048 (20 rows) 1.04 against 1.34; 256 x 8 x 2048 (32 rows) 1.04
// against 1.34, causal too. With more rows the three or more CTAs of a KV head each stream K/V and
// the Hopper kernel's wgmma wins: 256 x 12 x 2048 (48 rows) 1.49 against 1.36, 64 x 16 x 2048 (64
// rows) 0.56 against 0.35.
bool keep_packed(const problem& p, const tc_entry* kernel) {
  return pack_gqa(p, kernel) && p.seqlen_q * p.group_size <= 2 * flash_decode_block_m(kernel->width);
}

// Note [Split KV]: a call with few CTAs (decode: Sq small, B·Hq small) leaves SMs idle and too few
// loads in flight for memory bandwidth. Splitting the key tiles of each CTA into `splits` ranges,
// each writing an fp32 partial (out, lse) merged by LSE in a second kernel, restores parallelism.
// Which calls split is as it was measured on the H100 and H200: fewer CTAs than two waves of
// resident ones, and at least 16 key tiles (a call that does not split may take the Hopper kernel,
// which the split path cannot; not a GQA decode of few rows, keep_packed). How many: one
// wave of resident CTAs, not more (at least 2): a grid a little over a wave ran its last partial
// wave at nearly a full wave's time. On the H200 (bf16, width 128, the decode tile's 792 resident
// CTAs), scanning the count: 8 x 1 x 32768, 32:8 heads (64 packed CTAs) took 0.29 ms at 12 splits
// (768 CTAs), 0.41 at 16 and 0.40 at 25; 1 x 1 x 32768, 32:32 (32 CTAs) 0.17 ms at 24 splits,
// 0.26 at 25. (The count was 8 waves rounded up: 25 splits for 8 x 1 x 32768 MHA, 1.16 ms; 3
// splits, 1.07 ms; bench/RESULTS.md.)
// An unpacked call the Hopper kernel would take unsplit splits only while that kernel's work
// items would leave half the SMs idle: its TMA pipeline streams one item's K and V per SM at a
// rate that the split decode tiles did not beat beyond that. On the H200 (bf16, D = 128, 32:32
// heads, one round of an override, bench/RESULTS.md), unsplit on the Hopper kernel against split
// on the decode tile: B = 2 (64 items, 12 splits) 0.342 against 0.286 ms, B = 4 (128 items) 0.528
// against 0.545, B = 8 1.034 against 1.071, B = 16 (2 splits, 1.3 waves) 2.05 against 2.99. The
// rule also covers calls of more rows: a chunked prefill (bf16, 1 x 512 x 32768, 32:32, D = 128:
// 128 items) ran 2.27x as fast unsplit on the Hopper kernel as in 2 splits on the mma.sync kernel,
// causal (bottom-right) 2.28x, 4 x 64 x 8192 2.02x, f16 D = 64 1.45x.
// `hopper_items`: the Hopper kernel's work items if it would take the call unsplit, else 0.
int num_splits(const problem& p, const tc_entry* kernel, int sms, std::int64_t hopper_items) {
  if (kernel == nullptr || p.seqlen_q == 0) return 1;
  const tc_tile tile = tile_of(p, *kernel);
  const std::int64_t bm = tile.block_m, bn = tile.block_n;
  // the grid of launch_flash_tc_tile: row blocks x heads (packed: of group_size rows per query row,
  // per KV head) x batch
  const bool pack = pack_gqa(p, kernel);
  const std::int64_t rows = p.seqlen_q * (pack ? p.group_size : 1);
  const std::int64_t ctas = p.batch * (pack ? p.num_heads_kv : p.num_heads_q) * ((rows + bm - 1) / bm);
  const std::int64_t kv_tiles = (p.seqlen_kv + bn - 1) / bn;
  // why: the tile's CTAs that fit an SM: 2 for Note [Tile sizes]' (registers), several for the
  // decode tile's (its shared memory)
  const std::int64_t resident = attend::cuda::ctas_per_sm(tile, kernel->width, p.device.index) * sms;
  constexpr std::int64_t min_tiles = 8;  // why: each split must stream enough keys to amortise its
                                         // Q load and the merge
  if (ctas == 0 || ctas >= 2 * resident || kv_tiles < 2 * min_tiles || 2 * hopper_items > sms) return 1;
  const std::int64_t grid_z_room = 65535 / std::max<std::int64_t>(p.batch, 1);  // gridDim.z = B * splits
  const std::int64_t splits = std::min({std::max<std::int64_t>(resident / ctas, 2), kv_tiles / min_tiles,
                                        static_cast<std::int64_t>(k_flash_max_splits), grid_z_room});
  return static_cast<int>(std::max<std::int64_t>(splits, 1));
}

// Workspace layout: [Hopper work counter (256 B, when the Hopper path runs)] [a boolean mask's
// packed bits (when a tensor-core kernel reads them: packed_mask)] [split-KV partial outputs]
// [split-KV partial LSEs] [their second parts (Note [Split clamped rows])].
struct workspace_plan {
  int splits = 1;
  std::size_t counter_bytes = 0, bits_bytes = 0, out_bytes = 0, lse_bytes = 0;
  std::size_t total() const { return counter_bytes + bits_bytes + (splits > 1 ? out_bytes + 2 * lse_bytes : 0); }
};
workspace_plan plan_splits(const problem& p, const tc_entry* kernel, std::int64_t hopper_items) {
  workspace_plan w;
  w.splits = num_splits(p, kernel, kernel ? sm_count(p.device.index) : 1, hopper_items);
  const auto rows = static_cast<std::size_t>(w.splits) * static_cast<std::size_t>(p.batch * p.num_heads_q * p.seqlen_q);
  w.out_bytes = round_up(rows * static_cast<std::size_t>(p.head_dim_v) * sizeof(float), 256);
  w.lse_bytes = round_up(rows * sizeof(float), 256);
  return w;
}

bool vectorizable(const void* data, const strides_bshd& s) {
  return s.dim == 1 && reinterpret_cast<std::uintptr_t>(data) % 16 == 0 && s.batch % 8 == 0 && s.seq % 8 == 0 &&
         s.head % 8 == 0;
}

// Dispatch decision (Note [Hopper path], flash_sm90.cuh): the wgmma/TMA kernel runs a call only
// when every condition below holds; any other call runs the mma.sync kernel, which handles every
// feature. Each condition is a limit of the Hopper kernel, not a preference:
//   - a compute capability 9.0 device (its code is sm_90a machine code, which no other GPU runs)
//     and a Hopper row instantiated for the dtype at a width >= both head dims (64, 128; the
//     narrowest such: head dims below the width, and head_dim_v != head_dim_qk, come in zero-padded
//     by the tensor maps' out-of-bounds fill and go out clipped, Note [Hopper padded head dims]);
//   - no mask, or a boolean mask that varies along keys (packed_mask, Note [Hopper row masks])
//     or another mask that is the same for every query row (additive key masks, Note [Hopper key
//     masks]), neither with varlen;
//     no softcap;
//   - scale * log2(e), as the kernel computes it in float, positive and normal (its softmax scales
//     inside the exponent, after the row maximum of the raw scores; a factor of 0 would turn the
//     -inf of masked keys into NaN);
//   - no split-KV (a split call keeps the split path and its fp32 partials; which calls split:
//     Note [Split KV]), and not a GQA decode whose KV heads' rows fit two decode CTAs (keep_packed,
//     asked by plan_call: the Hopper kernel would stream each K/V tile once per query head; Note
//     [Decode GQA packing]);
//   - unit dim stride, 16-byte aligned base and strides for q, k, v and out (TMA's requirement:
//     q, k and v are loaded and out is stored through tensor maps);
//   - fewer than 2^30 work items (its scheduler counts them in an int; Note [Hopper scheduler]);
//   - the Hopper kernel not switched off (ATTEND_FLASH_CUDA_SM90=0 in the environment, or
//     flash_cuda_set_hopper_enabled(false): to compare the two kernels on one device, and for tests
//     of the mma.sync kernel at shapes the Hopper kernel would take).
// When the driver refuses a tensor map anyway, launch_flash_sm90 returns false and the call runs
// the mma.sync kernel.
std::atomic<bool>& sm90_enabled() {
  static std::atomic<bool> enabled = [] {
    const char* v = std::getenv("ATTEND_FLASH_CUDA_SM90");
    return v == nullptr || std::string_view(v) != "0";
  }();
  return enabled;
}
bool sm90_disabled() { return !sm90_enabled().load(std::memory_order_relaxed); }

// A mask both tensor-core kernels read as packed bits (Note [Hopper row masks], Note [mma.sync mask
// bits]): a boolean mask with a row per query or one for all of them (a key-padding mask), without
// softcap. On the Hopper path this is every boolean mask it takes (for a key-padding mask, measured
// faster than the ring of Note [Hopper key masks], which only additive key masks take), and on
// both a dropped key's -inf is selected, not added, so a NaN in k there never reaches the
// row. A mask constant along keys but with a row per query ([B, H, Sq, 1]) is read as it is (off
// the Hopper path): its packed bits would outgrow it. (A size-1 dimension has stride 0: a
// key-padding mask over Skv = 1 is constant along both.) With softcap, the mma.sync kernel's
// extras path reads the mask's bytes.
bool packed_mask(const flash_params& p) {
  return p.mask == mask_kind::keep_u8 && (p.mask_stride[3] != 0 || p.mask_stride[2] == 0) && p.softcap == 0.0f;
}

const sm90_entry* sm90_kernel_for(const problem& pr, const flash_params& p) {
  // Masks: a boolean one (Note [Hopper row masks]) or one that is the same for every query row
  // (Note [Hopper key masks]), not with varlen.
  const bool mask_ok = pr.maybe_mask == nullptr || (!pr.is_varlen && (p.mask_stride[2] == 0 || packed_mask(p)));
  if (sm90_disabled() || pr.dtype == dtype::f32 || !mask_ok ||
      pr.params.softcap > 0.0 || !(scale_log2(p) >= std::numeric_limits<float>::min()) || p.num_splits > 1 ||
      !(p.q_vec && p.k_vec && p.v_vec && p.out_vec))
    return nullptr;
  if (pr.seqlen_q > k_sm90_band_limit || pr.seqlen_kv > k_sm90_band_limit) return nullptr;  // Note [Hopper 32-bit bands]
  // Varlen (Note [Hopper varlen]): sequences of <= 2^29 rows (sm90_varlen_offsets) and packed
  // tensors of <= 2^30 rows, so that a row coordinate plus a block stays an int.
  if (pr.is_varlen && (pr.seqlen_q > k_sm90_varlen_limit || pr.seqlen_kv > k_sm90_varlen_limit ||
                       p.total_q > k_sm90_band_limit || p.total_kv > k_sm90_band_limit))
    return nullptr;
  const sm90_entry* best = nullptr;
  for (const sm90_entry& e : k_sm90_table)
    if (e.launch != nullptr && e.e == elem_of(pr.dtype) && e.width >= std::max(pr.head_dim_qk, pr.head_dim_v) &&
        (best == nullptr || e.width < best->width))
      best = &e;
  if (best == nullptr || sm90_item_count(p, best->width) >= (std::int64_t{1} << 30)) return nullptr;
  return compute_capability(pr.device.index) == 90 ? best : nullptr;
}

void copy_strides(std::int64_t (&dst)[4], const strides_bshd& s) {
  dst[0] = s.batch;
  dst[1] = s.seq;
  dst[2] = s.head;
  dst[3] = s.dim;
}

class flash_cuda_backend final : public backend {
 public:
  flash_cuda_backend() {
    traits_.description =
        "fused FlashAttention-2-style forward on tensor cores (mma.sync bf16/f16, fp32 accumulation; fp32 by a "
        "scalar path), split-KV for decode; on Hopper (sm_90a) a warp-specialised wgmma + TMA kernel for "
        "f16/bf16 at head dims up to 128";
    traits_.devices = {device_kind::cuda};
    traits_.dtypes = {dtype::f32, dtype::f16, dtype::bf16};
    traits_.features = feature_set::all();
    traits_.min_head_dim = 8;
    traits_.max_head_dim = 256;
    traits_.head_dim_multiple = 8;
    traits_.priority = 100;
  }
  std::string_view name() const override { return "flash_cuda"; }
  const backend_traits& traits() const override { return traits_; }
  memory_resource* memory_for(device d) const override {
    return d.kind == device_kind::cuda ? &device_memory(d.index) : nullptr;
  }

  std::size_t workspace_bytes(const problem& p, int num_threads) const override {
    (void)num_threads;
    return plan_call(p).ws.total();
  }

  void run(const problem& pr, const run_context& ctx) const override {
    if (pr.batch == 0 || pr.seqlen_q == 0 || pr.num_heads_q == 0) return;
    const device_guard guard(pr.device.index);
    call_plan plan = plan_call(pr);
    flash_params& p = plan.params;
    if (ctx.workspace.size() < plan.ws.total())
      throw invalid_argument("flash_cuda: workspace of " + std::to_string(ctx.workspace.size()) + " bytes, needs " +
                             std::to_string(plan.ws.total()));
    std::byte* const ws = ctx.workspace.data();
    if (plan.hopper != nullptr) {
      p.maybe_work_counter = reinterpret_cast<int*>(ws);
      p.persistent_ctas = sm_count(pr.device.index);
      p.sm90_group_heads = sm90_group_heads(p);
      p.sm90_row_origin = sm90_row_origin(p, plan.hopper->width);
      sm90_band_offsets(p);
    }
    // Both tensor-core launchers pack the mask into these bits before their kernel runs.
    if (plan.ws.bits_bytes > 0) plan_mask_bits(p, reinterpret_cast<std::uint32_t*>(ws + plan.ws.counter_bytes));
    if (plan.hopper != nullptr && plan.hopper->launch(p, ctx.maybe_cuda_stream)) return;
    if (p.num_splits > 1) {
      std::byte* const partials = ws + plan.ws.counter_bytes + plan.ws.bits_bytes;
      p.maybe_partial_out = reinterpret_cast<float*>(partials);
      p.maybe_partial_lse = reinterpret_cast<float*>(partials + plan.ws.out_bytes);
      p.maybe_partial_lse_low = reinterpret_cast<float*>(partials + plan.ws.out_bytes + plan.ws.lse_bytes);
    }
    if (plan.kernel) {
      (plan.decode ? plan.kernel->launch_decode : plan.kernel->launch)(p, ctx.maybe_cuda_stream);
      if (p.num_splits > 1) launch_flash_combine(elem_of(pr.dtype), p, ctx.maybe_cuda_stream);
    } else {
      launch_flash_generic(elem_of(pr.dtype), p, ctx.maybe_cuda_stream);
    }
  }

  // flash_cuda_tc_mode (cuda/backends.h): the mma.sync kernel's score path for `pr`.
  static const char* tc_mode_name(const problem& pr) {
    const call_plan plan = plan_call(pr);
    if (plan.hopper != nullptr || plan.kernel == nullptr) return "";
    const device_guard guard(pr.device.index);
    const tc_tile t = tile_of(pr, *plan.kernel);
    switch (tc_mode_for(plan.params, plan.ws.bits_bytes > 0, plan.kernel->width, t.warps, t.block_m, t.block_n)) {
      case tc_mode::plain: return "plain";
      case tc_mode::bits: return "bits";
      case tc_mode::staged: return "staged";
      case tc_mode::extras: return "extras";
    }
    return "";
  }

  // flash_cuda_tc_staged_fits (cuda/backends.h).
  static bool staged_fits(const problem& pr) {
    const call_plan plan = plan_call(pr);
    if (plan.kernel == nullptr) return false;
    const device_guard guard(pr.device.index);
    const tc_tile t = tile_of(pr, *plan.kernel);
    return tc_staged_fits(plan.params.mask, plan.kernel->width, t.warps, t.block_m, t.block_n);
  }

  // flash_cuda_num_splits (cuda/backends.h): the key ranges run() splits `pr` into.
  static int splits_of(const problem& pr) { return plan_call(pr).params.num_splits; }

  // flash_cuda_kernel (cuda/backends.h): the kernel run() launches first for `pr`.
  static const char* kernel_name(const problem& pr) {
    const call_plan plan = plan_call(pr);
    if (plan.hopper != nullptr) return "sm90";
    if (plan.kernel == nullptr) return "generic";
    if (plan.params.pack_gqa) return plan.params.num_splits > 1 ? "tc-decode-gqa-split" : "tc-decode-gqa";
    if (plan.decode) return plan.params.num_splits > 1 ? "tc-decode-split" : "tc-decode";
    return plan.params.num_splits > 1 ? "tc-split" : "tc";
  }

 protected:
  bool check_limits(const problem& p, diagnostics& diag) const override {
    if (const std::string why = device_unusable_reason(p.device.index); !why.empty()) diag.reject(why);
    constexpr std::int64_t int_max = std::numeric_limits<int>::max();
    if (p.seqlen_q > int_max || p.seqlen_kv > int_max || p.num_heads_q > 65535 || p.batch > 65535)
      diag.reject("sequence lengths must fit int32, heads and batch <= 65535 (grid limits); got Sq=" +
                  std::to_string(p.seqlen_q) + " Skv=" + std::to_string(p.seqlen_kv) + " Hq=" +
                  std::to_string(p.num_heads_q) + " B=" + std::to_string(p.batch));
    return diag.ok();
  }

 private:
  // Which kernel runs the call, its parameters (without workspace pointers) and its workspace.
  struct call_plan {
    const tc_entry* kernel = nullptr;   // nullptr: the scalar fp32 kernel
    bool decode = false;                // the kernel runs on the decode tile (Note [Decode tile])
    const sm90_entry* hopper = nullptr;  // the Hopper kernel, when sm90_kernel_for allows it
    workspace_plan ws;
    flash_params params;
  };
  static call_plan plan_call(const problem& pr) {
    call_plan c;
    c.kernel = tc_kernel_for(pr);
    c.decode = c.kernel != nullptr && flash_decode_tile(pr.seqlen_q);
    c.params = to_params(pr);
    c.params.pack_gqa = pack_gqa(pr, c.kernel);  // (on the decode tile only)
    // The Hopper kernel as it would take the call unsplit (keep_packed: not a GQA decode whose KV
    // heads' rows fit two decode CTAs). An unpacked call splits only where that kernel would leave
    // half the SMs idle (Note [Split KV]); a packed one splits as before.
    const sm90_entry* unsplit = c.kernel && !keep_packed(pr, c.kernel) ? sm90_kernel_for(pr, c.params) : nullptr;
    c.ws = plan_splits(pr, c.kernel, unsplit && !c.params.pack_gqa ? sm90_item_count(c.params, unsplit->width) : 0);
    c.params.num_splits = c.ws.splits;
    c.hopper = c.params.num_splits == 1 ? unsplit : nullptr;
    if (c.hopper != nullptr) c.ws.counter_bytes = 256;
    if (c.kernel != nullptr && packed_mask(c.params))
      c.ws.bits_bytes = round_up(static_cast<std::size_t>(mask_bits_words_total(c.params)) * sizeof(std::uint32_t), 256);
    return c;
  }

  static flash_params to_params(const problem& pr) {
    const attention_params& a = pr.params;
    flash_params p;
    p.q = a.q.data;
    p.k = a.k.data;
    p.v = a.v.data;
    p.out = a.out.data;
    p.maybe_lse = pr.maybe_lse;
    p.maybe_mask = pr.maybe_mask;
    p.maybe_cu_seqlens_q = pr.maybe_cu_seqlens_q;
    p.maybe_cu_seqlens_kv = pr.maybe_cu_seqlens_kv;
    copy_strides(p.q_stride, pr.q);
    copy_strides(p.k_stride, pr.k);
    copy_strides(p.v_stride, pr.v);
    copy_strides(p.out_stride, pr.out);
    p.lse_batch_stride = pr.lse_batch_stride;
    p.lse_head_stride = pr.lse_head_stride;
    p.lse_seq_stride = pr.lse_seq_stride;
    p.mask_stride[0] = pr.mask.batch;
    p.mask_stride[1] = pr.mask.head;
    p.mask_stride[2] = pr.mask.q;
    p.mask_stride[3] = pr.mask.kv;
    if (pr.maybe_mask) {
      switch (pr.mask_dtype) {
        case dtype::boolean: p.mask = mask_kind::keep_u8; break;
        case dtype::f16: p.mask = mask_kind::add_f16; break;
        case dtype::bf16: p.mask = mask_kind::add_bf16; break;
        default: p.mask = mask_kind::add_f32; break;
      }
      // Note [mma.sync staged masks]: pairs of keys of an additive mask as aligned copy units.
      const auto pair = static_cast<std::uintptr_t>(tc_mask_pair_bytes(p.mask));
      p.mask_pairs = p.mask != mask_kind::keep_u8 && pr.mask.kv == 1 && pr.mask.batch % 2 == 0 && pr.mask.head % 2 == 0 &&
                     pr.mask.q % 2 == 0 && reinterpret_cast<std::uintptr_t>(pr.maybe_mask) % pair == 0;
    }
    if (pr.is_varlen) {  // packed rows; rows past 2^31 saturate (sm90_kernel_for refuses them)
      auto rows = [](std::int64_t n) { return static_cast<int>(std::min<std::int64_t>(n, std::numeric_limits<int>::max())); };
      p.total_q = rows(a.q.sizes[0]);
      p.total_kv = rows(a.k.sizes[0]);
    }
    p.batch = static_cast<int>(pr.batch);
    p.seqlen_q = static_cast<int>(pr.seqlen_q);
    p.seqlen_kv = static_cast<int>(pr.seqlen_kv);
    p.num_heads_q = static_cast<int>(pr.num_heads_q);
    p.num_heads_kv = static_cast<int>(pr.num_heads_kv);
    p.group_size = static_cast<int>(pr.group_size);
    p.head_dim_qk = static_cast<int>(pr.head_dim_qk);
    p.head_dim_v = static_cast<int>(pr.head_dim_v);
    p.scale = static_cast<float>(pr.scale);
    p.softcap = static_cast<float>(a.softcap);
    p.causal = a.causal;
    p.bottom_right = a.alignment == alignment::bottom_right;
    p.window_left = a.window_left;
    p.window_right = a.window_right;
    p.q_vec = vectorizable(a.q.data, pr.q);
    p.k_vec = vectorizable(a.k.data, pr.k);
    p.v_vec = vectorizable(a.v.data, pr.v);
    p.out_vec = vectorizable(a.out.data, pr.out);
    return p;
  }

  backend_traits traits_;
};

}  // namespace

std::shared_ptr<const backend> make_flash_cuda_backend() { return std::make_shared<flash_cuda_backend>(); }

const char* flash_cuda_kernel(const problem& p) { return flash_cuda_backend::kernel_name(p); }
int flash_cuda_num_splits(const problem& p) { return flash_cuda_backend::splits_of(p); }

const char* flash_cuda_tc_mode(const problem& p) { return flash_cuda_backend::tc_mode_name(p); }

bool flash_cuda_tc_staged_fits(const problem& p) { return flash_cuda_backend::staged_fits(p); }

bool tc_two_ctas_fit(int bytes) {
  int dev = 0;
  ATTEND_CUDA_CHECK(cudaGetDevice(&dev));
  const int per_sm = device_attribute<cudaDevAttrMaxSharedMemoryPerMultiprocessor>(dev);
  const int reserved = device_attribute<cudaDevAttrReservedSharedMemoryPerBlock>(dev);
  return bytes <= device_attribute<cudaDevAttrMaxSharedMemoryPerBlockOptin>(dev) && 2 * (bytes + reserved) <= per_sm;
}

bool flash_cuda_hopper_available(int device_index) {
  if (sm90_disabled() || compute_capability(device_index) != 90) return false;
  for (const sm90_entry& e : k_sm90_table)
    if (e.launch != nullptr) return true;
  return false;
}

bool flash_cuda_set_hopper_enabled(bool enabled) { return sm90_enabled().exchange(enabled); }

}  // namespace attend::cuda
