#include <algorithm>
#include <chrono>
#include <exception>
#include <vector>

#include "attend/attend.h"
#include "core/views.h"

namespace attend {

std::string_view version() noexcept { return ATTEND_VERSION_STRING; }

namespace {

// Note [Workspace cache]: backends never allocate in run(); attention() hands them a workspace
// of workspace_bytes(). When the caller gives none, a per-thread buffer per (memory resource,
// CUDA stream) is grown to the largest size seen and reused, so steady-state calls allocate
// nothing. Keyed by stream because a GPU backend's kernels use the workspace after run() returns:
// two calls on one stream are ordered by it, two calls on different streams must not share a
// buffer (flash_cuda's split-KV partials and work counter would race). At most
// k_cached_workspaces entries per thread, least recently used evicted first (a CUDA memory
// resource frees with cudaFree, which waits for the device, so in-flight kernels finish first).
// A call whose stream is capturing a CUDA graph never uses this cache: Note [Workspace under
// capture]. A run holds its buffer until run() returns: a call made from inside it (a composite
// backend calling attention(), a plugin calling back) would otherwise grow or evict the buffer the
// outer run is still writing (a use after free). Such a call gets memory of its own instead, freed
// after its run (on a device, after the memory's synchronize()).
//
// Note [Workspace under capture]: a call captured into a CUDA graph (cudaStreamBeginCapture,
// torch.cuda.graph, torch.compile's "reduce-overhead") records the workspace pointer it saw, and
// every replay writes there: flash_cuda's work counter, split-KV partials and packed mask bits,
// cuDNN's scratch. The cache above would hand it a buffer that a later, larger call on the stream
// regrows (frees) or that a ninth stream evicts, so replays would write freed memory; growing it
// would also call cudaMalloc, which a capture in global mode (torch's default) refuses. So when the
// caller gives no workspace and memory_resource::capturing says the stream captures, run_on
// allocates the workspace in stream order (cudaMallocAsync) and frees it in stream order after
// the backend's work (cudaFreeAsync): the capture records both as nodes of the graph, which then
// owns the memory for as long as it exists, per replay. A caller's maybe_workspace is used as
// given, its lifetime the caller's to keep. Timing candidates ("measure") cannot run while
// capturing (it synchronizes the device); it is refused with a reason. Only memory that answers
// capturing() does this: the built-in CUDA memory does; host memory never captures; a third
// party's GPU memory_resource must override the three members for its captured calls to get it
// (the defaults say "not capturing", the cache's behaviour before this Note). A backend must
// queue its work on the call's stream, in order, before run() returns: under capture the
// workspace is freed in that order right after.
inline constexpr std::size_t k_cached_workspaces = 8;  // why: a few streams per thread is the
                                                       // common case; bounds memory when a caller
                                                       // makes a new stream per call
struct cached_workspace {
  memory_resource* memory = nullptr;
  void* stream = nullptr;
  void* data = nullptr;
  std::size_t bytes = 0;
  bool in_use = false;  // a run on this thread holds it (Note [Workspace cache]: re-entrant calls)
  cached_workspace() = default;
  cached_workspace(const cached_workspace&) = delete;
  cached_workspace& operator=(const cached_workspace&) = delete;
  ~cached_workspace() {
    if (data) memory->deallocate(data);
  }
};

// The thread's cached workspace for (memory, stream), grown to `bytes`; nullptr when a run on this
// thread holds that slot (a call made from inside a backend's run(), as a composite backend
// makes) or holds every slot the cache could evict: growing or evicting it would free memory
// the outer run is still using. The caller holds the slot for its run (run_workspace::hold).
cached_workspace* thread_workspace(memory_resource& memory, void* stream, std::size_t bytes) {
  thread_local std::vector<std::unique_ptr<cached_workspace>> cache;
  cached_workspace* slot = nullptr;
  for (std::size_t i = 0; i < cache.size(); ++i)
    if (cache[i]->memory == &memory && cache[i]->stream == stream) {
      if (cache[i]->in_use) return nullptr;
      std::rotate(cache.begin() + static_cast<std::ptrdiff_t>(i), cache.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                  cache.end());  // most recently used last
      slot = cache.back().get();
      break;
    }
  if (slot == nullptr) {
    if (cache.size() >= k_cached_workspaces) {  // evict the least recently used slot no run holds
      const auto free_slot = std::find_if(cache.begin(), cache.end(), [](const auto& c) { return !c->in_use; });
      if (free_slot == cache.end()) return nullptr;
      cache.erase(free_slot);
    }
    cache.push_back(std::make_unique<cached_workspace>());
    slot = cache.back().get();
    slot->memory = &memory;
    slot->stream = stream;
  }
  if (slot->bytes < bytes) {
    if (slot->data) memory.deallocate(slot->data);
    slot->data = nullptr;
    slot->bytes = 0;
    slot->data = memory.allocate(bytes);
    slot->bytes = bytes;
  }
  return slot;
}

// The workspace of one run, released when this goes out of scope: after the backend's run() has
// queued its work, or when run() throws. One of:
//   - a cached slot (thread_workspace), held so that a call made inside the run cannot grow or
//     evict it, and released for the next run;
//   - memory in stream order (allocate_in_order) while the stream captures (Note [Workspace under
//     capture]: the capture records both, and stays balanced);
//   - memory of a re-entrant call's own, freed after memory_resource::synchronize() on a device
//     (the kernels that use it have finished; any memory has these members, and such calls are
//     rare), right away on the CPU, whose run is synchronous.
class run_workspace {
 public:
  run_workspace() = default;
  run_workspace(const run_workspace&) = delete;
  run_workspace& operator=(const run_workspace&) = delete;
  ~run_workspace() {
    if (slot_ != nullptr) {
      slot_->in_use = false;
      return;
    }
    if (data_ == nullptr) return;
    if (in_order_) {
      memory_->deallocate_in_order(data_, stream_);
      return;
    }
    if (synchronize_) {
      try {
        memory_->synchronize();
      } catch (...) {  // the device failed: its work has stopped either way
      }
    }
    memory_->deallocate(data_);
  }
  std::span<std::byte> hold(cached_workspace& slot, std::size_t bytes) {
    slot_ = &slot;
    slot.in_use = true;
    return {static_cast<std::byte*>(slot.data), bytes};
  }
  std::span<std::byte> allocate(memory_resource& memory, std::size_t bytes, bool synchronize_first) {
    data_ = memory.allocate(bytes);
    memory_ = &memory;
    synchronize_ = synchronize_first;
    return {static_cast<std::byte*>(data_), bytes};
  }
  std::span<std::byte> allocate_in_order(memory_resource& memory, void* stream, std::size_t bytes) {
    data_ = memory.allocate_in_order(bytes, stream);
    memory_ = &memory;
    stream_ = stream;
    in_order_ = true;
    if (reinterpret_cast<std::uintptr_t>(data_) % 64 != 0)
      throw runtime_error("workspace: stream-ordered memory is not 64-byte aligned");
    return {static_cast<std::byte*>(data_), bytes};
  }

 private:
  cached_workspace* slot_ = nullptr;
  memory_resource* memory_ = nullptr;
  void* data_ = nullptr;
  void* stream_ = nullptr;
  bool in_order_ = false, synchronize_ = false;
};

// Whether b's memory for p's device says `stream` captures a CUDA graph.
bool captures(const backend& b, const problem& p, void* stream) {
  memory_resource* memory = b.memory_for(p.device);
  return memory != nullptr && memory->capturing(stream);
}

// Why 4096: more threads than any CPU has; per-thread workspaces scale with the count, so an
// absurd value must be an error, not a terabyte allocation.
constexpr int k_max_threads = 4096;

void check_run_options(const run_options& options) {
  if (options.num_threads < 0 || options.num_threads > k_max_threads)
    throw invalid_argument("num_threads: must be between 0 (the default) and " + std::to_string(k_max_threads) +
                           "; got " + std::to_string(options.num_threads));
  if (options.maybe_workspace.data() == nullptr && !options.maybe_workspace.empty())
    throw invalid_argument("workspace: data is null but its size is " + std::to_string(options.maybe_workspace.size()) +
                           " bytes");
}

// No output or LSE elements (no query heads, rows or value dims): the call is complete as it is.
bool nothing_to_write(const problem& p) {
  return p.params.out.numel() == 0 && (p.params.maybe_lse.empty() || p.params.maybe_lse.numel() == 0);
}

// A caller's workspace is used as given: one smaller than the backend's `bytes` is an error, not a
// silent switch to attend's own memory (the caller may be counting on theirs, e.g. under a CUDA
// graph).
// (A span of no bytes is no workspace, whatever its pointer: an empty vector's, say.)
bool caller_workspace(const run_options& options) {
  return options.maybe_workspace.data() != nullptr && !options.maybe_workspace.empty();
}
void check_caller_workspace(const backend& b, std::size_t bytes, const run_options& options) {
  if (caller_workspace(options) && options.maybe_workspace.size() < bytes)
    throw invalid_argument("workspace: backend '" + std::string(b.name()) + "' needs " + std::to_string(bytes) +
                           " bytes for this call (backend::workspace_bytes); the given one has " +
                           std::to_string(options.maybe_workspace.size()));
}

// run_on for a backend whose supports() has accepted p, with options check_run_options accepted:
// attention() runs what registry::select or candidates() returned, both of which asked supports()
// (asking again cost flash_cuda 0.1 µs of the host's time and cudnn a lock and a graph-cache
// lookup per call).
void run_supported(const backend& b, const problem& p, const run_options& options) {
  if (nothing_to_write(p)) return;  // backends need not handle the degenerate sizes
  const std::size_t bytes = b.workspace_bytes(p, options.num_threads);
  run_context ctx;
  ctx.maybe_cuda_stream = options.maybe_cuda_stream;
  ctx.num_threads = options.num_threads;
  ctx.maybe_forward = forward_context::current();
  run_workspace owned;  // declared before run(): released after it, also when it throws
  const bool given = caller_workspace(options);
  check_caller_workspace(b, bytes, options);
  if (bytes > 0) {
    if (given) {
      if (reinterpret_cast<std::uintptr_t>(options.maybe_workspace.data()) % 64 != 0)
        throw invalid_argument("workspace: must be 64-byte aligned");
      // The backend writes the workspace's first `bytes` while it reads the inputs and writes out
      // and lse: a caller's workspace over any of them would be a silent wrong answer.
      detail::check_apart_from_call(tensor_view::contiguous(options.maybe_workspace.data(), dtype::boolean,
                                                            {static_cast<std::int64_t>(bytes)}, p.device),
                                    p.params, "workspace");
      ctx.workspace = options.maybe_workspace;
    } else {
      memory_resource* memory = b.memory_for(p.device);
      if (memory == nullptr)
        throw runtime_error("backend '" + std::string(b.name()) + "' has no memory for " + to_string(p.device));
      if (memory->capturing(options.maybe_cuda_stream))
        ctx.workspace = owned.allocate_in_order(*memory, options.maybe_cuda_stream, bytes);
      else if (cached_workspace* slot = thread_workspace(*memory, options.maybe_cuda_stream, bytes))
        ctx.workspace = owned.hold(*slot, bytes);
      else  // a re-entrant call: memory of its own
        ctx.workspace = owned.allocate(*memory, bytes, p.device.kind != device_kind::cpu);
    }
  }
  b.run(p, ctx);
}

}  // namespace

void run_on(const backend& b, const problem& p, const run_options& options) {
  check_run_options(options);
  diagnostics d;
  if (!b.supports(p, &d))
    throw unsupported("backend '" + std::string(b.name()) + "' does not support this call:",
                      {{std::string(b.name()), d.joined()}});
  run_supported(b, p, options);
}

std::string attention(const attention_params& params, const run_options& options) {
  const problem p = make_problem(params);
  registry& r = options.maybe_registry ? *options.maybe_registry : registry::global();
  const auto chosen = r.select(p, options.select);  // asked supports(): run_supported below
  check_run_options(options);
  const bool measure = chosen && [&] {
    const char* env = options.select.honour_environment ? std::getenv("ATTEND_BACKEND") : nullptr;
    const std::string name = env && *env ? env : options.select.name;
    return name == "measure";
  }();
  // Note [Measure with a caller workspace]: a candidate that needs more than the caller's
  // workspace cannot run in it, so it is not timed, and the choice is remembered per workspace
  // size (the key's last word): among other candidates, for another size, it may differ.
  const bool sized = measure && caller_workspace(options) && !nothing_to_write(p);
  const std::string key = !measure ? std::string()
                          : registry::measure_key(p, options.select) +
                                (sized ? " workspace=" + std::to_string(options.maybe_workspace.size()) : "");
  if (measure && r.measured(key).empty()) {
    // Time every candidate on this very call (one warm-up, best of three) and remember the
    // fastest. The output is recomputed by the winner below.
    // A candidate that fails at run time (its workspace cannot be allocated, say) drops out; the
    // call fails only when every candidate does, with the first one's error (a CUDA error can
    // leave the context broken for the candidates after it). A measure with a failure is not
    // cached: the failure may be transient (memory in use elsewhere).
    const auto found = r.candidates(p, options.select);
    for (const auto& b : found)  // Note [Workspace under capture]
      if (captures(*b, p, options.maybe_cuda_stream))
        throw invalid_argument(
            "backend 'measure': cannot time the candidates while the stream captures a CUDA graph; make the "
            "same call once before capturing, and the capture reuses the measured choice");
    double best_seconds = 0;
    std::string best;
    std::exception_ptr failure, too_small;
    for (const auto& b : found) {
      memory_resource* memory = b->memory_for(p.device);
      double fastest = 1e300;
      try {
        if (sized) {
          try {
            check_caller_workspace(*b, b->workspace_bytes(p, options.num_threads), options);
          } catch (const invalid_argument&) {
            if (!too_small) too_small = std::current_exception();
            continue;
          }
        }
        run_supported(*b, p, options);
        for (int rep = 0; rep < 3; ++rep) {
          if (memory) memory->synchronize();
          const auto t0 = std::chrono::steady_clock::now();
          run_supported(*b, p, options);
          if (memory) memory->synchronize();
          fastest = std::min(fastest, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
      } catch (const runtime_error&) {
        if (!failure) failure = std::current_exception();
        continue;
      }
      if (best.empty() || fastest < best_seconds) {
        best_seconds = fastest;
        best = std::string(b->name());
      }
    }
    if (best.empty()) std::rethrow_exception(failure ? failure : too_small);
    if (!failure) r.remember_measured(key, best);
    const auto winner = r.find(best);
    run_supported(*winner, p, options);
    return best;
  }
  if (sized) {  // the choice for this workspace size (select() knows only the size-free key's)
    if (const auto winner = r.find(r.measured(key))) {
      run_supported(*winner, p, options);
      return std::string(winner->name());
    }
  }
  run_supported(*chosen, p, options);
  return std::string(chosen->name());
}

}  // namespace attend
