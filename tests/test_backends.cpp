// Every CPU backend of this build against the exact reference over the shared awkward-size grid
// (fresh seed per run), in every dtype. GPU backends are checked by tests/test_cuda.cpp.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <thread>

#include "test_helpers.h"

extern "C" int openblas_get_num_threads(void);  // (cblas.h's; OpenBLAS is what unfused_cpu calls)

namespace attend {
namespace {

std::vector<std::string> cpu_backends() {
  std::vector<std::string> names;
  for (const auto& b : registry::global().list()) {
    const auto& d = b->traits().devices;
    if (std::find(d.begin(), d.end(), device_kind::cpu) != d.end()) names.emplace_back(b->name());
  }
  return names;
}

class EveryCpuBackend : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryCpuBackend, MatchesReferenceOnGrid) {
  const auto b = registry::global().find(GetParam());
  ASSERT_TRUE(b);
  int checked = 0;
  for (const testing::case_spec& spec : testing::default_grid(test::test_seed())) {
    const testing::case_data data(spec);
    diagnostics d;
    // CPU backends declare every feature; a rejection here is a failure, not a skip.
    ASSERT_TRUE(b->supports(make_problem(data.params()), &d)) << spec.describe() << ": " << d.joined();
    const testing::comparison c = testing::check_backend(*b, data, 2);
    EXPECT_TRUE(c.ok) << GetParam() << " | " << spec.name << " | " << spec.describe() << ": " << c.detail;
    ++checked;
  }
  EXPECT_GT(checked, 40);
}

INSTANTIATE_TEST_SUITE_P(Builtin, EveryCpuBackend, ::testing::ValuesIn(cpu_backends()),
                         [](const auto& param_info) { return param_info.param; });

// The harness itself must be able to fail: a backend that is subtly wrong is caught.
class off_by_a_bit final : public test::cpu_backend {
 public:
  explicit off_by_a_bit(double delta)
      : cpu_backend("off_by_a_bit", {dtype::f32, dtype::f16, dtype::bf16}), delta_(delta) {}
  std::size_t workspace_bytes(const problem& p, int t) const override {
    return registry::global().find("reference")->workspace_bytes(p, t);
  }
  void run(const problem& p, const run_context& ctx) const override {
    registry::global().find("reference")->run(p, ctx);
    auto* out = static_cast<float*>(p.params.out.data);
    out[p.out.dim * (p.head_dim_v - 1)] += static_cast<float>(delta_);  // one element of row 0
  }

 private:
  double delta_;
};

// Runs `p` on backend `name` and returns (out, lse).
std::pair<std::vector<float>, std::vector<float>> run_named(const std::string& name, test::dense_call& c,
                                                            const attention_params& p) {
  run_options o;
  o.select.name = name;
  std::fill(c.out.begin(), c.out.end(), -7.0f);  // a stale value no backend writes
  std::fill(c.lse.begin(), c.lse.end(), -7.0f);
  EXPECT_EQ(attention(p, o), name);
  return {c.out, c.lse};
}

bool close_or_both_nan(float got, float want, float tol) {
  if (std::isnan(want)) return std::isnan(got);
  if (std::isinf(want)) return got == want;
  return std::abs(got - want) <= tol;
}

// A window bound past every key is no bound: the band arithmetic must not overflow (2^63 - 1
// wrapped the diagonal's sum before make_problem clamped it), on every CPU backend.
TEST_P(EveryCpuBackend, HugeWindowBoundsAreUnbounded) {
  test::dense_call c(2, 9, 6, 2, 1, 16, 16, test::test_seed());
  for (int variant = 0; variant < 3; ++variant) {
    attention_params wide = c.params, plain = c.params;
    if (variant == 0) wide.window_right = std::numeric_limits<std::int64_t>::max();
    if (variant == 1) wide.window_left = std::numeric_limits<std::int64_t>::max(), wide.window_right = 3, plain.window_right = 3;
    if (variant == 2) {  // bottom-right, Sq > Skv: diagonals start below key 0
      wide.alignment = plain.alignment = alignment::bottom_right;
      wide.window_left = std::numeric_limits<std::int64_t>::max() - 1;
      wide.window_right = plain.window_right = 2;
    }
    const auto want = run_named(GetParam(), c, plain);
    const auto got = run_named(GetParam(), c, wide);
    for (std::size_t i = 0; i < want.first.size(); ++i)
      ASSERT_TRUE(close_or_both_nan(got.first[i], want.first[i], 1e-5f)) << "variant " << variant << " out[" << i << "]";
    for (std::size_t i = 0; i < want.second.size(); ++i)
      ASSERT_TRUE(close_or_both_nan(got.second[i], want.second[i], 1e-5f)) << "variant " << variant << " lse[" << i << "]";
  }
}

// A +inf score (an inf in q, or q·k past float's range under a large scale) makes its row NaN,
// as in the reference, never "saw nothing" (zeros, -inf): flash_cpu returned zeros for both.
TEST_P(EveryCpuBackend, InfiniteScoresGiveNaNRowsNotZeros) {
  test::dense_call c(1, 5, 7, 2, 2, 16, 16, test::test_seed());
  for (std::int64_t d = 0; d < c.d; ++d) c.k[static_cast<std::size_t>((3 * c.hkv + 1) * c.d + d)] = 1.0f;  // key 3, head 1: positive
  c.q[static_cast<std::size_t>((2 * c.hq + 1) * c.d)] = std::numeric_limits<float>::infinity();  // row 2, head 1
  const auto r = run_named(GetParam(), c, c.params);
  for (std::int64_t i = 0; i < c.sq; ++i)
    for (std::int64_t h = 0; h < c.hq; ++h) {
      const bool want_nan = i == 2 && h == 1;
      EXPECT_EQ(std::isnan(r.first[static_cast<std::size_t>((i * c.hq + h) * c.dv)]), want_nan) << "row " << i << " head " << h;
      EXPECT_EQ(std::isnan(r.second[static_cast<std::size_t>(h * c.sq + i)]), want_nan) << "row " << i << " head " << h;
    }
  // Scores of about 1e38 x 16 overflow float: rows are NaN or right, never zeros.
  test::dense_call big(1, 4, 4, 1, 1, 16, 16, test::test_seed() + 1);
  attention_params p = big.params;
  p.maybe_scale = 1e38;
  const auto ref = run_named("reference", big, p);
  const auto got = run_named(GetParam(), big, p);
  for (std::int64_t i = 0; i < big.sq; ++i) {
    const float* row = got.first.data() + i * big.dv;
    const bool nan_row = std::isnan(row[0]);
    for (std::int64_t d = 0; d < big.dv; ++d) {
      const float want = ref.first[static_cast<std::size_t>(i * big.dv + d)];
      EXPECT_TRUE(nan_row ? std::isnan(row[d]) : std::abs(row[d] - want) <= 1e-4f)
          << "row " << i << " dim " << d << ": " << row[d] << ", reference " << want;
    }
  }
}

// Scores that overflow float towards -inf on every visible key left float backends with an
// "empty" row (zeros, lse -inf) where the reference (fp64) has an answer: such a row is NaN. Rows
// that are empty because the band or the mask removes every key stay 0 / -inf. Decode shapes
// (split-KV on flash_cpu) too.
TEST_P(EveryCpuBackend, ScoresOverflowingToMinusInfAreNaNNotEmpty) {
  for (const std::int64_t skv : {6, 3000}) {
    test::dense_call c(1, 3, skv, 2, 2, 16, 16, test::test_seed());
    for (std::int64_t j = 0; j < skv; ++j)
      for (std::int64_t d = 0; d < c.d; ++d) c.k[static_cast<std::size_t>((j * c.hkv + 1) * c.d + d)] = 1e20f;  // head 1
    // Every row of head 1 (a finite but huge q.k on a normal q would only be ill-conditioned in
    // float, not overflowed).
    for (std::int64_t i = 0; i < c.sq; ++i)
      for (std::int64_t d = 0; d < c.d; ++d) c.q[static_cast<std::size_t>((i * c.hq + 1) * c.d + d)] = 1e20f;
    attention_params p = c.params;
    p.maybe_scale = -1.0;  // q.k = 1.6e41: +inf in float, -inf once scaled
    p.causal = true;
    p.alignment = alignment::bottom_right;
    const auto ref = run_named("reference", c, p);
    const auto got = run_named(GetParam(), c, p);
    for (std::int64_t i = 0; i < c.sq; ++i)
      for (std::int64_t h = 0; h < c.hq; ++h) {
        const float g = got.first[static_cast<std::size_t>((i * c.hq + h) * c.dv)];
        const float w = ref.first[static_cast<std::size_t>((i * c.hq + h) * c.dv)];
        if (h == 1)
          EXPECT_TRUE(std::isnan(g) || std::abs(g - w) <= 1e-4f) << "skv " << skv << ": overflowed row gave " << g << ", reference " << w;
        else
          EXPECT_TRUE(close_or_both_nan(g, w, 1e-4f)) << "skv " << skv << " row " << i << " head " << h << ": " << g << " vs " << w;
      }
  }
  // An infinite input that makes every visible score -inf: NaN on every backend, the reference too.
  {
    test::dense_call c(1, 3, 4, 1, 1, 16, 16, test::test_seed());
    for (std::int64_t j = 0; j < c.skv; ++j) c.k[static_cast<std::size_t>(j * c.d)] = 1.0f + static_cast<float>(j);
    c.q[static_cast<std::size_t>(1 * c.d)] = -std::numeric_limits<float>::infinity();  // row 1
    const auto r = run_named(GetParam(), c, c.params);
    for (std::int64_t i = 0; i < c.sq; ++i) EXPECT_EQ(std::isnan(r.first[static_cast<std::size_t>(i * c.dv)]), i == 1) << "row " << i;
  }
  // A full row of the lowest finite additive bias (the usual padding value) is a row of equal,
  // finite scores: the plain average of V, as in the reference; flash_cpu's log2 units made it
  // -inf (and then NaN). One dense shape and one decode shape, which flash_cpu splits into
  // pieces of unequal key counts, merged by those counts (Note [Split clamped rows]).
  for (const std::int64_t skv : {5, 3001}) {
    test::dense_call c(1, 4, skv, 1, 1, 16, 16, test::test_seed() + 2);
    std::vector<float> bias(static_cast<std::size_t>(4 * skv), 0.0f);
    for (std::int64_t j = 0; j < skv; ++j) bias[static_cast<std::size_t>(2 * skv + j)] = std::numeric_limits<float>::lowest();
    attention_params p = c.params;
    p.maybe_mask = tensor_view::contiguous(bias.data(), dtype::f32, {4, skv});
    const auto ref = run_named("reference", c, p);
    const auto got = run_named(GetParam(), c, p);
    for (std::size_t i = 0; i < ref.first.size(); ++i)
      ASSERT_TRUE(std::isfinite(got.first[i]) && std::abs(got.first[i] - ref.first[i]) <= 1e-4f)
          << "skv " << skv << " out[" << i << "] = " << got.first[i] << ", reference " << ref.first[i];
  }
  // The same through a key mask (one term per key for every row: flash_cpu's column pass), every
  // key at the lowest value, then the first half of them.
  for (const std::int64_t lowest_keys : {70, 35}) {
    test::dense_call c(1, 6, 70, 2, 1, 16, 16, test::test_seed() + 4);
    std::vector<float> bias(70, 0.0f);
    for (std::int64_t j = 0; j < lowest_keys; ++j) bias[static_cast<std::size_t>(j)] = std::numeric_limits<float>::lowest();
    attention_params p = c.params;
    p.maybe_mask = tensor_view::contiguous(bias.data(), dtype::f32, {1, 70});
    const auto ref = run_named("reference", c, p);
    const auto got = run_named(GetParam(), c, p);
    for (std::size_t i = 0; i < ref.first.size(); ++i)
      ASSERT_TRUE(std::isfinite(got.first[i]) && std::abs(got.first[i] - ref.first[i]) <= 1e-4f)
          << lowest_keys << " lowest keys: out[" << i << "] = " << got.first[i] << ", reference " << ref.first[i];
  }
  // A row the mask empties is still "no visible key" (0, -inf), not NaN.
  test::dense_call c(1, 4, 5, 1, 1, 16, 16, test::test_seed());
  std::vector<std::uint8_t> keep(4 * 5, 1);
  for (int j = 0; j < 5; ++j) keep[static_cast<std::size_t>(2 * 5 + j)] = 0;  // row 2 sees nothing
  attention_params p = c.params;
  p.maybe_mask = tensor_view::contiguous(keep.data(), dtype::boolean, {4, 5});
  const auto got = run_named(GetParam(), c, p);
  for (std::int64_t d = 0; d < c.dv; ++d) EXPECT_EQ(got.first[static_cast<std::size_t>(2 * c.dv + d)], 0.0f);
  EXPECT_EQ(got.second[2], -std::numeric_limits<float>::infinity());
}

// Note [Flash masked non-finite V]: NaN in V at a key a row gives no weight (causal) stays out of
// that row on every CPU backend; unfused_cpu's SGEMM P·V carried 0 x NaN into every row.
TEST_P(EveryCpuBackend, NonFiniteValuesAtUnseenKeysStayOut) {
  test::dense_call c(1, 12, 12, 2, 1, 16, 8, test::test_seed());
  c.v[static_cast<std::size_t>(7 * c.dv + 2)] = std::numeric_limits<float>::quiet_NaN();  // key 7
  c.v[static_cast<std::size_t>(9 * c.dv + 5)] = std::numeric_limits<float>::infinity();   // key 9
  attention_params p = c.params;
  p.causal = true;
  const auto ref = run_named("reference", c, p);
  const auto got = run_named(GetParam(), c, p);
  int finite = 0, nan = 0;
  for (std::size_t i = 0; i < ref.first.size(); ++i) {
    EXPECT_TRUE(close_or_both_nan(got.first[i], ref.first[i], 1e-4f)) << "out[" << i << "] = " << got.first[i]
                                                                     << ", reference " << ref.first[i];
    (std::isnan(ref.first[i]) ? nan : finite)++;
  }
  EXPECT_GT(finite, 7 * 2 * 8 - 1);  // rows 0-6 see neither key
  EXPECT_GT(nan, 0);
}

TEST(Harness, CatchesOneWrongElement) {
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 17;
  spec.head_dim_qk = spec.head_dim_v = 64;
  spec.seed = test::test_seed();
  const testing::case_data data(spec);
  EXPECT_TRUE(testing::check_backend(off_by_a_bit(0.0), data).ok);
  const testing::comparison c = testing::check_backend(off_by_a_bit(1e-3), data);
  EXPECT_FALSE(c.ok);
  EXPECT_NE(c.detail.find("out mismatch at b=0 i=0 h=0 d=63"), std::string::npos) << c.detail;
}

TEST(Harness, CatchesUnwrittenRows) {
  class writes_nothing final : public test::cpu_backend {
   public:
    writes_nothing() : cpu_backend("writes_nothing") {}
    void run(const problem&, const run_context&) const override {}
  };
  testing::case_spec spec;
  spec.seed = test::test_seed();
  const testing::case_data data(spec);
  EXPECT_FALSE(testing::check_backend(writes_nothing(), data).ok);
}

// A backend that writes past a head's last element (into the gap padded strides leave there) fails
// the comparison, although every element it should write is right.
TEST(Harness, CatchesWritesIntoGaps) {
  class writes_past_head_dim final : public test::cpu_backend {
   public:
    writes_past_head_dim() : cpu_backend("writes_past_head_dim") {}
    std::size_t workspace_bytes(const problem& p, int t) const override {
      return registry::global().find("reference")->workspace_bytes(p, t);
    }
    void run(const problem& p, const run_context& ctx) const override {
      registry::global().find("reference")->run(p, ctx);
      static_cast<float*>(p.params.out.data)[p.out.dim * p.head_dim_v] = 0.0f;  // row 0, head 0, one past Dv
    }
  };
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 17;
  spec.head_dim_qk = spec.head_dim_v = 16;
  spec.aligned_gaps = true;
  spec.seed = test::test_seed();
  const testing::case_data data(spec);
  EXPECT_TRUE(testing::check_backend(*registry::global().find("reference"), data).ok);
  const testing::comparison c = testing::check_backend(writes_past_head_dim(), data);
  EXPECT_FALSE(c.ok);
  EXPECT_NE(c.detail.find("gap"), std::string::npos) << c.detail;
}

TEST(Grid, CoversTheAwkwardSizes) {
  const auto grid = testing::default_grid(1);
  auto any = [&](auto pred) { return std::any_of(grid.begin(), grid.end(), pred); };
  for (std::int64_t s : {1, 17, 501})
    EXPECT_TRUE(any([&](const auto& c) { return c.seqlen_q == s; })) << s;
  for (std::int64_t d : {8, 64, 80, 128})
    EXPECT_TRUE(any([&](const auto& c) { return c.head_dim_qk == d; })) << d;
  EXPECT_TRUE(any([](const auto& c) { return c.heads_q == 4 * c.heads_kv; }));
  EXPECT_TRUE(any([](const auto& c) { return c.heads_q == 8 * c.heads_kv; }));
  EXPECT_TRUE(any([](const auto& c) { return c.causal && c.alignment == alignment::bottom_right && c.seqlen_q != c.seqlen_kv; }));
  EXPECT_TRUE(any([](const auto& c) { return c.causal && c.alignment == alignment::top_left && c.seqlen_q != c.seqlen_kv; }));
  EXPECT_TRUE(any([](const auto& c) { return c.window_left >= 0; }));
  EXPECT_TRUE(any([](const auto& c) { return c.fully_masked_rows && c.mask == testing::mask_type::additive; }));
  EXPECT_TRUE(any([](const auto& c) { return c.fully_masked_rows && c.mask == testing::mask_type::keep; }));
  EXPECT_TRUE(any([](const auto& c) {
    return std::find(c.varlen_q.begin(), c.varlen_q.end(), 0) != c.varlen_q.end();
  }));
  EXPECT_TRUE(any([](const auto& c) { return c.strided && c.layout == layout::bhsd; }));
  EXPECT_TRUE(any([](const auto& c) { return c.aligned_gaps && !c.varlen_q.empty(); }));
  EXPECT_TRUE(any([](const auto& c) { return c.dtype == dtype::bf16; }));
  EXPECT_TRUE(any([](const auto& c) { return c.dtype == dtype::f16; }));
}


// Note [Workspace cache]: without a caller workspace, calls on one (thread, stream) reuse one
// buffer; calls on another stream get their own, because GPU kernels still use it after run().
// Host memory that counts what the workspace cache asks of it: the buffers alive and allocated,
// and synchronisations.
class counting_memory : public memory_resource {
 public:
  void* allocate(std::size_t bytes) override {
    ++live, ++allocations;
    return host_memory().allocate(bytes);
  }
  void deallocate(void* p) noexcept override {
    --live;
    host_memory().deallocate(p);
  }
  void copy(void* dst, const void* src, std::size_t bytes, copy_direction dir) override {
    host_memory().copy(dst, src, bytes, dir);
  }
  void synchronize() override { ++synchronized; }
  int live = 0, allocations = 0, synchronized = 0;
};

// unfused_cpu with num_threads sets OpenBLAS's thread count, which is global, and OpenBLAS on
// OpenMP also set the calling thread's OpenMP default with it: one call with num_threads = 1 left
// every later default call on one thread. The call now restores both.
TEST(Unfused, LeavesTheCallersThreadCountAlone) {
  const int before = omp_get_max_threads();
  omp_set_num_threads(before + 1);  // a count OpenBLAS would not pick by itself
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 33;
  spec.head_dim_qk = spec.head_dim_v = 16;
  spec.seed = test::test_seed();
  testing::case_data data(spec);
  run_options o;
  o.select.name = "unfused_cpu";
  o.num_threads = 1;
  attention(data.params(), o);
  EXPECT_EQ(omp_get_max_threads(), before + 1);
  omp_set_num_threads(before);
}

// OpenBLAS's thread count is one for the process: calls with num_threads overlapping on several
// threads left it at one of their counts when each restored the count it saw on entry (one that
// entered during another's call saw that call's). The last to end now restores the count from
// before the first.
TEST(Unfused, OverlappingCallsRestoreOpenBLASThreadCount) {
  const int before = openblas_get_num_threads();
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 64;
  spec.head_dim_qk = spec.head_dim_v = 16;
  spec.seed = test::test_seed();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&spec, t] {
      testing::case_data data(spec);  // (each thread its own output)
      run_options o;
      o.select.name = "unfused_cpu";
      o.num_threads = 1 + t % 3;
      for (int i = 0; i < 100; ++i) attention(data.params(), o);
    });
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(openblas_get_num_threads(), before);
}

TEST(Workspace, CachedPerThreadAndStream) {
  static counting_memory memory;  // outlives the thread's workspace cache, which frees into it
  class records_workspace final : public test::cpu_backend {
   public:
    records_workspace() : cpu_backend("records_workspace") {}
    std::size_t workspace_bytes(const problem&, int) const override { return 256; }
    memory_resource* memory_for(device) const override { return &memory; }
    void run(const problem& p, const run_context& ctx) const override {
      last = ctx.workspace.data();
      registry::global().find("reference")->run(p, ctx);
    }
    mutable const std::byte* last = nullptr;
  };
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 5;
  spec.seed = test::test_seed();
  testing::case_data data(spec);
  const problem p = make_problem(data.params());
  const records_workspace b;
  int stream_a = 0, stream_b = 0;  // stand-ins: a CPU backend never dereferences the stream
  auto run_with = [&](void* stream) {
    run_options o;
    o.maybe_cuda_stream = stream;
    run_on(b, p, o);
    return b.last;
  };
  const std::byte* a1 = run_with(&stream_a);
  ASSERT_NE(a1, nullptr);
  EXPECT_EQ(run_with(&stream_a), a1);
  const std::byte* b1 = run_with(&stream_b);
  EXPECT_NE(b1, a1);
  EXPECT_EQ(run_with(&stream_a), a1);
  EXPECT_EQ(run_with(&stream_b), b1);
  EXPECT_EQ(memory.live, 2);
  // Many streams: each call still gets a workspace, and the cache keeps at most 8 buffers
  // (least recently used evicted, Note [Workspace cache]).
  int streams[20];
  for (int& s : streams) {
    EXPECT_NE(run_with(&s), nullptr);
    EXPECT_LE(memory.live, 8);
  }
  EXPECT_EQ(memory.live, 8);
  EXPECT_NE(run_with(&stream_a), nullptr);
  std::byte* from_another_thread = nullptr;
  std::thread([&] { from_another_thread = const_cast<std::byte*>(run_with(&stream_a)); }).join();
  EXPECT_NE(from_another_thread, a1);
}

// A call made from inside a backend's run() (a composite backend calling attention(), a plugin
// calling back) on the same memory and stream must not grow or evict the buffer the outer run
// holds: it gets memory of its own, freed after its run (Note [Workspace cache]); on a device,
// after the memory's synchronize() (the kernels that used it are done). Before, the inner call
// freed the outer run's workspace and the outer run wrote into freed memory. The "device" here is
// host memory labelled cuda: what is checked is the order of the memory's calls.
TEST(Workspace, ReentrantCallKeepsTheOuterWorkspace) {
  class watching_memory final : public counting_memory {
   public:
    void deallocate(void* p) noexcept override {
      if (p == watched) watched_freed = true;
      if (p == inner_seen) inner_freed_after_sync = synchronized > sync_at_inner_run;
      counting_memory::deallocate(p);
    }
    void* watched = nullptr;
    void* inner_seen = nullptr;
    int sync_at_inner_run = 0;
    bool watched_freed = false, inner_freed_after_sync = false;
  };
  static watching_memory memory;  // outlives the thread's workspace cache, which frees into it
  class inner_backend final : public test::cpu_backend {
   public:
    explicit inner_backend(device_kind kind) : cpu_backend("reentrant_inner") { traits_.devices = {kind}; }
    std::size_t workspace_bytes(const problem&, int) const override { return std::size_t{1} << 20; }
    memory_resource* memory_for(device) const override { return &memory; }
    void run(const problem& p, const run_context& ctx) const override {
      seen = ctx.workspace.data();
      memory.inner_seen = seen;
      memory.sync_at_inner_run = memory.synchronized;
      std::memset(ctx.workspace.data(), 0, ctx.workspace.size());
      registry::global().find("reference")->run(p, ctx);
    }
    mutable std::byte* seen = nullptr;
  };
  class outer_backend final : public test::cpu_backend {
   public:
    outer_backend(device_kind kind, const backend& inner) : cpu_backend("reentrant_outer"), inner_(inner) {
      traits_.devices = {kind};
    }
    std::size_t workspace_bytes(const problem&, int) const override { return 4096; }
    memory_resource* memory_for(device) const override { return &memory; }
    void run(const problem& p, const run_context& ctx) const override {
      seen = ctx.workspace.data();
      memory.watched = seen;
      std::memset(seen, 0xab, ctx.workspace.size());
      run_on(inner_, p);  // the same memory and stream: the slot this run holds
      intact = std::all_of(ctx.workspace.begin(), ctx.workspace.end(), [](std::byte b) { return b == std::byte{0xab}; });
      registry::global().find("reference")->run(p, ctx);
    }
    mutable std::byte* seen = nullptr;
    mutable bool intact = false;

   private:
    const backend& inner_;
  };
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 5;
  spec.seed = test::test_seed();
  testing::case_data data(spec);
  int allocations = 0;
  for (const device_kind kind : {device_kind::cpu, device_kind::cuda}) {
    SCOPED_TRACE(kind == device_kind::cpu ? "cpu" : "cuda");
    attention_params a = data.params();
    for (tensor_view* t : {&a.q, &a.k, &a.v, &a.out, &a.maybe_lse})
      if (!t->empty()) t->device = device{kind, 0};
    const inner_backend inner(kind);
    const outer_backend outer(kind, inner);
    for (int call = 0; call < 2; ++call) {
      testing::poison_outputs(data.params());
      memory.inner_freed_after_sync = false;
      run_on(outer, make_problem(a));
      EXPECT_FALSE(memory.watched_freed) << "call " << call;
      EXPECT_TRUE(outer.intact) << "call " << call;
      EXPECT_NE(inner.seen, outer.seen);
      EXPECT_EQ(memory.live, 1) << "the inner call's own workspace is freed after its run";
      if (kind == device_kind::cuda) {
        EXPECT_TRUE(memory.inner_freed_after_sync) << "call " << call;
      }
      const testing::comparison c = testing::compare_outputs(data);
      EXPECT_TRUE(c.ok) << c.detail;
    }
    // The outer run's buffer stays cached (one slot for this memory and stream, both kinds): after
    // the first allocation, each call allocated only the inner call's.
    allocations += kind == device_kind::cpu ? 3 : 2;
    EXPECT_EQ(memory.allocations, allocations);
  }
}

// A workspace no host can hold (a plugin returning (size_t)-1 from workspace_bytes, say) is a typed
// error, and the thread's cached workspace stays usable: near SIZE_MAX the aligned new's rounding
// used to wrap to a small block, which the cache then took for a huge one (a heap overflow on the
// next call; ASan reports it).
TEST(Workspace, AbsurdSizeIsAnErrorAndTheCacheSurvives) {
  for (const std::size_t bytes : {std::numeric_limits<std::size_t>::max(), std::numeric_limits<std::size_t>::max() - 62,
                                  static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) + 1}) {
    EXPECT_THROW(host_memory().allocate(bytes), runtime_error) << bytes;
  }
  class asks_too_much final : public test::cpu_backend {
   public:
    asks_too_much() : cpu_backend("asks_too_much") {}
    std::size_t workspace_bytes(const problem&, int) const override { return std::numeric_limits<std::size_t>::max(); }
    void run(const problem&, const run_context&) const override { ADD_FAILURE() << "ran without its workspace"; }
  };
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 5;
  spec.seed = test::test_seed();
  testing::case_data small(spec);
  EXPECT_THROW(run_on(asks_too_much{}, make_problem(small.params())), runtime_error);
  // The next call on this thread and stream (the same cache slot) gets a workspace of its own size.
  testing::case_spec big_spec = spec;
  big_spec.seqlen_q = big_spec.seqlen_kv = 700;
  big_spec.heads_q = big_spec.heads_kv = 2;
  big_spec.head_dim_qk = big_spec.head_dim_v = 64;
  testing::case_data big(big_spec);
  const auto flash = registry::global().find("flash_cpu");
  ASSERT_NE(flash, nullptr);
  ASSERT_GT(flash->workspace_bytes(make_problem(big.params()), 1), 4096u);
  testing::poison_outputs(big.params());
  run_on(*flash, make_problem(big.params()));
  const testing::comparison c = testing::compare_outputs(big);
  EXPECT_TRUE(c.ok) << c.detail;
}

// Note [Workspace under capture]: while the memory says the stream captures, a call without a
// caller workspace gets one allocated in stream order and freed in stream order after the run,
// also when the run throws, and never the cache's; a caller's workspace is used as given; and
// "measure" is refused before anything runs. The memory here is a stand-in for a CUDA device's.
TEST(Workspace, UnderCaptureAllocatedInStreamOrder) {
  class capture_memory final : public counting_memory {
   public:
    bool capturing(void* stream) override { return stream == capturing_stream; }
    void* allocate_in_order(std::size_t bytes, void* stream) override {
      EXPECT_EQ(stream, capturing_stream);
      last_in_order = host_memory().allocate(bytes);
      ++in_order, ++in_order_allocations;
      run_finished = false;
      return last_in_order;
    }
    void deallocate_in_order(void* p, void* stream) noexcept override {
      EXPECT_EQ(p, last_in_order);
      EXPECT_EQ(stream, capturing_stream);
      freed_after_run = run_finished;
      --in_order;
      host_memory().deallocate(p);
    }
    void* capturing_stream = nullptr;
    void* last_in_order = nullptr;
    int in_order = 0, in_order_allocations = 0;
    bool run_finished = false, freed_after_run = false;
  };
  static capture_memory memory;  // outlives the thread's workspace cache, which frees into it
  class records_workspace final : public test::cpu_backend {
   public:
    explicit records_workspace(std::string name) : cpu_backend(std::move(name)) {}
    std::size_t workspace_bytes(const problem&, int) const override { return 256; }
    memory_resource* memory_for(device) const override { return &memory; }
    void run(const problem& p, const run_context& ctx) const override {
      last = ctx.workspace.data();
      if (fail) throw runtime_error("records_workspace: failing on purpose");
      registry::global().find("reference")->run(p, ctx);
      memory.run_finished = true;  // the free must come after this
    }
    mutable const std::byte* last = nullptr;
    bool fail = false;
  };
  testing::case_spec spec;
  spec.seqlen_q = spec.seqlen_kv = 5;
  spec.seed = test::test_seed();
  testing::case_data data(spec);
  const problem p = make_problem(data.params());
  records_workspace b("records_capture");
  int capture_stream = 0, plain_stream = 0;
  memory.capturing_stream = &capture_stream;
  run_options o;
  o.maybe_cuda_stream = &capture_stream;
  run_on(b, p, o);
  EXPECT_EQ(b.last, memory.last_in_order);
  EXPECT_EQ(memory.in_order, 0) << "freed in stream order";
  EXPECT_TRUE(memory.freed_after_run) << "freed only after the backend's run";
  EXPECT_EQ(memory.allocations, 0) << "the cache was not touched";
  b.fail = true;
  EXPECT_THROW(run_on(b, p, o), runtime_error);
  EXPECT_EQ(memory.in_order, 0) << "freed when the run throws";
  b.fail = false;
  // A caller's workspace under capture is the caller's to keep alive.
  alignas(64) std::byte mine[256];
  o.maybe_workspace = std::span<std::byte>(mine, sizeof mine);
  run_on(b, p, o);
  EXPECT_EQ(b.last, mine);
  // A stream that does not capture uses the cache.
  o.maybe_workspace = {};
  o.maybe_cuda_stream = &plain_stream;
  const int allocations = memory.in_order_allocations;
  run_on(b, p, o);
  EXPECT_EQ(memory.allocations, 1);
  EXPECT_EQ(memory.in_order_allocations, allocations);
  // "measure" times candidates (synchronizing the device), which a capture cannot hold.
  registry r;
  r.add(std::make_shared<records_workspace>("records_capture"));
  run_options m;
  m.maybe_registry = &r;
  m.select.name = "measure";
  m.select.honour_environment = false;
  m.maybe_cuda_stream = &capture_stream;
  try {
    attention(data.params(), m);
    ADD_FAILURE() << "measure ran under capture";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("while the stream captures a CUDA graph"), std::string::npos) << e.what();
  }
  EXPECT_EQ(memory.synchronized, 0);
  m.maybe_cuda_stream = &plain_stream;
  EXPECT_EQ(attention(data.params(), m), "records_capture");
  EXPECT_GT(memory.synchronized, 0);
}

// backend::traits_accept answers for the trait checks alone (check_limits runs either way).
TEST(Backend, TraitsAcceptMatchesTheTraitChecks) {
  class probe final : public test::cpu_backend {
   public:
    probe() : cpu_backend("probe") { traits_.features = feature::causal | feature::lse; }
    void run(const problem&, const run_context&) const override {}
    mutable int accepted = -1;

   protected:
    bool check_limits(const problem& p, diagnostics& diag) const override {
      accepted = traits_accept(p) ? 1 : 0;
      return diag.ok();
    }
  };
  const probe b;
  test::dense_call call(1, 5, 5, 2, 2, 8, 8);
  attention_params a = call.params;
  a.causal = true;
  EXPECT_TRUE(b.supports(make_problem(a)));
  EXPECT_EQ(b.accepted, 1);
  a.softcap = 5.0;  // a feature the traits lack
  EXPECT_FALSE(b.supports(make_problem(a)));
  EXPECT_EQ(b.accepted, 0);
}

// unfused_cpu sizes its panels (Sq x Skv scores) in size_t: sizes past it saturate to SIZE_MAX, so
// the 8 GiB limit rejects the call, instead of wrapping to a small workspace that the SGEMMs overrun.
TEST(UnfusedCpu, WorkspaceSizeSaturatesInsteadOfWrapping) {
  const auto unfused = registry::global().find("unfused_cpu");
  ASSERT_NE(unfused, nullptr);
  problem p;
  p.seqlen_q = p.seqlen_kv = std::int64_t{1} << 33;  // 2^66 scores
  p.head_dim_qk = p.head_dim_v = 64;
  EXPECT_EQ(unfused->workspace_bytes(p, 1), SIZE_MAX);
  p.seqlen_q = p.seqlen_kv = 1000;
  EXPECT_EQ(unfused->workspace_bytes(p, 1), (4 * 1000 * 64 + 1000 * 1000) * sizeof(float));
}

}  // namespace
}  // namespace attend
