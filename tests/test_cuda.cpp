// GPU tests: every CUDA backend against the fp64 CPU reference on the awkward-size grid (fresh
// seed each run, printed; ATTEND_TEST_SEED reproduces one), plus larger shapes that exercise many
// key tiles, split-KV decode and the widest head dims. Without a CUDA device (or in a build
// without CUDA) every test here is skipped with the reason printed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "attend/attend.h"
#include "attend/check.h"
#include "attend/registry.h"
#include "cuda/flash.h"  // host-side tile arithmetic (plain C++; no CUDA needed)
#if defined(ATTEND_TEST_HAVE_CUDA)
#include <cuda_runtime.h>

#include "cuda/backends.h"
#endif

namespace {

using namespace attend;
namespace at = attend::testing;
using at::case_spec;

constexpr device k_gpu{device_kind::cuda, 0};

// Why GPU tests cannot run here (asking flash_cuda about a tiny call on cuda:0), or empty.
std::string gpu_skip_reason() {
  const auto b = registry::global().find("flash_cuda");
  if (!b) return "attend was built without CUDA (ATTEND_CUDA=OFF)";
  std::vector<std::uint16_t> q(8), k(8), v(8), o(8);
  attention_params a;
  a.q = tensor_view::contiguous(q.data(), dtype::f16, {1, 1, 1, 8}, k_gpu);
  a.k = tensor_view::contiguous(k.data(), dtype::f16, {1, 1, 1, 8}, k_gpu);
  a.v = tensor_view::contiguous(v.data(), dtype::f16, {1, 1, 1, 8}, k_gpu);
  a.out = tensor_view::contiguous(o.data(), dtype::f16, {1, 1, 1, 8}, k_gpu);
  diagnostics d;
  if (b->supports(make_problem(a), &d)) return {};
  return d.joined();
}

#define ATTEND_REQUIRE_GPU()                                              \
  do {                                                                    \
    if (const std::string why = gpu_skip_reason(); !why.empty()) {       \
      std::cout << "[  SKIPPED ] no usable GPU: " << why << std::endl;    \
      GTEST_SKIP() << why;                                                \
    }                                                                     \
  } while (0)

std::uint64_t fresh_seed() {
  if (const char* s = std::getenv("ATTEND_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  static const std::uint64_t seed = std::random_device{}();
  return seed;
}

// The case's call with every tensor on the GPU, to ask a backend about it without uploading.
attention_params gpu_probe(const at::case_data& data) {
  attention_params probe = data.params();
  for (tensor_view* t : {&probe.q, &probe.k, &probe.v, &probe.out, &probe.maybe_lse, &probe.maybe_mask,
                         &probe.maybe_cu_seqlens_q, &probe.maybe_cu_seqlens_kv})
    if (!t->empty()) t->device = k_gpu;
  return probe;
}

// Runs `name` on every case it supports; flash_cuda must support every case.
void check_cases(const std::string& name, std::vector<case_spec> cases, bool must_support) {
  const auto b = registry::global().find(name);
  if (!b) GTEST_SKIP() << name << " is not built";
  int ran = 0, skipped = 0;
  for (case_spec& spec : cases) {
    spec.device = k_gpu;
    const at::case_data data(spec);
    const attention_params probe = gpu_probe(data);
    diagnostics d;
    if (!b->supports(make_problem(probe), &d)) {
      EXPECT_FALSE(must_support) << name << " rejects " << spec.describe() << ": " << d.joined();
      ++skipped;
      continue;
    }
    const at::comparison c = at::check_backend(*b, data);
    EXPECT_TRUE(c.ok) << name << " " << spec.name << " [" << spec.describe() << "] seed=" << spec.seed << ": "
                      << c.detail << " (max abs error " << c.max_abs_error << ", worst ratio " << c.worst_ratio << ")";
    ++ran;
  }
  std::cout << "[   INFO   ] " << name << ": " << ran << " cases ran, " << skipped << " not supported (seed "
            << fresh_seed() << ")" << std::endl;
  // A backend that may reject cases must still run some where it works at all: otherwise a grid of
  // rejections would pass as a test.
  if (!must_support && ran == 0) {
    std::vector<std::uint16_t> q(64), k(64), v(64), o(64);
    attention_params a;
    a.q = tensor_view::contiguous(q.data(), dtype::bf16, {1, 1, 1, 64}, k_gpu);
    a.k = tensor_view::contiguous(k.data(), dtype::bf16, {1, 1, 1, 64}, k_gpu);
    a.v = tensor_view::contiguous(v.data(), dtype::bf16, {1, 1, 1, 64}, k_gpu);
    a.out = tensor_view::contiguous(o.data(), dtype::bf16, {1, 1, 1, 64}, k_gpu);
    diagnostics d;
    EXPECT_FALSE(b->supports(make_problem(a), &d)) << name << " ran none of " << cases.size()
                                                    << " cases although it supports a plain bf16 call";
  }
}

std::vector<case_spec> big_cases(std::uint64_t seed) {
  std::vector<case_spec> v;
  auto add = [&](std::string name, dtype t, auto&& edit) {
    case_spec c;
    c.name = std::move(name);
    c.dtype = t;
    edit(c);
    c.seed = seed * 7919u + v.size();
    v.push_back(std::move(c));
  };
  for (dtype t : {dtype::bf16, dtype::f16}) {
    add("s1024-d128-causal", t, [](case_spec& c) { c.batch = 2; c.seqlen_q = c.seqlen_kv = 1024; c.heads_q = 4; c.heads_kv = 4; c.head_dim_qk = c.head_dim_v = 128; c.causal = true; });
    add("s1000-d64-gqa", t, [](case_spec& c) { c.seqlen_q = 1000; c.seqlen_kv = 1500; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 64; });
    add("s333-d256", t, [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 333; c.heads_q = 2; c.heads_kv = 1; c.head_dim_qk = c.head_dim_v = 256; c.causal = true; c.alignment = alignment::bottom_right; });
    add("d192-dv128-window", t, [](case_spec& c) { c.seqlen_q = 300; c.seqlen_kv = 700; c.heads_q = 2; c.head_dim_qk = 192; c.head_dim_v = 128; c.window_left = 100; c.window_right = 50; });
    add("decode-split", t, [](case_spec& c) { c.batch = 2; c.seqlen_q = 1; c.seqlen_kv = 20000; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 128; c.causal = true; c.alignment = alignment::bottom_right; });
    add("decode-split-masked", t, [](case_spec& c) { c.seqlen_q = 4; c.seqlen_kv = 5000; c.heads_q = 4; c.heads_kv = 1; c.head_dim_qk = c.head_dim_v = 64; c.mask = at::mask_type::keep; c.fully_masked_rows = true; });
    // Boolean masks per (batch, head) on the Hopper kernel at head dim 64, through both of the
    // packer's reads (Note [Hopper row masks]): 1.6M packed words whose rows start 16-byte aligned
    // one time in four (Skv = 2100), and 72000 rows (more than the packer's grid has) of 272 keys,
    // every row aligned, its last word half a word.
    add("row-mask-many-words", t, [](case_spec& c) { c.batch = 2; c.seqlen_q = 1500; c.seqlen_kv = 2100; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 64; c.mask = at::mask_type::keep; c.fully_masked_rows = true; });
    add("row-mask-many-rows", t, [](case_spec& c) { c.batch = 2; c.seqlen_q = 4500; c.seqlen_kv = 272; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 64; c.mask = at::mask_type::keep; c.fully_masked_rows = true; });
    add("varlen-long", t, [](case_spec& c) { c.varlen_q = {700, 1, 130}; c.varlen_kv = {900, 2000, 0}; c.heads_q = 4; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 128; c.causal = true; c.alignment = alignment::bottom_right; });
  }
  add("f32-s700-softcap", dtype::f32, [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 700; c.heads_q = 2; c.head_dim_qk = c.head_dim_v = 128; c.softcap = 20; c.causal = true; });
  return v;
}

// A case of `t` at head dim d (qk and v), named and seeded; the caller sets the shape.
case_spec typed_case(std::string name, dtype t, std::int64_t d, std::uint64_t seed) {
  case_spec c;
  c.name = std::move(name);
  c.dtype = t;
  c.head_dim_qk = c.head_dim_v = d;
  c.seed = seed;
  return c;
}

// The cases of a table-like test: add(name, dtype, head dim, edit) appends typed_case(prefix +
// name), each at a seed of its own drawn from one fresh seed, with `defaults` applied before `edit`.
auto case_adder(std::vector<case_spec>& v, std::string prefix, void (*defaults)(case_spec&) = nullptr) {
  return [&v, prefix = std::move(prefix), defaults, seed = fresh_seed()](const std::string& name, dtype t,
                                                                         std::int64_t d, auto&& edit) {
    case_spec c = typed_case(prefix + name, t, d, seed * 7919u + v.size());
    if (defaults != nullptr) defaults(c);
    edit(c);
    v.push_back(std::move(c));
  };
}

// Shapes for flash_cuda's Hopper path (Note [Hopper path], src/cuda/flash_sm90.cuh): f16/bf16 at
// head dims 64 and 128, no softcap: dense and varlen, no mask, key masks and boolean masks with a
// row per query (Note [Hopper key masks], [Hopper row masks]). On a compute capability 9.0 device they run the
// wgmma/TMA kernel (elsewhere the mma.sync kernel; expect_hopper_kernel checks which): sequence
// lengths that are not multiples of its 192-/128-row and 128-key tiles (under causal masking the
// row-block grid then starts 64 or 128 rows before row 0, flash.h sm90_row_origin: 470, 777 and
// 257 at head dim 64; 777 and 257 at 128), causal with both alignments
// (including rows that see no key), GQA, a window, the bhsd layout, LSE on every case, and calls
// with more work items than the GPU has SMs. Skv stays <= 480 so that no case qualifies for
// split-KV (Note [Split KV]: fewer than 16 key tiles of the mma.sync kernel), which runs the
// mma.sync kernel instead.
std::vector<case_spec> hopper_cases(std::uint64_t seed) {
  std::vector<case_spec> v;
  for (dtype t : {dtype::bf16, dtype::f16})
    for (std::int64_t d : {64, 128}) {
      auto add = [&](const std::string& name, auto&& edit) {
        case_spec c = typed_case("sm90-d" + std::to_string(d) + "-" + name, t, d, seed * 7919u + v.size());
        edit(c);
        v.push_back(std::move(c));
      };
      add("s477", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 477; c.heads_q = 2; });
      add("s470-causal-tl", [](case_spec& c) { c.batch = 2; c.seqlen_q = c.seqlen_kv = 470; c.heads_q = 2; c.causal = true; });
      add("causal-br-short-q", [](case_spec& c) { c.seqlen_q = 300; c.seqlen_kv = 477; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; });
      add("causal-br-long-q", [](case_spec& c) { c.seqlen_q = 700; c.seqlen_kv = 300; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; });
      add("causal-tl-long-q", [](case_spec& c) { c.seqlen_q = 777; c.seqlen_kv = 300; c.heads_q = 2; c.causal = true; });
      add("gqa4", [](case_spec& c) { c.batch = 2; c.seqlen_q = 640; c.seqlen_kv = 450; c.heads_q = 8; c.heads_kv = 2; });
      add("window", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 480; c.heads_q = 2; c.window_left = 150; c.window_right = 30; });
      add("bhsd-causal", [](case_spec& c) { c.layout = layout::bhsd; c.seqlen_q = c.seqlen_kv = 257; c.heads_q = 4; c.heads_kv = 2; c.causal = true; });
      add("s1-kv129", [](case_spec& c) { c.seqlen_q = 1; c.seqlen_kv = 129; c.heads_q = c.heads_kv = 2; });  // (MHA: as GQA its 2 packed rows would stay on the decode tile, keep_packed)
      // Scores spread over tens of log2 units: a row's running maximum jumps many times, so O and l
      // are rescaled by factors far from 1, and P spans its whole range.
      add("peaky-scale", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 470; c.heads_q = 2; c.maybe_scale = 6.0; c.causal = true; });
      // More work items than SMs: each persistent CTA runs several items, so both Q buffers and the
      // K/V ring's phases are reused across items (Note [Hopper scheduler]).
      add("many-items-causal-gqa", [](case_spec& c) { c.batch = 3; c.seqlen_q = c.seqlen_kv = 470; c.heads_q = 16; c.heads_kv = 4; c.causal = true; });
      // Rows 0..399 see no key: the first row blocks of each head (three of 128 rows at head dim
      // 128, two of 192 at 64) are items without key tiles, between items with tiles on the same
      // CTA.
      add("many-items-causal-br-long-q", [](case_spec& c) { c.batch = 2; c.seqlen_q = 700; c.seqlen_kv = 300; c.heads_q = 40; c.heads_kv = 8; c.causal = true; c.alignment = alignment::bottom_right; });
      add("many-items-window-br", [](case_spec& c) { c.batch = 2; c.seqlen_q = 520; c.seqlen_kv = 470; c.heads_q = 40; c.causal = true; c.alignment = alignment::bottom_right; c.window_left = 300; });
      // Varlen (Note [Hopper varlen]): empty sequences on either side, sequences shorter than a
      // 64-row part and than a key tile, V tiles that run into the next sequence, row blocks past a
      // short sequence's end (the grid has the longest one's blocks for every sequence), per-sequence
      // bottom-right diagonals and row-grid origins, windows, GQA, and more items than SMs.
      add("varlen", [](case_spec& c) { c.varlen_q = {300, 0, 129, 1, 64}; c.varlen_kv = {477, 5, 0, 200, 64}; c.heads_q = 4; c.heads_kv = 2; });
      add("varlen-causal-br", [](case_spec& c) { c.varlen_q = {130, 470, 17, 300}; c.varlen_kv = {200, 300, 17, 129}; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; });
      add("varlen-causal-tl-window", [](case_spec& c) { c.varlen_q = {470, 257, 65}; c.varlen_kv = {470, 300, 400}; c.heads_q = 2; c.causal = true; c.window_left = 100; });
      add("varlen-window", [](case_spec& c) { c.varlen_q = {200, 333}; c.varlen_kv = {333, 200}; c.heads_q = 2; c.window_left = 50; c.window_right = 20; });
      // Key masks, boolean (packed bits, Note [Hopper row masks]) and additive (with -inf entries;
      // Note [Hopper key masks]), one row per (batch, head) of which some drop every key, with causal and window bands, GQA, lengths that
      // are not multiples of the tiles, and more items than SMs.
      add("key-mask-keep-causal", [](case_spec& c) { c.batch = 2; c.seqlen_q = 470; c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 2; c.mask = at::mask_type::keep; c.mask_key_only = true; c.fully_masked_rows = true; c.causal = true; c.alignment = alignment::bottom_right; });
      add("key-mask-additive", [](case_spec& c) { c.batch = 2; c.seqlen_q = 300; c.seqlen_kv = 477; c.heads_q = 2; c.mask = at::mask_type::additive; c.mask_key_only = true; c.fully_masked_rows = true; });
      add("key-mask-additive-own-dtype", [t](case_spec& c) { c.batch = 2; c.seqlen_q = 190; c.seqlen_kv = 260; c.heads_q = 4; c.heads_kv = 1; c.mask = at::mask_type::additive; c.mask_dtype = t; c.mask_key_only = true; c.causal = true; });
      add("key-mask-keep-one-head", [](case_spec& c) { c.batch = 3; c.seqlen_q = 300; c.seqlen_kv = 470; c.heads_q = 8; c.heads_kv = 2; c.mask = at::mask_type::keep; c.mask_key_only = true; c.mask_one_head = true; c.fully_masked_rows = true; });
      add("key-mask-window", [](case_spec& c) { c.seqlen_q = c.seqlen_kv = 480; c.heads_q = 2; c.window_left = 150; c.window_right = 30; c.mask = at::mask_type::keep; c.mask_key_only = true; });
      add("key-mask-many-items", [](case_spec& c) { c.batch = 3; c.seqlen_q = 257; c.seqlen_kv = 470; c.heads_q = 40; c.heads_kv = 8; c.mask = at::mask_type::additive; c.mask_key_only = true; c.causal = true; });
      // Boolean masks with a row per query (Note [Hopper row masks]): per (batch, head), shared
      // [Sq, Skv], stored key-major (key stride not 1), with rows that drop every key, causal and
      // window bands (half tiles), GQA, lengths that are not multiples of the tiles (the packed
      // rows' padding) and more items than SMs.
      add("row-mask-causal-gqa", [](case_spec& c) { c.batch = 2; c.seqlen_q = 470; c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 2; c.mask = at::mask_type::keep; c.fully_masked_rows = true; c.causal = true; c.alignment = alignment::bottom_right; });
      add("row-mask-shared-window", [](case_spec& c) { c.batch = 2; c.seqlen_q = c.seqlen_kv = 480; c.heads_q = 2; c.window_left = 150; c.window_right = 30; c.mask = at::mask_type::keep; c.mask_broadcast = true; c.fully_masked_rows = true; });
      add("row-mask-key-major-many-items", [](case_spec& c) { c.batch = 3; c.seqlen_q = 257; c.seqlen_kv = 470; c.heads_q = 40; c.heads_kv = 8; c.mask = at::mask_type::keep; c.mask_keys_outer = true; c.causal = true; });
      add("varlen-many-items-causal-gqa", [](case_spec& c) {
        for (int i = 0; i < 12; ++i) {
          c.varlen_q.push_back(1 + (i * 97) % 450);
          c.varlen_kv.push_back(1 + (i * 61 + 30) % 450);
        }
        c.heads_q = 16;
        c.heads_kv = 4;
        c.causal = true;
      });
    }
  return v;
}

// Compares the Hopper bands `band_of(p, sq, skv, i)` with key_band_of over alignments, windows
// (none, small, past every key, near the 64-bit limit make_problem clamps to) and the lengths in
// `lens` (up to `lim`, the kernel's limit), on the first, last and middle rows, the diagonal's
// neighbours and random rows; also checks that they are monotone in the row.
template <class BandOf>
void compare_sm90_bands(std::int64_t lim, BandOf band_of) {
  const std::int64_t far = (std::int64_t{1} << 61) + 1;
  const std::int64_t lens[] = {1, 17, 64, 501, 1024, 4097, lim - 1, lim};
  const std::int64_t windows[] = {-1, 0, 1, 5, 63, 600, lim - 1, lim, lim + 7, 2 * lim, far};
  std::mt19937_64 rng(fresh_seed());
  int compared = 0, empty = 0;
  for (std::int64_t sq : lens)
    for (std::int64_t skv : lens)
      for (bool causal : {false, true})
        for (bool br : {false, true})
          for (std::int64_t wl : windows)
            for (std::int64_t wr : windows) {
              if (causal && wr != -1 && wr != 5) continue;  // right bounds do not matter under causal
              cuda::flash_params p;
              p.seqlen_q = static_cast<int>(sq);
              p.seqlen_kv = static_cast<int>(skv);
              p.causal = causal;
              p.bottom_right = br;
              p.window_left = wl;
              p.window_right = wr;
              cuda::sm90_band_offsets(p);
              std::vector<std::int64_t> rows = {0, sq - 1, sq / 2};
              for (std::int64_t d : {std::int64_t{0}, skv - sq}) {
                for (std::int64_t k : {-2, -1, 0, 1, 2}) {
                  const std::int64_t i = d + k + (wl >= 0 && wl < lim ? wl : 0);
                  if (i >= 0 && i < sq) rows.push_back(i);
                }
              }
              for (int r = 0; r < 4; ++r) rows.push_back(static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(sq)));
              for (std::int64_t i : rows) {
                const key_band want = key_band_of(i, sq, skv, causal, br, wl, wr);
                const cuda::band32 got = band_of(p, static_cast<int>(sq), static_cast<int>(skv), static_cast<int>(i));
                SCOPED_TRACE("Sq " + std::to_string(sq) + " Skv " + std::to_string(skv) + " causal " +
                             std::to_string(causal) + " br " + std::to_string(br) + " window " + std::to_string(wl) +
                             "," + std::to_string(wr) + " row " + std::to_string(i));
                ++compared;
                if (want.hi <= want.lo) {
                  ++empty;
                  EXPECT_LE(got.hi, got.lo);
                } else {
                  EXPECT_EQ(got.lo, want.lo);
                  EXPECT_EQ(got.hi, want.hi);
                }
                // Monotone in the row, empty bands included: the producer's tile range takes the
                // first and last rows' bands as bounds for the rows between.
                if (i + 1 < sq) {
                  const cuda::band32 next = band_of(p, static_cast<int>(sq), static_cast<int>(skv), static_cast<int>(i + 1));
                  EXPECT_LE(got.lo, next.lo);
                  EXPECT_LE(got.hi, next.hi);
                }
              }
            }
  // Both outcomes occur (the grid would not test emptiness otherwise).
  EXPECT_GT(empty, 0);
  EXPECT_GT(compared - empty, 0);
}

// Note [Hopper 32-bit bands]: the Hopper consumers' 32-bit bands (sm90_band_offsets, then
// sm90_band_of) equal key_band_of's for every row, or are empty exactly where it is, for lengths
// up to the 2^30 the Hopper path allows. Host arithmetic only: runs without a GPU.
TEST(cuda, sm90_band_matches_key_band) {
  compare_sm90_bands(std::int64_t{1} << 30,
                     [](const cuda::flash_params& p, int, int, int i) { return cuda::sm90_band_of(p, i); });
}

// Note [Hopper varlen]: a sequence's bands from sm90_varlen_offsets (per-sequence offsets from the
// windows sm90_band_offsets clamps to 2^29) equal key_band_of's, for sequences up to the 2^29 rows
// the varlen form allows. p.seqlen_q/kv (the longest sequence) play no part in them.
TEST(cuda, sm90_varlen_band_matches_key_band) {
  compare_sm90_bands(std::int64_t{1} << 29, [](cuda::flash_params p, int sq, int skv, int i) {
    p.seqlen_q = p.seqlen_kv = 7;  // not this sequence's lengths
    return cuda::sm90_band_in(i, cuda::sm90_varlen_offsets(p, sq, skv), skv);
  });
}

// The Hopper path's row-block grid (flash.h sm90_row_origin, Note [Hopper scheduler]) covers every
// row with whole 64-row parts; under bands whose right edge moves with the row the partial block is
// the first (the rows it leaves idle lie before row 0 and the last block ends within 64 rows of the
// sequence's end), otherwise the grid starts at row 0. Host arithmetic only: runs without a GPU.
TEST(cuda, sm90_row_grid_covers_the_sequence) {
  struct band_kind {
    const char* name;
    bool causal;
    std::int64_t left, right;
    bool moves;
  };
  for (const band_kind& k : {band_kind{"none", false, -1, -1, false}, band_kind{"causal", true, -1, -1, true},
                             band_kind{"right window", false, -1, 5, true}, band_kind{"left window", false, 7, -1, false}})
    for (int width : {64, 128})
      for (int s : {1, 17, 63, 64, 65, 127, 128, 129, 191, 192, 193, 257, 470, 501, 777, 1000, 1024, 4096, 4097,
                    std::numeric_limits<int>::max()}) {
        cuda::flash_params p;
        p.seqlen_q = s;
        p.causal = k.causal;
        p.window_left = k.left;
        p.window_right = k.right;
        const std::int64_t bm = cuda::sm90_block_m(width), blocks = (std::int64_t{s} + bm - 1) / bm;
        const std::int64_t origin = cuda::sm90_row_origin(p, width), end = origin + blocks * bm;
        SCOPED_TRACE(std::string(k.name) + " width " + std::to_string(width) + " Sq " + std::to_string(s));
        EXPECT_EQ(origin % 64, 0);
        EXPECT_LE(origin, 0);
        EXPECT_GT(origin, -bm);
        EXPECT_GE(end, s);
        if (k.moves) {
          EXPECT_LT(end - s, 64);  // only the last 64-row part may run past the end
        } else {
          EXPECT_EQ(origin, 0);
        }
      }
}

TEST(cuda, explains_itself_without_a_device) {
  const auto b = registry::global().find("flash_cuda");
  if (!b) GTEST_SKIP() << "attend was built without CUDA";
  const std::string why = gpu_skip_reason();
  if (why.empty()) GTEST_SKIP() << "a usable GPU is present; nothing to explain";
  std::cout << "[   INFO   ] flash_cuda says: " << why << std::endl;
  EXPECT_NE(why.find("cuda"), std::string::npos) << why;
}

TEST(cuda, flash_cuda_quick_grid) {
  ATTEND_REQUIRE_GPU();
  check_cases("flash_cuda", at::default_grid(fresh_seed(), /*quick=*/true), true);
}

TEST(cuda, flash_cuda_default_grid) {
  ATTEND_REQUIRE_GPU();
  check_cases("flash_cuda", at::default_grid(fresh_seed() + 1), true);
}

TEST(cuda, flash_cuda_big_shapes) {
  ATTEND_REQUIRE_GPU();
  check_cases("flash_cuda", big_cases(fresh_seed()), true);
}

#if defined(ATTEND_TEST_HAVE_CUDA)
// What flash_cuda plans for the case on the GPU, asked without uploading it or computing its
// reference: the kernel (cuda::flash_cuda_kernel), the mma.sync kernel's score path
// (cuda::flash_cuda_tc_mode), whether staged masks fit this GPU (cuda::flash_cuda_tc_staged_fits)
// and how many key ranges a split call takes (cuda::flash_cuda_num_splits).
struct gpu_plan {
  std::string kernel, tc_mode;
  bool staged_fits = false;
  int splits = 1;
};
gpu_plan planned(case_spec spec) {
  spec.device = k_gpu;
  spec.compute_reference = false;
  const at::case_data data(spec);
  const problem p = make_problem(gpu_probe(data));
  return {cuda::flash_cuda_kernel(p), cuda::flash_cuda_tc_mode(p), cuda::flash_cuda_tc_staged_fits(p),
          cuda::flash_cuda_num_splits(p)};
}

// For its lifetime, flash_cuda plans the mma.sync kernel where the Hopper kernel would take a call
// (cuda::flash_cuda_set_hopper_enabled), so that tests reach the mma.sync kernel on a Hopper GPU
// at any shape.
class mma_sync_only {
 public:
  mma_sync_only() : before_(cuda::flash_cuda_set_hopper_enabled(false)) {}
  ~mma_sync_only() { cuda::flash_cuda_set_hopper_enabled(before_); }
  mma_sync_only(const mma_sync_only&) = delete;
  mma_sync_only& operator=(const mma_sync_only&) = delete;

 private:
  bool before_;
};
#else
struct mma_sync_only {
  mma_sync_only() {}
  ~mma_sync_only() {}
};
#endif

// The Hopper cases must reach the Hopper kernel where it can run: a dispatch change that sends
// them to the mma.sync kernel would otherwise pass every comparison unnoticed.
void expect_hopper_kernel(const std::vector<case_spec>& cases) {
#if defined(ATTEND_TEST_HAVE_CUDA)
  if (!cuda::flash_cuda_hopper_available(k_gpu.index)) {
    std::cout << "[   INFO   ] not checked which kernel runs: no Hopper kernel for this device/build" << std::endl;
    return;
  }
  for (const case_spec& spec : cases)
    EXPECT_EQ(planned(spec).kernel, "sm90") << spec.name << " [" << spec.describe() << "]";
#else
  static_cast<void>(cases);
#endif
}

TEST(cuda, flash_cuda_hopper_shapes) {
  ATTEND_REQUIRE_GPU();
  const auto cases = hopper_cases(fresh_seed());
  expect_hopper_kernel(cases);
  check_cases("flash_cuda", cases, true);
}

// Note [Hopper padded head dims]: head dims below the width the Hopper kernel runs at (8 and 40 at
// 64; 72, 80, 88, 96, 104, 112 and 120 at 128; all but 120 and head_dim_qk = 128 with fewer k16
// steps of S = Q K^T than the width, the instantiation that skips the rest; head_dim_v up to 48 at
// 64 and up to 96 at 128 with P V at a narrower n, sm90_pv_n, in every mode) and head_dim_v !=
// head_dim_qk either way (one of them 64 or less at width 128: a TMA box wholly past the head dim),
// dense and varlen (whose rows past a sequence's end are stored one by one, up to head_dim_v), key
// and row masks, causal and window bands, GQA, bhsd, more items than SMs, and slices with gaps
// after each dim, which must stay unwritten (check_backend). Sequence lengths are not multiples of
// the tiles.
std::vector<case_spec> hopper_padded_cases(std::uint64_t seed) {
  std::vector<case_spec> v;
  auto add = [&](const std::string& name, dtype t, std::int64_t dqk, std::int64_t dv, auto&& edit) {
    case_spec c = typed_case("sm90-padded-" + name, t, dqk, seed * 7919u + v.size());
    c.head_dim_v = dv;
    edit(c);
    v.push_back(std::move(c));
  };
  using at::mask_type;
  add("d8-causal", dtype::bf16, 8, 8, [](case_spec& c) { c.seqlen_q = 300; c.seqlen_kv = 257; c.heads_q = 2; c.causal = true; });
  add("d40-gqa-gaps", dtype::f16, 40, 40, [](case_spec& c) { c.batch = 2; c.seqlen_q = c.seqlen_kv = 477; c.heads_q = 4; c.heads_kv = 2; c.aligned_gaps = true; });
  add("d72-bhsd-window", dtype::bf16, 72, 72, [](case_spec& c) { c.layout = layout::bhsd; c.seqlen_q = c.seqlen_kv = 480; c.heads_q = 2; c.window_left = 150; c.window_right = 30; });
  add("d80-causal-br", dtype::f16, 80, 80, [](case_spec& c) { c.seqlen_q = 300; c.seqlen_kv = 477; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("d96-key-mask-additive-causal", dtype::bf16, 96, 96, [](case_spec& c) { c.batch = 2; c.seqlen_q = 300; c.seqlen_kv = 333; c.heads_q = 2; c.mask = mask_type::additive; c.mask_key_only = true; c.fully_masked_rows = true; c.causal = true; });
  add("d112-row-mask-causal-gqa", dtype::f16, 112, 112, [](case_spec& c) { c.batch = 2; c.seqlen_q = 470; c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 2; c.mask = mask_type::keep; c.fully_masked_rows = true; c.causal = true; c.alignment = alignment::bottom_right; });
  add("dqk128-dv64-causal-gaps", dtype::bf16, 128, 64, [](case_spec& c) { c.batch = 2; c.seqlen_q = c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 1; c.causal = true; c.aligned_gaps = true; });
  add("dqk64-dv128", dtype::f16, 64, 128, [](case_spec& c) { c.seqlen_q = 333; c.seqlen_kv = 401; c.heads_q = 2; });
  add("dqk80-dv48-varlen", dtype::bf16, 80, 48, [](case_spec& c) { c.varlen_q = {300, 0, 129, 1, 64}; c.varlen_kv = {477, 5, 0, 200, 64}; c.heads_q = 4; c.heads_kv = 2; });
  add("d40-varlen-causal-br-gaps", dtype::f16, 40, 40, [](case_spec& c) { c.aligned_gaps = true; c.varlen_q = {130, 470, 17, 300}; c.varlen_kv = {200, 300, 17, 129}; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("dqk128-dv64-varlen-causal", dtype::bf16, 128, 64, [](case_spec& c) { c.varlen_q = {200, 77, 330}; c.varlen_kv = {130, 200, 301}; c.heads_q = 4; c.heads_kv = 2; c.causal = true; });
  add("d120-key-mask-keep", dtype::bf16, 120, 120, [](case_spec& c) { c.batch = 2; c.seqlen_q = 257; c.seqlen_kv = 470; c.heads_q = 2; c.mask = mask_type::keep; c.mask_key_only = true; c.fully_masked_rows = true; });
  add("d104-many-items-causal-gqa", dtype::f16, 104, 104, [](case_spec& c) { c.batch = 3; c.seqlen_q = c.seqlen_kv = 470; c.heads_q = 16; c.heads_kv = 4; c.causal = true; });
  // More of P V at n = 48, 80 and 96 (sm90_pv_n): a row mask (which no case above runs below the
  // full width), a key mask at 48, varlen at 96.
  add("d80-row-mask-window", dtype::f16, 80, 80, [](case_spec& c) { c.batch = 2; c.seqlen_q = 333; c.seqlen_kv = 401; c.heads_q = 2; c.mask = mask_type::keep; c.fully_masked_rows = true; c.window_left = 100; c.window_right = 100; });
  add("d40-key-mask-additive", dtype::bf16, 40, 40, [](case_spec& c) { c.batch = 2; c.seqlen_q = 257; c.seqlen_kv = 300; c.heads_q = 4; c.heads_kv = 2; c.mask = mask_type::additive; c.mask_key_only = true; c.fully_masked_rows = true; });
  add("d88-varlen-causal", dtype::bf16, 88, 88, [](case_spec& c) { c.varlen_q = {129, 300, 1, 64}; c.varlen_kv = {300, 129, 17, 64}; c.heads_q = 4; c.heads_kv = 2; c.causal = true; });
  return v;
}

TEST(cuda, flash_cuda_hopper_padded_head_dims) {
  ATTEND_REQUIRE_GPU();
  const auto cases = hopper_padded_cases(fresh_seed());
  expect_hopper_kernel(cases);
  check_cases("flash_cuda", cases, true);
}

// The awkward-size grid on the mma.sync kernel where the Hopper kernel would take its cases (head
// dims up to 128 in 16-bit types), so that both kernels are compared on it on a Hopper GPU.
TEST(cuda, flash_cuda_mma_sync_grid) {
  ATTEND_REQUIRE_GPU();
#if defined(ATTEND_TEST_HAVE_CUDA)
  if (!cuda::flash_cuda_hopper_available(k_gpu.index))
    GTEST_SKIP() << "no Hopper kernel for this device/build: the grid tests already run the mma.sync kernel";
#endif
  const mma_sync_only mma;
  check_cases("flash_cuda", at::default_grid(fresh_seed() + 5), true);
}

// Small enough for compute-sanitizer (scripts/gpu-check runs memcheck and racecheck on it), yet
// with more work items (2-3 row blocks x 70 heads x 2 batches) than an H100 has SMs, so the
// persistent Hopper kernel reuses its Q buffers and K/V ring across items (Note [Hopper scheduler]).
// The cases at Sq = 330, 400 and 401: each head's first row block sees no key (bottom-right, Sq > Skv: rows
// 0..129, 0..199, 0..200): items without key tiles between items with tiles, at both head dims
// (two and three consumers); the one at 401 has a window, so consumers skip tiles on both sides of
// their rows' bands (Note [Hopper skipped tiles]). At head dim 64 the row-block grid starts 128 rows
// before row 0 (flash.h sm90_row_origin), so two consumers of each head's first item have no rows.
TEST(cuda, flash_cuda_hopper_persistent_small) {
  ATTEND_REQUIRE_GPU();
  std::vector<case_spec> v;
  const std::uint64_t seed = fresh_seed();
  // (dtype, head dim, Sq, window_left, gaps); the window makes consumers skip leading tiles too
  // (Note [Hopper skipped tiles]); head dim 40 runs zero-padded (Note [Hopper padded head dims]),
  // in slices whose gaps must stay unwritten.
  for (auto [t, d, sq, window, gaps] :
       {std::tuple<dtype, std::int64_t, std::int64_t, std::int64_t, bool>{dtype::bf16, 64, 200, -1, false},
        {dtype::f16, 128, 200, -1, false},
        {dtype::bf16, 128, 330, -1, false},
        {dtype::bf16, 64, 400, -1, false},
        {dtype::f16, 64, 401, 60, false},
        {dtype::f16, 40, 200, -1, true}}) {
    case_spec c = typed_case("sm90-persistent-" + std::string(to_string(t)) + "-d" + std::to_string(d) + "-sq" +
                                 std::to_string(sq) + (window >= 0 ? "-window" : "") + (gaps ? "-gaps" : ""),
                             t, d, seed + v.size());
    c.aligned_gaps = gaps;
    c.batch = 2;
    c.seqlen_q = sq;
    c.seqlen_kv = 200;
    c.heads_q = 70;
    c.heads_kv = 14;
    c.causal = true;
    c.alignment = alignment::bottom_right;
    c.window_left = window;
    v.push_back(c);
  }
  // Masks on many items: key masks (Note [Hopper key masks]: the ring the producer lanes write and
  // every consumer thread reads) and masks with a row per query (Note [Hopper row masks]: the
  // packing kernel and the consumers' loads of the packed bits).
  for (auto [t, d, key_only] : {std::tuple{dtype::f16, std::int64_t{128}, true}, {dtype::bf16, std::int64_t{64}, true},
                                {dtype::bf16, std::int64_t{128}, false}, {dtype::f16, std::int64_t{64}, false}}) {
    case_spec c = typed_case(std::string("sm90-persistent-") + (key_only ? "key" : "row") + "-mask-" +
                                 std::string(to_string(t)) + "-d" + std::to_string(d),
                             t, d, seed + v.size());
    c.batch = 2;
    c.seqlen_q = 200;
    c.seqlen_kv = 300;
    c.heads_q = 70;
    c.heads_kv = 14;
    c.causal = true;
    c.mask = at::mask_type::keep;
    c.mask_key_only = key_only;
    c.fully_masked_rows = true;
    v.push_back(c);
  }
  // Varlen (Note [Hopper varlen]): the V tiles zeroed past a sequence's end (a barrier of their
  // own) and the outputs stored row by row where a part runs past the end, on many items; also at
  // padded head dims (Note [Hopper padded head dims]), whose rows are stored up to head_dim_v.
  for (auto [t, dqk, dv] : {std::tuple{dtype::bf16, std::int64_t{128}, std::int64_t{128}},
                            {dtype::f16, std::int64_t{64}, std::int64_t{64}},
                            {dtype::bf16, std::int64_t{80}, std::int64_t{48}}}) {
    case_spec c = typed_case("sm90-persistent-varlen-" + std::string(to_string(t)) + "-d" + std::to_string(dqk) +
                                 (dv != dqk ? "-dv" + std::to_string(dv) : ""),
                             t, dqk, seed + v.size());
    c.head_dim_v = dv;
    c.varlen_q = {200, 77, 0, 330};
    c.varlen_kv = {130, 200, 64, 301};
    c.heads_q = 40;
    c.heads_kv = 8;
    c.causal = true;
    c.alignment = dv == dqk ? alignment::bottom_right : alignment::top_left;
    v.push_back(c);
  }
  expect_hopper_kernel(v);
  check_cases("flash_cuda", v, true);
}

// Note [Hopper varlen]: the keys past a sequence's end in its last V tile are the next sequence's;
// a NaN or Inf there must not reach this sequence's rows (P is 0 there, but 0 x NaN is NaN), as
// on the CPU backends. Sequence 0 has 100 keys (the tile's other 28 rows are sequence 1's), and
// sequence 1's V is NaN and Inf throughout: sequence 0 must match the reference, sequence 1's rows
// must be NaN. Both head dims and alignments of the Hopper kernel, a head dim it pads (Note [Hopper
// padded head dims]), and the mma.sync kernel.
TEST(cuda, flash_cuda_varlen_next_sequence_nan) {
  ATTEND_REQUIRE_GPU();
  const auto b = registry::global().find("flash_cuda");
  ASSERT_TRUE(b);
  const std::uint64_t seed = fresh_seed();
  int n = 0;
  for (auto [d, hopper] : {std::pair{std::int64_t{64}, true}, {std::int64_t{128}, true}, {std::int64_t{80}, true},
                           {std::int64_t{80}, false}})
    for (bool causal : {false, true}) {
      std::optional<mma_sync_only> mma;
      if (!hopper) mma.emplace();
      case_spec spec = typed_case("varlen-next-nan-d" + std::to_string(d) + (causal ? "-causal" : "") +
                                      (hopper ? "" : "-mma-sync"),
                                  dtype::bf16, d, seed + n++);
      spec.varlen_q = {150, 60};
      spec.varlen_kv = {100, 200};
      spec.heads_q = 4;
      spec.heads_kv = 2;
      spec.causal = causal;
      spec.alignment = alignment::bottom_right;
      spec.device = k_gpu;
      const at::case_data data(spec);
      const attention_params& host = data.params();
      // Sequence 1's V rows (packed rows 100..299): NaN, with an Inf in each row.
      auto* v = static_cast<std::uint16_t*>(host.v.data);
      for (std::int64_t row = 100; row < 300; ++row)
        for (std::int64_t h = 0; h < 2; ++h)
          for (std::int64_t e = 0; e < d; ++e)
            v[row * host.v.strides[0] + h * host.v.strides[1] + e * host.v.strides[2]] = e == 3 ? 0x7f80 : 0x7fc0;
      at::device_copy dev(data, *b->memory_for(k_gpu), k_gpu);
      run_options options;
      options.select.name = "flash_cuda";
      attention(dev.params(), options);
      dev.download_outputs(data);
      const auto* out = static_cast<const std::uint16_t*>(host.out.data);
      const at::tolerance tol = at::tolerance_for(dtype::bf16);
      const std::vector<double>& ref = data.reference_out();
      int checked = 0, nan_rows = 0;
      for (std::int64_t row = 0; row < 210; ++row)
        for (std::int64_t h = 0; h < 4; ++h)
          for (std::int64_t e = 0; e < d; ++e) {
            std::uint32_t bits = std::uint32_t{out[row * host.out.strides[0] + h * host.out.strides[1] + e * host.out.strides[2]]} << 16;
            float got = 0;
            std::memcpy(&got, &bits, sizeof got);
            if (row >= 150) {  // sequence 1: every row sees its non-finite keys
              nan_rows += !std::isfinite(got);
              continue;
            }
            const double want = ref[static_cast<std::size_t>((row * 4 + h) * d + e)];
            ASSERT_LE(std::abs(got - want), tol.atol + tol.rtol * std::abs(want))
                << spec.name << " row " << row << " head " << h << " dim " << e << ": got "
                << got << ", want " << want;
            ++checked;
          }
      EXPECT_EQ(checked, 150 * 4 * d);
      EXPECT_EQ(nan_rows, 60 * 4 * d) << spec.name;
#if defined(ATTEND_TEST_HAVE_CUDA)
      EXPECT_EQ(planned(spec).kernel, hopper && cuda::flash_cuda_hopper_available(k_gpu.index) ? "sm90" : "tc")
          << spec.name;
#endif
    }
}

// A false keep-mask entry drops its key whatever its score (Note [Score pipeline]): with NaN in the
// K rows of every dropped key, every flash_cuda kernel must still match the reference (which
// never scores them). Each (batch, head) drops the same keys for all its rows: key-only masks and
// a mask with a row per query on the mma.sync kernel (bf16 head dim 96, f16 head dim 80, bf16 80;
// packed bits, Note [mma.sync mask bits]) and the scalar kernel (f32), and both key-only masks and
// masks with a row per query on the Hopper kernel (bf16 head dim 128, f16 head dim 64, and padded
// head dims 96 and 80, Note [Hopper padded head dims]; packed bits, Note [Hopper row masks]), the
// key-only one also over a single key (a mask constant along keys: stride 0).
TEST(cuda, flash_cuda_keep_mask_ignores_nan_scores) {
  ATTEND_REQUIRE_GPU();
  const auto b = registry::global().find("flash_cuda");
  ASSERT_TRUE(b);
  const std::uint64_t seed = fresh_seed();
  int n = 0;
  using i64 = std::int64_t;
  for (auto [t, d, rows, skv, hopper] :
       {std::tuple{dtype::bf16, i64{96}, false, i64{300}, false}, {dtype::f16, i64{80}, false, i64{300}, false},
        {dtype::f32, i64{64}, false, i64{300}, false}, {dtype::bf16, i64{128}, false, i64{300}, true},
        {dtype::f16, i64{64}, false, i64{300}, true}, {dtype::bf16, i64{128}, false, i64{1}, true},
        {dtype::bf16, i64{128}, true, i64{300}, true}, {dtype::f16, i64{64}, true, i64{300}, true},
        {dtype::bf16, i64{80}, true, i64{300}, false}, {dtype::bf16, i64{96}, false, i64{300}, true},
        {dtype::f16, i64{80}, true, i64{300}, true}}) {
    std::optional<mma_sync_only> mma;
    if (!hopper) mma.emplace();
    case_spec spec = typed_case(std::string(rows ? "row" : "key") + "-keep-nan-k-" + std::string(to_string(t)) + "-d" +
                                    std::to_string(d) + "-skv" + std::to_string(skv) + (hopper ? "" : "-mma-sync"),
                                t, d, seed + n++);
    // 201 rows: with rows repeated, the first row of (batch 0, head 1) is mask row 201, which
    // fully_masked_rows drops whole (r % 5 == 1), as it drops row 1 of the key-only masks.
    const std::int64_t sq = rows ? 201 : 200;
    spec.batch = 2;
    spec.seqlen_q = sq;
    spec.seqlen_kv = skv;
    spec.heads_q = spec.heads_kv = 2;
    spec.mask = at::mask_type::keep;
    spec.mask_key_only = !rows;
    spec.mask_rows_repeat = rows;  // [B, H, Sq, Skv], every row of a (batch, head) as its first
    spec.fully_masked_rows = true;
    spec.device = k_gpu;
    const at::case_data data(spec);
    const attention_params& host = data.params();
    const auto* keep = static_cast<const std::uint8_t*>(host.maybe_mask.data);  // [B, H, 1 or Sq, Skv]
    const std::int64_t mask_rows = rows ? sq : 1;
    const std::size_t elem = t == dtype::f32 ? 4 : 2;
    auto* k = static_cast<unsigned char*>(host.k.data);  // [B, Skv, H, D]
    int poisoned = 0;
    for (std::int64_t bb = 0; bb < 2; ++bb)
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t j = 0; j < skv; ++j) {
          if (keep[(bb * 2 + h) * mask_rows * skv + j] != 0) continue;  // the (batch, head)'s first row
          ++poisoned;
          for (std::int64_t e = 0; e < d; ++e) {
            unsigned char* x = k + elem * static_cast<std::size_t>(bb * host.k.strides[0] + j * host.k.strides[1] +
                                                                   h * host.k.strides[2] + e * host.k.strides[3]);
            const std::uint32_t nan32 = 0x7fc00000u;
            const std::uint16_t nan16 = t == dtype::bf16 ? 0x7fc0 : 0x7e00;
            if (elem == 4)
              std::memcpy(x, &nan32, 4);
            else
              std::memcpy(x, &nan16, 2);
          }
        }
    ASSERT_GT(poisoned, 0);
#if defined(ATTEND_TEST_HAVE_CUDA)
    EXPECT_EQ(planned(spec).kernel, t == dtype::f32                                               ? "generic"
                                    : hopper && cuda::flash_cuda_hopper_available(k_gpu.index) ? "sm90"
                                                                                                : "tc")
        << spec.name;
#endif
    const at::comparison c = at::check_backend(*b, data);
    EXPECT_TRUE(c.ok) << spec.name << ": " << c.detail;
  }
}

// Masks on the mma.sync kernel (with the Hopper kernel switched off, mma_sync_only, so on every
// GPU), at head dims of each of its widths, head_dim_v != head_dim_qk, varlen with a mask and
// split-KV decode, each checked to take the score path it was written for (the last word of its name;
// a staged case takes extras on a GPU where staging would cost occupancy, tc_staged_fits):
// boolean masks read as packed bits (Note [mma.sync mask bits]) with a row per query, one row for
// all (key padding) and one for all heads and batches, stored key-major (the packer's key-by-key
// reads); additive masks of each dtype staged through shared memory (Note [mma.sync staged masks]),
// with a varlen sequence of an odd number of keys (a half pair at its end); and the masks the
// extras path reads element by element (additive ones with odd strides or stored key-major, a
// boolean one with softcap). Under causal and window bands, with rows that drop every key, rows
// past the sequence in the last row block, GQA, split-KV and varlen.
TEST(cuda, flash_cuda_mma_sync_masks) {
  ATTEND_REQUIRE_GPU();
  const mma_sync_only mma;
  std::vector<case_spec> v;
  const auto add = case_adder(v, "mma-sync-", [](case_spec& c) {
    c.mask = at::mask_type::keep;
    c.fully_masked_rows = true;
  });
  using at::mask_type;
  add("row-mask-d80-causal-br-gqa-bits", dtype::bf16, 80, [](case_spec& c) { c.batch = 2; c.seqlen_q = 130; c.seqlen_kv = 301; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("row-mask-hf-d96-bits", dtype::f16, 96, [](case_spec& c) { c.batch = 2; c.seqlen_q = 200; c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 1; c.mask_one_head = true; c.mask_rows_repeat = true; });
  add("key-mask-d256-window-bits", dtype::bf16, 256, [](case_spec& c) { c.batch = 2; c.seqlen_q = 150; c.seqlen_kv = 520; c.heads_q = 2; c.mask_key_only = true; c.window_left = 100; c.window_right = 30; });
  add("row-mask-key-major-d32-bits", dtype::f16, 32, [](case_spec& c) { c.batch = 2; c.seqlen_q = 77; c.seqlen_kv = 90; c.heads_q = 2; c.mask_keys_outer = true; });
  add("row-mask-shared-dv64-causal-bits", dtype::bf16, 128, [](case_spec& c) { c.head_dim_v = 64; c.batch = 2; c.seqlen_q = c.seqlen_kv = 257; c.heads_q = 2; c.mask_broadcast = true; c.causal = true; });
  add("row-mask-many-blocks-d80-bits", dtype::f16, 80, [](case_spec& c) { c.batch = 2; c.seqlen_q = 1000; c.seqlen_kv = 701; c.heads_q = 8; c.heads_kv = 2; });
  add("key-mask-decode-split-d80-bits", dtype::bf16, 80, [](case_spec& c) { c.seqlen_q = 1; c.seqlen_kv = 3000; c.heads_q = 4; c.heads_kv = 1; c.mask_key_only = true; });
  add("row-mask-decode-split-d96-bits", dtype::f16, 96, [](case_spec& c) { c.seqlen_q = 3; c.seqlen_kv = 2500; c.heads_q = 2; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("varlen-row-mask-d64-bits", dtype::bf16, 64, [](case_spec& c) { c.varlen_q = {200, 1, 0, 77}; c.varlen_kv = {130, 300, 5, 77}; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("varlen-key-mask-d128-bits", dtype::f16, 128, [](case_spec& c) { c.varlen_q = {33, 140}; c.varlen_kv = {250, 64}; c.heads_q = 2; c.mask_key_only = true; });
  add("additive-f32-d80-causal-br-gqa-staged", dtype::bf16, 80, [](case_spec& c) { c.mask = mask_type::additive; c.batch = 2; c.seqlen_q = 130; c.seqlen_kv = 300; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("additive-bf16-d96-window-staged", dtype::bf16, 96, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.batch = 2; c.seqlen_q = 200; c.seqlen_kv = 334; c.heads_q = 2; c.window_left = 90; c.window_right = 20; });
  add("additive-f16-lowest-d112-staged", dtype::f16, 112, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::f16; c.mask_lowest = true; c.seqlen_q = 64; c.seqlen_kv = 332; c.heads_q = 2; });
  add("additive-bf16-key-d256-staged", dtype::bf16, 256, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.mask_key_only = true; c.batch = 2; c.seqlen_q = 150; c.seqlen_kv = 520; c.heads_q = 2; c.causal = true; });
  add("additive-f32-decode-split-d80-staged", dtype::f16, 80, [](case_spec& c) { c.mask = mask_type::additive; c.seqlen_q = 2; c.seqlen_kv = 3000; c.heads_q = 4; c.heads_kv = 1; });
  // Rows of only float's lowest value over splits of unequal key counts (Note [Split clamped rows]).
  add("additive-lowest-decode-split-d64-staged", dtype::bf16, 64, [](case_spec& c) { c.mask = mask_type::additive; c.mask_lowest = true; c.seqlen_q = 2; c.seqlen_kv = 3000; c.heads_q = 4; c.heads_kv = 2; });
  add("additive-lowest-decode-split-d128-extras", dtype::f16, 128, [](case_spec& c) { c.mask = mask_type::additive; c.mask_lowest = true; c.seqlen_q = 1; c.seqlen_kv = 5001; c.heads_q = 8; c.heads_kv = 1; });
  add("varlen-additive-f16-d64-staged", dtype::f16, 64, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::f16; c.varlen_q = {70, 1, 33}; c.varlen_kv = {129, 200, 3}; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("keep-mask-softcap-d80-extras", dtype::bf16, 80, [](case_spec& c) { c.seqlen_q = 70; c.seqlen_kv = 150; c.heads_q = 2; c.softcap = 5.0; });
  add("additive-odd-row-d80-causal-extras", dtype::f16, 80, [](case_spec& c) { c.mask = mask_type::additive; c.batch = 2; c.seqlen_q = 130; c.seqlen_kv = 301; c.heads_q = 4; c.heads_kv = 2; c.causal = true; });
  add("additive-bf16-key-major-d96-extras", dtype::bf16, 96, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.mask_keys_outer = true; c.seqlen_q = 90; c.seqlen_kv = 200; c.heads_q = 2; });
  add("additive-f16-lowest-d112-extras", dtype::f16, 112, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::f16; c.mask_lowest = true; c.seqlen_q = 64; c.seqlen_kv = 333; c.heads_q = 2; });
#if defined(ATTEND_TEST_HAVE_CUDA)
  for (const case_spec& spec : v) {
    const gpu_plan plan = planned(spec);
    const std::string& kernel = plan.kernel;
    EXPECT_TRUE(kernel == "tc" || kernel == "tc-split" || kernel == "tc-decode" || kernel == "tc-decode-split" ||
                kernel == "tc-decode-gqa" || kernel == "tc-decode-gqa-split")
        << spec.name << " plans " << kernel;
    std::string mode = spec.name.substr(spec.name.rfind('-') + 1);
    if (mode == "staged" && !plan.staged_fits) {  // a GPU with less shared memory per SM than the H100
      std::cout << "[   INFO   ] " << spec.name << ": staging does not fit two CTAs per SM here; expecting extras" << std::endl;
      mode = "extras";
    }
    EXPECT_EQ(plan.tc_mode, mode) << spec.name;
    if (spec.seqlen_q <= 3 && spec.varlen_q.empty()) {  // Note [Decode tile], Note [Decode GQA packing]
      EXPECT_EQ(kernel, spec.heads_q != spec.heads_kv ? "tc-decode-gqa-split" : "tc-decode-split") << spec.name;
    }
  }
#endif
  check_cases("flash_cuda", v, true);
}

// Split-KV on the mma.sync kernel's plain score path (Note [Split KV], src/cuda/flash_backend.cpp):
// decode and a few query rows at head dims of both its widths up to 128, with GQA, head_dim_v !=
// head_dim_qk, padded head dims, strided views (loads without cp.async), varlen, both causal
// alignments and a window, splits whose key ranges are a tile or two or empty (a 41-key window over
// 5000 keys, top-left causal rows that see a few keys), a warp's second row block with and without
// rows (Sq = 17, 40). Each case is checked to plan the split kernel (on the decode tile at up to 16
// query rows, Note [Decode tile]), and against the reference.
TEST(cuda, flash_cuda_split_kv_plain) {
  ATTEND_REQUIRE_GPU();
  std::vector<case_spec> v;
  const auto add = case_adder(v, "split-kv-");
  add("d128-decode-gqa", dtype::bf16, 128, [](case_spec& c) { c.batch = 2; c.seqlen_kv = 3001; c.heads_q = 8; c.heads_kv = 2; });
  add("d64-decode", dtype::f16, 64, [](case_spec& c) { c.seqlen_kv = 2049; c.heads_q = 4; c.heads_kv = 4; });
  add("d128-dv64-rows17", dtype::f16, 128, [](case_spec& c) { c.head_dim_v = 64; c.seqlen_q = 17; c.seqlen_kv = 1500; c.heads_q = 2; });
  add("d80-rows5-causal-br", dtype::bf16, 80, [](case_spec& c) { c.seqlen_q = 5; c.seqlen_kv = 2500; c.heads_q = 4; c.heads_kv = 1; c.causal = true; c.alignment = alignment::bottom_right; });
  add("d128-window-decode", dtype::bf16, 128, [](case_spec& c) { c.seqlen_kv = 5000; c.heads_q = 2; c.causal = true; c.alignment = alignment::bottom_right; c.window_left = 40; });
  add("d64-strided-rows2", dtype::bf16, 64, [](case_spec& c) { c.strided = true; c.seqlen_q = 2; c.seqlen_kv = 1100; c.heads_q = 3; c.heads_kv = 1; });
  add("d128-varlen", dtype::f16, 128, [](case_spec& c) { c.varlen_q = {1, 2, 0}; c.varlen_kv = {3000, 40, 700}; c.heads_q = 4; c.heads_kv = 2; });
  add("d64-rows40-window", dtype::f16, 64, [](case_spec& c) { c.seqlen_q = 40; c.seqlen_kv = 1300; c.heads_q = 2; c.window_left = 100; c.window_right = 20; });
  add("d128-rows3-causal-top-left", dtype::bf16, 128, [](case_spec& c) { c.seqlen_q = 3; c.seqlen_kv = 4000; c.heads_q = 2; c.heads_kv = 2; c.causal = true; });
  // 375 key tiles in 46 splits of 9 on the H100 and H200 (6 decode-tile CTAs an SM; fewer splits
  // where fewer fit): the merge's second split per lane (lanes 0-13 hold splits 32-45) and four
  // empty splits.
  add("d128-46-splits", dtype::bf16, 128, [](case_spec& c) { c.seqlen_kv = 12000; c.heads_q = 4; c.heads_kv = 4; });
  // One packed CTA over 2344 key tiles: 64 splits (the most; 63 of 37 tiles and one of 13) on a GPU
  // of 64 or more resident decode CTAs, so every lane of the merge holds two splits' weights.
  add("d128-64-splits", dtype::bf16, 128, [](case_spec& c) { c.seqlen_kv = 75000; c.heads_q = 4; c.heads_kv = 1; });
#if defined(ATTEND_TEST_HAVE_CUDA)
  for (const case_spec& spec : v) {
    const gpu_plan plan = planned(spec);
    // Note [Decode tile]: at most 16 query rows (varlen: the longest sequence) run on the decode tile.
    const std::int64_t rows = spec.varlen_q.empty() ? spec.seqlen_q : *std::max_element(spec.varlen_q.begin(), spec.varlen_q.end());
    // Note [Decode GQA packing]: the decode tile packs a GQA call's query heads into its rows.
    const char* decode = spec.heads_q != spec.heads_kv ? "tc-decode-gqa-split" : "tc-decode-split";
    EXPECT_EQ(plan.kernel, rows <= 16 ? decode : "tc-split") << spec.name;
    EXPECT_EQ(plan.tc_mode, "plain") << spec.name;
  }
  // The split counts two cases were written for, on the H100 and H200 (132 SMs, 6 decode
  // CTAs each): 46, and 64 (the most the merge takes).
  if (cuda::flash_cuda_hopper_available(k_gpu.index)) {
    for (const auto& [name, splits] : {std::pair{"split-kv-d128-46-splits", 46}, {"split-kv-d128-64-splits", 64}}) {
      const auto at = std::find_if(v.begin(), v.end(), [&](const case_spec& c) { return c.name == name; });
      ASSERT_NE(at, v.end()) << name;
      EXPECT_EQ(planned(*at).splits, splits) << name;
    }
  }
#endif
  check_cases("flash_cuda", v, true);
}

// Which kernel a decode call takes where the Hopper kernel could run it (Note [Split KV],
// keep_packed in src/cuda/flash_backend.cpp), each case also checked against the reference:
//   - an unpacked call splits only while the Hopper kernel's items would leave half the SMs idle:
//     160 items (more than half of any Hopper GPU's SMs) run unsplit there, 4 items split;
//   - an unsplit GQA decode whose KV heads' rows fit two decode CTAs stays packed on the decode
//     tile, and one of more rows goes to the Hopper kernel.
// Without the Hopper kernel every case runs on the decode tile.
TEST(cuda, flash_cuda_decode_dispatch) {
  ATTEND_REQUIRE_GPU();
  std::vector<case_spec> v;
  std::vector<std::string> on_hopper;  // the kernel each case plans where the Hopper kernel runs
  const auto add = case_adder(v, "decode-dispatch-");
  const auto expect = [&](const char* kernel) { on_hopper.emplace_back(kernel); };
  add("d128-160-items", dtype::bf16, 128, [](case_spec& c) { c.batch = 2; c.seqlen_kv = 2100; c.heads_q = c.heads_kv = 80; });
  expect("sm90");
  add("d64-rows4-160-items-causal", dtype::f16, 64, [](case_spec& c) { c.batch = 4; c.seqlen_q = 4; c.seqlen_kv = 1500; c.heads_q = c.heads_kv = 40; c.causal = true; c.alignment = alignment::bottom_right; });
  expect("sm90");
  add("d128-4-items", dtype::bf16, 128, [](case_spec& c) { c.seqlen_kv = 2100; c.heads_q = c.heads_kv = 4; });
  expect("tc-decode-split");
  add("d128-gqa-4-rows", dtype::bf16, 128, [](case_spec& c) { c.batch = 3; c.seqlen_kv = 300; c.heads_q = 8; c.heads_kv = 2; });
  expect("tc-decode-gqa");
  add("d64-gqa-16-rows-causal", dtype::f16, 64, [](case_spec& c) { c.seqlen_q = 4; c.seqlen_kv = 333; c.heads_q = 8; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  expect("tc-decode-gqa");
  add("d128-gqa-32-rows", dtype::bf16, 128, [](case_spec& c) { c.batch = 2; c.seqlen_q = 8; c.seqlen_kv = 300; c.heads_q = 8; c.heads_kv = 2; });
  expect("tc-decode-gqa");
  add("d128-gqa-48-rows", dtype::bf16, 128, [](case_spec& c) { c.seqlen_q = 12; c.seqlen_kv = 300; c.heads_q = 8; c.heads_kv = 2; });
  expect("sm90");
  add("d64-gqa-64-rows", dtype::bf16, 64, [](case_spec& c) { c.seqlen_q = 16; c.seqlen_kv = 300; c.heads_q = 8; c.heads_kv = 2; });
  expect("sm90");
#if defined(ATTEND_TEST_HAVE_CUDA)
  const bool hopper = cuda::flash_cuda_hopper_available(k_gpu.index);
  for (std::size_t i = 0; i < v.size(); ++i) {
    const std::string kernel = planned(v[i]).kernel;
    if (hopper) {
      EXPECT_EQ(kernel, on_hopper[i]) << v[i].name;
    } else if (v[i].heads_q != v[i].heads_kv) {
      EXPECT_EQ(kernel, "tc-decode-gqa") << v[i].name;
    } else if (v[i].batch * v[i].heads_q >= 160) {  // (a GPU with fewer than 80 resident decode CTAs does not split it)
      EXPECT_TRUE(kernel == "tc-decode-split" || kernel == "tc-decode") << v[i].name << " plans " << kernel;
    } else {
      EXPECT_EQ(kernel, "tc-decode-split") << v[i].name;
    }
  }
  // An empty batch over enough key tiles to split: the plan (which workspace_bytes asks for) has
  // no CTAs to divide a wave among.
  case_spec empty = v.front();
  empty.batch = 0;
  EXPECT_EQ(planned(empty).kernel, hopper ? "sm90" : "tc-decode");
#endif
  check_cases("flash_cuda", v, true);
}

// GQA on the decode tile (Note [Decode GQA packing], src/cuda/flash.h): a CTA's rows are (query
// row, head) pairs of one KV head. Group sizes 2 to 64 (20: a query row's heads straddle two CTAs;
// 64 rows over four CTAs), 1 to 16 query rows (16 at group 8: 128 packed rows), split and not (each
// at least once; strided, varlen, width 256 and straddling rows both ways), head dims of every width (256 skips padded k-steps) with head_dim_v !=
// head_dim_qk, both layouts and strided views (loads without cp.async), varlen with an empty and a
// one-row sequence, both causal alignments, a window, rows that see no key (bottom-right with Sq >
// Skv: lse -inf, out 0). Masks on each score path (packed bits, staged pairs, element reads; per
// head, shared by heads, key-major, varlen, rows of only float's lowest value) and softcap.
TEST(cuda, flash_cuda_decode_gqa_packing) {
  ATTEND_REQUIRE_GPU();
  const mma_sync_only mma;  // unsplit cases of more than 32 packed rows would otherwise take the Hopper kernel
  std::vector<case_spec> v;
  const auto add = case_adder(v, "gqa-pack-");
  add("d128-32:8-split", dtype::bf16, 128, [](case_spec& c) { c.batch = 2; c.seqlen_kv = 3001; c.heads_q = 32; c.heads_kv = 8; });
  add("d64-6:2", dtype::f16, 64, [](case_spec& c) { c.seqlen_kv = 200; c.heads_q = 6; c.heads_kv = 2; });
  add("d80-rows5-causal-br-split", dtype::bf16, 80, [](case_spec& c) { c.seqlen_q = 5; c.seqlen_kv = 2500; c.heads_q = 8; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("d128-dv64-rows16-causal-tl-split", dtype::f16, 128, [](case_spec& c) { c.head_dim_v = 64; c.seqlen_q = 16; c.seqlen_kv = 700; c.heads_q = 16; c.heads_kv = 2; c.causal = true; });
  add("d256-rows2-mqa-split", dtype::bf16, 256, [](case_spec& c) { c.seqlen_q = 2; c.seqlen_kv = 1000; c.heads_q = 4; c.heads_kv = 1; });
  add("d96-bhsd-rows3", dtype::f16, 96, [](case_spec& c) { c.layout = layout::bhsd; c.seqlen_q = 3; c.seqlen_kv = 333; c.heads_q = 4; c.heads_kv = 2; });
  add("d128-varlen-causal-br-split", dtype::f16, 128, [](case_spec& c) { c.varlen_q = {1, 3, 0, 16}; c.varlen_kv = {3000, 40, 700, 17}; c.heads_q = 8; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("d64-strided-rows3-split", dtype::bf16, 64, [](case_spec& c) { c.strided = true; c.seqlen_q = 3; c.seqlen_kv = 1100; c.heads_q = 6; c.heads_kv = 3; });
  add("d128-window-rows4-split", dtype::bf16, 128, [](case_spec& c) { c.seqlen_q = 4; c.seqlen_kv = 5000; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; c.window_left = 40; });
  add("d64-64:1", dtype::f16, 64, [](case_spec& c) { c.seqlen_kv = 513; c.heads_q = 64; c.heads_kv = 1; });
  add("d128-40:2-straddle-split", dtype::bf16, 128, [](case_spec& c) { c.batch = 3; c.seqlen_kv = 1777; c.heads_q = 40; c.heads_kv = 2; });
  add("d64-rows8-no-keys", dtype::f16, 64, [](case_spec& c) { c.seqlen_q = 8; c.seqlen_kv = 5; c.heads_q = 4; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  // Without split, the packed kernel itself stores out and lse (with split, the merge does):
  // element stores of a strided out, varlen rows past a sequence's start, width 256, and a query
  // row's heads straddling two CTAs.
  add("d64-strided-rows3", dtype::bf16, 64, [](case_spec& c) { c.strided = true; c.seqlen_q = 3; c.seqlen_kv = 300; c.heads_q = 6; c.heads_kv = 3; });
  add("d128-varlen-window", dtype::bf16, 128, [](case_spec& c) { c.varlen_q = {2, 0, 5, 1}; c.varlen_kv = {300, 7, 450, 64}; c.heads_q = 12; c.heads_kv = 4; c.causal = true; c.alignment = alignment::bottom_right; c.window_left = 100; });
  add("d256-rows2-mqa", dtype::f16, 256, [](case_spec& c) { c.seqlen_q = 2; c.seqlen_kv = 300; c.heads_q = 4; c.heads_kv = 1; });
  add("d128-40:2-straddle", dtype::f16, 128, [](case_spec& c) { c.batch = 2; c.seqlen_kv = 333; c.heads_q = 40; c.heads_kv = 2; });
  // Masks and softcap, whose rows are read at each packed row's (head, query row): the score path
  // each case takes is a word of its name (plain where none is).
  using at::mask_type;
  add("d128-key-mask-per-head-bits-split", dtype::bf16, 128, [](case_spec& c) { c.mask = mask_type::keep; c.mask_key_only = true; c.fully_masked_rows = true; c.seqlen_kv = 3000; c.heads_q = 8; c.heads_kv = 2; });
  add("d64-row-mask-one-head-bits", dtype::f16, 64, [](case_spec& c) { c.mask = mask_type::keep; c.mask_one_head = true; c.fully_masked_rows = true; c.seqlen_q = 4; c.seqlen_kv = 300; c.heads_q = 8; c.heads_kv = 2; c.causal = true; c.alignment = alignment::bottom_right; });
  add("d64-varlen-key-mask-bits", dtype::bf16, 64, [](case_spec& c) { c.mask = mask_type::keep; c.mask_key_only = true; c.varlen_q = {1, 3, 0}; c.varlen_kv = {300, 40, 129}; c.heads_q = 4; c.heads_kv = 2; });
  // (An f32 mask: float's lowest value in an f16 mask is -inf, which drops keys instead.)
  add("d80-additive-f32-lowest-staged-split", dtype::f16, 80, [](case_spec& c) { c.mask = mask_type::additive; c.mask_lowest = true; c.fully_masked_rows = true; c.seqlen_q = 2; c.seqlen_kv = 2500; c.heads_q = 6; c.heads_kv = 2; });
  add("d64-additive-f32-lowest-key-major-extras", dtype::bf16, 64, [](case_spec& c) { c.mask = mask_type::additive; c.mask_lowest = true; c.mask_keys_outer = true; c.fully_masked_rows = true; c.seqlen_q = 3; c.seqlen_kv = 300; c.heads_q = 6; c.heads_kv = 3; });
  add("d96-row-mask-per-head-bits", dtype::bf16, 96, [](case_spec& c) { c.mask = mask_type::keep; c.fully_masked_rows = true; c.seqlen_q = 3; c.seqlen_kv = 300; c.heads_q = 6; c.heads_kv = 2; });
  add("d256-keep-mask-softcap-extras", dtype::bf16, 256, [](case_spec& c) { c.softcap = 30.0; c.mask = mask_type::keep; c.fully_masked_rows = true; c.seqlen_q = 2; c.seqlen_kv = 200; c.heads_q = 4; c.heads_kv = 1; });
  add("d64-additive-key-major-extras", dtype::bf16, 64, [](case_spec& c) { c.mask = mask_type::additive; c.mask_dtype = dtype::bf16; c.mask_keys_outer = true; c.seqlen_q = 3; c.seqlen_kv = 400; c.heads_q = 4; c.heads_kv = 2; });
  add("d128-additive-lowest-key-major-extras-split", dtype::f16, 128, [](case_spec& c) { c.mask = mask_type::additive; c.mask_lowest = true; c.mask_keys_outer = true; c.fully_masked_rows = true; c.seqlen_kv = 3001; c.heads_q = 8; c.heads_kv = 1; });
  add("d128-softcap-extras-split", dtype::bf16, 128, [](case_spec& c) { c.softcap = 20.0; c.seqlen_kv = 2000; c.heads_q = 8; c.heads_kv = 2; });
  add("d64-softcap-keep-mask-extras", dtype::f16, 64, [](case_spec& c) { c.softcap = 5.0; c.mask = mask_type::keep; c.fully_masked_rows = true; c.seqlen_q = 2; c.seqlen_kv = 300; c.heads_q = 6; c.heads_kv = 3; });
#if defined(ATTEND_TEST_HAVE_CUDA)
  int split = 0, whole = 0;
  for (const case_spec& spec : v) {
    const gpu_plan plan = planned(spec);
    std::string mode = "plain";
    for (const char* m : {"bits", "staged", "extras"})
      if (spec.name.find(std::string("-") + m) != std::string::npos) mode = m;
    if (mode == "staged" && !plan.staged_fits) mode = "extras";  // a GPU with less shared memory per SM
    EXPECT_EQ(plan.tc_mode, mode) << spec.name;
    EXPECT_TRUE(plan.kernel == "tc-decode-gqa" || plan.kernel == "tc-decode-gqa-split") << spec.name << " plans " << plan.kernel;
    EXPECT_EQ(plan.kernel.ends_with("split"), spec.name.ends_with("split")) << spec.name << " plans " << plan.kernel;
    (plan.kernel.ends_with("split") ? split : whole) += 1;
  }
  EXPECT_GT(split, 0);
  EXPECT_GT(whole, 0);
#endif
  check_cases("flash_cuda", v, true);
}

// The Hopper kernel scales scores inside the exponent after the row maximum, which needs
// scale * log2(e) positive and normal in float (sm90_kernel_for): zero, negative and tiny scales
// (1e-50 is 0 as a float) must still be right, on the mma.sync kernel, while the same shape with
// an ordinary scale takes the Hopper kernel (so the check that the others do not can fail).
TEST(cuda, flash_cuda_scale_edges) {
  ATTEND_REQUIRE_GPU();
  std::vector<case_spec> v;
  const std::uint64_t seed = fresh_seed();
  for (double scale : {0.3, -0.3, 0.0, 1e-50})
    for (bool causal : {false, true}) {
      case_spec c =
          typed_case("scale" + std::to_string(scale) + (causal ? "-causal" : ""), dtype::bf16, 64, seed + v.size());
      c.seqlen_q = 300;
      c.seqlen_kv = 257;
      c.heads_q = 2;
      c.causal = causal;
      c.maybe_scale = scale;
      v.push_back(c);
    }
#if defined(ATTEND_TEST_HAVE_CUDA)
  if (cuda::flash_cuda_hopper_available(k_gpu.index))
    for (const case_spec& spec : v) {
      if (*spec.maybe_scale > 0.1)
        EXPECT_EQ(planned(spec).kernel, "sm90") << spec.name;
      else
        EXPECT_NE(planned(spec).kernel, "sm90") << spec.name;
    }
#endif
  check_cases("flash_cuda", v, true);
}

TEST(cuda, cudnn_quick_grid) {
  ATTEND_REQUIRE_GPU();
  check_cases("cudnn", at::default_grid(fresh_seed(), /*quick=*/true), false);
}

TEST(cuda, cudnn_default_grid) {
  ATTEND_REQUIRE_GPU();
  check_cases("cudnn", at::default_grid(fresh_seed() + 2), false);
}

TEST(cuda, cudnn_big_shapes) {
  ATTEND_REQUIRE_GPU();
  check_cases("cudnn", big_cases(fresh_seed() + 3), false);
}

// cuDNN graphs are cached per shape and run on any pointers: a base pointer off a 16-byte boundary
// is rejected per call, with the reason (flash_cuda takes it, by element-wise loads).
TEST(cuda, cudnn_rejects_misaligned_pointers_with_reason) {
  ATTEND_REQUIRE_GPU();
  const auto b = registry::global().find("cudnn");
  if (!b) GTEST_SKIP() << "cudnn is not built";
  std::vector<std::uint16_t> q(2 * 64 + 8), k(2 * 64), v(2 * 64), o(2 * 64);  // probes: never uploaded
  attention_params a;
  a.k = tensor_view::contiguous(k.data(), dtype::f16, {1, 2, 1, 64}, k_gpu);
  a.v = tensor_view::contiguous(v.data(), dtype::f16, {1, 2, 1, 64}, k_gpu);
  a.out = tensor_view::contiguous(o.data(), dtype::f16, {1, 2, 1, 64}, k_gpu);
  a.q = tensor_view::contiguous(q.data(), dtype::f16, {1, 2, 1, 64}, k_gpu);
  diagnostics aligned;
  EXPECT_TRUE(b->supports(make_problem(a), &aligned)) << aligned.joined();
  a.q = tensor_view::contiguous(q.data() + 1, dtype::f16, {1, 2, 1, 64}, k_gpu);
  diagnostics d;
  EXPECT_FALSE(b->supports(make_problem(a), &d));
  EXPECT_NE(d.joined().find("cuDNN requires q 16-byte aligned"), std::string::npos) << d.joined();
  EXPECT_TRUE(registry::global().find("flash_cuda")->supports(make_problem(a)));
}

#if defined(ATTEND_TEST_HAVE_CUDA)
#define ATTEND_EXPECT_CUDA(call) ASSERT_EQ((call), cudaSuccess) << #call << ": " << cudaGetErrorString(cudaGetLastError())

// A non-blocking stream, destroyed with the test.
struct test_stream {
  cudaStream_t s = nullptr;
  test_stream() { static_cast<void>(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)); }
  ~test_stream() { static_cast<void>(cudaStreamDestroy(s)); }
  test_stream(const test_stream&) = delete;
  test_stream& operator=(const test_stream&) = delete;
};
#endif

// Note [Workspace under capture]: a call captured into a CUDA graph on a fresh stream, without a
// workspace of the caller's, in torch's default (global) capture mode, where growing attend's
// workspace cache (cudaMalloc) would fail the call. After the capture a larger call on the same
// stream and calls on ten more streams churn the cache (regrowing and evicting what it held);
// then two replays of the graph (the work counter reset by each) must match the reference. One
// case per workspace user: the Hopper kernel's work counter, split-KV partials, the Hopper row
// masks' packed bits, the mma.sync kernel's mask bits, and cuDNN: warmed up first (its graph built
// outside the capture, as torch.cuda.graph's warm-up does, on other buffers than the replays'),
// and cold (its graph built inside the capture; skipped with the reason if cuDNN refuses it).
TEST(cuda, graph_capture_owns_its_workspace) {
  ATTEND_REQUIRE_GPU();
#if !defined(ATTEND_TEST_HAVE_CUDA)
  GTEST_SKIP() << "the test build has no CUDA runtime";
#else
  const std::uint64_t seed = fresh_seed();
  struct capture_case {
    std::string backend;
    case_spec spec;
    bool mma_sync;
    bool warm = true;  // run once before the capture
  };
  std::vector<capture_case> cases;
  auto add = [&](std::string backend, std::string name, dtype t, std::int64_t d, bool mma, auto&& edit) {
    case_spec c = typed_case("capture-" + backend + "-" + name, t, d, seed * 31u + cases.size());
    edit(c);
    c.device = k_gpu;
    cases.push_back({std::move(backend), std::move(c), mma});
  };
  // (Skv <= 480: too few key tiles for split-KV, so the Hopper kernel takes it where it can run.)
  add("flash_cuda", "counter", dtype::bf16, 128, false, [](case_spec& c) {
    c.batch = 2; c.seqlen_q = 700; c.seqlen_kv = 480; c.heads_q = 8; c.heads_kv = 2; c.causal = true;
    c.alignment = alignment::bottom_right; });
  add("flash_cuda", "split-kv", dtype::f16, 128, false, [](case_spec& c) {
    c.batch = 2; c.seqlen_q = 1; c.seqlen_kv = 20000; c.heads_q = 8; c.heads_kv = 2; });
  add("flash_cuda", "row-mask", dtype::bf16, 64, false, [](case_spec& c) {
    c.batch = 2; c.seqlen_q = 300; c.seqlen_kv = 500; c.heads_q = 4; c.heads_kv = 2;
    c.mask = at::mask_type::keep; c.fully_masked_rows = true; });
  add("flash_cuda", "mma-sync-mask-bits", dtype::f16, 80, true, [](case_spec& c) {
    c.batch = 2; c.seqlen_q = 300; c.seqlen_kv = 500; c.heads_q = 4; c.heads_kv = 4;
    c.mask = at::mask_type::keep; });
  add("cudnn", "plain", dtype::bf16, 128, false, [](case_spec& c) {
    c.batch = 2; c.seqlen_q = 512; c.seqlen_kv = 1024; c.heads_q = 8; c.heads_kv = 8; });
  add("cudnn", "cold", dtype::f16, 64, false, [](case_spec& c) {
    c.batch = 1; c.seqlen_q = 136; c.seqlen_kv = 264; c.heads_q = 8; c.heads_kv = 8; });
  cases.back().warm = false;
  // What churns the cache: a split-KV call with a far larger workspace than any case's.
  case_spec big = typed_case("capture-churn", dtype::bf16, 128, seed + 977);
  big.batch = 4; big.seqlen_q = 1; big.seqlen_kv = 30000; big.heads_q = 32; big.heads_kv = 4;
  big.device = k_gpu;
  big.compute_reference = false;
  const at::case_data churn(big);

  int ran = 0;
  for (capture_case& cc : cases) {
    SCOPED_TRACE(cc.spec.name + " [" + cc.spec.describe() + "] seed=" + std::to_string(cc.spec.seed));
    const auto b = registry::global().find(cc.backend);
    if (!b) {
      std::cout << "[   INFO   ] " << cc.spec.name << ": " << cc.backend << " is not built" << std::endl;
      continue;
    }
    std::optional<mma_sync_only> mma;
    if (cc.mma_sync) mma.emplace();
    const at::case_data data(cc.spec);
    // (A cold case asks nothing before the capture: cudnn's checks build its graph.)
    diagnostics why;
    if (cc.warm && !b->supports(make_problem(gpu_probe(data)), &why)) {
      ASSERT_NE(cc.backend, "flash_cuda") << why.joined();
      std::cout << "[   INFO   ] " << cc.spec.name << ": " << cc.backend << " rejects it: " << why.joined() << std::endl;
      continue;
    }
    memory_resource& memory = *b->memory_for(k_gpu);
    if (cc.warm) {
      ASSERT_GT(b->workspace_bytes(make_problem(gpu_probe(data)), 0), 0u) << "the case must use a workspace";
    }
    if (cc.backend == "flash_cuda" && !cc.mma_sync) {  // each case reaches the workspace user it names
      const std::string kernel = planned(cc.spec).kernel;
      if (cc.spec.seqlen_q == 1) {  // Note [Decode GQA packing]
        EXPECT_EQ(kernel, cc.spec.heads_q != cc.spec.heads_kv ? "tc-decode-gqa-split" : "tc-decode-split");
      } else if (cuda::flash_cuda_hopper_available(k_gpu.index)) {
        EXPECT_EQ(kernel, "sm90");
      }
    }
    test_stream stream;
    run_options options;
    options.select.name = cc.backend;
    options.select.honour_environment = false;
    options.maybe_cuda_stream = stream.s;
    if (cc.backend == "cudnn" && cc.warm) {  // builds the graph outside the capture, on outputs not checked
      at::device_copy warm_up(data, memory, k_gpu);
      attention(warm_up.params(), options);
      ATTEND_EXPECT_CUDA(cudaStreamSynchronize(stream.s));
    }
    at::device_copy dev(data, memory, k_gpu);  // outputs poisoned: only the replays write them
    ATTEND_EXPECT_CUDA(cudaStreamSynchronize(stream.s));
    ATTEND_EXPECT_CUDA(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal));
    std::string error;
    bool refused = false;
    try {
      attention(dev.params(), options);
    } catch (const unsupported& e) {  // a cold cudnn case on a cuDNN that refuses the shape
      error = e.what();
      refused = !cc.warm;
    } catch (const std::exception& e) {
      error = e.what();
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(stream.s, &graph);
    if (refused) {
      static_cast<void>(cudaGraphDestroy(graph));
      std::cout << "[   INFO   ] " << cc.spec.name << ": " << cc.backend << " rejects it: " << error << std::endl;
      continue;
    }
    ASSERT_TRUE(error.empty()) << "the captured call failed: " << error;
    ASSERT_EQ(ended, cudaSuccess) << cudaGetErrorString(ended);
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    static_cast<void>(cudaGraphDestroy(graph));
    ASSERT_EQ(made, cudaSuccess) << cudaGetErrorString(made);
    {
      // Churn attend's cache on this stream (regrow) and past its size (ten more streams).
      at::device_copy other(churn, memory, k_gpu);
      run_options churn_options = options;
      churn_options.select.name = "flash_cuda";
      attention(other.params(), churn_options);
      for (int i = 0; i < 10; ++i) {
        test_stream extra;
        churn_options.maybe_cuda_stream = extra.s;
        attention(other.params(), churn_options);
        ATTEND_EXPECT_CUDA(cudaStreamSynchronize(extra.s));
      }
      ATTEND_EXPECT_CUDA(cudaStreamSynchronize(stream.s));
    }
    for (int replay = 0; replay < 2; ++replay) ATTEND_EXPECT_CUDA(cudaGraphLaunch(exec, stream.s));
    ATTEND_EXPECT_CUDA(cudaStreamSynchronize(stream.s));
    static_cast<void>(cudaGraphExecDestroy(exec));
    dev.download_outputs(data);
    const at::comparison c = at::compare_outputs(data);
    EXPECT_TRUE(c.ok) << c.detail << " (max abs error " << c.max_abs_error << ")";
    ++ran;
  }
  EXPECT_GE(ran, 4) << "every flash_cuda case must run";
#endif
}

// "measure" times candidates, which synchronizes the device: under capture it is refused with the
// reason, before any work is queued, and the capture ends cleanly.
TEST(cuda, graph_capture_refuses_measure) {
  ATTEND_REQUIRE_GPU();
#if !defined(ATTEND_TEST_HAVE_CUDA)
  GTEST_SKIP() << "the test build has no CUDA runtime";
#else
  case_spec spec = typed_case("capture-measure", dtype::bf16, 64, fresh_seed() + 5);
  spec.seqlen_q = 97;  // a shape no other test measures
  spec.seqlen_kv = 131;
  spec.device = k_gpu;
  spec.compute_reference = false;
  const at::case_data data(spec);
  at::device_copy dev(data, *registry::global().find("flash_cuda")->memory_for(k_gpu), k_gpu);
  test_stream stream;
  run_options options;
  options.select.name = "measure";
  options.select.honour_environment = false;
  options.maybe_cuda_stream = stream.s;
  ATTEND_EXPECT_CUDA(cudaStreamBeginCapture(stream.s, cudaStreamCaptureModeGlobal));
  std::string error;
  try {
    attention(dev.params(), options);
  } catch (const invalid_argument& e) {
    error = e.what();
  }
  cudaGraph_t graph = nullptr;
  ATTEND_EXPECT_CUDA(cudaStreamEndCapture(stream.s, &graph));
  std::size_t nodes = 1;
  ATTEND_EXPECT_CUDA(cudaGraphGetNodes(graph, nullptr, &nodes));
  static_cast<void>(cudaGraphDestroy(graph));
  EXPECT_NE(error.find("while the stream captures a CUDA graph"), std::string::npos) << error;
  EXPECT_EQ(nodes, 0u);
  // Outside the capture the same call measures and runs.
  EXPECT_FALSE(attention(dev.params(), options).empty());
  ATTEND_EXPECT_CUDA(cudaStreamSynchronize(stream.s));
#endif
}

}  // namespace
