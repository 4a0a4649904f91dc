/* attend/plugin.h: the C ABI of backends loaded from a shared library (Note [Plugin ABI]).
 *
 * A plugin is a shared library that exports
 *
 *     const attend_plugin_v1* attend_plugin_entry(void);
 *
 * returning a description of one backend that lives as long as the library: its name and
 * traits (what the trait checks of attend::backend::supports test), and callbacks for the limits
 * the traits cannot express, the workspace it needs and the run itself. attend::load_plugin
 * (attend/registry.h; `attend --plugin PATH`; `attend.load_plugin(path)` in Python) opens the
 * library, checks abi_version, and wraps it as an attend::backend for a registry.
 *
 * Note [Plugin ABI]: plain C (no C++ types, no exceptions across the boundary), every struct
 * passed by pointer, sizes and strides int64, enums as int32 with the values below. A call reaches
 * the plugin already validated (make_problem) and accepted by its traits; shapes are normalised to
 * [batch, seq, head, dim] element strides as in attend::problem (varlen: batch stride 0, sequence
 * b at rows cu_seqlens[b]..cu_seqlens[b+1]). Errors come back as a non-zero return and a
 * NUL-terminated message written into the caller's buffer; attend turns them into typed C++
 * exceptions (attend::runtime_error) and supports() reasons. Callbacks may be called from several
 * threads at once (one attend call per thread); `user` state they share is theirs to guard. The
 * library stays loaded while its backend is registered or referenced. A new field or callback
 * means a new ABI version (attend_plugin_v2); attend refuses a library whose abi_version it does
 * not know.
 */
#ifndef ATTEND_PLUGIN_H
#define ATTEND_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ATTEND_PLUGIN_ABI_VERSION 1

/* attend::dtype */
enum { ATTEND_DTYPE_F32 = 0, ATTEND_DTYPE_F16 = 1, ATTEND_DTYPE_BF16 = 2, ATTEND_DTYPE_I32 = 3, ATTEND_DTYPE_BOOL = 4 };
/* attend::device_kind */
enum { ATTEND_DEVICE_CPU = 0, ATTEND_DEVICE_CUDA = 1 };
/* attend::feature bits */
enum {
  ATTEND_FEATURE_CAUSAL = 1u << 0,
  ATTEND_FEATURE_WINDOW = 1u << 1,
  ATTEND_FEATURE_MASK_ADDITIVE = 1u << 2,
  ATTEND_FEATURE_MASK_KEEP = 1u << 3,
  ATTEND_FEATURE_GQA = 1u << 4,
  ATTEND_FEATURE_SOFTCAP = 1u << 5,
  ATTEND_FEATURE_LSE = 1u << 6,
  ATTEND_FEATURE_VARLEN = 1u << 7,
  ATTEND_FEATURE_HEAD_DIM_V_DIFFERS = 1u << 8,
  ATTEND_FEATURE_BOTTOM_RIGHT = 1u << 9
};

/* Element strides of a [batch, seq, head, dim] tensor. */
typedef struct attend_strides_v1 {
  int64_t batch, seq, head, dim;
} attend_strides_v1;

/* The scoped forward context of the call (attend/forward_context.h), innermost value first. */
typedef struct attend_forward_v1 {
  int32_t has_timestep, has_layer;
  double timestep;
  int64_t layer;
  /* A number (integer, real or bool value) under `key`: 1 and *out set, or 0 when absent or not a
   * number. `self` is the owning attend_forward_v1's `self`. */
  int32_t (*find_number)(const void* self, const char* key, double* out);
  const void* self;
} attend_forward_v1;

/* One validated call (attend::problem). */
typedef struct attend_problem_v1 {
  int32_t dtype;              /* of q, k, v and out */
  int32_t device_kind, device_index;
  uint32_t features;          /* ATTEND_FEATURE_* the call uses */
  int64_t batch, seqlen_q, seqlen_kv; /* varlen: max over sequences */
  int64_t num_heads_q, num_heads_kv, group_size, head_dim_qk, head_dim_v;
  double scale, softcap;      /* softcap 0: off */
  int32_t causal, bottom_right;
  int64_t window_left, window_right; /* -1: unbounded */
  const void* q;
  const void* k;
  const void* v;
  void* out;
  attend_strides_v1 q_strides, k_strides, v_strides, out_strides;
  float* maybe_lse;           /* NULL: not requested; else [batch, head, seq] at these strides */
  int64_t lse_batch_stride, lse_head_stride, lse_seq_stride;
  const void* maybe_mask;     /* NULL: none; additive (f32/f16/bf16) or keep (bool) */
  int32_t mask_dtype;
  int64_t mask_batch_stride, mask_head_stride, mask_q_stride, mask_kv_stride; /* 0 broadcasts */
  const int32_t* maybe_cu_seqlens_q; /* varlen offsets (batch + 1), device memory on cuda */
  const int32_t* maybe_cu_seqlens_kv;
} attend_problem_v1;

/* Where and how a call runs. */
typedef struct attend_run_v1 {
  void* maybe_cuda_stream;    /* cudaStream_t on cuda */
  int32_t num_threads;        /* cpu: 0 = the OpenMP default */
  void* workspace;            /* workspace_bytes() bytes, 64-byte aligned (NULL when 0); valid
                                 for work queued on maybe_cuda_stream before run returns (while
                                 the stream captures a CUDA graph, it is freed in stream order
                                 right after: Note [Workspace under capture]) */
  size_t workspace_bytes;
  const attend_forward_v1* maybe_forward; /* NULL: no forward context */
} attend_run_v1;

typedef struct attend_plugin_v1 {
  uint32_t abi_version;       /* ATTEND_PLUGIN_ABI_VERSION */
  const char* name;           /* registry name: [a-z0-9_]+ */
  const char* description;
  int32_t priority;           /* "auto" prefers higher; built-ins use 0 (reference) .. 110 */
  uint32_t device_kinds;      /* bit (1 << ATTEND_DEVICE_*) per device kind */
  uint32_t dtypes;            /* bit (1 << ATTEND_DTYPE_*) per dtype */
  uint32_t features;          /* ATTEND_FEATURE_* it implements */
  int64_t min_head_dim, max_head_dim, head_dim_multiple;
  void* user;                 /* passed back to every callback */
  /* Limits the traits cannot express: 1 when supported; else 0 and one line "X must be Y; got Z"
   * in why[why_size]. NULL: no further limits. */
  int32_t (*check_limits)(void* user, const attend_problem_v1* p, char* why, size_t why_size);
  /* Bytes of workspace run() needs. NULL: none. */
  size_t (*workspace_bytes)(void* user, const attend_problem_v1* p, int32_t num_threads);
  /* Runs an accepted call; writes out (and lse when requested). 0 on success; else non-zero and a
   * message in error[error_size]. Must not allocate in the hot path. */
  int32_t (*run)(void* user, const attend_problem_v1* p, const attend_run_v1* r, char* error, size_t error_size);
} attend_plugin_v1;

typedef const attend_plugin_v1* (*attend_plugin_entry_fn)(void);
#define ATTEND_PLUGIN_ENTRY_SYMBOL "attend_plugin_entry"

#ifdef __cplusplus
}
#endif

#endif /* ATTEND_PLUGIN_H */
