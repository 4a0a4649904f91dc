// attend/attend.h: exact (softmax) attention through interchangeable backends.
//
//   attend::attention_params p;
//   p.q = attend::tensor_view::contiguous(q_ptr, attend::dtype::bf16, {B, Sq, Hq, D});
//   ... p.k, p.v, p.out likewise (shapes in attend/params.h) ...
//   p.causal = true;
//   std::string ran = attend::attention(p);   // picks the best backend, runs it
//
// Errors: attend::invalid_argument (malformed call), attend::unsupported (no backend can run
// it; what() lists every backend's reason), attend::runtime_error (failure while running).
#pragma once

#include <cstddef>
#include <span>
#include <string>

#include "attend/backend.h"
#include "attend/errors.h"
#include "attend/forward_context.h"
#include "attend/merge.h"
#include "attend/params.h"
#include "attend/registry.h"
#include "attend/tensor.h"

namespace attend {

std::string_view version() noexcept;

struct run_options {
  selection select{};
  registry* maybe_registry = nullptr;     // default: registry::global()
  void* maybe_cuda_stream = nullptr;      // cuda backends: the stream to run on
  int num_threads = 0;                    // cpu backends: 0 = OMP_NUM_THREADS / all cores
  std::span<std::byte> maybe_workspace;   // caller-owned workspace, 64-byte aligned, at least the
                                          // backend's workspace_bytes (else invalid_argument), apart
                                          // from the call's tensors; empty: a per-(thread, stream) cache,
                                          // or, while the stream captures a CUDA graph, memory the
                                          // graph owns (Note [Workspace under capture])
};

// Validates, selects and runs one attention call. Returns the name of the backend that ran.
std::string attention(const attention_params& params, const run_options& options = {});

// Runs an already validated problem on a given backend (no selection).
void run_on(const backend& b, const problem& p, const run_options& options = {});

}  // namespace attend
