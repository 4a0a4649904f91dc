// flash_cuda: the plain parameter block its kernels receive, the tile configuration shared by the
// host heuristics and the kernel templates, and the launchers (defined in .cu files).
//
// Shapes and strides follow attend::problem (params.h): every tensor is addressed as
// [batch, seq, head, dim] with 64-bit element strides; varlen tensors have batch stride 0 and seq
// stepping over packed rows, sequence b starting at cu_seqlens[b] (device memory).
#pragma once

#include <cstdint>

namespace attend::cuda {

enum class elem : std::uint8_t { f32, f16, bf16 };
enum class mask_kind : std::uint8_t { none, keep_u8, add_f32, add_f16, add_bf16 };

// log2(e): the kernels keep scores in log2 units (scale * log2(e) * q.k) and use exp2.
inline constexpr float k_log2e = 1.4426950408889634f;

struct flash_params {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* out = nullptr;
  float* maybe_lse = nullptr;
  const void* maybe_mask = nullptr;
  const std::int32_t* maybe_cu_seqlens_q = nullptr;  // device; null: dense
  const std::int32_t* maybe_cu_seqlens_kv = nullptr;

  // strides in elements: batch, seq, head, dim
  std::int64_t q_stride[4]{}, k_stride[4]{}, v_stride[4]{}, out_stride[4]{};
  std::int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_seq_stride = 0;
  std::int64_t mask_stride[4]{};  // batch, head, q, kv (0 broadcasts)
  mask_kind mask = mask_kind::none;
  // An additive mask whose keys pair into aligned copy units: contiguous along keys, even strides,
  // base aligned to two elements (the mma.sync kernel's staged masks, Note [mma.sync staged masks]).
  bool mask_pairs = false;

  int batch = 0, seqlen_q = 0, seqlen_kv = 0;  // varlen: max over sequences
  int num_heads_q = 0, num_heads_kv = 0, group_size = 1;
  // Note [Decode GQA packing]: the decode tile's rows are (query row, head of the group) pairs of
  // one KV head: blockIdx.y is the KV head, and the rows of a sequence are seqlen_q * group_size.
  bool pack_gqa = false;
  int head_dim_qk = 0, head_dim_v = 0;
  float scale = 1.0f;
  float softcap = 0.0f;        // 0: off
  bool causal = false;
  bool bottom_right = false;
  std::int64_t window_left = -1, window_right = -1;  // -1: unbounded

  // Tile loads may use 16-byte cp.async when the tensor's dim stride is 1 and its base and other
  // strides are 16-byte aligned; otherwise they gather element by element (still tensor cores).
  bool q_vec = false, k_vec = false, v_vec = false;
  // The output (bf16/f16, not split partials) is stored in 16-byte vectors under the same rule
  // (and by TMA on the Hopper path, which needs it too).
  bool out_vec = false;

  // Split-KV (Note [Split KV]): num_splits > 1 writes fp32 partials to the workspace and a second
  // kernel merges them by LSE, at most k_flash_max_splits.
  int num_splits = 1;
  float* maybe_partial_out = nullptr;  // [splits, B, Hq, Sq, Dv]
  float* maybe_partial_lse = nullptr;  // [splits, B, Hq, Sq]
  float* maybe_partial_lse_low = nullptr;  // the same: each lse's second part (Note [Split clamped rows])

  // The Hopper path's persistent schedule (Note [Hopper scheduler], flash_sm90.cuh): an int in the
  // workspace that its launcher zeroes on the stream and its CTAs count work items with, and the
  // number of CTAs (the device's SM count).
  int* maybe_work_counter = nullptr;
  int persistent_ctas = 0;
  // (batch, head) pairs per group of the item order (Note [Hopper scheduler]); 1: (batch, head) major.
  int sm90_group_heads = 1;
  // First row of the row-block grid (sm90_row_origin): 0, or in (-block_m, 0] when the partial row
  // block goes to the top of the sequence.
  int sm90_row_origin = 0;
  // The band as two 32-bit offsets (sm90_band_offsets): row i sees keys
  // [clamp(i + sm90_band_lo, 0, Skv), clamp(i + sm90_band_hi, lo, Skv)) (sm90_band_of).
  int sm90_band_lo = -(1 << 30), sm90_band_hi = 1 << 30;
  // Varlen (Note [Hopper varlen], flash_sm90.cuh): the window bounds clamped to 2^29 (-1: unbounded;
  // the right one is 0 under causal), from which the kernel takes each sequence's band offsets
  // (sm90_varlen_offsets), and the packed rows of q/out and k/v (the tensor maps' extent).
  int sm90_window_left = -1, sm90_window_right = -1;
  int total_q = 0, total_kv = 0;
  // A boolean mask that a tensor-core kernel reads packed (packed_mask in flash_backend.cpp; Note
  // [Hopper row masks] in flash_sm90.cuh, Note [mma.sync mask bits] in flash_tc.cuh): packed by
  // launch_mask_bits into the workspace, bit j % 32 of word j / 32 of a row = keep key j; word
  // strides over batch, head and row (0 broadcasts, as the mask does; a row is
  // mask_bits_words_per_row words, a multiple of 4: 128 keys).
  std::uint32_t* maybe_mask_bits = nullptr;
  std::int64_t mask_bits_stride[3]{};
};

// The packed keep-mask of Note [Hopper row masks]: words per row, the mask's heads and rows per
// head (1 where it broadcasts over them: a key-padding mask has one row), and words in all.
constexpr int mask_bits_words_per_row(int seqlen_kv) {  // 64-bit: no overflow near INT_MAX keys
  return static_cast<int>((std::int64_t{seqlen_kv} + 127) / 128 * 4);
}
constexpr std::int64_t mask_heads(const flash_params& p) { return p.mask_stride[1] != 0 ? p.num_heads_q : 1; }
constexpr std::int64_t mask_rows(const flash_params& p) { return p.mask_stride[2] != 0 ? p.seqlen_q : 1; }
inline std::int64_t mask_bits_words_total(const flash_params& p) {
  const std::int64_t batches = p.mask_stride[0] != 0 ? p.batch : 1;
  return batches * mask_heads(p) * mask_rows(p) * mask_bits_words_per_row(p.seqlen_kv);
}
// Points p's packed mask at `bits` (mask_bits_words_total(p) words, 16-byte aligned) and sets its
// strides; launch_mask_bits fills it.
inline void plan_mask_bits(flash_params& p, std::uint32_t* bits) {
  const std::int64_t row = mask_bits_words_per_row(p.seqlen_kv), head = row * mask_rows(p);
  p.mask_bits_stride[2] = p.mask_stride[2] != 0 ? row : 0;
  p.mask_bits_stride[1] = p.mask_stride[1] != 0 ? head : 0;
  p.mask_bits_stride[0] = p.mask_stride[0] != 0 ? head * mask_heads(p) : 0;
  p.maybe_mask_bits = bits;
}

// Note [Tile sizes]: one CTA of flash_warps(width) warps owns flash_block_m(width) query rows of
// one (batch, query head); each warp owns block_m / warps consecutive rows (one or two m16 row
// blocks of mma.m16n8k16) and the CTA walks the visible key tiles of flash_block_n(width) keys, K
// and V double-buffered in shared memory. Head dims are padded up to the instantiated width (64,
// 128, 256). The numbers below were measured on an H100 by bench/flash_tune.cu (scripts/gpu-check
// tune; bench/RESULTS.md). The register budget per thread is the O accumulator (rows_per_warp x
// width / 32 floats), the S tile (rows_per_warp x block_n / 32 floats) and, when they fit, the Q
// fragments (half of O's count), under the 255-register cap.
constexpr int flash_warps(int width) {
  (void)width;
  return 4;  // why: 4 warps x 2 CTAs per SM; with 32 rows per warp every K/V fragment read from
             // shared memory feeds two m16 MMAs, half the shared-memory traffic per MMA of 16-row
             // warps. 8 warps x 16 rows measured 129-166 against 181-228 TFLOP/s (H100, bf16).
}
constexpr int flash_block_m(int width) {
  // why: 128 rows = 32 per warp where O (32 x width / 32 = width floats per thread) fits the
  // 255-register cap; at width 256 O alone is 256 floats at 32 rows, so 16 rows per warp.
  return width <= 128 ? 128 : 64;
}
constexpr int flash_block_n(int width) {
  // why: registers. S costs rows_per_warp x block_n / 32 floats per thread beside O's width floats.
  // Width 64: 64 keys (S 64 + O 64 + Q 32) fit without spills; 128 keys spill (H100, bf16:
  // 187-216 vs 239-271 TFLOP/s). Width 128: 64 keys (S 64 + O 128) spill ~100 words per thread;
  // 32 keys measured 234-256 vs 193-224 TFLOP/s, causal and not. Width 256 (16 rows per warp, O
  // 128): 32 keys. Shared memory: (128 + 4 x 64) x 128 B = 48 KB (width 64), (128 + 4 x 32) x
  // 256 B = 64 KB (width 128), (64 + 4 x 32) x 512 B = 96 KB (width 256): two CTAs per SM fit.
  return width <= 64 ? 64 : 32;
}
constexpr int flash_rows_per_warp(int width) { return flash_block_m(width) / flash_warps(width); }
// Note [Decode tile]: a call of at most 16 query rows per (batch, head) (decode, a few speculative
// tokens) fills one m16 row block of one warp; on the tile above its CTA holds 128 rows, so three
// of its four warps only load and the live one computes a second, empty row block. At 255
// registers a thread two such CTAs fit an SM: two warps computing per SM. Split-KV decode measured
// 2.6 TB/s on the H100 and on the H200 alike (0.60x cuDNN on the H200, bench/RESULTS.md), and a
// deeper cp.async pipeline made it slower (0.75-0.83x): the bound is the live warps, not the
// bytes in flight. So such calls run the same kernel on a one-warp CTA of 16 rows (Q 16 rows, K/V
// tiles as above: 34-36 KB of shared memory at widths 64 and 128, 72 KB at 256), several CTAs per
// SM, each warp computing only its rows. Split-KV counts CTAs per SM from the shared memory.
// Measured 1.26-1.47x on decode shapes, 89% of copy bandwidth on the H200; 95% once split-KV
// filled one wave and the merge read a row's splits together (Note [Split KV]; bench/RESULTS.md).
constexpr int k_flash_decode_rows = 16;
constexpr int flash_decode_warps(int width) {
  (void)width;
  return 1;
}
constexpr int flash_decode_block_m(int width) {
  (void)width;
  return k_flash_decode_rows;
}
constexpr int flash_decode_block_n(int width) { return flash_block_n(width); }
// The most key ranges split-KV cuts a call into (Note [Split KV], flash_backend.cpp); the merge
// holds two splits' weights a lane.
constexpr int k_flash_max_splits = 64;
// Whether a call with `seqlen_q` query rows (varlen: the longest) runs on the decode tile.
constexpr bool flash_decode_tile(std::int64_t seqlen_q) { return seqlen_q <= k_flash_decode_rows; }
// Note [Decode GQA packing]: under GQA a decode call has one query row per query head, so each
// one-warp CTA of the decode tile computed 15 empty rows of its 16 and the group_size CTAs of a KV
// head each streamed that head's K and V (through L2, at one row's work per MMA). On the decode
// tile the rows of a CTA are instead (query row i, head g of the group) pairs of one KV head,
// packed row r = i * group_size + g (rows of one query row are adjacent, so the band stays
// monotone in r): a 32:8 decode fills 4 of 16 rows and streams each K/V tile once for them. On
// every score path: a mask's row (its terms, packed bits or staged pairs) is read at each packed
// row's (head, query row). Only where it shrinks the grid: group_size > 1. The Hopper kernel does
// not pack; an unsplit packed call whose KV heads' rows fit two CTAs never goes there (keep_packed,
// flash_backend.cpp).
constexpr bool flash_pack_gqa(bool decode_tile, std::int64_t group_size) { return decode_tile && group_size > 1; }
// Whether the warp keeps its Q fragments in registers for the whole key loop (instead of reading
// them from shared memory every key tile).
constexpr bool flash_q_in_registers(int width, int rows_per_warp, int block_n) {
  // why: Q costs rows x width / 64 registers; beside O (rows x width / 32) and S (rows x block_n /
  // 32) the total must leave ~50 of the 255 registers for addresses, softmax state and fragments,
  // or the kernel spills. Width 64 at 32 rows: 32 + 64 + 64 = 160, kept; width 128: 256, not.
  return rows_per_warp * width / 64 + rows_per_warp * width / 32 + rows_per_warp * block_n / 32 <= 200;
}
// Whether the kernel skips the k-steps of zero padding (head dim below the width) by a run-time
// branch, or computes them on zeros.
constexpr bool flash_skip_padded_steps(int width) {
  // why: the branch splits the unrolled MMA chain into basic blocks (ptxas cannot hoist the next
  // step's ldmatrix across it), which costs the common unpadded case: on H100 (bf16, unpadded)
  // width 64 ran 239-271 TFLOP/s without it and 180-198 with it; width 128 was within +-5%
  // either way. At width 256 the padding can be up to 120 of 256 dims, so the skip stays there.
  return width > 128;
}
constexpr int flash_smem_bytes_for(int width, int block_m, int block_n) { return (block_m + 4 * block_n) * width * 2; }
constexpr int flash_smem_bytes(int width) { return flash_smem_bytes_for(width, flash_block_m(width), flash_block_n(width)); }
// The score paths of the mma.sync kernel (flash_tc.cuh), one instantiation each: plain (the band
// only), bits (a boolean mask read from its packed bits, Note [mma.sync mask bits]), staged (an
// additive mask through shared memory, Note [mma.sync staged masks]) and extras (any other mask or
// softcap, the mask read element by element).
enum class tc_mode : std::uint8_t { plain, bits, staged, extras };
constexpr int tc_mask_pair_bytes(mask_kind m) { return m == mask_kind::add_f32 ? 8 : 4; }
// One stage of staged mask terms (Note [mma.sync staged masks]): a pair of keys per n8 block per
// row of each thread, at `pair_bytes` each.
constexpr int tc_staged_stage_bytes(int warps, int block_m, int block_n, int pair_bytes) {
  return warps * 32 * (block_m / warps / 16) * 2 * (block_n / 8) * pair_bytes;
}
// Whether two CTAs with `bytes` of shared memory each fit an SM of the current device
// (flash_backend.cpp).
bool tc_two_ctas_fit(int bytes);
// Whether the staged mask terms of `mask` (Note [mma.sync staged masks]) leave room for two CTAs
// per SM at this tile shape: staging may not cost occupancy. (The launcher sets the kernel's
// shared-memory limit once, at the f32 size, which is at most twice the 16-bit size and so fits
// a block whenever the 16-bit size fits two per SM.)
inline bool tc_staged_fits(mask_kind mask, int width, int warps, int block_m, int block_n) {
  return tc_two_ctas_fit(flash_smem_bytes_for(width, block_m, block_n) +
                         2 * tc_staged_stage_bytes(warps, block_m, block_n, tc_mask_pair_bytes(mask)));
}
// The mma.sync kernel's score path for p at a tile shape, its launcher's decision; `bits`: p's
// boolean mask is packed (p.maybe_mask_bits; the backend plans it where packed_mask allows, never
// with softcap). Staged masks (p.mask_pairs: an additive mask) only without softcap, whose path is
// extras, and only where tc_staged_fits.
inline tc_mode tc_mode_for(const flash_params& p, bool bits, int width, int warps, int block_m, int block_n) {
  if (bits) return tc_mode::bits;
  if (p.mask_pairs && p.softcap == 0.0f && tc_staged_fits(p.mask, width, warps, block_m, block_n)) return tc_mode::staged;
  return p.softcap > 0.0f || p.mask != mask_kind::none ? tc_mode::extras : tc_mode::plain;
}
// The same at the instantiated tile shape of `width` (Note [Tile sizes]: launch_flash_tc's).
inline bool tc_staged_fits(mask_kind mask, int width) {
  return tc_staged_fits(mask, width, flash_warps(width), flash_block_m(width), flash_block_n(width));
}
inline tc_mode tc_mode_for(const flash_params& p, bool bits, int width) {
  return tc_mode_for(p, bits, width, flash_warps(width), flash_block_m(width), flash_block_n(width));
}
// The k16 steps of an MMA's k dimension that hold `head_dim` columns (the rest of a tile's width
// is zero padding, which both tensor-core kernels skip: Note [Tile sizes], Note [Hopper padded head
// dims]).
constexpr int k16_steps(int head_dim) { return (head_dim + 15) / 16; }
constexpr int flash_width_for(int head_dim) { return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256; }

// The Hopper path's tile (Note [Hopper path], flash_sm90.cuh): one consumer warpgroup per 64 query
// rows (wgmma's M) of a work item, and 128-key tiles.
constexpr int sm90_consumers(int width) {
  return width == 64 ? 3 : 2;  // why: at D = 64 the softmax of a tile costs as much as at 128 while
                               // its wgmma take half as long, so a third consumer's softmax is
                               // needed to keep the tensor cores fed (FlashAttention-3 uses 192 rows
                               // there too); at D = 128 a third would leave a consumer thread fewer
                               // than the ~200 registers O (64) + S (64) + P (32) need
}
constexpr int sm90_block_m(int width) { return 64 * sm90_consumers(width); }
// The N of the Hopper path's P V wgmma for head_dim_v at `width` (Note [Hopper padded head dims],
// flash_sm90.cuh): the narrowest instantiated one covering head_dim_v, so that the columns of O past
// it, zero, cost no tensor-core time; at width 64: 48 or 64; at 128: 80, 96 or 128.
constexpr int sm90_pv_n(int width, int head_dim_v) {
  if (width == 64) return head_dim_v <= 48 ? 48 : 64;
  return head_dim_v <= 80 ? 80 : head_dim_v <= 96 ? 96 : 128;
}
// (head_dim_v <= 64 at width 128, which only head_dim_qk > 64 brings there, runs at 80: an n = 64
// instantiation at 128 would serve only those calls.) Every head_dim_v the Hopper path takes
// (multiples of 8 up to the width) gets an N that covers it, is a wgmma n (a multiple of 8) and
// stays within the width's tiles.
constexpr bool sm90_pv_n_covers() {
  for (const int width : {64, 128})
    for (int dv = 8; dv <= width; dv += 8) {
      const int n = sm90_pv_n(width, dv);
      if (n < dv || n > width || n % 8 != 0) return false;
    }
  return true;
}
static_assert(sm90_pv_n_covers());
inline constexpr int k_sm90_block_n = 128;  // why: wgmma m64n128 for S amortises each Q read over 128
                                            // keys; 2 stages of K and V (128 KB at D = 128) plus two
                                            // Q buffers fit the 227 KB a block may use

// The factor the kernels apply to q.k: scale in log2 units, in float (the Hopper path's dispatch
// tests exactly this value, flash_backend.cpp).
constexpr float scale_log2(const flash_params& p) { return p.scale * k_log2e; }  // constexpr: device code calls it too

// Work items of the Hopper path's persistent schedule (Note [Hopper scheduler]): row blocks of
// sm90_block_m(width) x query heads x batch.
constexpr std::int64_t sm90_item_count(const flash_params& p, int width) {  // constexpr: device code calls it too
  const int bm = sm90_block_m(width);
  return static_cast<std::int64_t>((p.seqlen_q + bm - 1) / bm) * p.num_heads_q * p.batch;
}

// Whether the band's right edge moves with the row (causal, or a right window bound): later rows
// then see at least as many keys as earlier ones, up to the clipping at the sequence's end.
constexpr bool sm90_right_edge_moves(const flash_params& p) { return p.causal || p.window_right >= 0; }

// (batch, head) pairs per group of the Hopper item order (Note [Hopper scheduler]). When the band's
// right edge moves with the row, items are taken last row block first across a group of pairs
// whose K and V together take at most 8 MB, so the short items fill the end of the kernel while
// the K/V the CTAs share at one time still fits L2 (50 MB on the H100) twice over. Otherwise (no
// band, or only a left bound, under which later rows see fewer keys) the (batch, head) major order
// stays (groups of one).
constexpr int sm90_group_heads(const flash_params& p) {
  const std::int64_t kv_bytes = std::int64_t{2} * p.seqlen_kv * (p.head_dim_qk + p.head_dim_v);  // 16-bit K and V
  const std::int64_t pairs = std::int64_t{p.batch} * p.num_heads_q;
  if (!sm90_right_edge_moves(p) || kv_bytes <= 0 || pairs < 1) return 1;
  const std::int64_t g = (std::int64_t{8} << 20) / kv_bytes;
  return static_cast<int>(g < 1 ? 1 : g > pairs ? pairs : g);
}

// First row of the Hopper path's row-block grid (Note [Hopper scheduler]). The row blocks of
// sm90_block_m(width) rows cover ceil(Sq / 64) 64-row parts (one per consumer warpgroup); when Sq
// is not a multiple of the block, one block is partial, its missing parts idle consumers. When the
// band's right edge moves with the row, the grid starts up to block_m - 64 rows before row 0, so
// the partial block is the first one, whose rows see the fewest keys (one tile on a causal
// diagonal instead of all of them); otherwise it starts at 0 and the partial block is the last.
constexpr int sm90_row_origin(const flash_params& p, int width) {
  const std::int64_t bm = sm90_block_m(width), s = p.seqlen_q;  // 64-bit: no overflow near INT_MAX rows
  const std::int64_t parts = (s + 63) / 64, blocks = (s + bm - 1) / bm;
  return sm90_right_edge_moves(p) ? static_cast<int>(64 * parts - bm * blocks) : 0;  // in (-bm, 0]
}

// Note [Hopper 32-bit bands]: the Hopper kernel takes its bands (the producer: each item's key
// tiles; the consumers: their first and last rows, and each thread's two rows) in 32-bit
// arithmetic from two offsets the host computes once, instead of key_band_of's 64-bit window
// arithmetic per call. With Sq, Skv <= 2^30 (sm90_kernel_for) and the offsets clamped to +-2^30,
// i + offset neither overflows nor leaves the band it stands for: an offset clamped to -2^30 (no
// left bound, or one past every key) gives i + lo < 0, so lo = 0, and one clamped to 2^30 (no
// right bound) gives i + hi >= Skv, so hi = Skv. An empty band may differ from key_band_of's in lo
// (clamped to Skv here), never in being empty; lo and hi stay monotone in the row. The host test
// cuda.sm90_band_matches_key_band compares the two over alignments, windows and lengths.
constexpr int k_sm90_band_limit = 1 << 30;
constexpr int k_sm90_varlen_limit = 1 << 29;  // longest sequence and window bound of the varlen form
constexpr void sm90_band_offsets(flash_params& p) {
  const std::int64_t diag = p.bottom_right ? std::int64_t{p.seqlen_kv} - p.seqlen_q : 0;
  const std::int64_t right = p.causal ? 0 : p.window_right;  // as key_band_of
  auto clamp = [](std::int64_t x) {
    return static_cast<int>(x < -k_sm90_band_limit ? -k_sm90_band_limit : x > k_sm90_band_limit ? k_sm90_band_limit : x);
  };
  // window bounds are at most 2^61 + 1 (make_problem), so these differences fit 64 bits.
  p.sm90_band_lo = p.window_left >= 0 ? clamp(diag - p.window_left) : -k_sm90_band_limit;
  p.sm90_band_hi = right >= 0 ? clamp(diag + right + 1) : k_sm90_band_limit;
  // Varlen: with every length <= 2^29, a bound of 2^29 already reaches past every key of every row,
  // so clamping there changes no band.
  auto clamp_window = [](std::int64_t w) { return static_cast<int>(w < 0 ? -1 : w > k_sm90_varlen_limit ? k_sm90_varlen_limit : w); };
  p.sm90_window_left = clamp_window(p.window_left);
  p.sm90_window_right = clamp_window(right);
}
struct band32 {
  int lo, hi;
};
// Row i's band from offsets `off` over len_kv keys.
constexpr band32 sm90_band_in(int i, band32 off, int len_kv) {
  const int a = i + off.lo, b = i + off.hi;
  const int lo = a < 0 ? 0 : a > len_kv ? len_kv : a;
  const int hi = b < lo ? lo : b > len_kv ? len_kv : b;
  return {lo, hi};
}
constexpr band32 sm90_band_of(const flash_params& p, int i) {
  return sm90_band_in(i, {p.sm90_band_lo, p.sm90_band_hi}, p.seqlen_kv);
}
// Varlen (Note [Hopper varlen]): the offsets of a sequence of len_q rows and len_kv keys, in 32-bit
// arithmetic. With lengths <= 2^29 (sm90_kernel_for) and the windows clamped to 2^29, lo lies in
// [-2^30, 2^29] and hi in [-2^29 + 1, 2^30 + 1], so i + offset fits an int for every row i.
constexpr band32 sm90_varlen_offsets(const flash_params& p, int len_q, int len_kv) {
  const int diag = p.bottom_right ? len_kv - len_q : 0;
  return {p.sm90_window_left >= 0 ? diag - p.sm90_window_left : -k_sm90_band_limit,
          p.sm90_window_right >= 0 ? diag + p.sm90_window_right + 1 : k_sm90_band_limit};
}

// Launchers (stream is a cudaStream_t). Each throws attend::runtime_error on a launch failure.
// One definition per (elem, width) row of flash_kernels.txt.
template <elem E, int Width>
void launch_flash_tc(const flash_params& p, void* stream);
// The same kernel at the decode tile (Note [Decode tile]), for calls of at most 16 query rows.
template <elem E, int Width>
void launch_flash_tc_decode(const flash_params& p, void* stream);
// The same kernel at an explicit tile shape (bench/flash_tune.cu compares shapes with it; the
// backend uses only launch_flash_tc and launch_flash_tc_decode, i.e. the constexpr functions above).
template <elem E, int Width, int Warps, int BlockM, int BlockN, bool SkipPadded>
void launch_flash_tc_tile(const flash_params& p, void* stream);
// The Hopper kernel (sm_90a; flash_sm90.cuh) for one (elem, width) `sm90` row of flash_kernels.txt.
// Needs p.maybe_work_counter and p.persistent_ctas >= 1 (the backend always sets them). Returns
// false, launching nothing, when the driver refuses the TMA descriptors of these tensors (the
// caller then runs launch_flash_tc).
template <elem E, int Width>
bool launch_flash_sm90(const flash_params& p, void* stream);
// fp32 (and any dtype) by a scalar fp32 path: one warp per query row.
void launch_flash_generic(elem e, const flash_params& p, void* stream);
// Merges split-KV partials into out / lse.
void launch_flash_combine(elem e, const flash_params& p, void* stream);
// Packs p's boolean mask (p.maybe_mask, p.mask_stride) into p.maybe_mask_bits as plan_mask_bits
// laid it out (Note [Hopper row masks]); launch_flash_sm90 and launch_flash_tc run it before a
// kernel that reads the bits.
void launch_mask_bits(const flash_params& p, void* stream);

}  // namespace attend::cuda
