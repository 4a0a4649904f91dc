// flash_cpu against the exact reference: the shared grid in every dtype on every instruction-set
// path this CPU has (each path is its own test and is skipped, visibly, only when the CPU lacks
// it), plus tile-boundary, causal-alignment and split-KV (decode) shapes, and NaN propagation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "cpu/flash/plan.h"
#include "test_helpers.h"

namespace attend {
namespace {

using cpu::flash::isa;

// Sets ATTEND_CPU_ISA for one scope.
class scoped_isa {
 public:
  explicit scoped_isa(isa target) {
    if (const char* old = std::getenv("ATTEND_CPU_ISA")) maybe_old_ = old;
    ::setenv("ATTEND_CPU_ISA", cpu::flash::to_string(target), 1);
  }
  ~scoped_isa() {
    if (maybe_old_.empty())
      ::unsetenv("ATTEND_CPU_ISA");
    else
      ::setenv("ATTEND_CPU_ISA", maybe_old_.c_str(), 1);
  }
  scoped_isa(const scoped_isa&) = delete;
  scoped_isa& operator=(const scoped_isa&) = delete;

 private:
  std::string maybe_old_;
};

std::shared_ptr<const backend> flash() { return registry::global().find("flash_cpu"); }

// Tile-boundary and decode shapes the shared grid does not reach.
std::vector<testing::case_spec> boundary_cases(std::uint64_t seed) {
  std::vector<testing::case_spec> out;
  auto add = [&](std::string name, auto&& edit) {
    testing::case_spec c;
    c.name = std::move(name);
    c.head_dim_qk = c.head_dim_v = 64;
    edit(c);
    c.seed = seed * 7919u + out.size();
    out.push_back(std::move(c));
  };
  for (std::int64_t s : {129, 257}) {
    for (alignment al : {alignment::top_left, alignment::bottom_right}) {
      add("causal-" + std::to_string(s), [&](testing::case_spec& c) {
        c.seqlen_q = c.seqlen_kv = s;
        c.causal = true;
        c.alignment = al;
        c.heads_q = 2;
      });
    }
  }
  add("causal-tl-q257-kv129", [](testing::case_spec& c) { c.seqlen_q = 257; c.seqlen_kv = 129; c.causal = true; c.heads_q = 2; c.heads_kv = 1; });
  add("causal-br-q65-kv300-d128", [](testing::case_spec& c) {
    c.seqlen_q = 65; c.seqlen_kv = 300; c.causal = true; c.alignment = alignment::bottom_right; c.head_dim_qk = c.head_dim_v = 128;
  });
  add("window-257", [](testing::case_spec& c) { c.seqlen_q = c.seqlen_kv = 257; c.window_left = 70; c.window_right = 3; });
  add("decode-gqa-5000", [](testing::case_spec& c) {
    c.seqlen_q = 1; c.seqlen_kv = 5000; c.heads_q = 8; c.heads_kv = 2; c.head_dim_qk = c.head_dim_v = 128;
    c.causal = true; c.alignment = alignment::bottom_right;
  });
  add("decode-mha-5000-b2", [](testing::case_spec& c) { c.seqlen_q = 1; c.seqlen_kv = 5000; c.batch = 2; c.heads_q = 3; c.heads_kv = 3; });
  add("decode-mqa-4q-3000", [](testing::case_spec& c) {
    c.seqlen_q = 4; c.seqlen_kv = 3000; c.heads_q = 4; c.heads_kv = 1; c.causal = true; c.alignment = alignment::bottom_right;
  });
  add("decode-window-masked", [](testing::case_spec& c) {
    c.seqlen_q = 2; c.seqlen_kv = 4000; c.window_left = 1500; c.causal = true; c.alignment = alignment::bottom_right;
    c.mask = testing::mask_type::keep; c.fully_masked_rows = true;
  });
  // Narrow items without a mask take the keys-in-lanes softmax (Note [Flash narrow softmax]):
  // band edges inside a 4-key tile, and rows that see no key at all (bottom-right, Sq > Skv).
  add("decode-window-lanes", [](testing::case_spec& c) {
    c.seqlen_q = 2; c.seqlen_kv = 3001; c.window_left = 1499; c.causal = true; c.alignment = alignment::bottom_right;
    c.heads_q = 4; c.heads_kv = 2;
  });
  add("decode-fully-masked-lanes", [](testing::case_spec& c) {
    c.seqlen_q = 4; c.seqlen_kv = 3; c.causal = true; c.alignment = alignment::bottom_right; c.heads_q = 2;
  });
  add("odd-dims-strided", [](testing::case_spec& c) {
    c.seqlen_q = 70; c.seqlen_kv = 131; c.head_dim_qk = 33; c.head_dim_v = 17; c.heads_q = 6; c.heads_kv = 3; c.strided = true;
  });
  add("gqa16-softcap", [](testing::case_spec& c) { c.seqlen_q = 9; c.seqlen_kv = 200; c.heads_q = 16; c.heads_kv = 1; c.softcap = 3.0; });
  return out;
}

struct path_and_dtype {
  isa target;
  dtype type;
};

class FlashCpuPath : public ::testing::TestWithParam<path_and_dtype> {};

void run_cases(const std::vector<testing::case_spec>& cases, dtype type, int num_threads) {
  const auto b = flash();
  ASSERT_TRUE(b);
  int checked = 0;
  for (testing::case_spec spec : cases) {
    if (spec.dtype != type) continue;
    const testing::case_data data(spec);
    diagnostics d;
    ASSERT_TRUE(b->supports(make_problem(data.params()), &d)) << spec.describe() << ": " << d.joined();
    const testing::comparison c = testing::check_backend(*b, data, num_threads);
    EXPECT_TRUE(c.ok) << spec.name << " | " << spec.describe() << " | threads " << num_threads << ": " << c.detail;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST_P(FlashCpuPath, MatchesReferenceOnGrid) {
  const auto [target, type] = GetParam();
  if (!cpu::flash::isa_available(target)) GTEST_SKIP() << cpu::flash::to_string(target) << " not available on this CPU";
  const scoped_isa forced(target);
  ASSERT_EQ(cpu::flash::chosen_isa(), target);
  run_cases(testing::default_grid(test::test_seed()), type, 2);
}

TEST_P(FlashCpuPath, MatchesReferenceOnTileBoundariesAndDecode) {
  const auto [target, type] = GetParam();
  if (!cpu::flash::isa_available(target)) GTEST_SKIP() << cpu::flash::to_string(target) << " not available on this CPU";
  const scoped_isa forced(target);
  std::vector<testing::case_spec> cases = boundary_cases(test::test_seed());
  for (auto& c : cases) c.dtype = type;
  // 1 thread: no split; 2 and 5: the split-KV merge with even and uneven chunk counts.
  for (int threads : {1, 2, 5}) run_cases(cases, type, threads);
}

std::vector<path_and_dtype> all_paths() {
  std::vector<path_and_dtype> out;
  for (isa t : {isa::scalar, isa::avx2, isa::avx512})
    for (dtype d : {dtype::f32, dtype::f16, dtype::bf16}) out.push_back({t, d});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Isa, FlashCpuPath, ::testing::ValuesIn(all_paths()), [](const auto& param_info) {
  return std::string(cpu::flash::to_string(param_info.param.target)) + "_" + std::string(to_string(param_info.param.type));
});

TEST(FlashCpu, PreferredOverUnfused) {
  const auto b = flash();
  ASSERT_TRUE(b);
  EXPECT_GT(b->traits().priority, registry::global().find("unfused_cpu")->traits().priority);
}

// A NaN in one query row makes that row (and only that row) NaN, on every path, also when the
// keys are split across threads.
TEST(FlashCpu, NanPropagatesToItsRowOnly) {
  for (isa target : {isa::scalar, isa::avx2, isa::avx512}) {
    if (!cpu::flash::isa_available(target)) continue;
    const scoped_isa forced(target);
    for (std::int64_t skv : {40, 3000}) {
      testing::case_spec spec;
      spec.seqlen_q = 3;
      spec.seqlen_kv = skv;
      spec.heads_q = 2;
      spec.head_dim_qk = spec.head_dim_v = 16;
      spec.seed = test::test_seed();
      const testing::case_data data(spec);
      const attention_params& a = data.params();
      const problem p = make_problem(a);
      static_cast<float*>(a.q.data)[p.q.seq * 1 + p.q.head * 1] = std::numeric_limits<float>::quiet_NaN();
      run_options options;
      options.num_threads = 4;
      run_on(*flash(), p, options);
      for (std::int64_t i = 0; i < 3; ++i) {
        for (std::int64_t h = 0; h < 2; ++h) {
          const float o = static_cast<const float*>(a.out.data)[i * p.out.seq + h * p.out.head];
          const float l = p.maybe_lse[h * p.lse_head_stride + i * p.lse_seq_stride];
          const bool want_nan = i == 1 && h == 1;
          EXPECT_EQ(std::isnan(o), want_nan) << cpu::flash::to_string(target) << " skv " << skv << " row " << i << " head " << h;
          EXPECT_EQ(std::isnan(l), want_nan) << cpu::flash::to_string(target) << " skv " << skv << " row " << i << " head " << h;
        }
      }
    }
  }
}

// Note [Flash masked non-finite V]: NaN in V at a key a row does not see (causal band inside a
// tile, a boolean mask, an additive mask of -inf or of the lowest finite float, a window edge, a
// masked slot of a decode KV cache) leaves that row finite, as in the reference; rows that see the
// key are NaN in exactly the reference's places. Every path and dtype, one and several threads.
TEST(FlashCpu, NonFiniteValuesAtUnseenKeysStayOut) {
  const auto ref = registry::global().find("reference");
  auto as_float = [](const void* data, dtype t, std::int64_t i) {
    if (t == dtype::f32) return static_cast<const float*>(data)[i];
    const std::uint16_t bits = static_cast<const std::uint16_t*>(data)[i];
    return t == dtype::bf16 ? bf16_to_float(bits) : f16_to_float(bits);
  };
  int rows_finite = 0, rows_nan = 0;
  for (isa target : {isa::scalar, isa::avx2, isa::avx512}) {
    if (!cpu::flash::isa_available(target)) continue;
    const scoped_isa forced(target);
    for (dtype t : {dtype::f32, dtype::bf16, dtype::f16})
      for (int variant = 0; variant < 6; ++variant)
        for (int threads : {1, 3}) {
          testing::case_spec spec;
          spec.dtype = t;
          spec.heads_q = 4;
          spec.heads_kv = 2;
          spec.head_dim_qk = spec.head_dim_v = 32;
          spec.seqlen_q = spec.seqlen_kv = 150;
          spec.seed = test::test_seed() + static_cast<std::uint64_t>(variant);
          std::int64_t bad_key = 100;
          if (variant == 0) spec.causal = true;                      // rows < 100 do not see key 100
          if (variant == 1) spec.mask = testing::mask_type::keep;    // key 100 masked for every row
          if (variant == 2) spec.mask = testing::mask_type::additive;  // -inf for even rows only
          if (variant == 5) spec.mask = testing::mask_type::additive;  // the lowest finite float, even rows
          if (variant == 3) spec.window_left = 20, spec.window_right = 5, bad_key = 30;
          if (variant == 4) {  // decode over a padded KV cache: split-KV across threads
            spec.seqlen_q = 1;
            spec.seqlen_kv = 3000;
            spec.mask = testing::mask_type::keep;
            bad_key = 2500;
          }
          const testing::case_data data(spec);
          const attention_params& a = data.params();
          const problem p = make_problem(a);
          if (variant == 1 || variant == 2 || variant == 4 || variant == 5)
            for (std::int64_t h = 0; h < spec.heads_q; ++h)
              for (std::int64_t i = 0; i < spec.seqlen_q; ++i) {
                const std::int64_t o = h * p.mask.head + i * p.mask.q + bad_key * p.mask.kv;
                if (variant == 1 || variant == 4)
                  static_cast<std::uint8_t*>(a.maybe_mask.data)[o] = 0;
                else
                  static_cast<float*>(a.maybe_mask.data)[o] =
                      i % 2 == 0 ? (variant == 2 ? -std::numeric_limits<float>::infinity() : std::numeric_limits<float>::lowest())
                                 : 0.0f;
              }
          for (std::int64_t hk = 0; hk < spec.heads_kv; ++hk) {
            const std::int64_t o = bad_key * p.v.seq + hk * p.v.head + 3 * p.v.dim;
            if (t == dtype::f32)
              static_cast<float*>(a.v.data)[o] = std::numeric_limits<float>::quiet_NaN();
            else
              static_cast<std::uint16_t*>(a.v.data)[o] = t == dtype::bf16 ? 0x7fc0 : 0x7e00;
          }
          run_options options;
          options.num_threads = threads;
          run_on(*flash(), p, options);
          std::vector<float> got(static_cast<std::size_t>(a.out.numel()));
          for (std::size_t i = 0; i < got.size(); ++i) got[i] = as_float(a.out.data, t, static_cast<std::int64_t>(i));
          run_on(*ref, p, options);
          const double tol = t == dtype::f32 ? 1e-4 : 2e-2;
          const std::string where = std::string(cpu::flash::to_string(target)) + " " + std::string(to_string(t)) +
                                    " variant " + std::to_string(variant) + " threads " + std::to_string(threads);
          int mismatches = 0;
          for (std::size_t i = 0; i < got.size(); ++i) {
            const float want = as_float(a.out.data, t, static_cast<std::int64_t>(i));
            const bool ok = std::isnan(want) ? std::isnan(got[i]) : std::abs(got[i] - want) <= tol;
            if (!ok && ++mismatches <= 3) ADD_FAILURE() << where << ": out[" << i << "] = " << got[i] << ", reference " << want;
            if (i % static_cast<std::size_t>(spec.head_dim_v) == 3) (std::isnan(want) ? rows_nan : rows_finite)++;
          }
        }
  }
  // The cases exercise both outcomes: rows that do not see the poisoned key, and rows that do.
  EXPECT_GT(rows_finite, 0);
  EXPECT_GT(rows_nan, 0);
}

}  // namespace
}  // namespace attend
