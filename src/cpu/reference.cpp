// Backend `reference`: the oracle every other backend is compared with. Kept simple enough to
// trust by reading: the definition in attend/params.h, row by row, in double precision.
#include "cpu/reference.h"

#include <omp.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attend/backend.h"
#include "cpu/backends.h"
#include "cpu/elements.h"

namespace attend::cpu {

int thread_count(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

void reference_row(const problem& p, std::int64_t b, std::int64_t h, std::int64_t i, std::span<double> scores,
                   double* out_row, double* lse) {
  const attention_params& a = p.params;
  const std::int64_t len_q = p.len_q(b), len_kv = p.len_kv(b);
  const std::int64_t hk = h / p.group_size;
  const std::int64_t q_row = (p.start_q(b) + i) * p.q.seq + b * p.q.batch + h * p.q.head;
  const key_range visible = visible_keys(a, i, len_q, len_kv);
  constexpr double neg_inf = -std::numeric_limits<double>::infinity();

  double row_max = neg_inf;
  bool has_nan = false;
  for (std::int64_t j = 0; j < len_kv; ++j) {
    double s = neg_inf;
    if (j >= visible.lo && j < visible.hi) {
      const std::int64_t k_row = (p.start_kv(b) + j) * p.k.seq + b * p.k.batch + hk * p.k.head;
      double dot = 0;
      for (std::int64_t d = 0; d < p.head_dim_qk; ++d)
        dot += load(a.q.data, p.dtype, q_row + d * p.q.dim) * load(a.k.data, p.dtype, k_row + d * p.k.dim);
      s = p.scale * dot;
      if (a.softcap > 0) s = a.softcap * std::tanh(s / a.softcap);
      if (p.maybe_mask) {
        const double m = load(p.maybe_mask, p.mask_dtype, mask_offset(p, b, h, i, j));
        if (p.mask_dtype == dtype::boolean)
          s = m != 0 ? s : neg_inf;
        else
          s += m;
      }
    }
    scores[j] = s;
    has_nan = has_nan || std::isnan(s);
    if (s > row_max) row_max = s;
  }

  // NaN in, NaN out: never a silent number. So too a row with keys whose every score is -inf (an
  // infinite input): it cannot weigh them, and it did see keys (Note [Score pipeline]).
  if (has_nan || (row_max == neg_inf && row_has_live_key(p, b, h, i))) {
    for (std::int64_t d = 0; d < p.head_dim_v; ++d) out_row[d] = std::numeric_limits<double>::quiet_NaN();
    *lse = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  for (std::int64_t d = 0; d < p.head_dim_v; ++d) out_row[d] = 0;
  if (row_max == neg_inf) {  // no visible key
    *lse = neg_inf;
    return;
  }
  double sum = 0;
  for (std::int64_t j = 0; j < len_kv; ++j) {
    const double w = std::exp(scores[j] - row_max);
    if (w == 0) continue;
    sum += w;
    const std::int64_t v_row = (p.start_kv(b) + j) * p.v.seq + b * p.v.batch + hk * p.v.head;
    for (std::int64_t d = 0; d < p.head_dim_v; ++d) out_row[d] += w * load(a.v.data, p.dtype, v_row + d * p.v.dim);
  }
  for (std::int64_t d = 0; d < p.head_dim_v; ++d) out_row[d] /= sum;
  *lse = row_max + std::log(sum);
}

namespace {

class reference_backend final : public backend {
 public:
  reference_backend() {
    traits_.description = "exact CPU oracle: row by row, fp64 accumulation";
    traits_.devices = {device_kind::cpu};
    traits_.dtypes = {dtype::f32, dtype::f16, dtype::bf16};
    traits_.features = feature_set::all();
    traits_.min_head_dim = 1;
    traits_.max_head_dim = 1 << 16;
    traits_.priority = 0;  // never preferred by "auto" over a fast backend
    traits_.exact = true;
  }
  std::string_view name() const override { return "reference"; }
  const backend_traits& traits() const override { return traits_; }

  // One row of scores in double per thread: keys beyond 2^31 (16 GiB a row) are refused here, which
  // also keeps workspace_bytes from overflowing (a stride-0 key tensor can claim 2^61 keys; head
  // dims are at most 2^16).
  bool check_limits(const problem& p, diagnostics& diag) const override {
    constexpr std::int64_t k_max_keys = std::int64_t{1} << 31;
    if (p.seqlen_kv > k_max_keys)
      diag.reject("sequence length (keys) must be at most 2^31 (one row of fp64 scores per thread); got " +
                  std::to_string(p.seqlen_kv));
    return diag.ok();
  }

  std::size_t workspace_bytes(const problem& p, int num_threads) const override {
    return static_cast<std::size_t>(thread_count(num_threads)) *
           static_cast<std::size_t>(p.seqlen_kv + p.head_dim_v) * sizeof(double);
  }

  void run(const problem& p, const run_context& ctx) const override {
    const int threads = thread_count(ctx.num_threads);
    const std::int64_t per_thread = p.seqlen_kv + p.head_dim_v;
    auto* scratch = reinterpret_cast<double*>(ctx.workspace.data());
    const std::int64_t rows = p.batch * p.num_heads_q;
#pragma omp parallel for num_threads(threads) schedule(dynamic)
    for (std::int64_t bh = 0; bh < rows; ++bh) {
      const std::int64_t b = bh / p.num_heads_q, h = bh % p.num_heads_q;
      double* mine = scratch + per_thread * omp_get_thread_num();
      const std::span<double> scores(mine, static_cast<std::size_t>(p.seqlen_kv));
      double* out_row = mine + p.seqlen_kv;
      for (std::int64_t i = 0; i < p.len_q(b); ++i) {
        double lse = 0;
        reference_row(p, b, h, i, scores, out_row, &lse);
        const std::int64_t o = b * p.out.batch + (p.start_q(b) + i) * p.out.seq + h * p.out.head;
        for (std::int64_t d = 0; d < p.head_dim_v; ++d) store(p.params.out.data, p.dtype, o + d * p.out.dim, out_row[d]);
        if (p.maybe_lse)
          p.maybe_lse[b * p.lse_batch_stride + h * p.lse_head_stride + (p.start_q(b) + i) * p.lse_seq_stride] =
              static_cast<float>(lse);
      }
    }
  }

 private:
  backend_traits traits_;
};

}  // namespace

std::shared_ptr<const backend> make_reference_backend() { return std::make_shared<reference_backend>(); }

}  // namespace attend::cpu
