// attend/params.h: what one attention call asks for (attention_params) and the validated,
// layout-normalised form every backend receives (problem).
//
// Shapes (B batch, Sq/Skv sequence lengths, Hq/Hkv heads, Dqk/Dv head dims):
//   dense, layout bshd:  q [B, Sq, Hq, Dqk]  k [B, Skv, Hkv, Dqk]  v [B, Skv, Hkv, Dv]  out [B, Sq, Hq, Dv]
//   dense, layout bhsd:  q [B, Hq, Sq, Dqk]  k [B, Hkv, Skv, Dqk]  v [B, Hkv, Skv, Dv]  out [B, Hq, Sq, Dv]
//   varlen (packed):     q [total_q, Hq, Dqk] k/v [total_kv, Hkv, D*] out [total_q, Hq, Dv],
//                        cu_seqlens_q/kv int32 [B + 1], sequence b is rows [cu[b], cu[b+1])
//   lse (optional, f32): dense [B, Hq, Sq]; varlen [Hq, total_q]. Natural log.
//   mask (optional):     broadcastable to [B, Hq, Sq, Skv] (numpy rules, right-aligned; size-1 or
//                        stride-0 dims broadcast). dtype boolean = keep-mask (true keeps the key),
//                        f32/f16/bf16 = additive (added to the score after scale and softcap).
//                        varlen: [B, Hq, max_seqlen_q, max_seqlen_kv], indexed by local positions.
// Any strides (in elements) are accepted as long as they are non-negative and `out` does not
// overlap itself or any input (shares no byte with it: slices of one buffer side by side, such as
// q, k, v and out as packed[:, :, 0..3], are fine). Hq must be a multiple of Hkv (GQA/MQA); query head h reads
// key/value head h / (Hq / Hkv).
//
// Score of query i and key j (Note [Score pipeline]):
//   s = scale * dot(q_i, k_j); if softcap > 0: s = softcap * tanh(s / softcap); s += mask_ij;
//   keys outside the causal/window band, or with a false keep-mask, get s = -inf.
//   out_i = sum_j softmax(s)_j v_j;  lse_i = log(sum_j exp(s_j)).
// A row with no visible key (fully masked) has out_i = 0 and lse_i = -inf on every backend.
// A key of weight exactly 0 (outside the band, masked, or exp underflow) contributes nothing, even
// when its v holds NaN/Inf (KV-cache padding): so on reference and unfused_cpu, and on flash_cpu
// for keys outside the band or masked (Note [Flash masked non-finite V]: it scans only tiles that
// can hold such keys, so a key whose weight underflowed to 0 in a tile with neither passes its
// NaN on). Not yet on flash_cuda and cudnn: their tensor-core P·V multiplies the 0 by the NaN, so
// a non-finite v at a key a row does not see reaches that row there (except keys of another varlen
// sequence, which flash_cuda zeroes or never loads).
// A non-finite k at a key that a boolean mask drops never reaches the row, on the reference and
// on every flash_cuda kernel (the score is selected, not added: test_cuda.cpp's
// flash_cuda_keep_mask_ignores_nan_scores).
// Additive masks as low as float's lowest value (how Hugging Face builds padding masks) weigh
// their keys as the reference does on every backend: a row whose every visible key carries one
// averages v over those keys, with the reference's lse (Note [GPU clamped scores]), split-KV
// included (Note [Split clamped rows]).
// A large finite bias is added to the score in float on every backend but the reference: a row
// whose every visible key carries one, B, keeps each score only to about |B| * 2^-24, so its out
// is off by up to about that much (on flash_cpu and unfused_cpu, measured 2-3e-4 at B = -1e4, the
// old Hugging Face padding, and 9e-4 at -65504, float16's lowest): outside float32's tolerance,
// where the reference (fp64) gives softmax(s).
// A NaN score makes its row NaN; so does a +inf score (inf / inf weights: an inf in q or k, a +inf
// additive mask, or scale * dot past float's range; past FLT_MAX / log2(e), about 2.36e38, on
// flash_cpu and flash_cuda, which score in log2 units), and so does a row whose every visible score
// overflowed float to -inf (it has keys, but a float backend cannot weigh them): never "no visible
// key" (tested on the cpu backends: tests/test_backends.cpp).
// Every backend but the reference (fp64) sums a row's weights and weighted values in float: past
// about 2^24 keys in one row (or one split-KV piece) the sums lose precision, up to ~10% of out at
// 2^24 keys of equal weight; unfused_cpu's SGEMM blocks its sums and degrades least.
//
// Band (Note [Causal alignment]): with offset d = 0 (top_left, PyTorch is_causal) or
// d = Skv - Sq (bottom_right, FlashAttention / KV cache decode), key j is visible from query i
// when  i + d - window_left <= j <= i + d + right,  right = 0 if causal, else window_right.
// A negative window bound (-1) means unbounded on that side. Varlen uses each sequence's lengths.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "attend/key_band.h"
#include "attend/tensor.h"

namespace attend {

enum class layout : std::uint8_t { bshd, bhsd };
enum class alignment : std::uint8_t { top_left, bottom_right };

std::string_view to_string(layout l) noexcept;
std::string_view to_string(alignment a) noexcept;

struct attention_params {
  tensor_view q, k, v, out;
  tensor_view maybe_lse;   // empty: not requested
  tensor_view maybe_mask;  // empty: no mask
  attend::layout layout = attend::layout::bshd;
  std::optional<double> maybe_scale;  // default 1 / sqrt(head_dim_qk); |scale| <= FLT_MAX / log2(e)
  bool causal = false;
  attend::alignment alignment = attend::alignment::top_left;
  std::int64_t window_left = -1;   // -1: unbounded (a bound past every key is the same band)
  std::int64_t window_right = -1;  // -1: unbounded
  double softcap = 0.0;            // 0: off; at most FLT_MAX (kernels compute in float)
  // Varlen: both set or neither. max_seqlen_* are required when the offsets live on a device the
  // host cannot read (cuda); on the CPU they are computed when left at 0. A given value must be
  // at least the longest sequence (checked where the host can read the offsets) and at most
  // 2^31 - 1 (offsets are int32); a looser bound, such as a bucket size, is fine: it shapes a
  // mask, and where the host reads the offsets the problem carries the real longest sequences.
  tensor_view maybe_cu_seqlens_q;
  tensor_view maybe_cu_seqlens_kv;
  std::int64_t max_seqlen_q = 0;
  std::int64_t max_seqlen_kv = 0;
};

// Strides of a [batch, seq, head, dim] tensor in elements, whatever its layout. For varlen
// tensors `batch` is 0 and `seq` steps over packed tokens.
struct strides_bshd {
  std::int64_t batch = 0, seq = 0, head = 0, dim = 0;
};

// Strides of the broadcast mask [batch, head, q, kv] (0 where it broadcasts).
struct strides_bhqk {
  std::int64_t batch = 0, head = 0, q = 0, kv = 0;
};

// Which optional features a call uses; backends declare the same set (Note [Features]).
enum class feature : std::uint32_t {
  causal = 1u << 0,
  window = 1u << 1,
  mask_additive = 1u << 2,
  mask_keep = 1u << 3,
  gqa = 1u << 4,
  softcap = 1u << 5,
  lse = 1u << 6,
  varlen = 1u << 7,
  head_dim_v_differs = 1u << 8,
  bottom_right = 1u << 9,
};
inline constexpr int k_num_features = 10;

struct feature_set {
  std::uint32_t bits = 0;
  constexpr feature_set() = default;
  constexpr feature_set(feature f) : bits(static_cast<std::uint32_t>(f)) {}
  constexpr bool has(feature f) const { return (bits & static_cast<std::uint32_t>(f)) != 0; }
  constexpr feature_set operator|(feature_set o) const { feature_set r; r.bits = bits | o.bits; return r; }
  static constexpr feature_set all() { feature_set r; r.bits = (1u << k_num_features) - 1; return r; }
  friend constexpr bool operator==(feature_set, feature_set) = default;
};
constexpr feature_set operator|(feature a, feature b) { return feature_set(a) | feature_set(b); }
std::string_view to_string(feature f) noexcept;
std::string to_string(feature_set fs);

// The validated call. Built only by make_problem, which throws attend::invalid_argument for
// malformed input; backends can rely on every invariant written here.
struct problem {
  attention_params params;  // as given (views, options)

  attend::dtype dtype = attend::dtype::f32;  // of q, k, v and out
  attend::device device{};
  std::int64_t batch = 0;
  std::int64_t seqlen_q = 0;   // varlen: the longest sequence (host offsets), else max_seqlen_q
  std::int64_t seqlen_kv = 0;  // varlen: the longest sequence (host offsets), else max_seqlen_kv
  std::int64_t num_heads_q = 0;
  std::int64_t num_heads_kv = 0;
  std::int64_t head_dim_qk = 0;
  std::int64_t head_dim_v = 0;
  std::int64_t group_size = 1;  // num_heads_q / num_heads_kv
  double scale = 1.0;
  bool is_varlen = false;
  std::int64_t total_q = 0;   // varlen: packed rows of q
  std::int64_t total_kv = 0;  // varlen: packed rows of k/v

  strides_bshd q, k, v, out;
  // lse strides: batch (0 for varlen), head, seq.
  float* maybe_lse = nullptr;
  std::int64_t lse_batch_stride = 0, lse_head_stride = 0, lse_seq_stride = 0;
  // mask
  const void* maybe_mask = nullptr;
  attend::dtype mask_dtype = attend::dtype::f32;
  strides_bhqk mask{};
  // varlen offsets (host-readable only when device is cpu). On the cpu they point into
  // host_offsets, make_problem's copy of the caller's, which it checked (Note [Host offsets]).
  const std::int32_t* maybe_cu_seqlens_q = nullptr;
  const std::int32_t* maybe_cu_seqlens_kv = nullptr;
  std::shared_ptr<const std::int32_t[]> host_offsets;  // [batch + 1] of q, then [batch + 1] of kv

  feature_set features;  // what this call uses

  // Length of sequence b (dense: seqlen_*). Host only; on cuda varlen use the offsets in-kernel.
  std::int64_t len_q(std::int64_t b) const;
  std::int64_t len_kv(std::int64_t b) const;
  std::int64_t start_q(std::int64_t b) const;   // first packed row (dense: 0)
  std::int64_t start_kv(std::int64_t b) const;
  // 4 * Σ Sq·Skv·H·(Dqk+Dv)/2 visible pairs: FLOPs of the two products over visible scores.
  double flops() const;
  // Conventional FLOPs (4·B·H·Sq·Skv·D, D = mean of head dims, halved for causal) for reports.
  double nominal_flops() const;
};

// Validates `params` and derives the problem. Throws attend::invalid_argument naming the
// argument and what was expected.
problem make_problem(const attention_params& params);

// Visible key range [lo, hi) of query row i in a sequence of len_q queries and len_kv keys
// (Note [Causal alignment]). hi <= lo means the row sees nothing.
struct key_range {
  std::int64_t lo = 0, hi = 0;
};
constexpr key_range visible_keys(const attention_params& p, std::int64_t i, std::int64_t len_q,
                                 std::int64_t len_kv) {
  const key_band b = key_band_of(i, len_q, len_kv, p.causal, p.alignment == alignment::bottom_right, p.window_left,
                                 p.window_right);
  return key_range{b.lo, b.hi};
}

}  // namespace attend
