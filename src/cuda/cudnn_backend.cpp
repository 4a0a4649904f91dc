// Backend `cudnn`: cuDNN's fused SDPA (flash) forward through the cudnn-frontend graph API.
// libcudnn is opened at run time (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING), so a build without it
// links and supports() says what is missing. One graph per call signature (shape, strides,
// dtype, features, scale, device) is built once and cached; run() only executes it.
//
// Note [cuDNN limits]: supports() states cuDNN's real limits by asking cuDNN. After the checks
// below (attend-side rules, each with its reason), check_limits builds the call's graph (validate,
// heuristics, check_support, plans) and rejects the call with cuDNN's own message when any step
// fails; the graph or the failure is cached per call signature, so the question costs one build.
// What attend does not pass to cuDNN, and why:
//   - masks: cuDNN's SDPA node takes an additive bias but leaves a row whose bias is -inf
//     everywhere undefined, where attend defines output 0 and LSE -inf; boolean masks it has not;
//   - softcap: the SDPA node has none;
//   - varlen: packed (ragged) tensors are not wired here;
//   - rows that see no key at all (bottom-right causal with Sq > Skv, windows past the sequence):
//     the same undefined output.
#include <dlfcn.h>

#include <array>
#include <bit>
#include <cstdint>
#include <exception>

#include <cuda_runtime_api.h>
#include <cudnn_frontend.h>

#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "attend/backend.h"
#include "cuda/backends.h"
#include "cuda/cuda_check.h"

namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;  // the frontend's dynamic-loading hook (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING)
}  // namespace cudnn_frontend

namespace attend::cuda {
namespace {

namespace fe = cudnn_frontend;

// Opens libcudnn once; empty string when it is usable, otherwise why not.
const std::string& cudnn_unusable_reason() {
  static const std::string reason = [] {
    const char* env = std::getenv("ATTEND_CUDNN_LIBRARY");
    for (const char* name : {env, "libcudnn.so.9", "libcudnn.so"}) {
      if (!name) continue;
      if (void* h = dlopen(name, RTLD_NOW | RTLD_GLOBAL)) {
        fe::cudnn_dlhandle = h;
        break;
      }
    }
    if (!fe::cudnn_dlhandle) return std::string("cuDNN library not found (libcudnn.so.9 on LD_LIBRARY_PATH or ATTEND_CUDNN_LIBRARY)");
    if (fe::detail::get_backend_version() < 90000)
      return "requires cuDNN >= 9.0; found " + std::to_string(fe::detail::get_backend_version());
    return std::string();
  }();
  return reason;
}

struct cached_graph {
  std::shared_ptr<fe::graph::Graph> graph;  // null when cuDNN refused the call
  std::int64_t workspace = 0;
  std::string error;  // cuDNN's message when it refused
};
enum uid : std::int64_t { uid_q = 1, uid_k, uid_v, uid_o, uid_stats };

class cudnn_backend final : public backend {
 public:
  cudnn_backend() {
    traits_.description = "cuDNN fused SDPA (flash) forward via the cudnn-frontend graph API; graphs cached per shape";
    traits_.devices = {device_kind::cuda};
    traits_.dtypes = {dtype::f16, dtype::bf16};
    traits_.features = feature::causal | feature::bottom_right | feature::window | feature::gqa | feature::lse |
                       feature::head_dim_v_differs;  // the rest: Note [cuDNN limits]
    traits_.min_head_dim = 8;
    traits_.max_head_dim = 256;  // cuDNN 9 on Hopper/Ampere; narrower limits come from cuDNN itself
    traits_.head_dim_multiple = 8;
    traits_.priority = 110;  // above flash_cuda (100): faster on H100 where both run (bench/RESULTS.md: 1.05-1.2x)
  }
  ~cudnn_backend() override {
    for (auto& [index, h] : handles_) static_cast<void>(fe::detail::destroy_handle(h));
  }
  std::string_view name() const override { return "cudnn"; }
  const backend_traits& traits() const override { return traits_; }
  memory_resource* memory_for(device d) const override {
    return d.kind == device_kind::cuda ? &device_memory(d.index) : nullptr;
  }

  std::size_t workspace_bytes(const problem& p, int num_threads) const override {
    (void)num_threads;
    const std::lock_guard<std::mutex> hold(lock_);
    const device_guard guard(p.device.index);
    return static_cast<std::size_t>(graph_for(p).workspace);  // 0 for a refused call (run() throws)
  }

  void run(const problem& p, const run_context& ctx) const override {
    if (p.batch == 0 || p.seqlen_q == 0 || p.num_heads_q == 0) return;
    const std::lock_guard<std::mutex> hold(lock_);  // one handle per device: serialise its use
    const device_guard guard(p.device.index);
    const cached_graph& g = graph_for(p);
    if (!g.graph) throw unsupported("cudnn: cuDNN rejects this call: " + g.error, {{"cudnn", g.error}});
    cudnnHandle_t h = handle(p.device.index);
    check(fe::detail::set_stream(h, static_cast<cudaStream_t>(ctx.maybe_cuda_stream)), "cudnnSetStream");
    std::unordered_map<std::int64_t, void*> pack{{uid_q, p.params.q.data}, {uid_k, p.params.k.data},
                                                 {uid_v, p.params.v.data}, {uid_o, p.params.out.data}};
    if (p.maybe_lse) pack[uid_stats] = p.maybe_lse;
    if (static_cast<std::int64_t>(ctx.workspace.size()) < g.workspace)
      throw invalid_argument("cudnn: workspace too small");
    fe::error_t e = g.graph->execute(h, pack, ctx.workspace.data());
    if (e.is_bad()) throw runtime_error("cudnn: execute failed: " + e.get_message());
    ATTEND_CUDA_CHECK(cudaGetLastError());
  }

 protected:
  bool check_limits(const problem& p, diagnostics& diag) const override {
    if (const std::string why = device_unusable_reason(p.device.index); !why.empty()) {
      diag.reject(why);
      return false;
    }
    if (const std::string& why = cudnn_unusable_reason(); !why.empty()) {
      diag.reject(why);
      return false;
    }
    for (const auto& [name, s] : {std::pair{"q", p.q}, {"k", p.k}, {"v", p.v}, {"out", p.out}})
      if (s.dim != 1 || s.batch % 8 != 0 || s.seq % 8 != 0 || s.head % 8 != 0)
        diag.reject(std::string("cuDNN requires ") + name +
                    " with dim stride 1 and batch/seq/head strides multiples of 8 (16-byte aligned rows)");
    // Graphs are cached per shape and run on any pointers, so the alignment cuDNN's kernels assume
    // is checked per call.
    for (const auto& [name, ptr] : {std::pair<const char*, const void*>{"q", p.params.q.data}, {"k", p.params.k.data},
                                    {"v", p.params.v.data}, {"out", p.params.out.data}, {"lse", p.maybe_lse}})
      if (ptr != nullptr && reinterpret_cast<std::uintptr_t>(ptr) % 16 != 0)
        diag.reject(std::string("cuDNN requires ") + name + " 16-byte aligned; got an address " +
                    std::to_string(reinterpret_cast<std::uintptr_t>(ptr) % 16) + " bytes past a 16-byte boundary");
    if (p.seqlen_kv == 0) diag.reject("cuDNN requires Skv >= 1");
    if (p.maybe_lse && p.lse_seq_stride != 1) diag.reject("cuDNN writes LSE with seq stride 1");
    if (p.seqlen_q > 0 && p.seqlen_kv > 0) {
      const key_range first = visible_keys(p.params, 0, p.seqlen_q, p.seqlen_kv);
      const key_range last = visible_keys(p.params, p.seqlen_q - 1, p.seqlen_q, p.seqlen_kv);
      // Bands move monotonically with the row, so an empty one is at the top or the bottom.
      if (first.hi <= first.lo || last.hi <= last.lo)
        diag.reject("rows that see no key (causal alignment / window vs. sequence lengths): cuDNN leaves their output "
                    "undefined, attend defines it as 0 (Note [cuDNN limits])");
    }
    // A call the trait checks already refuse (dtype, head dims, features) is not put to cuDNN.
    if (!diag.ok() || !traits_accept(p)) return false;
    // Everything else is cuDNN's call (Note [cuDNN limits]).
    const std::lock_guard<std::mutex> hold(lock_);
    const device_guard guard(p.device.index);
    try {
      if (const cached_graph& g = graph_for(p); !g.graph) diag.reject("cuDNN rejects this call: " + g.error);
    } catch (const std::exception& e) {  // not a refusal (out of memory, driver): not cached, next call retries
      diag.reject(std::string("cuDNN could not build this call's graph now: ") + e.what());
    }
    return diag.ok();
  }

 private:
  static void check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS)
      throw runtime_error(std::string("cudnn: ") + what + " failed with status " + std::to_string(static_cast<int>(s)));
  }
  // cuDNN's answer that it cannot run a graph (Note [cuDNN limits]): cached, unlike an error of
  // the moment (allocation, driver), which is thrown as attend::runtime_error and retried.
  struct refusal : std::runtime_error {
    using std::runtime_error::runtime_error;
  };
  // A graph-building step: `decides_support` steps (validate, lowering, heuristics, support check)
  // refuse on any failure but an environment one; the others (plan build, workspace query) only
  // when cuDNN says the graph is not supported.
  static void step(fe::error_t e, const char* what, bool decides_support) {
    if (e.is_good()) return;
    const fe::error_code_t code = e.get_code();
    const bool environment = code == fe::error_code_t::CUDA_API_FAILED || code == fe::error_code_t::HANDLE_ERROR ||
                             code == fe::error_code_t::INVALID_CUDA_DEVICE;
    const bool not_supported = code == fe::error_code_t::GRAPH_NOT_SUPPORTED ||
                               code == fe::error_code_t::GRAPH_EXECUTION_PLAN_CREATION_FAILED;
    const std::string message = std::string(what) + ": " + e.get_message();
    if (not_supported || (decides_support && !environment)) throw refusal(message);
    throw runtime_error("cudnn: " + message);
  }

  cudnnHandle_t handle(int index) const {
    auto it = handles_.find(index);
    if (it != handles_.end()) return it->second;
    cudnnHandle_t h = nullptr;
    check(fe::detail::create_handle(&h), "cudnnCreate");
    handles_[index] = h;
    return h;
  }

  // Everything build() reads from a call, as numbers: the graph cache's key (compared field by
  // field; built on each of the 3-4 lookups a call makes, so no string formatting).
  using graph_key = std::array<std::int64_t, 33>;
  static graph_key key_of(const problem& p) {
    const attention_params& a = p.params;
    return {p.device.index, static_cast<std::int64_t>(p.dtype), p.batch, p.num_heads_q, p.num_heads_kv, p.seqlen_q,
            p.seqlen_kv, p.head_dim_qk, p.head_dim_v,
            std::bit_cast<std::uint32_t>(static_cast<float>(p.scale)) /* the graph's attn_scale, exactly */, a.causal,
            static_cast<std::int64_t>(a.alignment), a.window_left, a.window_right, p.maybe_lse != nullptr,
            p.q.batch, p.q.seq, p.q.head, p.q.dim, p.k.batch, p.k.seq, p.k.head, p.k.dim, p.v.batch, p.v.seq, p.v.head,
            p.v.dim, p.out.batch, p.out.seq, p.out.head, p.out.dim, p.lse_batch_stride, p.lse_head_stride};
  }

  // Caller holds lock_ and the device guard. Builds the call's graph once; a refusal by cuDNN is
  // cached too, with its message (Note [cuDNN limits]); any other failure is thrown, not cached.
  const cached_graph& graph_for(const problem& p) const {
    const graph_key key = key_of(p);
    if (auto it = graph_cache_.find(key); it != graph_cache_.end()) return it->second;
    cached_graph c;
    try {
      c.graph = build(p, c.workspace);
    } catch (const refusal& e) {
      c.graph.reset();
      c.workspace = 0;
      c.error = e.what();
      if (c.error.empty()) c.error = "no reason given";
    }
    return graph_cache_.emplace(key, std::move(c)).first->second;
  }

  std::shared_ptr<fe::graph::Graph> build(const problem& p, std::int64_t& workspace) const {
    const fe::DataType_t io = p.dtype == dtype::bf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
    const std::int64_t b = p.batch, hq = p.num_heads_q, hk = p.num_heads_kv, sq = p.seqlen_q, skv = p.seqlen_kv;
    auto tensor = [&](const char* name, std::int64_t uid, std::int64_t h, std::int64_t s, std::int64_t d,
                      const strides_bshd& st) {
      return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({b, h, s, d}).set_stride(
          {st.batch, st.head, st.seq, st.dim}));
    };
    auto q = tensor("Q", uid_q, hq, sq, p.head_dim_qk, p.q);
    auto k = tensor("K", uid_k, hk, skv, p.head_dim_qk, p.k);
    auto v = tensor("V", uid_v, hk, skv, p.head_dim_v, p.v);
    auto options = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(p.maybe_lse != nullptr).set_attn_scale(
        static_cast<float>(p.scale));
    // The band (Note [Causal alignment] in attend/params.h): keys [diag - window_left, diag + right]
    // where right = 0 under causal. cuDNN keeps key j of row i when j > diag - left_bound and
    // j <= diag + right_bound, with the same alignment of diag.
    // A bound at or beyond Sq + Skv cuts nothing and is left unset (it may not fit cuDNN's int).
    const attention_params& a = p.params;
    const std::int64_t reach = sq + skv;
    const std::int64_t right = a.causal ? 0 : a.window_right < reach ? a.window_right : -1;
    const std::int64_t left = a.window_left < reach ? a.window_left : -1;
    if (right >= 0 || left >= 0) {
      options.set_diagonal_alignment(a.alignment == alignment::bottom_right ? fe::DiagonalAlignment_t::BOTTOM_RIGHT
                                                                             : fe::DiagonalAlignment_t::TOP_LEFT);
      if (right >= 0) options.set_diagonal_band_right_bound(static_cast<int>(right));
      if (left >= 0) options.set_diagonal_band_left_bound(static_cast<int>(left + 1));
    }
    auto [o, stats] = g->sdpa(q, k, v, options);
    o->set_output(true).set_uid(uid_o).set_dim({b, hq, sq, p.head_dim_v}).set_stride(
        {p.out.batch, p.out.head, p.out.seq, p.out.dim});
    if (p.maybe_lse)
      stats->set_output(true).set_uid(uid_stats).set_data_type(fe::DataType_t::FLOAT).set_dim({b, hq, sq, 1}).set_stride(
          {p.lse_batch_stride, p.lse_head_stride, 1, 1});
    cudnnHandle_t h = handle(p.device.index);
    step(g->validate(), "validate", true);
    step(g->build_operation_graph(h), "build_operation_graph", true);
    step(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans", true);
    step(g->check_support(h), "check_support", true);
    step(g->build_plans(h), "build_plans", false);
    step(g->get_workspace_size(workspace), "get_workspace_size", false);
    return g;
  }

  backend_traits traits_;
  mutable std::mutex lock_;
  mutable std::map<int, cudnnHandle_t> handles_;
  mutable std::map<graph_key, cached_graph> graph_cache_;
};

}  // namespace

std::shared_ptr<const backend> make_cudnn_backend() { return std::make_shared<cudnn_backend>(); }

}  // namespace attend::cuda
