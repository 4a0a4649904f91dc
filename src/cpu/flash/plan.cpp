// flash_cpu planning: ISA detection and tile sizes (see plan.h).
#include "cpu/flash/plan.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/int_math.h"

namespace attend::cpu::flash {

const char* to_string(isa target) noexcept {
  switch (target) {
    case isa::scalar: return "scalar";
    case isa::avx2: return "avx2";
    case isa::avx512: return "avx512";
  }
  return "?";
}

bool isa_available(isa target) noexcept {
  switch (target) {
    case isa::scalar: return true;
#if defined(ATTEND_FLASH_X86)
    case isa::avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
#else
    case isa::avx2:
    case isa::avx512: return false;
#endif
  }
  return false;
}

bool has_avx512_bf16() noexcept {
#if defined(ATTEND_FLASH_X86)
  return isa_available(isa::avx512) && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

isa chosen_isa() noexcept {
  isa best = isa::scalar;
  for (isa t : {isa::avx2, isa::avx512})
    if (isa_available(t)) best = t;
  const char* maybe_env = std::getenv("ATTEND_CPU_ISA");
  if (maybe_env == nullptr) return best;
  for (isa t : {isa::scalar, isa::avx2, isa::avx512})
    if (std::strcmp(maybe_env, to_string(t)) == 0 && static_cast<int>(t) <= static_cast<int>(best)) return t;
  return best;
}

key_range row_keys(const problem& p, std::int64_t b, std::int64_t i) {
  return visible_keys(p.params, i, p.len_q(b), p.len_kv(b));
}

item_kernel kernel_for(isa target) noexcept {
  switch (target) {
#if defined(ATTEND_FLASH_X86)
    case isa::avx512: return &run_item_avx512;
    case isa::avx2: return &run_item_avx2;
#endif
    default: return &run_item_scalar;
  }
}

namespace {

// Note [Flash tiles]: one work item holds `rows` = group_size · block_q query rows (every query
// head of a KV head, Note [Flash GQA]) and streams K/V tiles of block_kv keys past them.
// Why 128 rows: each item streams its head's K/V from memory once, so rows set the FLOPs per
// byte; 128 rows halve that traffic against 64 (fp32 D=128 S=16384, 2 threads: 262 -> 286
// GFLOP/s; bf16 S=4096: 499 -> 621) while the Q panel (128 × D=128 × 4 B = 64 KiB) and the score
// tile (64 × 128 × 4 B = 32 KiB) stay in L2. The Q·Kᵀ micro-kernel (AVX-512: 6 keys × 4 vectors
// of 16 rows = 24 zmm accumulators) runs it as two row chunks of 32 KiB, each kept in L1 while
// the tile's keys stream past (Note [Flash micro-kernel shapes] in kernel_impl.h).
constexpr std::int64_t k_target_rows = 128;
// Why 64 keys: the score tile (64 keys × 64 rows × 4 B = 16 KiB) plus one V stripe stays in a
// 32-48 KiB L1d, and the once-per-tile rescale of the output rows costs 1/64 of the P·V work.
// Must be even (bf16 pairs of keys).
constexpr std::int64_t k_block_kv = 64;
// Why 4: rows are padded to a multiple of 4 (and of the vector width) so that the portable path
// (one-float vectors) runs whole 4-row P·V blocks; the vector paths handle any row remainder.
constexpr std::int64_t k_pv_rows = 4;

std::size_t bytes64(std::int64_t n) { return static_cast<std::size_t>(round_up(n, 64)); }

}  // namespace

tile_config make_tile_config(const problem& p, isa target) {
  tile_config c;
  c.target = target;
  c.width = target == isa::avx512 ? 16 : target == isa::avx2 ? 8 : 1;
  const std::int64_t gs = p.group_size;
  c.block_q = std::max<std::int64_t>(1, std::min((k_target_rows + gs - 1) / gs, std::max<std::int64_t>(p.seqlen_q, 1)));
  c.rows = gs * c.block_q;
  c.rows_pad = round_up(c.rows, std::max(c.width, k_pv_rows));
  c.block_kv = k_block_kv;
  // Narrow when at most half a vector of rows: broadcasting keys against a mostly empty vector of
  // rows would waste most lanes (decode: one row per KV head).
  c.narrow = c.width > 1 && c.rows * 2 <= c.width;
  c.bf16_dot = target == isa::avx512 && p.dtype == dtype::bf16 && !c.narrow && has_avx512_bf16();
  c.dqk_pad = c.narrow ? round_up(p.head_dim_qk, c.width) : c.bf16_dot ? round_up(p.head_dim_qk, 2) : p.head_dim_qk;
  c.dv_pad = round_up(p.head_dim_v, c.width);

  // Why up to 32 heads per item (narrow items over bshd K/V only): one K/V tile of 32 heads is
  // then a contiguous sweep of the caller's tensor; the per-head parts (Q, O, state: ≈ 9 KiB at
  // D=128) of 32 heads stay within L2.
  constexpr std::int64_t k_max_heads_per_item = 32;
  const bool heads_adjacent = p.k.seq > p.k.head && p.v.seq > p.v.head;
  c.heads_per_item = c.narrow && heads_adjacent ? std::min(p.num_heads_kv, k_max_heads_per_item) : 1;
  // Why 4 keys for head-blocked items: a tile then spans 4 rows × (K, V) per head, few enough
  // concurrent row streams for the hardware prefetcher, and the next tile's span (4 tokens of
  // all heads) is prefetched in per-head slices. Measured on the decode shape (Sq=1, Skv=32768,
  // H=32, D=128, 2 threads, bf16): 4 keys ≈ 38 GB/s, 16 ≈ 29, 64 ≈ 23-26.
  constexpr std::int64_t k_block_kv_head_blocked = 4;
  if (c.heads_per_item > 1) c.block_kv = k_block_kv_head_blocked;

  std::size_t at = 0;
  auto take = [&](std::int64_t bytes) {
    const std::size_t here = at;
    at += bytes64(bytes);
    return here;
  };
  c.k_offset = take(c.block_kv * c.dqk_pad * 4);
  c.v_offset = take(c.block_kv * c.dv_pad * 4);
  // Scores [keys][rows_pad], then (narrow items) one vector of keys per row (Note [Flash narrow
  // softmax] in kernel_impl.h).
  c.s_offset = take((c.block_kv + (c.narrow ? c.width : 0)) * c.rows_pad * 4);
  c.p_offset = take(c.block_kv * c.rows_pad * 2);
  c.head_offset = at;
  at = 0;
  c.q_offset = take(c.rows_pad * c.dqk_pad * 4);
  c.o_offset = take(c.rows * c.dv_pad * 4);
  c.state_offset = take(c.rows_pad * 4 * 6);  // max, sum, alpha, nan flag (f32); lo, hi (i32)
  c.head_bytes = at;
  at = c.head_offset + c.head_bytes * static_cast<std::size_t>(c.heads_per_item);
  c.bytes_per_thread = at;
  return c;
}

}  // namespace attend::cpu::flash
