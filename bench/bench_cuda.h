// What the C++ GPU benchmarks share (gpu_bench.cpp, host_bench.cpp): a checked CUDA runtime call
// and a device allocation that frees itself.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <stdexcept>
#include <string>

// Throws std::runtime_error naming the call and CUDA's message when `call` fails.
#define CHECK(call)                                                                                       \
  do {                                                                                                    \
    const cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) throw std::runtime_error(std::string(#call) + ": " + cudaGetErrorString(e_)); \
  } while (0)

// `bytes` of device memory on the current device, freed when it goes out of scope.
struct buffer {
  void* p = nullptr;
  explicit buffer(std::size_t bytes) { CHECK(cudaMalloc(&p, bytes)); }
  ~buffer() { static_cast<void>(cudaFree(p)); }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
};
