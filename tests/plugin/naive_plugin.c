/* A backend in plain C behind the plugin ABI (attend/plugin.h): exact-enough fp32 attention on the
 * CPU, one query row at a time, with the row of scores in the workspace. Used by
 * tests/test_plugin.cpp, tests/cli_test.cmake and tests/python/test_plugin.py; also the example a
 * third party starts from. Supports f32, causal (both alignments), windows, GQA/MQA and LSE on
 * dense [batch, seq, head, dim] tensors; everything else is refused by its traits. A forward
 * context value "naive_plugin_fail" = 1 makes run() fail (the error path of the ABI).
 *
 * Built three times by tests/CMakeLists.txt: as is, with NAIVE_PLUGIN_ABI=999 and with
 * NAIVE_PLUGIN_DTYPES declaring only int32 (libraries attend must refuse). */
#include <math.h>
#include <stdio.h>

#include "attend/plugin.h"

#ifndef NAIVE_PLUGIN_ABI
#define NAIVE_PLUGIN_ABI ATTEND_PLUGIN_ABI_VERSION
#endif
#ifndef NAIVE_PLUGIN_DTYPES
#define NAIVE_PLUGIN_DTYPES (1u << ATTEND_DTYPE_F32)
#endif

#if defined(_WIN32)
#define NAIVE_EXPORT __declspec(dllexport)
#else
#define NAIVE_EXPORT __attribute__((visibility("default")))
#endif

static int32_t naive_check_limits(void* user, const attend_problem_v1* p, char* why, size_t why_size) {
  (void)user;
  if (p->seqlen_kv > (1 << 20)) {
    snprintf(why, why_size, "seqlen_kv must be <= 1048576 (one row of scores in the workspace); got %lld",
             (long long)p->seqlen_kv);
    return 0;
  }
  return 1;
}

static size_t naive_workspace_bytes(void* user, const attend_problem_v1* p, int32_t num_threads) {
  (void)user;
  (void)num_threads;
  return (size_t)(p->seqlen_kv > 0 ? p->seqlen_kv : 1) * sizeof(double);
}

static int32_t naive_run(void* user, const attend_problem_v1* p, const attend_run_v1* r, char* error, size_t error_size) {
  (void)user;
  double fail = 0;
  if (r->maybe_forward && r->maybe_forward->find_number(r->maybe_forward->self, "naive_plugin_fail", &fail) && fail == 1) {
    snprintf(error, error_size, "asked to fail by the forward context (naive_plugin_fail = 1)");
    return 1;
  }
  if (r->workspace_bytes < (size_t)p->seqlen_kv * sizeof(double)) {
    snprintf(error, error_size, "workspace of %zu bytes is too small", r->workspace_bytes);
    return 2;
  }
  double* s = (double*)r->workspace;
  const float* q = (const float*)p->q;
  const float* k = (const float*)p->k;
  const float* v = (const float*)p->v;
  float* out = (float*)p->out;
  const int64_t shift = p->bottom_right ? p->seqlen_kv - p->seqlen_q : 0;
  const int64_t right = p->causal ? 0 : p->window_right;
  for (int64_t b = 0; b < p->batch; ++b)
    for (int64_t h = 0; h < p->num_heads_q; ++h) {
      const int64_t hk = h / p->group_size;
      for (int64_t i = 0; i < p->seqlen_q; ++i) {
        const int64_t diag = i + shift;
        int64_t lo = 0, hi = p->seqlen_kv;
        if (p->window_left >= 0 && diag - p->window_left > lo) lo = diag - p->window_left;
        if (right >= 0 && diag + right + 1 < hi) hi = diag + right + 1;
        const float* qi = q + b * p->q_strides.batch + i * p->q_strides.seq + h * p->q_strides.head;
        double m = -INFINITY, l = 0;
        for (int64_t j = lo; j < hi; ++j) {
          const float* kj = k + b * p->k_strides.batch + j * p->k_strides.seq + hk * p->k_strides.head;
          double dot = 0;
          for (int64_t d = 0; d < p->head_dim_qk; ++d)
            dot += (double)qi[d * p->q_strides.dim] * (double)kj[d * p->k_strides.dim];
          s[j] = dot * p->scale;
          if (s[j] > m) m = s[j];
        }
        for (int64_t j = lo; j < hi; ++j) l += exp(s[j] - m);
        float* oi = out + b * p->out_strides.batch + i * p->out_strides.seq + h * p->out_strides.head;
        for (int64_t d = 0; d < p->head_dim_v; ++d) {
          double acc = 0;
          for (int64_t j = lo; j < hi; ++j)
            acc += exp(s[j] - m) * (double)v[b * p->v_strides.batch + j * p->v_strides.seq + hk * p->v_strides.head +
                                             d * p->v_strides.dim];
          oi[d * p->out_strides.dim] = hi > lo ? (float)(acc / l) : 0.0f;
        }
        if (p->maybe_lse)
          p->maybe_lse[b * p->lse_batch_stride + h * p->lse_head_stride + i * p->lse_seq_stride] =
              hi > lo ? (float)(m + log(l)) : -INFINITY;
      }
    }
  return 0;
}

static const attend_plugin_v1 naive_plugin = {
    NAIVE_PLUGIN_ABI,
    "naive_plugin",
    "fp64-accumulating row-at-a-time attention in C, loaded through the plugin ABI",
    5, /* below every built-in that can run the call except the reference */
    1u << ATTEND_DEVICE_CPU,
    NAIVE_PLUGIN_DTYPES,
    ATTEND_FEATURE_CAUSAL | ATTEND_FEATURE_BOTTOM_RIGHT | ATTEND_FEATURE_WINDOW | ATTEND_FEATURE_GQA |
        ATTEND_FEATURE_LSE | ATTEND_FEATURE_HEAD_DIM_V_DIFFERS,
    1,
    1024,
    1,
    NULL,
    naive_check_limits,
    naive_workspace_bytes,
    naive_run,
};

NAIVE_EXPORT const attend_plugin_v1* attend_plugin_entry(void) { return &naive_plugin; }
