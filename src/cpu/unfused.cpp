// Backend `unfused_cpu`: the classic "math" attention. For each (sequence, head): gather Q, K, V
// into fp32 panels, S = scale·Q·Kᵀ with OpenBLAS SGEMM, mask + softmax row by row, O = P·V with
// SGEMM, scatter O. The Sq×Skv score matrix is materialised on purpose: this is the baseline a
// fused kernel is measured against.
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>

#include "attend/backend.h"
#include "cpu/backends.h"
#include "cpu/elements.h"

namespace attend::cpu {
namespace {

// Why: above this the score matrix alone no longer fits comfortably in a 24-64 GiB machine;
// callers get a clear rejection instead of an allocation failure.
constexpr std::size_t k_max_workspace_bytes = std::size_t{8} << 30;

struct panel_sizes {
  std::size_t q = 0, k = 0, v = 0, s = 0, o = 0;  // floats; SIZE_MAX: does not fit size_t
  std::size_t total_bytes() const {
    std::size_t n = 0;
    for (std::size_t x : {q, k, v, s, o})
      if (__builtin_add_overflow(n, x, &n)) return SIZE_MAX;
    return __builtin_mul_overflow(n, sizeof(float), &n) ? SIZE_MAX : n;
  }
};

// a x b, or SIZE_MAX when it does not fit (total_bytes() then saturates too).
std::size_t mul_or_max(std::size_t a, std::size_t b) {
  std::size_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? SIZE_MAX : r;
}

panel_sizes sizes_for(const problem& p) {
  const auto sq = static_cast<std::size_t>(p.seqlen_q), sk = static_cast<std::size_t>(p.seqlen_kv);
  const auto dqk = static_cast<std::size_t>(p.head_dim_qk), dv = static_cast<std::size_t>(p.head_dim_v);
  return {mul_or_max(sq, dqk), mul_or_max(sk, dqk), mul_or_max(sk, dv), mul_or_max(sq, sk), mul_or_max(sq, dv)};
}

// Note [Flash masked non-finite V] (flash_cpu) applies here too: SGEMM's P·V would carry 0 x NaN
// (or Inf) from a key a row gives no weight into that row. When V's panel holds a non-finite
// value (garbage in masked KV-cache slots), P·V skips P = 0 terms, as the reference does.
bool has_non_finite(const float* panel, std::int64_t count) {
  bool bad = false;
  for (std::int64_t i = 0; i < count; ++i) bad |= !std::isfinite(panel[i]);
  return bad;
}

void guarded_pv(const float* pw, const float* vp, float* op, std::int64_t lq, std::int64_t lk, std::int64_t dv,
                int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t i = 0; i < lq; ++i) {
    float* o = op + i * dv;
    std::fill(o, o + dv, 0.0f);
    for (std::int64_t j = 0; j < lk; ++j) {
      const float w = pw[i * lk + j];
      if (w == 0.0f) continue;
      const float* v = vp + j * dv;
      for (std::int64_t d = 0; d < dv; ++d) o[d] += w * v[d];
    }
  }
}

// A call's thread count for OpenBLAS, restored after the call: openblas_set_num_threads is
// global, and OpenBLAS built on OpenMP also sets the calling thread's OpenMP default with it, so
// one call with num_threads = 1 left every later default call (flash_cpu's, the reference's, the
// user's own OpenMP code) on one thread. The OpenMP default is the calling thread's own, restored
// by each call. OpenBLAS's count is one for the process: calls overlapping on several threads
// share one saved count, taken by the first to start and restored by the last to end (each
// restoring the count it saw, one that started during another's call saved that call's count
// and could leave it behind). While calls overlap, the count is the latest caller's; each call's
// values are right at any count.
class blas_threads_for_call {
 public:
  explicit blas_threads_for_call(int n) : set_(n > 0) {
    if (!set_) return;
    omp_before_ = omp_get_max_threads();
    const std::lock_guard lock(shared().mutex);
    if (shared().active++ == 0) shared().blas_before = openblas_get_num_threads();
    openblas_set_num_threads(n);
  }
  ~blas_threads_for_call() {
    if (!set_) return;
    {
      const std::lock_guard lock(shared().mutex);
      if (--shared().active == 0) openblas_set_num_threads(shared().blas_before);
    }
    omp_set_num_threads(omp_before_);
  }
  blas_threads_for_call(const blas_threads_for_call&) = delete;
  blas_threads_for_call& operator=(const blas_threads_for_call&) = delete;

 private:
  struct process_state {
    std::mutex mutex;
    int active = 0;       // calls between their set and their restore
    int blas_before = 0;  // the count before the first of them
  };
  static process_state& shared() {
    static process_state state;
    return state;
  }
  bool set_;
  int omp_before_ = 0;
};

// Copies rows [0, rows) × dims of a strided tensor into a dense fp32 panel. The dtype switch is
// outside the loops so each element is one load and one conversion.
template <class T, class Convert>
void gather_as(const T* base, std::int64_t row0, std::int64_t row_stride, std::int64_t dim_stride, std::int64_t rows,
               std::int64_t dims, float* panel, int threads, Convert convert) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * dims > 32768)
  for (std::int64_t r = 0; r < rows; ++r) {
    const T* src = base + row0 + r * row_stride;
    float* dst = panel + r * dims;
    for (std::int64_t d = 0; d < dims; ++d) dst[d] = convert(src[d * dim_stride]);
  }
}

void gather(const void* base, dtype t, std::int64_t row0, std::int64_t row_stride, std::int64_t dim_stride,
            std::int64_t rows, std::int64_t dims, float* panel, int threads) {
  switch (t) {
    case dtype::f32:
      gather_as(static_cast<const float*>(base), row0, row_stride, dim_stride, rows, dims, panel, threads,
                [](float x) { return x; });
      return;
    case dtype::f16:
      gather_as(static_cast<const std::uint16_t*>(base), row0, row_stride, dim_stride, rows, dims, panel, threads,
                f16_to_float);
      return;
    case dtype::bf16:
      gather_as(static_cast<const std::uint16_t*>(base), row0, row_stride, dim_stride, rows, dims, panel, threads,
                bf16_to_float);
      return;
    default: return;  // validation admits only floating q/k/v
  }
}

class unfused_backend final : public backend {
 public:
  unfused_backend() {
    traits_.description = "unfused math path: SGEMM (OpenBLAS), materialised scores, softmax, SGEMM";
    traits_.devices = {device_kind::cpu};
    traits_.dtypes = {dtype::f32, dtype::f16, dtype::bf16};
    traits_.features = feature_set::all();
    traits_.priority = 10;
  }
  std::string_view name() const override { return "unfused_cpu"; }
  const backend_traits& traits() const override { return traits_; }

  std::size_t workspace_bytes(const problem& p, int) const override { return sizes_for(p).total_bytes(); }

  void run(const problem& p, const run_context& ctx) const override {
    const int threads = thread_count(ctx.num_threads);
    const blas_threads_for_call blas_threads(ctx.num_threads);
    const panel_sizes n = sizes_for(p);
    float* qf = reinterpret_cast<float*>(ctx.workspace.data());
    float* kf = qf + n.q;
    float* vf = kf + n.k;
    float* sf = vf + n.v;
    float* of = sf + n.s;
    const attention_params& a = p.params;
    const std::int64_t dqk = p.head_dim_qk, dv = p.head_dim_v;
    bool v_non_finite = false;

    for (std::int64_t b = 0; b < p.batch; ++b) {
      const std::int64_t lq = p.len_q(b), lk = p.len_kv(b);
      const std::int64_t q0 = p.start_q(b), k0 = p.start_kv(b);
      for (std::int64_t h = 0; h < p.num_heads_q; ++h) {
        const std::int64_t hk = h / p.group_size;
        if (lq == 0) continue;
        gather(a.q.data, p.dtype, b * p.q.batch + q0 * p.q.seq + h * p.q.head, p.q.seq, p.q.dim, lq, dqk, qf, threads);
        // K/V panels are shared by the group of query heads that reads them.
        if (h % p.group_size == 0) {
          gather(a.k.data, p.dtype, b * p.k.batch + k0 * p.k.seq + hk * p.k.head, p.k.seq, p.k.dim, lk, dqk, kf, threads);
          gather(a.v.data, p.dtype, b * p.v.batch + k0 * p.v.seq + hk * p.v.head, p.v.seq, p.v.dim, lk, dv, vf, threads);
          v_non_finite = has_non_finite(vf, lk * dv);
        }
        if (lk > 0 && dqk > 0)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(lq), static_cast<int>(lk),
                      static_cast<int>(dqk), static_cast<float>(p.scale), qf, static_cast<int>(dqk), kf,
                      static_cast<int>(dqk), 0.0f, sf, static_cast<int>(lk));
        else
          std::fill(sf, sf + lq * lk, 0.0f);
        softmax_rows(p, b, h, lq, lk, sf, threads);
        if (lk > 0 && dv > 0 && v_non_finite)
          guarded_pv(sf, vf, of, lq, lk, dv, threads);
        else if (lk > 0 && dv > 0)
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(lq), static_cast<int>(dv),
                      static_cast<int>(lk), 1.0f, sf, static_cast<int>(lk), vf, static_cast<int>(dv), 0.0f, of,
                      static_cast<int>(dv));
        else
          std::fill(of, of + lq * dv, 0.0f);
        const std::int64_t o0 = b * p.out.batch + q0 * p.out.seq + h * p.out.head;
#pragma omp parallel for num_threads(threads) schedule(static)
        for (std::int64_t i = 0; i < lq; ++i)
          for (std::int64_t d = 0; d < dv; ++d) store(a.out.data, p.dtype, o0 + i * p.out.seq + d * p.out.dim, of[i * dv + d]);
      }
    }
  }

 protected:
  bool check_limits(const problem& p, diagnostics& diag) const override {
    constexpr std::int64_t int_max = std::numeric_limits<int>::max();  // SGEMM's dimensions are int
    if (p.seqlen_q > int_max || p.seqlen_kv > int_max || p.head_dim_qk > int_max || p.head_dim_v > int_max)
      diag.reject("sequence lengths and head dims must fit SGEMM's int dimensions (<= 2^31 - 1)");
    const std::size_t bytes = workspace_bytes(p, 0);
    if (bytes > k_max_workspace_bytes)
      diag.reject("materialised scores and panels must fit in " + std::to_string(k_max_workspace_bytes >> 30) +
                  " GiB; got " + std::to_string(bytes >> 20) + " MiB");
    return diag.ok();
  }

 private:
  // Applies softcap, band, mask and softmax to each score row in place, and writes the LSE.
  static void softmax_rows(const problem& p, std::int64_t b, std::int64_t h, std::int64_t lq, std::int64_t lk,
                           float* scores, int threads) {
    const attention_params& a = p.params;
    constexpr float neg_inf = -std::numeric_limits<float>::infinity();
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < lq; ++i) {
      float* row = scores + i * lk;
      const key_range visible = visible_keys(a, i, lq, lk);
      float row_max = neg_inf;
      bool has_nan = false;
      for (std::int64_t j = 0; j < lk; ++j) {
        float s = row[j];
        if (j < visible.lo || j >= visible.hi) {
          s = neg_inf;
        } else {
          if (a.softcap > 0) s = static_cast<float>(a.softcap * std::tanh(s / a.softcap));
          if (p.maybe_mask) {
            const double m = load(p.maybe_mask, p.mask_dtype, mask_offset(p, b, h, i, j));
            if (p.mask_dtype == dtype::boolean)
              s = m != 0 ? s : neg_inf;
            else
              s += static_cast<float>(m);
          }
        }
        row[j] = s;
        has_nan = has_nan || std::isnan(s);
        row_max = std::max(row_max, s);
      }
      float lse;
      if (has_nan || (row_max == neg_inf && row_has_live_key(p, b, h, i))) {  // or the scores overflowed to -inf
        std::fill(row, row + lk, std::numeric_limits<float>::quiet_NaN());
        lse = std::numeric_limits<float>::quiet_NaN();
      } else if (row_max == neg_inf) {
        std::fill(row, row + lk, 0.0f);
        lse = neg_inf;
      } else {
        double sum = 0;
        for (std::int64_t j = 0; j < lk; ++j) {
          row[j] = std::exp(row[j] - row_max);
          sum += row[j];
        }
        const float inv = static_cast<float>(1.0 / sum);
        for (std::int64_t j = 0; j < lk; ++j) row[j] *= inv;
        lse = row_max + static_cast<float>(std::log(sum));
      }
      if (p.maybe_lse)
        p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (p.start_q(b) + i) * p.lse_seq_stride] = lse;
    }
  }

  backend_traits traits_;
};

}  // namespace

std::shared_ptr<const backend> make_unfused_backend() { return std::make_shared<unfused_backend>(); }

}  // namespace attend::cpu
