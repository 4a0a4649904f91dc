// attend_gpu_bench: times attend's CUDA backends with CUDA events on random device tensors.
// Reads one shape per line on stdin:
//   NAME DTYPE(bf16|f16) B SQ SKV HQ HKV D CAUSAL(0|1) BACKEND [MASK]
// MASK (none|key-bool|key-add|row-bool|row-add|row-scattered) is a key-padding mask on which batch
// b drops its last 256 b keys (as bench/gpu_masks.py), boolean (false drops) or additive f32 (-inf
// drops): key-* is stored [B, 1, 1, SKV], row-* the same mask materialised [B, 1, SQ, SKV] (one row
// per query, as Hugging Face builds it), which flash_cuda reads per query row. row-scattered is
// row-bool that also drops key j of row i where (i + j) % 7 == 0, so that no key tile keeps every
// key (the Hopper row-mask mode's worst case, Note [Hopper row masks]).
// It prints one JSON object per line: {"name", "backend", "ms" (median), "reps", "tflops",
// "error"}. Layout bshd, contiguous; causal is bottom-right aligned (identical to top-left when
// Sq == Skv; the KV-cache convention for decode). Used by bench/gpu.py (scripts/gpu-check).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "attend/attend.h"
#include "attend/registry.h"
#include "bench_cuda.h"

namespace {

// Unit-variance uniform values from a counter hash, filled on the host and uploaded (not zeros:
// see the device notes). The host's threads fill a share each: a decode shape's K and V are
// gigabytes, which one thread took seconds to fill, for every shape of every round.
void fill_random(void* device_ptr, std::int64_t n, std::uint32_t seed, attend::dtype t) {
  std::vector<std::uint16_t> host(static_cast<std::size_t>(n));
  const auto fill = [&](std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) {
      std::uint32_t x = static_cast<std::uint32_t>(i) * 2654435761u ^ (seed * 0x9e3779b9u);
      x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
      const float u = (static_cast<float>(x & 0xffffff) / 16777216.0f) * 3.4641f - 1.7320f;
      host[static_cast<std::size_t>(i)] = t == attend::dtype::bf16 ? attend::float_to_bf16(u) : attend::float_to_f16(u);
    }
  };
  const std::int64_t threads = std::clamp<std::int64_t>(std::thread::hardware_concurrency(), 1, 32);
  const std::int64_t share = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (std::int64_t begin = share; begin < n; begin += share) pool.emplace_back(fill, begin, std::min(n, begin + share));
  fill(0, std::min(n, share));
  for (std::thread& th : pool) th.join();
  CHECK(cudaMemcpy(device_ptr, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream is(line);
    std::string name, dt, backend_name, mask_name = "none";
    std::int64_t b = 0, sq = 0, skv = 0, hq = 0, hkv = 0, d = 0;
    int causal = 0;
    is >> name >> dt >> b >> sq >> skv >> hq >> hkv >> d >> causal >> backend_name;
    if (!(is >> mask_name)) mask_name = "none";
    std::ostringstream js;
    js << "{\"name\": \"" << name << "\", \"backend\": \"" << backend_name << "\"";
    try {
      const auto be = attend::registry::global().find(backend_name);
      if (!be) throw std::runtime_error("backend not built");
      const attend::dtype t = dt == "bf16" ? attend::dtype::bf16 : attend::dtype::f16;
      const attend::device gpu{attend::device_kind::cuda, 0};
      const std::int64_t nq = b * sq * hq * d, nkv = b * skv * hkv * d;
      buffer q(static_cast<std::size_t>(nq) * 2), k(static_cast<std::size_t>(nkv) * 2), v(static_cast<std::size_t>(nkv) * 2),
          o(static_cast<std::size_t>(nq) * 2), lse(static_cast<std::size_t>(b * hq * sq) * 4);
      fill_random(q.p, nq, 1u, t);
      fill_random(k.p, nkv, 2u, t);
      fill_random(v.p, nkv, 3u, t);
      CHECK(cudaDeviceSynchronize());
      attend::attention_params a;
      a.q = attend::tensor_view::contiguous(q.p, t, {b, sq, hq, d}, gpu);
      a.k = attend::tensor_view::contiguous(k.p, t, {b, skv, hkv, d}, gpu);
      a.v = attend::tensor_view::contiguous(v.p, t, {b, skv, hkv, d}, gpu);
      a.out = attend::tensor_view::contiguous(o.p, t, {b, sq, hq, d}, gpu);
      a.causal = causal != 0;
      std::unique_ptr<buffer> mask;
      if (mask_name != "none") {
        const bool scattered = mask_name == "row-scattered";
        const bool keep = mask_name == "key-bool" || mask_name == "row-bool" || scattered;
        const bool rows = mask_name.rfind("row-", 0) == 0;
        if (!keep && mask_name != "key-add" && mask_name != "row-add")
          throw std::runtime_error("mask must be none, key-bool, key-add, row-bool, row-add or row-scattered; got " +
                                   mask_name);
        const attend::dtype mt = keep ? attend::dtype::boolean : attend::dtype::f32;
        const std::int64_t mq = rows ? sq : 1;
        std::vector<unsigned char> host(static_cast<std::size_t>(b * mq * skv) * attend::size_bytes(mt));
        for (std::int64_t bi = 0; bi < b; ++bi)
          for (std::int64_t i = 0; i < mq; ++i)
            for (std::int64_t j = 0; j < skv; ++j) {
              const bool kept = j < skv - 256 * bi && !(scattered && (i + j) % 7 == 0);
              const std::size_t at = static_cast<std::size_t>((bi * mq + i) * skv + j);
              if (keep) host[at] = kept ? 1 : 0;
              else {
                const float term = kept ? 0.0f : -std::numeric_limits<float>::infinity();
                std::memcpy(host.data() + at * sizeof(float), &term, sizeof term);
              }
            }
        mask = std::make_unique<buffer>(host.size());
        CHECK(cudaMemcpy(mask->p, host.data(), host.size(), cudaMemcpyHostToDevice));
        a.maybe_mask = attend::tensor_view::contiguous(mask->p, mt, {b, 1, mq, skv}, gpu);
      }
      a.alignment = attend::alignment::bottom_right;
      const attend::problem p = attend::make_problem(a);
      attend::run_options opt;
      for (int i = 0; i < 3; ++i) attend::run_on(*be, p, opt);  // warm-up: workspace, graph caches
      CHECK(cudaDeviceSynchronize());
      cudaEvent_t e0, e1;
      CHECK(cudaEventCreate(&e0));
      CHECK(cudaEventCreate(&e1));
      std::vector<float> ms;
      float total = 0;
      while (ms.size() < 20 || (total < 200.0f && ms.size() < 1000)) {
        CHECK(cudaEventRecord(e0));
        attend::run_on(*be, p, opt);
        CHECK(cudaEventRecord(e1));
        CHECK(cudaEventSynchronize(e1));
        float t_ms = 0;
        CHECK(cudaEventElapsedTime(&t_ms, e0, e1));
        ms.push_back(t_ms);
        total += t_ms;
      }
      static_cast<void>(cudaEventDestroy(e0));
      static_cast<void>(cudaEventDestroy(e1));
      std::nth_element(ms.begin(), ms.begin() + static_cast<std::ptrdiff_t>(ms.size() / 2), ms.end());
      const double median = ms[ms.size() / 2];
      js << ", \"ms\": " << median << ", \"reps\": " << ms.size() << ", \"tflops\": " << p.nominal_flops() / (median * 1e-3) / 1e12;
    } catch (const std::exception& e) {
      std::string msg = e.what();
      std::replace(msg.begin(), msg.end(), '"', '\'');
      std::replace(msg.begin(), msg.end(), '\n', ' ');
      js << ", \"error\": \"" << msg.substr(0, 300) << "\"";
    }
    js << "}";
    std::cout << js.str() << std::endl;
  }
  return 0;
}
