// attend_host_bench: the host's cost of one attend call on a CUDA device, stage by stage.
//
// Short calls (cross-attention over 77 text tokens, small images) take 20-35 µs on the GPU, so
// what the host spends per call decides their speed. This times, per call and on the host only,
// each stage attend::attention goes through (validation, selection, the backend's checks and
// plan, the launch) and the CUDA runtime calls those stages make, so a change to any of them is
// measured where it lands. The GPU work each call queues is drained every `k_drain` calls outside
// the timed spans, so a full launch queue never stalls the host and the times are the host's.
//
//   attend_host_bench [REPS]      prints a table: stage, µs per call (median of REPS runs of
//                                 k_calls calls each, default 7 runs)
//
// Shapes: tiny (B = H = 1, S = 128, D = 64) and the SD 1.x cross-attention call (B = 2,
// Sq = 4096, Skv = 77, H = 8, D = 40), bf16, contiguous [B, S, H, D].
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "attend/attend.h"
#include "attend/registry.h"
#include "bench_cuda.h"
#include "cuda/backends.h"

namespace {

constexpr int k_calls = 2000;  // why: long enough that the clock's resolution does not matter
constexpr int k_drain = 64;    // why: well below the launch queue's depth (about 1000 entries)

// Median over `reps` runs of the mean host time of one call of `f`, in µs.
double time_us(int reps, const std::function<void()>& f) {
  for (int i = 0; i < k_drain; ++i) f();  // warm-up: caches, workspaces, cuDNN graphs
  CHECK(cudaDeviceSynchronize());
  std::vector<double> runs;
  for (int r = 0; r < reps; ++r) {
    double seconds = 0;
    for (int done = 0; done < k_calls; done += k_drain) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < k_drain; ++i) f();
      seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      CHECK(cudaDeviceSynchronize());
    }
    runs.push_back(seconds / k_calls * 1e6);
  }
  std::nth_element(runs.begin(), runs.begin() + static_cast<std::ptrdiff_t>(runs.size() / 2), runs.end());
  return runs[runs.size() / 2];
}

struct shape {
  const char* name;
  std::int64_t b, sq, skv, h, d;
};

void row(const char* shape_name, const std::string& stage, double us) {
  std::printf("| %s | %s | %.2f |\n", shape_name, stage.c_str(), us);
  std::fflush(stdout);
}

void bench_shape(const shape& s, int reps) {
  const attend::dtype t = attend::dtype::bf16;
  const attend::device gpu{attend::device_kind::cuda, 0};
  const std::int64_t nq = s.b * s.sq * s.h * s.d, nkv = s.b * s.skv * s.h * s.d;
  buffer q(static_cast<std::size_t>(nq) * 2), k(static_cast<std::size_t>(nkv) * 2), v(static_cast<std::size_t>(nkv) * 2),
      o(static_cast<std::size_t>(nq) * 2);
  for (const buffer* x : {&q, &k, &v})  // zeros: only the host's time is measured here
    CHECK(cudaMemset(x->p, 0, static_cast<std::size_t>(x == &q ? nq : nkv) * 2));
  attend::attention_params a;
  a.q = attend::tensor_view::contiguous(q.p, t, {s.b, s.sq, s.h, s.d}, gpu);
  a.k = attend::tensor_view::contiguous(k.p, t, {s.b, s.skv, s.h, s.d}, gpu);
  a.v = attend::tensor_view::contiguous(v.p, t, {s.b, s.skv, s.h, s.d}, gpu);
  a.out = attend::tensor_view::contiguous(o.p, t, {s.b, s.sq, s.h, s.d}, gpu);
  const attend::problem p = attend::make_problem(a);
  attend::registry& r = attend::registry::global();
  const auto flash = r.find("flash_cuda");
  if (!flash) throw std::runtime_error("flash_cuda is not built");
  const auto cudnn = r.find("cudnn");
  attend::run_options by_name;
  by_name.select.name = "flash_cuda";
  const attend::run_options automatic;

  row(s.name, "make_problem (validation)", time_us(reps, [&] { static_cast<void>(attend::make_problem(a)); }));
  row(s.name, "registry select, auto", time_us(reps, [&] { static_cast<void>(r.select(p, automatic.select)); }));
  row(s.name, "registry select, by name", time_us(reps, [&] { static_cast<void>(r.select(p, by_name.select)); }));
  // What select() did before Note [Selection without reasons]: every backend's reason, then the first.
  row(s.name, "registry candidates().front(), auto",
      time_us(reps, [&] { static_cast<void>(r.candidates(p, automatic.select).front()); }));
  row(s.name, "registry candidates().front(), by name",
      time_us(reps, [&] { static_cast<void>(r.candidates(p, by_name.select).front()); }));
  row(s.name, "flash_cuda supports", time_us(reps, [&] { static_cast<void>(flash->supports(p, nullptr)); }));
  row(s.name, "flash_cuda workspace_bytes", time_us(reps, [&] { static_cast<void>(flash->workspace_bytes(p, 0)); }));
  for (const bool hopper : {true, false}) {
    if (hopper && !attend::cuda::flash_cuda_hopper_available(0)) continue;
    const bool before = attend::cuda::flash_cuda_set_hopper_enabled(hopper);
    const std::string kernel = hopper ? " (Hopper kernel)" : " (mma.sync kernel)";
    row(s.name, "run_on flash_cuda" + kernel, time_us(reps, [&] { attend::run_on(*flash, p, automatic); }));
    row(s.name, "attention, by name" + kernel, time_us(reps, [&] { static_cast<void>(attend::attention(a, by_name)); }));
    row(s.name, "attention, auto" + kernel, time_us(reps, [&] { static_cast<void>(attend::attention(a, automatic)); }));
    attend::cuda::flash_cuda_set_hopper_enabled(before);
  }
  if (cudnn && cudnn->supports(p, nullptr))
    row(s.name, "run_on cudnn", time_us(reps, [&] { attend::run_on(*cudnn, p, automatic); }));
}

// The CUDA runtime calls a call makes, each on its own: the floor under the stages above.
void bench_runtime(int reps) {
  buffer counter(256);
  row("-", "cudaMemsetAsync, 4 bytes", time_us(reps, [&] { CHECK(cudaMemsetAsync(counter.p, 0, 4, nullptr)); }));
  row("-", "cudaGetDevice + cudaSetDevice (same)", time_us(reps, [&] {
        int d = 0;
        CHECK(cudaGetDevice(&d));
        CHECK(cudaSetDevice(d));
      }));
  row("-", "cudaStreamIsCapturing (Note [Workspace under capture])", time_us(reps, [&] {
        cudaStreamCaptureStatus status;
        CHECK(cudaStreamIsCapturing(nullptr, &status));
      }));
  row("-", "cudaGetDeviceCount", time_us(reps, [&] {
        int n = 0;
        CHECK(cudaGetDeviceCount(&n));
      }));
  row("-", "cudaDeviceGetAttribute", time_us(reps, [&] {
        int v = 0;
        CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, 0));
      }));
  row("-", "cudaPointerGetAttributes", time_us(reps, [&] {
        cudaPointerAttributes at{};
        CHECK(cudaPointerGetAttributes(&at, counter.p));
      }));
  void* f = nullptr;
  cudaDriverEntryPointQueryResult qr{};
  if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &qr) == cudaSuccess &&
      qr == cudaDriverEntryPointSuccess) {
    const auto encode = reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
    buffer data(std::size_t{1} << 20);
    row("-", "cuTensorMapEncodeTiled", time_us(reps, [&] {
          CUtensorMap m;
          const cuuint64_t dims[4] = {64, 128, 8, 2};
          const cuuint64_t strides[3] = {1024, 128, 131072};
          const cuuint32_t box[4] = {64, 64, 1, 1}, elem_strides[4] = {1, 1, 1, 1};
          if (encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, data.p, dims, strides, box, elem_strides,
                     CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                     CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
            throw std::runtime_error("cuTensorMapEncodeTiled failed");
        }));
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 7;
  if (reps < 1) {
    std::fprintf(stderr, "usage: attend_host_bench [REPS >= 1]\n");
    return 2;
  }
  try {
    CHECK(cudaFree(nullptr));  // a usable device, before any output
    std::printf("| shape | stage | µs per call (host) |\n|---|---|---|\n");
    bench_runtime(reps);
    for (const shape& s : {shape{"tiny (1, 128, 128, 1, 64)", 1, 128, 128, 1, 64},
                           shape{"SD 1.x cross (2, 4096, 77, 8, 40)", 2, 4096, 77, 8, 40}})
      bench_shape(s, reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "attend_host_bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
