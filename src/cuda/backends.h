// Factories of the CUDA backends; the one explicit list is in src/core/builtin_backends.cpp
// (registered only when the build defines ATTEND_HAVE_CUDA / ATTEND_HAVE_CUDNN).
#pragma once

#include <memory>
#include <string>

#include "attend/backend.h"

namespace attend::cuda {

std::shared_ptr<const backend> make_flash_cuda_backend();
std::shared_ptr<const backend> make_cudnn_backend();

// Which of flash_cuda's kernels its plan picks for `p` (a call it supports): "sm90" (the Hopper
// wgmma/TMA kernel, Note [Hopper path]), "tc" (mma.sync), "tc-split" (mma.sync, split-KV),
// "tc-decode" and "tc-decode-split" (the same on the decode tile, Note [Decode tile]),
// "tc-decode-gqa" and "tc-decode-gqa-split" (its rows packing GQA heads, Note [Decode GQA packing]) or "generic"
// (scalar fp32). Tests use it to know a case reached the kernel it was written for.
const char* flash_cuda_kernel(const problem& p);
// How many key ranges flash_cuda's plan splits `p` into (Note [Split KV]): 1 for an unsplit call,
// else 2 to k_flash_max_splits. Tests use it to know a case reached the merge they were written for.
int flash_cuda_num_splits(const problem& p);
// The score path of flash_cuda's mma.sync kernel for `p` (cuda::tc_mode_for, on the current
// device): "plain", "bits", "staged" or "extras"; "" when the plan runs another kernel.
const char* flash_cuda_tc_mode(const problem& p);
// Whether staging p's additive mask through shared memory leaves room for two CTAs per SM of the
// mma.sync kernel on p's device (cuda::tc_staged_fits): where not, such masks take "extras".
bool flash_cuda_tc_staged_fits(const problem& p);
// Whether flash_cuda can run its Hopper kernels on device `index`: the build's architectures
// include sm_90a, the device has compute capability 9.0 and the Hopper kernels are not switched off.
bool flash_cuda_hopper_available(int device_index);
// Switches flash_cuda's Hopper kernels off (false) or back on for the calls planned after it, in the
// whole process, and returns the state before; ATTEND_FLASH_CUDA_SM90=0 sets the initial state to
// off. For tests of the mma.sync kernel on a Hopper GPU at shapes the Hopper kernel would take;
// flip it only while no flash_cuda call is being planned or run (a call's workspace size is planned
// with the switch as it was then, and the Hopper kernel needs 256 bytes more).
bool flash_cuda_set_hopper_enabled(bool enabled);

// Device memory of CUDA device `index` (cudaMalloc / cudaMemcpy / cudaDeviceSynchronize).
memory_resource& device_memory(int index);

// Shared device checks: empty when device `index` exists and has compute capability >= 8.0,
// otherwise the one-line reason ("no CUDA device: cudaGetDeviceCount says ...").
std::string device_unusable_reason(int index);

}  // namespace attend::cuda
