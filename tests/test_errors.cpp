// Bad input: a typed error naming the argument, never a crash or a silent wrong answer.
#include <gtest/gtest.h>

#include <dlpack/dlpack.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <tuple>
#include <vector>

#include "attend/dlpack.h"
#include "core/views.h"
#include "test_helpers.h"

namespace attend {
namespace {

void expect_invalid(const attention_params& p, const std::string& fragment) {
  try {
    attention(p);
    FAIL() << "expected attend::invalid_argument containing '" << fragment << "'";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Errors, MismatchedShapes) {
  test::dense_call c(2, 8, 8, 4, 2, 16, 16);
  attention_params p = c.params;
  p.k.sizes[3] = 8;
  expect_invalid(p, "k: head_dim must match q's 16");
  p = c.params;
  p.v.sizes[1] = 7;
  expect_invalid(p, "v: sequence length must match k's");
  p = c.params;
  p.out.sizes[1] = 9;
  expect_invalid(p, "out: must be");
  p = c.params;
  p.k.sizes[0] = 1;
  expect_invalid(p, "batch must match");
  p = c.params;
  p.q.rank = 3;
  expect_invalid(p, "q: must be rank 4");
  p = c.params;
  p.maybe_lse.sizes[2] = 3;
  expect_invalid(p, "lse: must be [B, Hq, Sq] = [2, 4, 8]");
}

// contiguous() kept the first four of five sizes (a call then read the view in another layout)
// and multiplied sizes into strides past int64 (signed overflow): both are errors now.
TEST(Errors, ContiguousViewSizes) {
  float x = 0;
  EXPECT_THROW(tensor_view::contiguous(&x, dtype::f32, {1, 2, 16, 4, 8}), invalid_argument);
  EXPECT_THROW(tensor_view::contiguous(&x, dtype::f32, {std::int64_t{1} << 40, std::int64_t{1} << 40, std::int64_t{1} << 40}),
               invalid_argument);
  const tensor_view t = tensor_view::contiguous(&x, dtype::f32, {2, 3, 4, 5});
  EXPECT_EQ(t.rank, 4);
  EXPECT_EQ(t.strides[0], 60);
  EXPECT_EQ(tensor_view::contiguous(&x, dtype::f32, {std::int64_t{1} << 62}).strides[0], 1);
  // The public accessors on a malformed view (built by hand, never validated) neither overflow nor
  // read past the four dims a view holds (UBSan reported both).
  tensor_view big;
  big.rank = 3;
  big.sizes = {std::int64_t{1} << 40, std::int64_t{1} << 40, 4, 0};
  EXPECT_EQ(big.numel(), std::numeric_limits<std::int64_t>::max());
  big.strides = {std::int64_t{1} << 42, 4, 1, 0};
  EXPECT_TRUE(big.is_contiguous());  // its strides are row-major; only the count overflows
  big.sizes = {2, std::int64_t{1} << 40, std::int64_t{1} << 40, 0};
  big.strides = {0, std::int64_t{1} << 40, 1, 0};  // the outer stride would be 2^80
  EXPECT_FALSE(big.is_contiguous());
  tensor_view wide = t;
  wide.rank = 6;
  EXPECT_EQ(wide.numel(), 120);
  EXPECT_TRUE(wide.is_contiguous());
  EXPECT_EQ(wide.describe(), "[2, 3, 4, 5] f32 cpu");
  wide.rank = -2;
  EXPECT_EQ(wide.numel(), 1);
  EXPECT_EQ(wide.describe(), "[] f32 cpu");
}

// The test harness's buffers are host memory: a case whose sizes are negative or whose buffers
// overflow 64 bits or this machine's memory is refused before any size is multiplied or allocated
// (`attend bench --seqlen 2^40` aborted under ASan in the allocation).
TEST(Errors, CaseDataRefusesImpossibleSizes) {
  testing::case_spec c;
  c.name = "huge";
  c.seqlen_q = c.seqlen_kv = std::int64_t{1} << 40;
  try {
    testing::case_data data(c);
    ADD_FAILURE() << "a case of 2^40 rows was built";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("case 'huge': its host buffers need"), std::string::npos) << e.what();
  }
  c.batch = std::int64_t{1} << 40;  // rows past int64
  EXPECT_THROW(testing::case_data{c}, invalid_argument);
  c = {};
  c.batch = -1;
  EXPECT_THROW(testing::case_data{c}, invalid_argument);
  c = {};
  c.varlen_q = c.varlen_kv = {1 << 30, 1 << 30};  // int32 offsets
  EXPECT_THROW(testing::case_data{c}, invalid_argument);
  c.varlen_q = c.varlen_kv = {4, -1};
  EXPECT_THROW(testing::case_data{c}, invalid_argument);
  c = {};
  c.seqlen_q = c.seqlen_kv = 17;
  EXPECT_NO_THROW(testing::case_data{c});
}

// A device kind past the enum was reported as a backend refusal ("cudnn: device must be cuda; got
// cuda:0"); and cpu:0 against cpu:5 read "cpu" and "cpu".
TEST(Errors, DeviceKindAndIndexInMessages) {
  test::dense_call c(1, 4, 4, 1, 1, 8, 8);
  attention_params a = c.params;
  for (tensor_view* t : {&a.q, &a.k, &a.v, &a.out}) t->device.kind = static_cast<device_kind>(7);
  expect_invalid(a, "q: device kind must be cpu or cuda; got 7");
  a = c.params;
  a.k.device.index = 5;
  expect_invalid(a, "k: device must match q (cpu); got cpu:5");
}

TEST(Errors, HeadsNotDivisible) {
  test::dense_call c(1, 8, 8, 6, 4, 16, 16);
  expect_invalid(c.params, "query heads must be a multiple of key/value heads");
}

TEST(Errors, DtypesAndDevices) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.k.dtype = dtype::f16;
  expect_invalid(p, "k: dtype must match q (f32); got f16");
  p = c.params;
  p.q.dtype = p.k.dtype = p.v.dtype = p.out.dtype = dtype::i32;
  expect_invalid(p, "q: dtype must be f32, f16 or bf16; got i32");
  p = c.params;
  p.v.device = {device_kind::cuda, 0};
  expect_invalid(p, "v: device must match q (cpu); got cuda:0");
  p = c.params;
  p.maybe_lse.dtype = dtype::f16;
  expect_invalid(p, "lse: dtype must be f32");
}

TEST(Errors, NullMisalignedNegativeStrides) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.q.data = nullptr;
  expect_invalid(p, "q: data is null");
  p = c.params;
  p.k.data = reinterpret_cast<char*>(p.k.data) + 1;
  expect_invalid(p, "k: data must be aligned");
  p = c.params;
  p.v.strides[1] = -16;
  expect_invalid(p, "v: strides must be non-negative");
  p.v.sizes[2] = -1;  // a negative size is named as such, whatever the strides before it
  expect_invalid(p, "v: sizes must be non-negative");
  p = c.params;
  p.out.strides[1] = 0;  // two rows written to one place
  expect_invalid(p, "out: strides make elements overlap");
}

TEST(Errors, OverlappingOutput) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.out.data = p.q.data;
  expect_invalid(p, "out: memory overlaps q");
  p = c.params;
  p.maybe_lse.data = p.out.data;
  expect_invalid(p, "overlaps");
}

// Views of one buffer side by side share no element, though their byte ranges interleave (Note
// [Exact overlap]): q, k, v and out as b[:, :, 0..3] of a packed [B, S, 4, H, D], and out as the
// second half of each row whose first half is q = k = v. Both run and match the call with
// separate tensors.
TEST(Errors, SideBySideSlicesAreNotOverlaps) {
  constexpr std::int64_t S = 8, H = 2, D = 16;
  std::vector<float> packed(S * 4 * H * D), rows(S * H * 2 * D);
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (float& x : packed) x = u(rng);
  for (float& x : rows) x = u(rng);
  auto slice = [](float* base, std::int64_t seq_stride, std::int64_t head_stride) {
    tensor_view t = tensor_view::contiguous(base, dtype::f32, {1, S, H, D});
    t.strides = {S * seq_stride, seq_stride, head_stride, 1};
    return t;
  };
  auto run = [](attention_params p) {
    p.causal = true;
    run_options o;
    o.select.name = "reference";
    attention(p, o);
  };
  {
    attention_params p;
    p.q = slice(packed.data(), 4 * H * D, D);
    p.k = slice(packed.data() + H * D, 4 * H * D, D);
    p.v = slice(packed.data() + 2 * H * D, 4 * H * D, D);
    p.out = slice(packed.data() + 3 * H * D, 4 * H * D, D);
    ASSERT_TRUE(detail::overlaps(p.q, p.q));
    EXPECT_FALSE(detail::overlaps(p.out, p.q));
    EXPECT_FALSE(detail::overlaps(p.out, p.v));
    EXPECT_NO_THROW(run(p));
    std::vector<float> q(S * H * D), k(q.size()), v(q.size()), out(q.size());
    for (std::int64_t i = 0; i < S * H * D; ++i) {
      const std::int64_t s = i / (H * D), rest = i % (H * D);
      q[i] = packed[s * 4 * H * D + rest];
      k[i] = packed[s * 4 * H * D + H * D + rest];
      v[i] = packed[s * 4 * H * D + 2 * H * D + rest];
    }
    attention_params sep;
    sep.q = tensor_view::contiguous(q.data(), dtype::f32, {1, S, H, D});
    sep.k = tensor_view::contiguous(k.data(), dtype::f32, {1, S, H, D});
    sep.v = tensor_view::contiguous(v.data(), dtype::f32, {1, S, H, D});
    sep.out = tensor_view::contiguous(out.data(), dtype::f32, {1, S, H, D});
    run(sep);
    for (std::int64_t i = 0; i < S * H * D; ++i)
      ASSERT_EQ(out[i], packed[(i / (H * D)) * 4 * H * D + 3 * H * D + i % (H * D)]) << i;
  }
  {
    attention_params p;
    p.q = p.k = p.v = slice(rows.data(), H * 2 * D, 2 * D);
    p.out = slice(rows.data() + D, H * 2 * D, 2 * D);
    EXPECT_NO_THROW(run(p));
    p.out = slice(rows.data() + D - 1, H * 2 * D, 2 * D);  // one element of each row shared
    expect_invalid(p, "out: memory overlaps q");
  }
}

// detail::overlaps against the byte sets of random views of one small buffer (strides of any
// order, zero strides, both element sizes).
TEST(Errors, OverlapIsExact) {
  std::mt19937 rng(11);
  alignas(8) static unsigned char buffer[4096];
  auto random_view = [&] {
    tensor_view t;
    t.dtype = rng() % 2 ? dtype::f32 : dtype::bf16;
    t.rank = 1 + static_cast<int>(rng() % 4);
    const std::int64_t e = static_cast<std::int64_t>(size_bytes(t.dtype));
    for (int i = 0; i < t.rank; ++i) {
      t.sizes[i] = 1 + static_cast<std::int64_t>(rng() % 4);
      t.strides[i] = static_cast<std::int64_t>(rng() % 40);
    }
    t.data = buffer + e * static_cast<std::int64_t>(rng() % 200);
    return t;
  };
  auto bytes = [](const tensor_view& t) {
    std::vector<bool> used(sizeof buffer);
    const std::int64_t e = static_cast<std::int64_t>(size_bytes(t.dtype));
    const auto base = static_cast<std::int64_t>(static_cast<unsigned char*>(t.data) - buffer);
    for (std::int64_t idx = 0; idx < t.numel(); ++idx) {
      std::int64_t rem = idx, off = 0;
      for (int i = t.rank - 1; i >= 0; --i) {
        off += (rem % t.sizes[i]) * t.strides[i];
        rem /= t.sizes[i];
      }
      for (std::int64_t b = 0; b < e; ++b) used[static_cast<std::size_t>(base + off * e + b)] = true;
    }
    return used;
  };
  int shared = 0, apart_in_span = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const tensor_view a = random_view(), b = random_view();
    const std::vector<bool> ua = bytes(a), ub = bytes(b);
    bool truth = false;
    for (std::size_t i = 0; i < ua.size(); ++i) truth = truth || (ua[i] && ub[i]);
    ASSERT_EQ(detail::overlaps(a, b), truth) << a.describe() << " vs " << b.describe() << " trial " << trial;
    shared += truth;
    auto first = [](const std::vector<bool>& u) { return std::find(u.begin(), u.end(), true) - u.begin(); };
    auto last = [](const std::vector<bool>& u) { return u.rend() - std::find(u.rbegin(), u.rend(), true); };
    apart_in_span += !truth && first(ua) < last(ub) && first(ub) < last(ua);
  }
  // Both answers occur often, also for views whose spans interleave.
  EXPECT_GT(shared, 1000);
  EXPECT_GT(apart_in_span, 1000);
}

// Views on interleaved element offsets (all of q's even, all of out's odd) share nothing: the
// search's gcd test says so at once, where a plain search ran out of budget and refused the call.
TEST(Errors, OverlapTellsInterleavedOffsetsApart) {
  static float buffer[12000];
  tensor_view q = tensor_view::contiguous(buffer, dtype::f32, {1, 142, 96, 154});
  q.strides = {0, 38, 44, 22};
  tensor_view out = tensor_view::contiguous(buffer + 1, dtype::f32, {1, 142, 96, 1});
  out.strides = {0, 2, 568, 1};
  EXPECT_FALSE(detail::overlaps(out, q));
  EXPECT_FALSE(detail::overlaps(q, out));
  out.data = buffer + 2;  // even offsets too: out's element 2 + 2 x 10 = 22 is q's [0, 0, 0, 1]
  EXPECT_TRUE(detail::overlaps(out, q));
}

// An output's own elements must be distinct, exactly: offsets {0, 3, 2, 5} (strides 2 and 3 over
// sizes 2 and 2, not nested) are distinct; {0, 2, 2, 4} (strides 2 and 2) are not.
TEST(Errors, SelfOverlapIsExact) {
  auto throws = [](const tensor_view& t) {
    try {
      detail::check_no_self_overlap(t, "out");
      return false;
    } catch (const invalid_argument&) {
      return true;
    }
  };
  static float buffer[4096];
  tensor_view t = tensor_view::contiguous(buffer, dtype::f32, {1, 2, 2, 1});
  t.strides = {0, 2, 3, 1};
  EXPECT_FALSE(throws(t));
  t.strides = {0, 2, 2, 1};
  EXPECT_TRUE(throws(t));
  std::mt19937 rng(13);
  int distinct = 0, repeated = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    t.rank = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < t.rank; ++i) {
      t.sizes[i] = 1 + static_cast<std::int64_t>(rng() % 5);
      t.strides[i] = static_cast<std::int64_t>(rng() % 13);
    }
    std::vector<std::int64_t> offsets;
    for (std::int64_t idx = 0; idx < t.numel(); ++idx) {
      std::int64_t rem = idx, off = 0;
      for (int i = t.rank - 1; i >= 0; --i) {
        off += (rem % t.sizes[i]) * t.strides[i];
        rem /= t.sizes[i];
      }
      offsets.push_back(off);
    }
    std::sort(offsets.begin(), offsets.end());
    const bool truth = std::adjacent_find(offsets.begin(), offsets.end()) != offsets.end();
    ASSERT_EQ(throws(t), truth) << t.describe() << " strides " << t.strides[0] << "," << t.strides[1] << ","
                                << t.strides[2] << "," << t.strides[3];
    (truth ? repeated : distinct) += 1;
  }
  EXPECT_GT(distinct, 2000);
  EXPECT_GT(repeated, 2000);
}

TEST(Errors, HugeSizesOverflowCleanly) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.q.sizes = {std::int64_t{1} << 40, std::int64_t{1} << 40, 1, 16};
  expect_invalid(p, "overflows 64 bits");
}

// A stride-0 key tensor can claim 2^61 keys without memory behind it: every CPU backend refuses it
// with a reason (the reference's per-thread score row used to overflow its workspace size and
// write past it), and a call gets attend::unsupported, never a crash.
TEST(Errors, HugeBroadcastKeysAreRefused) {
  test::dense_call c(1, 1, 1, 1, 1, 1, 1);
  attention_params p = c.params;
  for (tensor_view* t : {&p.k, &p.v}) {
    t->sizes = {1, std::int64_t{1} << 61, 1, 1};
    t->strides = {0, 0, 0, 0};
  }
  const problem pr = make_problem(p);
  for (const char* name : {"reference", "flash_cpu", "unfused_cpu"}) {
    const auto b = registry::global().find(name);
    ASSERT_TRUE(b) << name;
    diagnostics diag;
    EXPECT_FALSE(b->supports(pr, &diag)) << name;
    EXPECT_NE(diag.joined().find("sequence length"), std::string::npos) << name << ": " << diag.joined();
  }
  EXPECT_THROW(attention(p), unsupported);
}

TEST(Errors, OptionsOutOfRange) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.softcap = -1;
  expect_invalid(p, "softcap: must be finite and >= 0");
  p = c.params;
  p.maybe_scale = std::numeric_limits<double>::infinity();
  expect_invalid(p, "scale: must be finite");
  p = c.params;
  p.window_left = -5;
  expect_invalid(p, "window: bounds must be >= 0, or -1");
}

TEST(Errors, MaskShapeAndVarlenOffsets) {
  test::dense_call c(2, 8, 8, 2, 2, 16, 16);
  std::vector<float> mask(3 * 8 * 8);
  attention_params p = c.params;
  p.maybe_mask = tensor_view::contiguous(mask.data(), dtype::f32, {3, 1, 8, 8});
  expect_invalid(p, "mask: shape [3, 1, 8, 8] does not broadcast to [B, Hq, Sq, Skv] = [2, 2, 8, 8]");

  std::vector<std::int32_t> cu = {0, 5, 3};
  p = c.params;
  p.q = tensor_view::contiguous(c.q.data(), dtype::f32, {8, 2, 16});
  p.k = tensor_view::contiguous(c.k.data(), dtype::f32, {8, 2, 16});
  p.v = tensor_view::contiguous(c.v.data(), dtype::f32, {8, 2, 16});
  p.out = tensor_view::contiguous(c.out.data(), dtype::f32, {8, 2, 16});
  p.maybe_lse = {};
  p.maybe_cu_seqlens_q = tensor_view::contiguous(cu.data(), dtype::i32, {3});
  expect_invalid(p, "give both (varlen) or neither");
  p.maybe_cu_seqlens_kv = p.maybe_cu_seqlens_q;
  expect_invalid(p, "cu_seqlens_q: offsets must not decrease");
  cu = {0, 3, 7};
  expect_invalid(p, "cu_seqlens_q: last offset must equal the packed length 8; got 7");
}

// c's 8 rows (B = 1, S = 8, H = 2, D = 16) as packed varlen tensors split by `cu` (3 offsets).
attention_params packed_8x2(test::dense_call& c, std::vector<std::int32_t>& cu) {
  attention_params a = c.params;
  a.q = tensor_view::contiguous(c.q.data(), dtype::f32, {8, 2, 16});
  a.k = tensor_view::contiguous(c.k.data(), dtype::f32, {8, 2, 16});
  a.v = tensor_view::contiguous(c.v.data(), dtype::f32, {8, 2, 16});
  a.out = tensor_view::contiguous(c.out.data(), dtype::f32, {8, 2, 16});
  a.maybe_lse = {};
  a.maybe_cu_seqlens_q = a.maybe_cu_seqlens_kv = tensor_view::contiguous(cu.data(), dtype::i32, {3});
  return a;
}

// Note [Host offsets]: the backends read the offsets make_problem checked, a copy, not the caller's
// array again (a thread writing it after the check sent the kernels out of bounds).
TEST(Errors, HostOffsetsAreReadOnce) {
  test::dense_call c(1, 8, 8, 2, 2, 16, 16);
  std::vector<std::int32_t> cu = {0, 3, 8};
  attention_params a = packed_8x2(c, cu);
  const problem p = make_problem(a);
  EXPECT_NE(p.maybe_cu_seqlens_q, cu.data());
  cu[1] = 1 << 30;  // after the check
  const problem copy = p;  // copies share the checked offsets
  EXPECT_EQ(copy.maybe_cu_seqlens_q[1], 3);
  EXPECT_EQ(copy.maybe_cu_seqlens_kv[2], 8);
  EXPECT_EQ(copy.len_q(1), 5);
  for (const char* name : {"reference", "flash_cpu", "unfused_cpu"}) EXPECT_NO_THROW(run_on(*registry::global().find(name), copy)) << name;
}

TEST(Errors, VarlenBoundsAndOffsetAliasing) {
  test::dense_call c(1, 8, 8, 2, 2, 16, 16);
  std::vector<std::int32_t> cu = {0, 3, 8};
  attention_params p = packed_8x2(c, cu);
  EXPECT_NO_THROW(attention(p));
  attention_params bhsd = p;  // packed tensors have one layout; bhsd was silently ignored
  bhsd.layout = layout::bhsd;
  expect_invalid(bhsd, "layout: varlen tensors are packed [total, heads, head_dim], which is bshd");
  // A bound no int32 offset can reach wrapped size computations around before (a crash or a wrong
  // answer); a loose bound (a bucket size) is fine and changes nothing.
  attention_params huge = p;
  huge.max_seqlen_q = std::int64_t{1} << 62;
  expect_invalid(huge, "max_seqlen_q/kv: at most 2^31 - 1 (offsets are int32)");
  const std::vector<float> exact = [&] {
    attention(p);
    return c.out;
  }();
  // Host offsets: the problem carries the real longest sequences whatever the bound, so no backend
  // refuses a loose one or sizes its workspace by it (flash_cpu refused 2^31 - 1, unfused_cpu
  // 2^20, and the reference asked for 34 GB of scores before).
  for (const std::int64_t loose : {std::int64_t{16}, std::int64_t{1} << 20, std::int64_t{2147483647}}) {
    attention_params bucket = p;
    bucket.max_seqlen_q = bucket.max_seqlen_kv = loose;
    const problem pr = make_problem(bucket);
    EXPECT_EQ(pr.seqlen_q, 5);
    EXPECT_EQ(pr.seqlen_kv, 5);
    for (const char* name : {"reference", "flash_cpu", "unfused_cpu"}) {
      const auto b = registry::global().find(name);
      ASSERT_NE(b, nullptr);
      EXPECT_LT(b->workspace_bytes(pr, 2), std::size_t{1} << 24) << name << " at bound " << loose;
      run_options o;
      o.select.name = name;
      std::fill(c.out.begin(), c.out.end(), 0.0f);
      attention(bucket, o);
      for (std::size_t i = 0; i < exact.size(); ++i)
        ASSERT_NEAR(c.out[i], exact[i], 1e-5) << name << " out[" << i << "] at bound " << loose;
    }
  }
  // A mask is shaped by the bound it was given with: [B, Hq, max_seqlen_q, max_seqlen_kv].
  {
    attention_params masked = p;
    masked.max_seqlen_q = masked.max_seqlen_kv = 9;
    std::vector<std::uint8_t> keep(2 * 2 * 9 * 9, 1);
    masked.maybe_mask = tensor_view::contiguous(keep.data(), dtype::boolean, {2, 2, 9, 9});
    std::fill(c.out.begin(), c.out.end(), 0.0f);
    attention(masked);
    for (std::size_t i = 0; i < exact.size(); ++i) ASSERT_NEAR(c.out[i], exact[i], 1e-5) << "masked out[" << i << "]";
    masked.maybe_mask = tensor_view::contiguous(keep.data(), dtype::boolean, {2, 2, 5, 5});
    expect_invalid(masked, "mask: shape [2, 2, 5, 5] does not broadcast to [B, Hq, Sq, Skv] = [2, 2, 9, 9]");
  }
  // out (or lse) sharing memory with the offsets it is read by.
  std::vector<float> buf(256);
  std::int32_t* in_buf = reinterpret_cast<std::int32_t*>(buf.data());
  std::copy(cu.begin(), cu.end(), in_buf);
  attention_params alias = p;
  alias.maybe_cu_seqlens_q = tensor_view::contiguous(in_buf, dtype::i32, {3});
  alias.out = tensor_view::contiguous(buf.data(), dtype::f32, {8, 2, 16});
  expect_invalid(alias, "out: memory overlaps cu_seqlens_q");
  alias = p;
  alias.maybe_cu_seqlens_kv = tensor_view::contiguous(in_buf, dtype::i32, {3});
  alias.maybe_lse = tensor_view::contiguous(buf.data(), dtype::f32, {2, 8});
  expect_invalid(alias, "lse: memory overlaps cu_seqlens_kv");
}

TEST(Errors, FloatRangeEnumsAndRunOptions) {
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  attention_params p = c.params;
  p.softcap = 1e39;  // inf in the kernels' float
  expect_invalid(p, "softcap: must be finite and >= 0 (0 disables it), within float's range");
  p = c.params;
  p.maybe_scale = -1e39;
  expect_invalid(p, "scale: must be finite (within float's range");
  p = c.params;
  p.q.dtype = p.k.dtype = p.v.dtype = p.out.dtype = static_cast<dtype>(99);
  expect_invalid(p, "q: dtype is not an attend::dtype value; got 99");
  p = c.params;
  p.layout = static_cast<layout>(7);
  expect_invalid(p, "layout: must be bshd or bhsd");
  p = c.params;
  p.alignment = static_cast<alignment>(5);
  expect_invalid(p, "alignment: must be top_left or bottom_right");

  run_options o;
  o.num_threads = -5;
  EXPECT_THROW(attention(c.params, o), invalid_argument);
  o.num_threads = 1 << 30;  // per-thread workspaces: terabytes
  try {
    attention(c.params, o);
    ADD_FAILURE() << "num_threads = 2^30 was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("num_threads: must be between 0"), std::string::npos) << e.what();
  }
  o = {};
  o.maybe_workspace = std::span<std::byte>(static_cast<std::byte*>(nullptr), std::size_t{1} << 20);
  try {
    attention(c.params, o);
    ADD_FAILURE() << "a null workspace of 1 MiB was accepted";
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("workspace: data is null"), std::string::npos) << e.what();
  }
  // A caller's workspace smaller than the backend needs: an error, not attend's own memory instead.
  {
    test::dense_call small(1, 64, 64, 2, 2, 16, 16);
    alignas(64) static std::byte tiny[64];
    run_options w;
    w.select.name = "flash_cpu";
    w.num_threads = 1;
    w.maybe_workspace = std::span<std::byte>(tiny, sizeof tiny);
    const std::size_t need = registry::global().find("flash_cpu")->workspace_bytes(make_problem(small.params), 1);
    ASSERT_GT(need, sizeof tiny);
    try {
      attention(small.params, w);
      ADD_FAILURE() << "a workspace of 64 bytes was accepted for " << need;
    } catch (const invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("workspace: backend 'flash_cpu' needs " + std::to_string(need) +
                                           " bytes for this call"),
                std::string::npos)
          << e.what();
    }
    // A span of no bytes is no workspace, whatever its pointer.
    w.maybe_workspace = std::span<std::byte>(tiny, 0);
    EXPECT_EQ(attention(small.params, w), "flash_cpu");
    // measure times only the candidates that fit, fails with the reason when none does, and keeps
    // its choice per workspace size (Note [Measure with a caller workspace]).
    registry r;
    r.add(registry::global().find("flash_cpu"));
    r.add(registry::global().find("unfused_cpu"));
    w.maybe_registry = &r;
    w.select.name = "measure";
    w.select.honour_environment = false;
    w.maybe_workspace = std::span<std::byte>(tiny, sizeof tiny);
    EXPECT_THROW(attention(small.params, w), invalid_argument);
    const problem sp = make_problem(small.params);
    EXPECT_TRUE(r.measured(registry::measure_key(sp, w.select)).empty());
    const std::size_t need_flash = r.find("flash_cpu")->workspace_bytes(sp, 1);
    const std::size_t need_unfused = r.find("unfused_cpu")->workspace_bytes(sp, 1);
    ASSERT_NE(need_flash, need_unfused);
    const std::string fits = need_flash < need_unfused ? "flash_cpu" : "unfused_cpu";
    void* mem = host_memory().allocate(std::max(need_flash, need_unfused));
    w.maybe_workspace = std::span<std::byte>(static_cast<std::byte*>(mem), std::min(need_flash, need_unfused));
    for (int call = 0; call < 2; ++call) EXPECT_EQ(attention(small.params, w), fits) << call;
    EXPECT_TRUE(r.measured(registry::measure_key(sp, w.select)).empty()) << "kept under the size-free key";
    // A winner measured without a workspace is not taken for a workspace it does not fit.
    r.remember_measured(registry::measure_key(sp, w.select), fits == "flash_cpu" ? "unfused_cpu" : "flash_cpu");
    EXPECT_EQ(attention(small.params, w), fits);
    host_memory().deallocate(mem);
  }
  // A caller's workspace over an input or output: the backend would write it while reading them.
  test::dense_call big(1, 64, 64, 2, 2, 64, 64);
  memory_resource& host = host_memory();
  const std::size_t q_bytes = big.q.size() * sizeof(float), out_bytes = big.out.size() * sizeof(float);
  void* q64 = host.allocate(q_bytes);  // 64-byte aligned, so the overlap is what is refused
  void* out64 = host.allocate(out_bytes);
  std::memcpy(q64, big.q.data(), q_bytes);
  attention_params a = big.params;
  a.q.data = q64;
  a.out.data = out64;
  for (const char* name : {"flash_cpu", "unfused_cpu"}) {
    const std::size_t need = registry::global().find(name)->workspace_bytes(make_problem(a), 1);
    ASSERT_GT(need, 0u) << name;
    for (auto [victim, bytes, what] : {std::tuple{q64, q_bytes, "q"}, {out64, out_bytes, "out"}}) {
      run_options w;
      w.select.name = name;
      w.num_threads = 1;
      w.maybe_workspace = std::span<std::byte>(static_cast<std::byte*>(victim), std::max(need, bytes));
      try {
        attention(a, w);
        ADD_FAILURE() << name << ": a workspace over " << what << " was accepted";
      } catch (const invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(std::string("workspace: memory overlaps ") + what), std::string::npos)
            << e.what();
      }
    }
  }
  host.deallocate(q64);
  host.deallocate(out64);
}

TEST(Errors, ZeroLengthIsNotAnError) {
  test::dense_call empty_q(1, 0, 8, 2, 2, 16, 16);
  EXPECT_NO_THROW(attention(empty_q.params));
  test::dense_call no_keys(1, 4, 0, 2, 2, 16, 16);  // every row fully masked
  attention(no_keys.params);
  for (float x : no_keys.out) EXPECT_EQ(x, 0.0f);
  for (float l : no_keys.lse) EXPECT_EQ(l, -INFINITY);
  // No query heads but some key/value heads: nothing to compute, on every backend (flash_cpu
  // divided by the zero group size).
  test::dense_call no_heads(1, 8, 8, 0, 2, 16, 16);
  for (const char* name : {"reference", "flash_cpu", "unfused_cpu"}) {
    run_options o;
    o.select.name = name;
    EXPECT_EQ(attention(no_heads.params, o), name);
  }
}

TEST(Errors, MalformedMaskViewBeforeAnyUse) {
  // The out-overlap test read the mask's sizes and strides before they were checked (rank 50:
  // past the arrays; INT64_MAX strides: signed overflow).
  test::dense_call c(1, 8, 8, 1, 1, 16, 16);
  std::vector<float> mask(64);
  attention_params p = c.params;
  p.maybe_mask = tensor_view::contiguous(mask.data(), dtype::f32, {8, 8});
  p.maybe_mask.rank = 50;
  expect_invalid(p, "mask: rank must be between 1 and 4");
  p.maybe_mask = tensor_view::contiguous(mask.data(), dtype::f32, {8, 8});
  p.maybe_mask.strides[0] = std::numeric_limits<std::int64_t>::max();
  expect_invalid(p, "mask: offsets overflow 64 bits");
  p = c.params;
  p.softcap = 1e-300;  // 0 (off) in float: silently no softcap on flash_cpu before
  expect_invalid(p, "softcap: must be 0 (off) or at least 1.2e-38");
}

TEST(Dlpack, RoundTripAndRejections) {
  std::vector<float> data(2 * 3 * 4 * 5);
  std::int64_t shape[4] = {2, 3, 4, 5}, strides[4] = {60, 1, 15, 3};  // a permuted view
  DLTensor t{};
  t.data = data.data();
  t.device = {kDLCPU, 0};
  t.ndim = 4;
  t.dtype = {kDLFloat, 32, 1};
  t.shape = shape;
  t.strides = strides;
  t.byte_offset = 4;
  tensor_view v = from_dlpack(t);
  EXPECT_EQ(v.data, data.data() + 1);
  EXPECT_EQ(v.strides[2], 15);
  EXPECT_EQ(v.sizes[3], 5);
  const DLTensor back = to_dlpack(v);
  EXPECT_EQ(back.strides[1], 1);
  EXPECT_EQ(back.dtype.code, kDLFloat);
  t.dtype = {kDLBfloat, 16, 1};
  EXPECT_EQ(from_dlpack(t).dtype, dtype::bf16);
  t.strides = nullptr;
  EXPECT_EQ(from_dlpack(t).strides[0], 60);
  t.dtype = {kDLFloat, 64, 1};
  EXPECT_THROW(from_dlpack(t), invalid_argument);
  t.dtype = {kDLFloat, 32, 1};
  t.device = {kDLROCM, 0};
  EXPECT_THROW(from_dlpack(t), invalid_argument);
  // A null shape, or compact strides past 64 bits, are errors (a SEGV and a signed overflow before).
  DLTensor no_shape = t;
  no_shape.shape = nullptr;
  EXPECT_THROW(from_dlpack(no_shape), invalid_argument);
  std::int64_t huge[4] = {std::int64_t{1} << 40, std::int64_t{1} << 40, 1, 1};
  DLTensor overflowing = t;
  overflowing.shape = huge;
  overflowing.strides = nullptr;
  EXPECT_THROW(from_dlpack(overflowing), invalid_argument);
}

}  // namespace
}  // namespace attend
