// Note [LSE merge] (attend/merge.h): attention over disjoint key sets, merged by log-sum-exp,
// equals attention over their union; empty parts weigh nothing; NaN propagates; bad arguments
// are named.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "attend/merge.h"
#include "test_helpers.h"

namespace attend {
namespace {

TEST(Merge, RowWeightsByLse) {
  const double lse[2] = {std::log(1.0), std::log(3.0)};
  const double val[2] = {4.0, 8.0};
  double got = 0;
  const double l = merge_row(
      2, 1, [&](std::int64_t s) { return lse[s]; }, [&](std::int64_t s, std::int64_t) { return val[s]; },
      [&](std::int64_t, double x) { got = x; });
  EXPECT_DOUBLE_EQ(got, 0.25 * 4.0 + 0.75 * 8.0);
  EXPECT_NEAR(l, std::log(4.0), 1e-15);
}

// Note [Split clamped rows]: parts whose lse is float's lowest value plus ln of their key counts
// (10 and 1), given apart, weigh 10 : 1; given as one number each, ln 10 is lost and they would
// weigh equally. A part with an ordinary lse outweighs them entirely.
TEST(Merge, RowWeightsBySecondPartAtTheClamp) {
  const double bias = std::numeric_limits<float>::lowest();
  const double low[2] = {std::log(10.0), 0.0};
  const double val[2] = {1.0, 0.0};
  double got = -1;
  double l = merge_row(
      2, 1, [&](std::int64_t) { return bias; }, [&](std::int64_t s) { return low[s]; },
      [&](std::int64_t s, std::int64_t) { return val[s]; }, [&](std::int64_t, double x) { got = x; });
  EXPECT_NEAR(got, 10.0 / 11.0, 1e-15);
  EXPECT_EQ(l, bias);  // bias + ln 11 is the bias at this magnitude, as the reference's lse
  l = merge_row(
      2, 1, [&](std::int64_t s) { return s == 0 ? bias : 0.25; }, [&](std::int64_t s) { return low[s]; },
      [&](std::int64_t s, std::int64_t) { return val[s]; }, [&](std::int64_t, double x) { got = x; });
  EXPECT_EQ(got, 0.0);
  EXPECT_EQ(l, 0.25);
}

TEST(Merge, EmptyPartsWeighNothingAndNanPropagates) {
  constexpr double inf = std::numeric_limits<double>::infinity();
  double out = -1;
  const double nan_value = std::numeric_limits<double>::quiet_NaN();
  // Every part empty: 0 and -inf. An empty part's (garbage) values are never read.
  double l = merge_row(
      2, 1, [](std::int64_t) { return -inf; }, [&](std::int64_t, std::int64_t) { return nan_value; },
      [&](std::int64_t, double x) { out = x; });
  EXPECT_EQ(out, 0.0);
  EXPECT_EQ(l, -inf);
  l = merge_row(
      2, 1, [](std::int64_t s) { return s == 0 ? -inf : 0.5; },
      [&](std::int64_t s, std::int64_t) { return s == 0 ? nan_value : 2.0; }, [&](std::int64_t, double x) { out = x; });
  EXPECT_EQ(out, 2.0);
  EXPECT_EQ(l, 0.5);
  l = merge_row(
      2, 1, [&](std::int64_t s) { return s == 0 ? nan_value : 0.5; }, [](std::int64_t, std::int64_t) { return 1.0; },
      [&](std::int64_t, double x) { out = x; });
  EXPECT_TRUE(std::isnan(out));
  EXPECT_TRUE(std::isnan(l));
}

// Keys [0, 45) split into [0, 10), [10, 10) (empty) and [10, 45): each part is the reference
// over its keys; the merge matches the reference over all keys.
TEST(Merge, DisjointKeySetsEqualTheirUnion) {
  test::dense_call full(2, 17, 45, 4, 2, 16, 24, test::test_seed());
  const auto ref = registry::global().find("reference");
  run_on(*ref, make_problem(full.params));

  const std::int64_t cuts[] = {0, 10, 10, 45};
  std::vector<std::vector<float>> outs(3), lses(3);
  std::vector<tensor_view> out_views, lse_views;
  for (int s = 0; s < 3; ++s) {
    attention_params a = full.params;
    const std::int64_t begin = cuts[s], len = cuts[s + 1] - cuts[s];
    a.k.data = full.k.data() + begin * a.k.strides[1];
    a.k.sizes[1] = len;
    a.v.data = full.v.data() + begin * a.v.strides[1];
    a.v.sizes[1] = len;
    outs[static_cast<std::size_t>(s)].assign(full.out.size(), 0.0f);
    lses[static_cast<std::size_t>(s)].assign(full.lse.size(), 0.0f);
    a.out = tensor_view::contiguous(outs[static_cast<std::size_t>(s)].data(), dtype::f32, {full.b, full.sq, full.hq, full.dv});
    a.maybe_lse = tensor_view::contiguous(lses[static_cast<std::size_t>(s)].data(), dtype::f32, {full.b, full.hq, full.sq});
    run_on(*ref, make_problem(a));
    out_views.push_back(a.out);
    lse_views.push_back(a.maybe_lse);
  }
  std::vector<float> merged(full.out.size()), merged_lse(full.lse.size());
  merge_partials(out_views, lse_views,
                 tensor_view::contiguous(merged.data(), dtype::f32, {full.b, full.sq, full.hq, full.dv}),
                 tensor_view::contiguous(merged_lse.data(), dtype::f32, {full.b, full.hq, full.sq}));
  for (std::size_t i = 0; i < merged.size(); ++i) ASSERT_NEAR(merged[i], full.out[i], 2e-6) << "out " << i;
  for (std::size_t i = 0; i < merged_lse.size(); ++i) ASSERT_NEAR(merged_lse[i], full.lse[i], 2e-6) << "lse " << i;
  // Into one of the parts (out aliasing outs[2]): rows are merged one at a time, so the same.
  merge_partials(out_views, lse_views, out_views[2]);
  for (std::size_t i = 0; i < merged.size(); ++i) ASSERT_NEAR(outs[2][i], full.out[i], 2e-6) << "in place " << i;
}

// Empty tensors may have null data (an empty torch tensor does), as attention() accepts: merging
// such parts is a no-op, not an error.
TEST(Merge, EmptyTensorsWithNullData) {
  const tensor_view out = tensor_view::contiguous(nullptr, dtype::f32, {0, 3, 2, 4});
  const tensor_view lse = tensor_view::contiguous(nullptr, dtype::f32, {0, 2, 3});
  const std::vector<tensor_view> outs{out, out}, lses{lse, lse};
  EXPECT_NO_THROW(merge_partials(outs, lses, out, lse));
}

TEST(Merge, NamesTheBadArgument) {
  std::vector<float> o(2 * 3 * 4 * 5), l(2 * 4 * 3), o2(2 * 3 * 4 * 6);
  const tensor_view out = tensor_view::contiguous(o.data(), dtype::f32, {2, 3, 4, 5});
  const tensor_view lse = tensor_view::contiguous(l.data(), dtype::f32, {2, 4, 3});
  const tensor_view wide = tensor_view::contiguous(o2.data(), dtype::f32, {2, 3, 4, 6});
  auto message = [](auto&& call) {
    try {
      call();
    } catch (const invalid_argument& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::vector<tensor_view> one{out}, two{out, wide}, lse1{lse}, lse2{lse, lse};
  EXPECT_NE(message([&] { merge_partials({}, {}, out); }).find("at least one part"), std::string::npos);
  EXPECT_NE(message([&] { merge_partials(one, lse2, out); }).find("one lse per part"), std::string::npos);
  EXPECT_NE(message([&] { merge_partials(two, lse2, out); }).find("outs[1] must be"), std::string::npos);
  const tensor_view bad_lse = tensor_view::contiguous(o.data(), dtype::f32, {2, 3, 4});
  EXPECT_NE(message([&] { merge_partials(one, std::vector<tensor_view>{bad_lse}, out); }).find("lses[0] must be"),
            std::string::npos);
  EXPECT_NE(message([&] { merge_partials(one, lse1, out, bad_lse); }).find("lse must be"), std::string::npos);

  // Malformed views are errors before anything reads them (rank 50 was read past the arrays;
  // misaligned pointers were dereferenced; a stride-0 out or an lse inside out's memory
  // corrupted the result).
  tensor_view rank50 = out;
  rank50.rank = 50;
  EXPECT_NE(message([&] { merge_partials(one, lse1, rank50); }).find("out: rank must be between 1 and 4"), std::string::npos);
  EXPECT_NE(message([&] { merge_partials(std::vector<tensor_view>{rank50}, lse1, out); }).find("outs[0]: rank"),
            std::string::npos);
  tensor_view misaligned = out;
  misaligned.data = reinterpret_cast<char*>(o.data()) + 1;
  EXPECT_NE(message([&] { merge_partials(one, lse1, misaligned); }).find("must be aligned"), std::string::npos);
  std::vector<float> o3(o.size());
  tensor_view flat = tensor_view::contiguous(o3.data(), dtype::f32, {2, 3, 4, 5});
  flat.strides[1] = 0;
  EXPECT_NE(message([&] { merge_partials(one, lse1, flat); }).find("strides make elements overlap"), std::string::npos);
  const tensor_view out3 = tensor_view::contiguous(o3.data(), dtype::f32, {2, 3, 4, 5});
  const tensor_view lse_in_out = tensor_view::contiguous(o3.data(), dtype::f32, {2, 4, 3});
  EXPECT_NE(message([&] { merge_partials(one, lse1, out3, lse_in_out); }).find("lse: memory overlaps out"),
            std::string::npos);
  tensor_view negative = out;
  negative.sizes[0] = -2;
  EXPECT_NE(message([&] { merge_partials(one, lse1, negative); }).find("sizes must be non-negative"), std::string::npos);
}

}  // namespace
}  // namespace attend
