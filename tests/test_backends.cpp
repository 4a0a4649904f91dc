// Every CPU backend of this build against the exact reference over the shared awkward-size grid
// (fresh seed per run), in every dtype. GPU backends are checked by tests/test_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <thread>

#include "test_helpers.h"

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
  EXPECT_TRUE(any([](const auto& c) { return c.dtype == dtype::bf16; }));
  EXPECT_TRUE(any([](const auto& c) { return c.dtype == dtype::f16; }));
}


// Note [Workspace cache]: without a caller workspace, calls on one (thread, stream) reuse one
// buffer; calls on another stream get their own, because GPU kernels still use it after run().
TEST(Workspace, CachedPerThreadAndStream) {
  // Host memory that counts the buffers alive, so the cache's bound is observed.
  class counting_memory final : public memory_resource {
   public:
    void* allocate(std::size_t bytes) override {
      ++live;
      return host_memory().allocate(bytes);
    }
    void deallocate(void* p) noexcept override {
      --live;
      host_memory().deallocate(p);
    }
    void copy(void* dst, const void* src, std::size_t bytes, copy_direction dir) override {
      host_memory().copy(dst, src, bytes, dir);
    }
    void synchronize() override {}
    int live = 0;
  };
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

}  // namespace
}  // namespace attend
