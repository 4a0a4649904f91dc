// Backends from shared libraries through the C ABI (attend/plugin.h, Note [Plugin ABI]): the C
// test plugin (tests/plugin/naive_plugin.c) loads, declares its traits, explains rejections,
// matches the reference on the awkward-size grid cases it supports, receives the forward context,
// and reports a failed run as a typed error; bad libraries are refused with the reason.
#include <gtest/gtest.h>

#include <string>

#include "attend/forward_context.h"
#include "test_helpers.h"

namespace attend {
namespace {

TEST(Plugin, LoadsWithItsTraits) {
  const auto b = load_plugin(ATTEND_TEST_PLUGIN);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->name(), "naive_plugin");
  EXPECT_EQ(b->traits().priority, 5);
  EXPECT_EQ(b->traits().dtypes, std::vector<dtype>{dtype::f32});
  EXPECT_TRUE(b->traits().features.has(feature::causal));
  EXPECT_FALSE(b->traits().features.has(feature::varlen));
  EXPECT_NE(b->traits().description.find("(plugin "), std::string::npos);
}

TEST(Plugin, MatchesReferenceWhereItSupportsTheCall) {
  const auto b = load_plugin(ATTEND_TEST_PLUGIN);
  int ran = 0, refused = 0;
  for (const testing::case_spec& spec : testing::default_grid(test::test_seed())) {
    const testing::case_data data(spec);
    diagnostics d;
    if (!b->supports(make_problem(data.params()), &d)) {
      EXPECT_FALSE(d.ok());  // a refusal always says why
      ++refused;
      continue;
    }
    const testing::comparison c = testing::check_backend(*b, data);
    EXPECT_TRUE(c.ok) << spec.name << " | " << spec.describe() << ": " << c.detail;
    ++ran;
  }
  EXPECT_GT(ran, 10);
  EXPECT_GT(refused, 0);
}

TEST(Plugin, RegistersAndExplainsRejections) {
  registry r;
  register_builtin_backends(r);
  r.add(load_plugin(ATTEND_TEST_PLUGIN));
  test::dense_call call(1, 17, 17, 2, 2, 64, 64);
  auto a = call.params;
  selection by_name;
  by_name.name = "naive_plugin";
  by_name.honour_environment = false;
  EXPECT_EQ(r.select(make_problem(a), by_name)->name(), "naive_plugin");
  a.softcap = 30.0;
  bool explained = false;
  for (const explanation& e : r.explain(make_problem(a)))
    if (e.backend == "naive_plugin") {
      explained = true;
      EXPECT_FALSE(e.supported);
      EXPECT_NE(e.reason.find("softcap is not supported"), std::string::npos) << e.reason;
    }
  EXPECT_TRUE(explained);
}

// plugin.h promises that a call reaches the plugin accepted by its traits: its check_limits is not
// asked about a call its traits refuse (a plugin may size arrays by its declared head dims, say).
// The naive plugin refuses more than 2^20 keys in check_limits, and takes f32 only.
TEST(Plugin, LimitsAskedOnlyAboutCallsItsTraitsAccept) {
  const auto b = load_plugin(ATTEND_TEST_PLUGIN);
  test::dense_call call(1, 17, 17, 2, 2, 64, 64);
  problem p = make_problem(call.params);
  p.seqlen_kv = (std::int64_t{1} << 20) + 1;  // past the plugin's own limit
  diagnostics accepted_by_traits;
  EXPECT_FALSE(b->supports(p, &accepted_by_traits));
  EXPECT_NE(accepted_by_traits.joined().find("seqlen_kv must be <= 1048576"), std::string::npos)
      << accepted_by_traits.joined();
  p.dtype = dtype::f16;  // refused by its traits: the plugin is not asked
  diagnostics refused_by_traits;
  EXPECT_FALSE(b->supports(p, &refused_by_traits));
  EXPECT_NE(refused_by_traits.joined().find("dtype"), std::string::npos) << refused_by_traits.joined();
  EXPECT_EQ(refused_by_traits.joined().find("seqlen_kv must be"), std::string::npos) << refused_by_traits.joined();
}

TEST(Plugin, RunErrorsCrossTheBoundaryAsTypedErrors) {
  registry r;
  register_builtin_backends(r);
  r.add(load_plugin(ATTEND_TEST_PLUGIN));
  test::dense_call call(1, 3, 5, 1, 1, 8, 8);
  run_options o;
  o.maybe_registry = &r;
  o.select.name = "naive_plugin";
  o.select.honour_environment = false;
  EXPECT_EQ(attention(call.params, o), "naive_plugin");  // no forward context: runs
  forward_metadata m;
  m.values["naive_plugin_fail"] = std::int64_t{1};
  const forward_context scope(std::move(m));
  try {
    attention(call.params, o);
    ADD_FAILURE() << "expected the plugin's error";
  } catch (const runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("plugin backend 'naive_plugin' failed: asked to fail by the forward context"),
              std::string::npos)
        << e.what();
  }
}

TEST(Plugin, RefusesBadLibrariesWithTheReason) {
  auto message_of = [](const std::string& path) {
    try {
      load_plugin(path);
    } catch (const invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  EXPECT_NE(message_of("/nonexistent/libnothing.so").find("plugin: cannot load '/nonexistent/libnothing.so'"),
            std::string::npos);
  EXPECT_NE(message_of(ATTEND_TEST_PLUGIN_BAD_ABI).find("has ABI version 999; this attend reads version 1"),
            std::string::npos);
  EXPECT_NE(message_of("libm.so.6").find("does not export attend_plugin_entry"), std::string::npos);
  // A descriptor whose dtypes are only ones no attention call has (int32): no call could reach it.
  EXPECT_NE(message_of(ATTEND_TEST_PLUGIN_NO_DTYPE)
                .find("backend 'naive_plugin' declares no dtype attend runs (f32, f16, bf16): no call could reach it "
                      "(descriptor: device_kinds 0x1, dtypes 0x8)"),
            std::string::npos)
      << message_of(ATTEND_TEST_PLUGIN_NO_DTYPE);
}

}  // namespace
}  // namespace attend
