#include <gtest/gtest.h>

#include <memory>
#include <thread>

#include "test_helpers.h"

namespace attend {
namespace {

TEST(ForwardContext, NestsAndRestores) {
  EXPECT_EQ(forward_context::current(), nullptr);
  {
    forward_metadata outer_meta;
    outer_meta.timestep = 10;
    outer_meta.layer = 3;
    outer_meta.values["sparsity"] = std::string("sta");
    forward_context outer(outer_meta);
    EXPECT_EQ(forward_context::current(), &outer);
    EXPECT_EQ(outer.timestep(), 10);
    {
      forward_metadata inner_meta;
      inner_meta.layer = 4;
      inner_meta.values["window"] = std::int64_t{7};
      forward_context inner(inner_meta);
      EXPECT_EQ(forward_context::current(), &inner);
      EXPECT_EQ(inner.depth(), 2);
      EXPECT_EQ(inner.layer(), 4);        // inner overrides
      EXPECT_EQ(inner.timestep(), 10);    // outer shows through
      ASSERT_NE(inner.find("sparsity"), nullptr);
      EXPECT_EQ(std::get<std::string>(*inner.find("sparsity")), "sta");
      EXPECT_EQ(std::get<std::int64_t>(*inner.find("window")), 7);
      EXPECT_EQ(inner.find("missing"), nullptr);
    }
    EXPECT_EQ(forward_context::current(), &outer);
    EXPECT_EQ(outer.layer(), 3);
    EXPECT_EQ(outer.find("window"), nullptr);
  }
  EXPECT_EQ(forward_context::current(), nullptr);
}

// Contexts held by unique_ptrs can be destroyed out of order: the one destroyed first is unlinked,
// so current() and every lookup never reach freed memory (ASan would say so).
TEST(ForwardContext, DestroyedOutOfOrderIsUnlinked) {
  auto a = std::make_unique<forward_context>(forward_metadata{1.0, 1, {}});
  auto b = std::make_unique<forward_context>(forward_metadata{std::nullopt, 2, {}});
  auto c = std::make_unique<forward_context>(forward_metadata{std::nullopt, 3, {}});
  b.reset();  // the middle one
  ASSERT_EQ(forward_context::current(), c.get());
  EXPECT_EQ(c->parent(), a.get());
  EXPECT_EQ(c->depth(), 2);
  EXPECT_EQ(c->timestep(), 1.0);
  a.reset();  // the outermost, before the innermost
  EXPECT_EQ(c->parent(), nullptr);
  EXPECT_EQ(c->depth(), 1);
  EXPECT_EQ(c->timestep(), std::nullopt);
  c.reset();
  EXPECT_EQ(forward_context::current(), nullptr);
}

// A context made on a thread that has ended, destroyed on this one (a shared_ptr dropped last here,
// a static context at exit()): this thread's chain is left as it was.
TEST(ForwardContext, DestroyedOnAnotherThreadLeavesThisThreadAlone) {
  const forward_context mine(forward_metadata{5.0, 5, {}});
  std::unique_ptr<forward_context> theirs;
  std::thread([&] { theirs = std::make_unique<forward_context>(forward_metadata{6.0, 6, {}}); }).join();
  theirs.reset();
  EXPECT_EQ(forward_context::current(), &mine);
  EXPECT_EQ(mine.parent(), nullptr);
  EXPECT_EQ(forward_context::current()->timestep(), 5.0);
}

TEST(ForwardContext, IsolatedBetweenThreads) {
  forward_metadata m;
  m.timestep = 1;
  forward_context mine(m);
  const forward_context* seen_by_other = &mine;
  std::optional<double> other_inner;
  std::thread t([&] {
    seen_by_other = forward_context::current();
    forward_metadata n;
    n.timestep = 2;
    forward_context theirs(n);
    other_inner = forward_context::current()->timestep();
  });
  t.join();
  EXPECT_EQ(seen_by_other, nullptr);
  EXPECT_EQ(other_inner, 2);
  EXPECT_EQ(forward_context::current()->timestep(), 1);
}

// A backend sees the caller's innermost context through run_context.
class records_context final : public test::cpu_backend {
 public:
  records_context() : cpu_backend("records_context") { traits_.priority = 1000; }
  void run(const problem&, const run_context& ctx) const override {
    seen_layer = ctx.maybe_forward ? ctx.maybe_forward->layer() : std::nullopt;
  }
  mutable std::optional<std::int64_t> seen_layer;
};

TEST(ForwardContext, ReachesBackends) {
  registry r;
  auto b = std::make_shared<records_context>();
  r.add(b);
  test::dense_call c(1, 2, 2, 1, 1, 8, 8);
  run_options o;
  o.maybe_registry = &r;
  o.select.honour_environment = false;
  attention(c.params, o);
  EXPECT_EQ(b->seen_layer, std::nullopt);
  forward_metadata m;
  m.layer = 12;
  forward_context scope(m);
  attention(c.params, o);
  EXPECT_EQ(b->seen_layer, 12);
}

}  // namespace
}  // namespace attend
