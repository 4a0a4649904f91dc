// The oracle itself: against numbers computed by hand and against a brute-force transcription of
// the definition in attend/params.h written independently here.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "test_helpers.h"

namespace attend {
namespace {

registry& cpu_only() {
  static registry r;
  static bool once = [] {
    register_builtin_backends(r);
    return true;
  }();
  (void)once;
  return r;
}

run_options on(const char* name) {
  run_options o;
  o.select.name = name;
  o.select.honour_environment = false;
  o.maybe_registry = &cpu_only();
  return o;
}

TEST(Reference, HandComputedTwoByTwo) {
  // q rows (1,0) and (0,2); keys (1,0), (0,1); values (1,2), (3,4); scale 1.
  std::vector<float> q = {1, 0, 0, 2}, k = {1, 0, 0, 1}, v = {1, 2, 3, 4}, out(4), lse(2);
  attention_params p;
  p.q = tensor_view::contiguous(q.data(), dtype::f32, {1, 2, 1, 2});
  p.k = tensor_view::contiguous(k.data(), dtype::f32, {1, 2, 1, 2});
  p.v = tensor_view::contiguous(v.data(), dtype::f32, {1, 2, 1, 2});
  p.out = tensor_view::contiguous(out.data(), dtype::f32, {1, 2, 1, 2});
  p.maybe_lse = tensor_view::contiguous(lse.data(), dtype::f32, {1, 1, 2});
  p.maybe_scale = 1.0;
  ASSERT_EQ(attention(p, on("reference")), "reference");
  const double e = std::exp(1.0), e2 = std::exp(2.0);
  EXPECT_NEAR(out[0], (e * 1 + 1 * 3) / (e + 1), 1e-6);
  EXPECT_NEAR(out[1], (e * 2 + 1 * 4) / (e + 1), 1e-6);
  EXPECT_NEAR(out[2], (1 * 1 + e2 * 3) / (1 + e2), 1e-6);
  EXPECT_NEAR(out[3], (1 * 2 + e2 * 4) / (1 + e2), 1e-6);
  EXPECT_NEAR(lse[0], std::log(e + 1), 1e-6);
  EXPECT_NEAR(lse[1], std::log(1 + e2), 1e-6);

  // Causal top-left: row 0 sees key 0 only; row 1 sees both.
  p.causal = true;
  attention(p, on("reference"));
  EXPECT_NEAR(out[0], 1.0, 1e-6);
  EXPECT_NEAR(out[1], 2.0, 1e-6);
  EXPECT_NEAR(lse[0], 1.0, 1e-6);
  EXPECT_NEAR(out[2], (1 * 1 + e2 * 3) / (1 + e2), 1e-6);

  // One query, bottom-right: the last query sees every key; top-left: only key 0.
  p.q.sizes[1] = 1;
  p.out.sizes[1] = 1;
  p.maybe_lse.sizes[2] = 1;
  p.alignment = alignment::bottom_right;
  attention(p, on("reference"));
  EXPECT_NEAR(out[0], (e * 1 + 1 * 3) / (e + 1), 1e-6);
  p.alignment = alignment::top_left;
  attention(p, on("reference"));
  EXPECT_NEAR(out[0], 1.0, 1e-6);

  // A boolean mask hiding every key: output 0, lse -inf.
  std::vector<std::uint8_t> none(2, 0);
  p.causal = false;
  p.maybe_mask = tensor_view::contiguous(none.data(), dtype::boolean, {1, 2});
  attention(p, on("reference"));
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(lse[0], -std::numeric_limits<float>::infinity());
}

// ---- brute force: the definition, transcribed independently ----------------------------------
struct options {
  bool causal = false;
  bool bottom_right = false;
  std::int64_t wl = -1, wr = -1;
  double softcap = 0;
  bool additive = false, keep = false;
};

bool visible(const options& o, std::int64_t i, std::int64_t j, std::int64_t sq, std::int64_t skv) {
  const std::int64_t diag = o.bottom_right ? i + skv - sq : i;  // the key aligned with query i
  if (o.causal && j > diag) return false;
  if (o.wl >= 0 && j < diag - o.wl) return false;
  if (o.wr >= 0 && j > diag + o.wr) return false;
  return true;
}

void brute_force(const test::dense_call& c, const options& o, const std::vector<float>& mask, std::vector<double>& out,
                 std::vector<double>& lse) {
  out.assign(c.out.size(), 0.0);
  lse.assign(c.lse.size(), 0.0);
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.d));
  for (std::int64_t b = 0; b < c.b; ++b)
    for (std::int64_t h = 0; h < c.hq; ++h)
      for (std::int64_t i = 0; i < c.sq; ++i) {
        const std::int64_t hk = h * c.hkv / c.hq;
        std::vector<long double> s(static_cast<std::size_t>(c.skv));
        long double best = -INFINITY;
        for (std::int64_t j = 0; j < c.skv; ++j) {
          long double x = -INFINITY;
          const std::size_t mi = static_cast<std::size_t>(((b * c.hq + h) * c.sq + i) * c.skv + j);
          if (visible(o, i, j, c.sq, c.skv) && !(o.keep && mask[mi] == 0.0f)) {
            long double dot = 0;
            for (std::int64_t d = 0; d < c.d; ++d)
              dot += static_cast<long double>(c.q[static_cast<std::size_t>(((b * c.sq + i) * c.hq + h) * c.d + d)]) *
                     c.k[static_cast<std::size_t>(((b * c.skv + j) * c.hkv + hk) * c.d + d)];
            x = dot * scale;
            if (o.softcap > 0) x = o.softcap * std::tanh(x / o.softcap);
            if (o.additive) x += mask[mi];
          }
          s[static_cast<std::size_t>(j)] = x;
          best = std::max(best, x);
        }
        const std::size_t li = static_cast<std::size_t>((b * c.hq + h) * c.sq + i);
        if (best == -INFINITY) {
          lse[li] = -INFINITY;
          continue;
        }
        long double z = 0;
        for (long double x : s) z += std::exp(x - best);
        lse[li] = static_cast<double>(best + std::log(z));
        for (std::int64_t j = 0; j < c.skv; ++j)
          for (std::int64_t d = 0; d < c.dv; ++d)
            out[static_cast<std::size_t>(((b * c.sq + i) * c.hq + h) * c.dv + d)] += static_cast<double>(
                std::exp(s[static_cast<std::size_t>(j)] - best) / z *
                c.v[static_cast<std::size_t>(((b * c.skv + j) * c.hkv + hk) * c.dv + d)]);
      }
}

struct brute_case {
  const char* name;
  std::int64_t b, sq, skv, hq, hkv, d, dv;
  options o;
};

void PrintTo(const brute_case& c, std::ostream* os) { *os << c.name; }

class ReferenceBruteForce : public ::testing::TestWithParam<brute_case> {};

TEST_P(ReferenceBruteForce, MatchesDefinition) {
  const brute_case& bc = GetParam();
  test::dense_call c(bc.b, bc.sq, bc.skv, bc.hq, bc.hkv, bc.d, bc.dv, test::test_seed());
  std::vector<float> mask;
  std::vector<std::uint8_t> keep;
  if (bc.o.additive || bc.o.keep) {
    std::mt19937_64 rng(test::test_seed() + 1);
    std::uniform_real_distribution<float> u(-2, 2);
    mask.resize(static_cast<std::size_t>(c.b * c.hq * c.sq * c.skv));
    for (float& m : mask) m = bc.o.keep ? (u(rng) > -1 ? 1.0f : 0.0f) : u(rng);
    // Row 1 of every head is fully masked.
    for (std::int64_t bh = 0; bh < c.b * c.hq && c.sq > 1; ++bh)
      for (std::int64_t j = 0; j < c.skv; ++j)
        mask[static_cast<std::size_t>((bh * c.sq + 1) * c.skv + j)] = bc.o.keep ? 0.0f : -INFINITY;
    if (bc.o.keep) {
      keep.assign(mask.size(), 0);
      for (std::size_t i = 0; i < mask.size(); ++i) keep[i] = mask[i] != 0.0f;
      c.params.maybe_mask = tensor_view::contiguous(keep.data(), dtype::boolean, {c.b, c.hq, c.sq, c.skv});
    } else {
      c.params.maybe_mask = tensor_view::contiguous(mask.data(), dtype::f32, {c.b, c.hq, c.sq, c.skv});
    }
  }
  c.params.causal = bc.o.causal;
  c.params.alignment = bc.o.bottom_right ? alignment::bottom_right : alignment::top_left;
  c.params.window_left = bc.o.wl;
  c.params.window_right = bc.o.wr;
  c.params.softcap = bc.o.softcap;
  attention(c.params, on("reference"));
  std::vector<double> want, want_lse;
  brute_force(c, bc.o, mask, want, want_lse);
  for (std::size_t i = 0; i < want.size(); ++i) ASSERT_NEAR(c.out[i], want[i], 2e-6 + 2e-6 * std::abs(want[i])) << i;
  for (std::size_t i = 0; i < want_lse.size(); ++i) {
    if (std::isinf(want_lse[i])) {
      ASSERT_TRUE(std::isinf(c.lse[i]) && c.lse[i] < 0) << i;
    } else {
      ASSERT_NEAR(c.lse[i], want_lse[i], 1e-5 + 1e-6 * std::abs(want_lse[i])) << i;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ReferenceBruteForce,
    ::testing::Values(brute_case{"plain", 2, 17, 17, 2, 2, 8, 8, {}},
                      brute_case{"gqa4_dv", 1, 9, 23, 8, 2, 16, 8, {}},
                      brute_case{"causal_tl", 1, 12, 20, 2, 1, 8, 8, {true, false}},
                      brute_case{"causal_br", 1, 20, 12, 2, 1, 8, 8, {true, true}},
                      brute_case{"window", 1, 30, 30, 1, 1, 8, 8, {false, false, 4, 2}},
                      brute_case{"window_causal_br", 1, 10, 30, 1, 1, 8, 8, {true, true, 5, -1}},
                      brute_case{"softcap", 1, 8, 8, 2, 2, 32, 32, {false, false, -1, -1, 0.5}},
                      brute_case{"additive", 2, 7, 11, 2, 1, 8, 4, {false, false, -1, -1, 0, true, false}},
                      brute_case{"keep_causal", 1, 9, 9, 2, 2, 8, 8, {true, false, -1, -1, 0, false, true}}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(Reference, VarlenEqualsPerSequenceDenseCalls) {
  // Packed sequences of lengths (3, 0, 5) against keys (4, 2, 0): each must equal its own dense call.
  const std::vector<std::int32_t> lq = {3, 0, 5}, lk = {4, 2, 0};
  std::vector<std::int32_t> cu_q = {0}, cu_k = {0};
  for (std::size_t b = 0; b < lq.size(); ++b) {
    cu_q.push_back(cu_q.back() + lq[b]);
    cu_k.push_back(cu_k.back() + lk[b]);
  }
  const std::int64_t h = 2, d = 8;
  test::dense_call packed(1, cu_q.back(), cu_k.back(), h, h, d, d, test::test_seed());
  attention_params p = packed.params;
  p.q = tensor_view::contiguous(packed.q.data(), dtype::f32, {cu_q.back(), h, d});
  p.k = tensor_view::contiguous(packed.k.data(), dtype::f32, {cu_k.back(), h, d});
  p.v = tensor_view::contiguous(packed.v.data(), dtype::f32, {cu_k.back(), h, d});
  p.out = tensor_view::contiguous(packed.out.data(), dtype::f32, {cu_q.back(), h, d});
  p.maybe_lse = tensor_view::contiguous(packed.lse.data(), dtype::f32, {h, cu_q.back()});
  p.maybe_cu_seqlens_q = tensor_view::contiguous(cu_q.data(), dtype::i32, {4});
  p.maybe_cu_seqlens_kv = tensor_view::contiguous(cu_k.data(), dtype::i32, {4});
  p.causal = true;
  p.alignment = alignment::bottom_right;
  attention(p, on("reference"));
  for (std::size_t b = 0; b < lq.size(); ++b) {
    for (std::int64_t i = 0; i < lq[b]; ++i) {
      const std::int64_t row = cu_q[b] + i;
      // dense call over this sequence alone
      std::vector<float> o(static_cast<std::size_t>(h * d)), l(static_cast<std::size_t>(h));
      attention_params s = p;
      s.maybe_cu_seqlens_q = s.maybe_cu_seqlens_kv = {};
      s.max_seqlen_q = s.max_seqlen_kv = 0;
      s.q = tensor_view::contiguous(packed.q.data() + cu_q[b] * h * d, dtype::f32, {1, lq[b], h, d});
      s.k = tensor_view::contiguous(packed.k.data() + cu_k[b] * h * d, dtype::f32, {1, lk[b], h, d});
      s.v = tensor_view::contiguous(packed.v.data() + cu_k[b] * h * d, dtype::f32, {1, lk[b], h, d});
      std::vector<float> dense_out(static_cast<std::size_t>(lq[b] * h * d)), dense_lse(static_cast<std::size_t>(h * lq[b]));
      s.out = tensor_view::contiguous(dense_out.data(), dtype::f32, {1, lq[b], h, d});
      s.maybe_lse = tensor_view::contiguous(dense_lse.data(), dtype::f32, {1, h, lq[b]});
      attention(s, on("reference"));
      for (std::int64_t hh = 0; hh < h; ++hh) {
        for (std::int64_t dd = 0; dd < d; ++dd)
          ASSERT_FLOAT_EQ(packed.out[static_cast<std::size_t>((row * h + hh) * d + dd)],
                          dense_out[static_cast<std::size_t>((i * h + hh) * d + dd)]);
        ASSERT_EQ(packed.lse[static_cast<std::size_t>(hh * cu_q.back() + row)],
                  dense_lse[static_cast<std::size_t>(hh * lq[b] + i)]);
      }
    }
  }
  // Sequence 2 has no keys: its rows are 0 with lse -inf.
  EXPECT_EQ(packed.out[static_cast<std::size_t>(cu_q[2] * h * d)], 0.0f);
  EXPECT_EQ(packed.lse[static_cast<std::size_t>(cu_q[2])], -INFINITY);
}

TEST(Reference, NanPropagatesAsNan) {
  test::dense_call c(1, 4, 4, 1, 1, 8, 8);
  c.q[8] = std::numeric_limits<float>::quiet_NaN();  // row 1
  attention(c.params, on("reference"));
  EXPECT_TRUE(std::isnan(c.out[8]));
  EXPECT_FALSE(std::isnan(c.out[0]));
  c.k[0] = std::numeric_limits<float>::infinity();  // key 0 of every row
  attention(c.params, on("unfused_cpu"));
  EXPECT_TRUE(std::isnan(c.out[8]));
}

TEST(Tensor, HalfConversionsRoundTripAndRoundToNearestEven) {
  for (std::uint32_t bits = 0; bits < 0x10000; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f = f16_to_float(h);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(f16_to_float(float_to_f16(f))));
      continue;
    }
    ASSERT_EQ(float_to_f16(f), h) << bits;
    const float b = bf16_to_float(h);
    if (!std::isnan(b)) {
      ASSERT_EQ(float_to_bf16(b), h) << bits;
    }
  }
  // f16 ulp at 1 is 2^-10: half an ulp ties to even (down from 1, up from 1 + 1 ulp).
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + 0.5f / 1024)), 1.0f);
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + 1.5f / 1024)), 1.0f + 2.0f / 1024);
  EXPECT_EQ(f16_to_float(float_to_f16(1.0f + 0.75f / 1024)), 1.0f + 1.0f / 1024);
  EXPECT_EQ(f16_to_float(float_to_f16(65520.0f)), INFINITY);
  EXPECT_EQ(f16_to_float(float_to_f16(6e-8f)), 5.9604645e-8f);  // smallest subnormal
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 1.0f / 256)), 1.0f);
}

}  // namespace
}  // namespace attend
