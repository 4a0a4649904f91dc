// attend_flash_tune: times flash_cuda's tensor-core kernel at several tile shapes (warps, block_m,
// block_n) on the benchmark's bf16 shapes (B*S = 32768, H*D = 2048, bshd contiguous), and checks
// each shape's output against the shipped shape's (Note [Tile sizes] in src/cuda/flash.h records
// what won). Built with the tools when ATTEND_CUDA is ON; run by scripts/gpu-check's `tune` stage.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/flash_tc.cuh"

namespace {

using namespace attend::cuda;

#define CHECK(call)                                                                      \
  do {                                                                                   \
    const cudaError_t e_ = (call);                                                       \
    if (e_ != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_));                   \
      std::exit(1);                                                                      \
    }                                                                                    \
  } while (0)

__global__ void fill(__nv_bfloat16* x, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * std::int64_t{blockDim.x} + threadIdx.x; i < n; i += std::int64_t{gridDim.x} * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ (seed * 0x9e3779b9u);
    h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
    x[i] = __float2bfloat16((static_cast<float>(h & 0xffffff) / 16777216.0f) * 3.4641f - 1.7320f);
  }
}

struct variant {
  const char* name;
  int width;
  void (*launch)(const flash_params&, void*);
};

#define V(W, NW, BM, BN, SKIP) \
  {#W " w" #NW " m" #BM " n" #BN " skip" #SKIP, W, &launch_flash_tc_tile<elem::bf16, W, NW, BM, BN, SKIP>}
// The first row of each width is the shipped shape (Note [Tile sizes]); the others are compared
// with it.
const variant k_variants[] = {
    V(64, 4, 128, 64, false),  V(64, 4, 128, 32, false), V(64, 4, 128, 64, true),
    V(128, 4, 128, 32, false), V(128, 4, 128, 64, false), V(128, 4, 64, 64, false),
};
#undef V

float max_diff(const std::vector<std::uint16_t>& a, const std::vector<std::uint16_t>& b) {
  float m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::uint32_t x = std::uint32_t{a[i]} << 16, y = std::uint32_t{b[i]} << 16;
    float fx, fy;
    std::memcpy(&fx, &x, 4);
    std::memcpy(&fy, &y, 4);
    m = std::max(m, std::fabs(fx - fy));
    if (std::isnan(fx) != std::isnan(fy)) return INFINITY;
  }
  return m;
}

}  // namespace

int main() {
  for (int d : {64, 128})
    for (int s : {1024, 4096, 16384})
      for (bool causal : {false, true}) {
        const int b = 32768 / s, h = 2048 / d;
        const std::int64_t n = std::int64_t{b} * s * h * d;
        __nv_bfloat16 *q, *k, *v, *o;
        CHECK(cudaMalloc(&q, n * 2));
        CHECK(cudaMalloc(&k, n * 2));
        CHECK(cudaMalloc(&v, n * 2));
        CHECK(cudaMalloc(&o, n * 2));
        fill<<<1024, 256>>>(q, n, 1);
        fill<<<1024, 256>>>(k, n, 2);
        fill<<<1024, 256>>>(v, n, 3);
        flash_params p;
        p.q = q, p.k = k, p.v = v, p.out = o;
        for (auto* st : {p.q_stride, p.k_stride, p.v_stride, p.out_stride}) {
          st[0] = std::int64_t{s} * h * d, st[1] = std::int64_t{h} * d, st[2] = d, st[3] = 1;
        }
        p.batch = b, p.seqlen_q = p.seqlen_kv = s, p.num_heads_q = p.num_heads_kv = h, p.group_size = 1;
        p.head_dim_qk = p.head_dim_v = d;
        p.scale = 1.0f / std::sqrt(static_cast<float>(d));
        p.causal = causal;
        p.q_vec = p.k_vec = p.v_vec = p.out_vec = true;
        const double flops = 4.0 * b * h * double(s) * s * d / (causal ? 2 : 1);
        std::vector<std::uint16_t> ref, got(static_cast<std::size_t>(n));
        for (const variant& var : k_variants) {
          if (var.width != d) continue;
          CHECK(cudaMemset(o, 0xff, n * 2));  // poison: NaN in bf16
          var.launch(p, nullptr);
          CHECK(cudaDeviceSynchronize());
          CHECK(cudaMemcpy(got.data(), o, n * 2, cudaMemcpyDeviceToHost));
          if (ref.empty()) ref = got;
          const float diff = max_diff(ref, got);
          cudaEvent_t e0, e1;
          CHECK(cudaEventCreate(&e0));
          CHECK(cudaEventCreate(&e1));
          std::vector<float> ms;
          for (int r = 0; r < 30; ++r) {
            CHECK(cudaEventRecord(e0));
            var.launch(p, nullptr);
            CHECK(cudaEventRecord(e1));
            CHECK(cudaEventSynchronize(e1));
            float t = 0;
            CHECK(cudaEventElapsedTime(&t, e0, e1));
            ms.push_back(t);
          }
          std::sort(ms.begin(), ms.end());
          std::printf("tune d%-3d s%-5d %-6s %-20s %7.1f TFLOP/s  max|diff vs first| %.3g\n", d, s,
                      causal ? "causal" : "full", var.name, flops / (ms[ms.size() / 2] * 1e-3) / 1e12, diff);
          CHECK(cudaEventDestroy(e0));
          CHECK(cudaEventDestroy(e1));
        }
        CHECK(cudaFree(q));
        CHECK(cudaFree(k));
        CHECK(cudaFree(v));
        CHECK(cudaFree(o));
      }
  return 0;
}
