// Factories of the CUDA backends; the one explicit list is in src/core/builtin_backends.cpp
// (registered only when the build defines ATTEND_HAVE_CUDA / ATTEND_HAVE_CUDNN).
#pragma once

#include <memory>
#include <string>

#include "attend/backend.h"

namespace attend::cuda {

std::shared_ptr<const backend> make_flash_cuda_backend();
std::shared_ptr<const backend> make_cudnn_backend();

// Device memory of CUDA device `index` (cudaMalloc / cudaMemcpy / cudaDeviceSynchronize).
memory_resource& device_memory(int index);

// Shared device checks: empty when device `index` exists and has compute capability >= 8.0,
// otherwise the one-line reason ("no CUDA device: cudaGetDeviceCount says ...").
std::string device_unusable_reason(int index);

}  // namespace attend::cuda
