// attend/backend.h: the strategy interface every attention backend implements.
//
// A backend declares what it supports in backend_traits (devices, dtypes, features, head-dim
// limits, priority). backend::supports() turns those declarations into checks that each explain
// a rejection in one line ("requires X; got Y"), then asks the backend's own check_limits() for
// anything the table cannot say. The same traits drive `attend list`, so the capability table
// and dispatch cannot drift apart (Note [Features]).
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attend/params.h"

namespace attend {

class forward_context;

struct backend_traits {
  std::string description;
  std::vector<device_kind> devices;
  std::vector<attend::dtype> dtypes;
  feature_set features;
  std::int64_t min_head_dim = 1;
  std::int64_t max_head_dim = 1 << 20;
  std::int64_t head_dim_multiple = 1;  // both head dims must be multiples of this
  int priority = 0;                    // "auto" prefers higher
  bool exact = false;                  // accumulates in fp64: usable as an oracle

  // "" when the traits admit some call (a device kind, a dtype, and min_head_dim, max_head_dim
  // and head_dim_multiple admitting a head dim), else why not: registry::add and load_plugin
  // refuse such traits (a backend no call can reach is a mistake, and a multiple of 0 would
  // divide by zero).
  std::string problem() const;
};

// Collects the one-line reasons a backend gives for rejecting a call.
class diagnostics {
 public:
  void reject(std::string reason) { lines_.push_back(std::move(reason)); }
  bool ok() const noexcept { return lines_.empty(); }
  const std::vector<std::string>& lines() const noexcept { return lines_; }
  // "reason; reason; ..."
  std::string joined() const;

 private:
  std::vector<std::string> lines_;
};

// Memory on one device: workspaces and test harnesses allocate through it.
enum class copy_direction { host_to_device, device_to_host, device_to_device };
class memory_resource {
 public:
  virtual ~memory_resource() = default;
  virtual void* allocate(std::size_t bytes) = 0;  // throws attend::runtime_error
  virtual void deallocate(void* p) noexcept = 0;
  virtual void copy(void* dst, const void* src, std::size_t bytes, copy_direction dir) = 0;
  virtual void synchronize() = 0;

  // CUDA graph capture (Note [Workspace under capture]). Whether work queued on `stream` is being
  // recorded into a graph rather than run (throws attend::runtime_error when the stream cannot be
  // asked); and memory allocated and freed in the order of `stream`, which a capturing stream
  // records as nodes of its graph, so the graph owns it. Memory that has no streams never captures;
  // a GPU memory of a third party's must override all three for its captured calls to be safe.
  virtual bool capturing(void* stream) {
    (void)stream;
    return false;
  }
  virtual void* allocate_in_order(std::size_t bytes, void* stream);  // default: throws runtime_error
  virtual void deallocate_in_order(void* p, void* stream) noexcept {
    (void)p, (void)stream;
  }
};
memory_resource& host_memory();

struct run_context {
  std::span<std::byte> workspace;  // at least workspace_bytes(p), 64-byte aligned
  void* maybe_cuda_stream = nullptr;
  int num_threads = 0;  // 0: the OpenMP default (OMP_NUM_THREADS)
  const forward_context* maybe_forward = nullptr;
};

class backend {
 public:
  virtual ~backend() = default;
  virtual std::string_view name() const = 0;
  virtual const backend_traits& traits() const = 0;

  // True when this backend can run `p`. When it cannot and `maybe_diag` is given, every reason
  // is appended to it. Checks traits first (device, dtype, head dims, features), then
  // check_limits().
  bool supports(const problem& p, diagnostics* maybe_diag = nullptr) const;

  virtual std::size_t workspace_bytes(const problem& p, int num_threads) const {
    (void)p, (void)num_threads;
    return 0;
  }
  // Runs a call that supports() accepted. Must not allocate in the hot path.
  virtual void run(const problem& p, const run_context& ctx) const = 0;
  // Memory for `d`, or nullptr when this backend cannot reach that device.
  virtual memory_resource* memory_for(device d) const {
    return d.kind == device_kind::cpu ? &host_memory() : nullptr;
  }

 protected:
  // Whether the trait checks of supports() pass (check_limits runs either way; a backend whose
  // limit checks are costly, or meaningless for a call its traits refuse, can skip them).
  bool traits_accept(const problem& p) const;
  // Limits the traits cannot express (sizes, alignment, ...). Append reasons; return ok.
  virtual bool check_limits(const problem& p, diagnostics& diag) const {
    (void)p;
    return diag.ok();
  }
};

}  // namespace attend
