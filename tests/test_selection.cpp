// Which backend is chosen for a table of calls, and the reason text of rejections.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <tuple>

#include "cpu/backends.h"
#include "test_helpers.h"

namespace attend {
namespace {

// A user backend with a narrow declared capability, added at run time.
class narrow final : public test::cpu_backend {
 public:
  narrow(std::string name, int priority, std::vector<dtype> dtypes, feature_set features, std::int64_t max_d)
      : cpu_backend(std::move(name), std::move(dtypes)) {
    traits_.features = features;
    traits_.priority = priority;
    traits_.max_head_dim = max_d;
    traits_.head_dim_multiple = 8;
  }
  void run(const problem& p, const run_context& ctx) const override {
    ++runs;
    registry::global().find("unfused_cpu")->run(p, ctx);
  }
  std::size_t workspace_bytes(const problem& p, int t) const override {
    return registry::global().find("unfused_cpu")->workspace_bytes(p, t);
  }
  void set_head_dims(std::int64_t lo, std::int64_t hi, std::int64_t multiple) {
    traits_.min_head_dim = lo;
    traits_.max_head_dim = hi;
    traits_.head_dim_multiple = multiple;
  }
  mutable int runs = 0;
  mutable int checks = 0;  // supports() calls (each runs check_limits)

 protected:
  bool check_limits(const problem& p, diagnostics& d) const override {
    ++checks;
    if (p.seqlen_kv > 4096) d.reject("seqlen_kv must be <= 4096; got " + std::to_string(p.seqlen_kv));
    return d.ok();
  }
};

// A private registry with a known list (the global one depends on the build's options).
struct fixture {
  registry r;
  std::shared_ptr<narrow> fast = std::make_shared<narrow>("fast_f32", 100, std::vector<dtype>{dtype::f32},
                                                          feature::causal | feature::lse, 128);
  fixture() {
    r.add(cpu::make_reference_backend());
    r.add(cpu::make_unfused_backend());
    r.add(fast);
  }
  run_options opts(std::string name = "auto") {
    run_options o;
    o.maybe_registry = &r;
    o.select.name = std::move(name);
    o.select.honour_environment = false;
    return o;
  }
};

TEST(Selection, TableOfCalls) {
  fixture f;
  struct row {
    const char* what;
    std::function<void(attention_params&)> edit;
    const char* expected;
  };
  const std::vector<row> table = {
      {"plain f32 goes to the highest priority", [](attention_params&) {}, "fast_f32"},
      {"causal is declared", [](attention_params& p) { p.causal = true; }, "fast_f32"},
      {"softcap is not declared", [](attention_params& p) { p.softcap = 2; }, "unfused_cpu"},
      {"window is not declared", [](attention_params& p) { p.window_left = 3; }, "unfused_cpu"},
  };
  for (const row& r : table) {
    test::dense_call c(1, 16, 16, 2, 2, 64, 64);
    r.edit(c.params);
    EXPECT_EQ(attention(c.params, f.opts()), r.expected) << r.what;
  }
  test::dense_call odd(1, 16, 16, 2, 2, 12, 12);  // head dim not a multiple of 8
  EXPECT_EQ(attention(odd.params, f.opts()), "unfused_cpu");
  test::dense_call longer(1, 4, 5000, 1, 1, 8, 8);  // backend's own limit
  EXPECT_EQ(attention(longer.params, f.opts()), "unfused_cpu");
}

// attention() asks the chosen backend's supports() once: select() asked it, and the run does not
// ask again; run_on, which anyone may call with any backend, asks it itself.
TEST(Selection, AttentionAsksSupportsOnce) {
  fixture f;
  test::dense_call c(1, 5, 5, 2, 2, 16, 16, test::test_seed());
  for (const char* name : {"fast_f32", "auto"}) {
    f.fast->checks = 0;
    EXPECT_EQ(attention(c.params, f.opts(name)), "fast_f32");
    EXPECT_EQ(f.fast->checks, 1) << name;
  }
  f.fast->checks = 0;
  run_on(*f.fast, make_problem(c.params), f.opts());
  EXPECT_EQ(f.fast->checks, 1);
  c.params.softcap = 3.0;  // a feature fast_f32 lacks: run_on refuses it
  EXPECT_THROW(run_on(*f.fast, make_problem(c.params), f.opts()), unsupported);
}

TEST(Selection, ByNameAllowDeny) {
  fixture f;
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  EXPECT_EQ(attention(c.params, f.opts("reference")), "reference");
  auto o = f.opts();
  o.select.deny = {"fast_f32"};
  EXPECT_EQ(attention(c.params, o), "unfused_cpu");
  o.select.deny = {};
  o.select.allow = {"reference"};
  EXPECT_EQ(attention(c.params, o), "reference");
  EXPECT_THROW(attention(c.params, f.opts("no_such_backend")), invalid_argument);
  // A requested backend that the lists leave out is not said to lack the call.
  for (bool by_deny : {true, false}) {
    auto left_out = f.opts("reference");
    (by_deny ? left_out.select.deny : left_out.select.allow) = {by_deny ? "reference" : "unfused_cpu"};
    try {
      attention(c.params, left_out);
      ADD_FAILURE() << "a requested backend left out by the lists ran";
    } catch (const unsupported& e) {
      const std::string why = by_deny ? "in the deny list" : "not in the allow list";
      EXPECT_NE(std::string(e.what()).find("backend 'reference' is left out by the selection (" + why + ")"),
                std::string::npos) << e.what();
    }
  }
  // A misspelt name in a list is an error, not a list that allows or denies nothing: on the fast
  // path of select(), in explain(), and for measure.
  for (const char* name : {"auto", "measure"}) {
    auto typo = f.opts(name);
    typo.select.deny = {"fast-f32"};
    try {
      attention(c.params, typo);
      ADD_FAILURE() << name << ": a deny list naming no backend was accepted";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("unknown name 'fast-f32' in the deny list"), std::string::npos) << e.what();
    }
    // Built-in names of other builds are known: one program can deny cudnn with or without it.
    typo.select.deny = {"cudnn", "flash_cuda"};
    EXPECT_NO_THROW(attention(c.params, typo)) << name;
    typo.select.deny = {};
    typo.select.allow = {"reference", "unfused-cpu"};
    EXPECT_THROW(attention(c.params, typo), invalid_argument) << name;
    EXPECT_THROW(f.r.explain(make_problem(c.params), typo.select), invalid_argument) << name;
  }
}

// select() looks for its answer without building reasons (Note [Selection without reasons]); it
// must answer exactly as the first of candidates(), which builds them, for every selection, and
// fail where candidates() fails, with the same error.
TEST(Selection, SelectAgreesWithCandidates) {
  fixture f;
  std::vector<selection> selections;
  for (const char* name : {"auto", "fast_f32", "unfused_cpu", "reference", "no_such_backend"})
    for (const std::vector<std::string>& allow : {std::vector<std::string>{}, {"reference"}, {"fast_f32", "unfused_cpu"}})
      for (const std::vector<std::string>& deny : {std::vector<std::string>{}, {"fast_f32"}, {"unfused_cpu", "reference"}}) {
        selection s;
        s.name = name;
        s.allow = allow;
        s.deny = deny;
        s.honour_environment = false;
        selections.push_back(s);
      }
  std::vector<test::dense_call> calls;
  calls.emplace_back(1, 16, 16, 2, 2, 64, 64);  // every backend supports it
  calls.emplace_back(1, 16, 16, 2, 2, 12, 12);  // fast_f32's head-dim rule rejects it
  calls.emplace_back(1, 8, 8, 1, 1, 0, 0);      // nobody supports it
  calls.emplace_back(1, 8, 8, 1, 1, 8, 8);      // a CUDA call: no CPU backend runs it
  for (tensor_view* t : {&calls.back().params.q, &calls.back().params.k, &calls.back().params.v, &calls.back().params.out,
                         &calls.back().params.maybe_lse})
    t->device = {device_kind::cuda, 0};
  int answered = 0, refused = 0;
  for (const test::dense_call& c : calls) {
    const problem p = make_problem(c.params);
    for (const selection& s : selections) {
      std::string want, got, want_error, got_error;
      try {
        want = std::string(f.r.candidates(p, s).front()->name());
      } catch (const error& e) {
        want_error = e.what();
      }
      try {
        got = std::string(f.r.select(p, s)->name());
      } catch (const error& e) {
        got_error = e.what();
      }
      EXPECT_EQ(got, want) << s.name;
      EXPECT_EQ(got_error, want_error) << s.name;
      ++(want.empty() ? refused : answered);
    }
  }
  EXPECT_GT(answered, 20);  // both outcomes are exercised
  EXPECT_GT(refused, 20);
}

TEST(Selection, ExplainGivesEveryReason) {
  fixture f;
  test::dense_call c(1, 8, 8, 1, 1, 12, 12);
  c.params.softcap = 1;
  const auto lines = f.r.explain(make_problem(c.params));
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0].backend, "fast_f32");
  EXPECT_FALSE(lines[0].supported);
  EXPECT_EQ(lines[0].reason,
            "head_dim_qk must be between 1 and 128 and a multiple of 8; got 12; "
            "head_dim_v must be between 1 and 128 and a multiple of 8; got 12; softcap is not supported");
  EXPECT_EQ(lines[1].backend, "unfused_cpu");
  EXPECT_TRUE(lines[1].selected);
  EXPECT_EQ(lines[2].backend, "reference");
  EXPECT_TRUE(lines[2].supported);
  EXPECT_FALSE(lines[2].selected);
  EXPECT_EQ(lines[2].reason, "a higher-priority backend was chosen");
}

TEST(Selection, UnsupportedListsEveryBackend) {
  fixture f;
  test::dense_call c(1, 8, 8, 1, 1, 0, 0);  // head dim 0: nobody supports it
  try {
    attention(c.params, f.opts());
    FAIL() << "expected attend::unsupported";
  } catch (const unsupported& e) {
    ASSERT_EQ(e.rejections().size(), 3u);
    for (const rejection& r : e.rejections()) EXPECT_NE(r.reason.find("head_dim_qk must be between"), std::string::npos) << r.backend;
    const std::string what = e.what();
    EXPECT_NE(what.find("no backend supports this call"), std::string::npos);
    EXPECT_NE(what.find("\n  reference: head_dim_qk must be between 1 and 65536; got 0"), std::string::npos) << what;
  }
}

TEST(Selection, CudaCallOnCpuBackendsSaysWhy) {
  test::dense_call c(1, 8, 8, 1, 1, 8, 8);
  for (tensor_view* t : {&c.params.q, &c.params.k, &c.params.v, &c.params.out, &c.params.maybe_lse}) t->device = {device_kind::cuda, 0};
  diagnostics d;
  EXPECT_FALSE(registry::global().find("reference")->supports(make_problem(c.params), &d));
  EXPECT_EQ(d.joined(), "device must be cpu; got cuda:0");
}

TEST(Selection, EnvironmentOverridesName) {
  fixture f;
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  auto o = f.opts();
  o.select.honour_environment = true;
  ::setenv("ATTEND_BACKEND", "reference", 1);
  const std::string chosen = attention(c.params, o);
  ::unsetenv("ATTEND_BACKEND");
  EXPECT_EQ(chosen, "reference");
  EXPECT_EQ(attention(c.params, o), "fast_f32");
  // An unknown name says where it came from.
  ::setenv("ATTEND_BACKEND", "nope", 1);
  std::string message;
  try {
    attention(c.params, o);
  } catch (const invalid_argument& e) {
    message = e.what();
  }
  ::unsetenv("ATTEND_BACKEND");
  EXPECT_NE(message.find("backend: unknown name 'nope' (from ATTEND_BACKEND)"), std::string::npos) << message;
  o.select.name = "nope";
  EXPECT_THROW(
      {
        try {
          attention(c.params, o);
        } catch (const invalid_argument& e) {
          EXPECT_EQ(std::string(e.what()).find("ATTEND_BACKEND"), std::string::npos) << e.what();
          throw;
        }
      },
      invalid_argument);
}

// A candidate that fails at run time (here: its workspace "cannot be allocated") drops out of a
// measure instead of failing the call, and the winner is not cached; when every candidate fails,
// the call does.
TEST(Selection, MeasureSkipsCandidatesThatFail) {
  class failing final : public test::cpu_backend {
   public:
    failing() : cpu_backend("failing") { traits_.priority = 200; }
    void run(const problem&, const run_context&) const override { throw runtime_error("host allocation failed"); }
  };
  registry r;
  r.add(std::make_shared<failing>());
  r.add(cpu::make_unfused_backend());
  run_options o;
  o.maybe_registry = &r;
  o.select.name = "measure";
  o.select.honour_environment = false;
  test::dense_call c(1, 16, 16, 1, 1, 8, 8);
  EXPECT_EQ(attention(c.params, o), "unfused_cpu");
  // Not cached: the failure may have been transient.
  EXPECT_TRUE(r.measured(registry::measure_key(make_problem(c.params), o.select)).empty());
  o.select.allow = {"failing"};
  EXPECT_THROW(attention(c.params, o), runtime_error);
}

TEST(Selection, MeasureTimesCandidatesOnceAndCaches) {
  fixture f;
  test::dense_call c(1, 64, 64, 2, 2, 64, 64);
  const std::string first = attention(c.params, f.opts("measure"));
  EXPECT_FALSE(f.r.measured(registry::measure_key(make_problem(c.params), {})).empty());
  const int runs_after_first = f.fast->runs;
  const std::string second = attention(c.params, f.opts("measure"));
  EXPECT_EQ(first, second);
  EXPECT_LE(f.fast->runs - runs_after_first, 1);  // cached: at most the one real run
  // Output is right whatever won.
  std::vector<float> got = c.out;
  attention(c.params, f.opts("reference"));
  for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], c.out[i], 1e-4);
}

// The winner among an allow list is not the winner for every call of that shape: the cache is
// keyed by the lists too (a measure with allow = {reference} made later unrestricted measures run
// the reference).
TEST(Selection, MeasureCacheIsPerAllowAndDenyList) {
  fixture f;
  test::dense_call c(1, 64, 64, 2, 2, 64, 64);
  auto only_ref = f.opts("measure");
  only_ref.select.allow = {"reference"};
  EXPECT_EQ(attention(c.params, only_ref), "reference");
  const problem p = make_problem(c.params);
  EXPECT_EQ(f.r.measured(registry::measure_key(p, only_ref.select)), "reference");
  EXPECT_TRUE(f.r.measured(registry::measure_key(p, {})).empty());
  selection reordered;
  reordered.allow = {"unfused_cpu", "reference"};
  selection same_set;
  same_set.allow = {"reference", "unfused_cpu"};
  EXPECT_EQ(registry::measure_key(p, reordered), registry::measure_key(p, same_set));
  EXPECT_NE(registry::measure_key(p, reordered), registry::measure_key(p, only_ref.select));
}

// Note [Measure keys]: varlen calls whose batch and longest lengths fall in the same powers of two
// share a key (measure times them once), dense calls keep their exact shape, and the rest of the
// signature still tells calls apart.
TEST(Selection, MeasureKeysBucketVarlenSizes) {
  auto key_of = [](std::vector<std::int32_t> q, std::vector<std::int32_t> kv, std::int64_t heads_q = 2) {
    testing::case_spec c;
    c.varlen_q = std::move(q);
    c.varlen_kv = std::move(kv);
    c.heads_q = heads_q;
    c.compute_reference = false;
    const testing::case_data data(c);
    return registry::measure_key(make_problem(data.params()), {});
  };
  const std::string first = key_of({300, 5, 17}, {300, 700, 2});  // B 3 -> 4, Sq 300 -> 512, Skv 700 -> 1024
  EXPECT_EQ(first, key_of({511, 1, 1, 9}, {513, 1000, 1, 1}));     // B 4, Sq 511, Skv 1000
  EXPECT_NE(first, key_of({513, 1, 1}, {513, 1000, 1}));           // Sq past 512
  EXPECT_NE(first, key_of({300, 5, 17, 1, 1}, {300, 700, 2, 1, 1}));  // B past 4
  EXPECT_NE(first, key_of({300, 5, 17}, {300, 700, 2}, 4));       // another head count
  EXPECT_NE(first.find("varlen B<=4 Sq<=512 Skv<=1024"), std::string::npos) << first;
  test::dense_call a(1, 300, 700, 2, 2, 16, 16), b(1, 301, 700, 2, 2, 16, 16);
  EXPECT_NE(registry::measure_key(make_problem(a.params), {}), registry::measure_key(make_problem(b.params), {}));
}

TEST(Registry, ExplainRejectsUnknownNamesLikeAttention) {
  fixture f;
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  selection s;
  s.name = "nope";
  s.honour_environment = false;
  EXPECT_THROW(f.r.explain(make_problem(c.params), s), invalid_argument);
  EXPECT_THROW(f.r.select(make_problem(c.params), s), invalid_argument);
}

TEST(Registry, AddFindRemove) {
  registry r;
  EXPECT_THROW(r.add(nullptr), invalid_argument);
  r.add(std::make_shared<narrow>("mine", 5, std::vector<dtype>{dtype::f32}, feature_set{}, 64));
  EXPECT_THROW(r.add(std::make_shared<narrow>("mine", 5, std::vector<dtype>{dtype::f32}, feature_set{}, 64)), invalid_argument);
  EXPECT_THROW(r.add(std::make_shared<narrow>("auto", 5, std::vector<dtype>{dtype::f32}, feature_set{}, 64)), invalid_argument);
  // Head-dim traits no call could meet, or whose check divides by zero, as load_plugin refuses
  // them in a plugin's descriptor.
  for (auto [lo, hi, multiple] : {std::tuple<std::int64_t, std::int64_t, std::int64_t>{1, 64, 0}, {1, 64, -3}, {64, 1, 1}, {0, 64, 1}}) {
    auto bad = std::make_shared<narrow>("bad_dims", 5, std::vector<dtype>{dtype::f32}, feature_set{}, hi);
    bad->set_head_dims(lo, hi, multiple);
    try {
      r.add(bad);
      ADD_FAILURE() << "head dims " << lo << ".." << hi << " multiple " << multiple << " were accepted";
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("need 1 <= min <= max and multiple >= 1"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(r.find("bad_dims"));
  // No dtype: every call would be rejected with "dtype must be ; got f32".
  try {
    r.add(std::make_shared<narrow>("no_dtypes", 5, std::vector<dtype>{}, feature_set{}, 64));
    ADD_FAILURE() << "a backend of no dtype was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("declares no dtype attend runs"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(r.find("no_dtypes"));
  EXPECT_TRUE(r.find("mine"));
  EXPECT_TRUE(r.remove("mine"));
  EXPECT_FALSE(r.find("mine"));
  EXPECT_FALSE(r.remove("mine"));
}

// builtin_backend_names (which allow/deny lists may name on any build) lists every built-in of
// this build: a built-in added to the list without its name would be refused in a selection.
TEST(Registry, BuiltinNamesCoverThisBuild) {
  registry r;
  register_builtin_backends(r);
  const auto names = builtin_backend_names();
  for (const auto& b : r.list())
    EXPECT_NE(std::find(names.begin(), names.end(), b->name()), names.end()) << b->name();
}

TEST(Registry, BuiltinsInPriorityOrder) {
  const auto all = registry::global().list();
  ASSERT_GE(all.size(), 2u);
  for (std::size_t i = 1; i < all.size(); ++i) EXPECT_GE(all[i - 1]->traits().priority, all[i]->traits().priority);
  EXPECT_TRUE(registry::global().find("reference"));
  EXPECT_TRUE(registry::global().find("unfused_cpu"));
  EXPECT_TRUE(registry::global().find("reference")->traits().exact);
}

}  // namespace
}  // namespace attend
