// attend/check.h: comparing backends with the exact reference. Shared by `attend check`,
// `attend demo`, the C++ tests and the GPU check, so all of them use one case grid and one
// tolerance table.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "attend/backend.h"
#include "attend/params.h"

namespace attend::testing {

// Note [Tolerances]: the one table. An element passes when
//   |out - ref| <= atol + rtol * |ref|
// with ref computed in fp64 from the same (already rounded) inputs. atol/rtol cover the output's
// own rounding (f16: 2^-11, bf16: 2^-8 relative) plus fp32 accumulation and the rounding of
// probabilities to the input dtype before the second product in fused kernels. NaN in the output
// where the reference has none (or the reverse) always fails. LSE uses the f32 row.
struct tolerance {
  double atol = 0;
  double rtol = 0;
  double lse_atol = 0;  // LSE is f32 whatever the inputs: |lse - ref| <= lse_atol + rtol_lse·|ref|
  double lse_rtol = 0;
};
tolerance tolerance_for(dtype t);

enum class mask_type : std::uint8_t { none, additive, keep };

// One random case. Lengths for varlen are per sequence; empty means dense.
struct case_spec {
  std::string name;
  attend::dtype dtype = attend::dtype::f32;
  attend::layout layout = attend::layout::bshd;
  std::int64_t batch = 1, seqlen_q = 1, seqlen_kv = 1, heads_q = 1, heads_kv = 1, head_dim_qk = 8, head_dim_v = 8;
  bool causal = false;
  attend::alignment alignment = attend::alignment::top_left;
  std::int64_t window_left = -1, window_right = -1;
  mask_type mask = mask_type::none;
  bool mask_broadcast = false;    // mask [Sq, Skv] shared by batch and heads
  bool mask_key_only = false;     // mask [B, Hq, 1, Skv]: one row for every query (key padding)
  bool mask_one_head = false;     // mask [B, 1, Sq or 1, Skv]: shared by the heads
  bool mask_rows_repeat = false;  // every query row of the mask repeats its first: a key-padding mask
                                  // materialised per query row (as Hugging Face builds it)
  attend::dtype mask_dtype = attend::dtype::f32;  // of an additive mask: f32, f16 or bf16
  bool mask_lowest = false;  // an additive mask drops keys with float's lowest value, not -inf (as Hugging Face)
  bool mask_keys_outer = false;  // the mask stored key-major (a transposed view): key stride not 1 unless
                                 // the mask has one row ([1, Skv])
  bool fully_masked_rows = false;  // some rows see no key at all
  double softcap = 0;
  std::optional<double> maybe_scale;  // default 1/sqrt(head_dim_qk)
  bool lse = true;
  bool strided = false;  // views with padded strides (non-contiguous)
  bool aligned_gaps = false;  // views with 8 unused elements after each dim (slices of a wider tensor,
                              // strides kept 16-byte aligned for 16-bit types); ignored when strided
  std::vector<std::int32_t> varlen_q, varlen_kv;
  std::uint64_t seed = 0;
  attend::device device{};
  bool compute_reference = true;  // false: inputs only (benchmarks)

  std::string describe() const;
};

// Cumulative offsets [0, l0, l0 + l1, ...] of per-sequence lengths (varlen cu_seqlens).
std::vector<std::int32_t> cumulative_offsets(const std::vector<std::int32_t>& lengths);

// The awkward-size grid: S = 1, 17, 501; D = 8, 64, 80, 128; GQA 4:1 and 8:1; Sq != Skv with
// both alignments; windows; masks with fully masked rows; varlen with a zero-length sequence.
// `seed` reseeds every case (fresh data per run); `quick` keeps a smaller subset.
std::vector<case_spec> default_grid(std::uint64_t seed, bool quick = false);

// Random inputs of one case in host memory, and views of them.
class case_data {
 public:
  explicit case_data(const case_spec& spec);
  ~case_data();
  case_data(const case_data&) = delete;
  case_data& operator=(const case_data&) = delete;

  const case_spec& spec() const noexcept;
  // Host views (q, k, v, out, lse, mask, cu_seqlens all on the cpu).
  const attention_params& params() const noexcept;
  // The fp64 reference: out as dense [rows, Hq, Dv] (rows = B·Sq, or total_q for varlen), lse as
  // [rows, Hq].
  const std::vector<double>& reference_out() const;
  const std::vector<double>& reference_lse() const;

  struct impl;

 private:
  std::unique_ptr<impl> impl_;
};

struct comparison {
  bool ok = false;
  double max_abs_error = 0;
  double max_lse_error = 0;
  double worst_ratio = 0;  // max over elements of |err| / (atol + rtol·|ref|); <= 1 passes
  std::string detail;      // first failure, if any
};

// The case's inputs and outputs on another device (through a backend's memory_resource), for
// running a non-cpu backend on it. Outputs are poisoned (NaN) at upload.
class device_copy {
 public:
  device_copy(const case_data& data, memory_resource& memory, device d);
  ~device_copy();
  device_copy(const device_copy&) = delete;
  device_copy& operator=(const device_copy&) = delete;
  const attention_params& params() const noexcept { return params_; }
  // Copies out (and lse) back into the host views of `data`.
  void download_outputs(const case_data& data);

 private:
  tensor_view upload(const tensor_view& host);
  memory_resource& memory_;
  device device_;
  std::vector<void*> owned_;
  attention_params params_;
};

// Fills a case's outputs with NaN so a row a backend never writes is caught.
void poison_outputs(const attention_params& host);

// Median seconds of one run of `b` on `p` (after one warm-up), over at least `min_reps` runs and
// `min_seconds` in total; past 10^6 runs (and min_reps) it stops short of min_seconds.
double time_backend(const backend& b, const problem& p, int num_threads, double min_seconds, int min_reps,
                    void* maybe_cuda_stream = nullptr);

// Runs `b` on the case (copying to the case's device through b.memory_for when it is not the
// cpu) and compares out and lse with the reference. Throws what the backend throws.
comparison check_backend(const backend& b, const case_data& data, int num_threads = 0);
// Compares the case's host outputs, as a backend left them (outputs poisoned before its run), with
// the reference; what check_backend does after running.
comparison compare_outputs(const case_data& data);

}  // namespace attend::testing
