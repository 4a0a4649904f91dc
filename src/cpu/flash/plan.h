// flash_cpu planning: which instruction set runs, the tile sizes, the per-thread scratch layout
// and the unit of work handed to a kernel. Compiled without ISA flags; the ISA translation units
// only read these plain structs (Note [Flash ISA translation units]).
//
// Note [Flash ISA translation units]: kernel_avx512.cpp and kernel_avx2.cpp are compiled with
// -mavx512*/-mavx2 flags (set_source_files_properties in CMakeLists.txt); everything they
// define lives in an anonymous namespace (kernel_impl.h) and they call no inline function of a
// shared header, so the linker can never pick an AVX-512 copy of a function for code that runs on
// a CPU without it. Only run_item_<isa> crosses the boundary, and it is called only after
// isa_available() said yes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "attend/params.h"

namespace attend::cpu::flash {

enum class isa : std::uint8_t { scalar, avx2, avx512 };
const char* to_string(isa target) noexcept;
// True when this build compiled the path and the CPU reports the instructions it needs.
bool isa_available(isa target) noexcept;
// The best available path, lowered by ATTEND_CPU_ISA=scalar|avx2|avx512 (never raised above
// what the CPU has).
isa chosen_isa() noexcept;
// AVX512-BF16 (vdpbf16ps) present: bf16 inputs then use bf16 dot products on the avx512 path.
bool has_avx512_bf16() noexcept;

// Tile shapes and the byte layout of one thread's scratch (Note [Flash tiles] in plan.cpp).
struct tile_config {
  isa target = isa::scalar;
  std::int64_t width = 1;     // floats per vector register
  bool bf16_dot = false;      // Q/K/P/V as bf16 pairs, products by vdpbf16ps
  bool narrow = false;        // few rows: Q·Kᵀ as row dot products instead of broadcasts
  std::int64_t block_q = 1;   // query positions per work item
  std::int64_t rows = 1;      // group_size · block_q: rows of one item (all heads of a group)
  std::int64_t rows_pad = 1;  // rows rounded up to whole vectors
  std::int64_t block_kv = 1;  // keys per K/V tile
  std::int64_t dqk_pad = 1, dv_pad = 1;
  std::int64_t heads_per_item = 1;  // KV heads one item sweeps per K/V tile (Note [Flash head blocks])
  // V holds no Inf or NaN, found by one scan of V before the items run (Note [Flash masked
  // non-finite V]): the tiles then skip their own scans. False: not known, each tile scans.
  bool v_finite = false;
  // Shared by the item's heads: K/V tiles, scores, bf16 P.
  std::size_t k_offset = 0, v_offset = 0, s_offset = 0, p_offset = 0;
  // Per head, relative to head_offset + hh · head_bytes: packed Q, output rows, softmax state.
  std::size_t head_offset = 0, head_bytes = 0, q_offset = 0, o_offset = 0, state_offset = 0;
  std::size_t bytes_per_thread = 0;
};
tile_config make_tile_config(const problem& p, isa target);

// One unit of work: query positions [q_begin, q_begin + q_count) of sequence b, all query heads
// of KV heads [hk, hk + hk_count), against keys [kv_begin, kv_end) (local positions). With maybe_partial_out the
// kernel writes normalised partial rows [rows][head_dim_v] and their LSE instead of p.out.
struct item {
  std::int64_t b = 0, hk = 0, hk_count = 1, q_begin = 0, q_count = 0, kv_begin = 0, kv_end = 0;
  float* maybe_partial_out = nullptr;  // [hk_count][tile_config::rows][head_dim_v], whatever q_count
  float* maybe_partial_lse = nullptr;  // [hk_count][tile_config::rows]
  float* maybe_partial_lse_low = nullptr;  // the same: the lse's second part (Note [Split clamped rows])
};

// Visible keys of local query row i of sequence b (attend::visible_keys), out of line so the
// ISA translation units never instantiate it themselves.
key_range row_keys(const problem& p, std::int64_t b, std::int64_t i);

using item_kernel = void (*)(const problem& p, const tile_config& c, const item& it, std::byte* scratch);
void run_item_scalar(const problem& p, const tile_config& c, const item& it, std::byte* scratch);
// Defined only on x86-64 builds; called only after isa_available() said yes.
void run_item_avx2(const problem& p, const tile_config& c, const item& it, std::byte* scratch);
void run_item_avx512(const problem& p, const tile_config& c, const item& it, std::byte* scratch);
item_kernel kernel_for(isa target) noexcept;

}  // namespace attend::cpu::flash
