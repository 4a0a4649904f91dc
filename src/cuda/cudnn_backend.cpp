// Backend `cudnn`: cuDNN's fused SDPA (flash) forward through the cudnn-frontend graph API.
// libcudnn is opened at run time (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING), so a build without it
// links and supports() says what is missing. One graph per call signature (shape, strides,
// dtype, features, scale, device) is built once and cached; run() only executes it.
#include <dlfcn.h>

#include <cuda_runtime_api.h>
#include <cudnn_frontend.h>

#include <map>
#include <memory>
#include <mutex>
#include <sstream>
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
  std::shared_ptr<fe::graph::Graph> graph;
  std::int64_t workspace = 0;
};
enum uid : std::int64_t { uid_q = 1, uid_k, uid_v, uid_o, uid_stats };

class cudnn_backend final : public backend {
 public:
  cudnn_backend() {
    traits_.description = "cuDNN fused SDPA (flash) forward via the cudnn-frontend graph API; graphs cached per shape";
    traits_.devices = {device_kind::cuda};
    traits_.dtypes = {dtype::f16, dtype::bf16};
    traits_.features = feature::causal | feature::bottom_right | feature::gqa | feature::lse;
    traits_.min_head_dim = 8;
    traits_.max_head_dim = 128;
    traits_.head_dim_multiple = 8;
    traits_.priority = 110;  // above flash_cuda (100): measured 3-4x faster on H100 where both run (bench/RESULTS.md)
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
    return static_cast<std::size_t>(graph_for(p).workspace);
  }

  void run(const problem& p, const run_context& ctx) const override {
    if (p.batch == 0 || p.seqlen_q == 0 || p.num_heads_q == 0) return;
    const std::lock_guard<std::mutex> hold(lock_);  // one handle per device: serialise its use
    const device_guard guard(p.device.index);
    const cached_graph& g = graph_for(p);
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
    if (const std::string& why = cudnn_unusable_reason(); !why.empty()) diag.reject(why);
    if (p.head_dim_qk != p.head_dim_v)
      diag.reject("cuDNN SDPA here requires head_dim_v == head_dim_qk; got " + std::to_string(p.head_dim_qk) + " and " +
                  std::to_string(p.head_dim_v));
    for (const auto& [name, s] : {std::pair{"q", p.q}, {"k", p.k}, {"v", p.v}, {"out", p.out}})
      if (s.dim != 1 || s.batch % 8 != 0 || s.seq % 8 != 0 || s.head % 8 != 0)
        diag.reject(std::string("cuDNN requires ") + name +
                    " with dim stride 1 and batch/seq/head strides multiples of 8 (16-byte aligned rows)");
    if (p.params.alignment == alignment::bottom_right && p.params.causal && p.seqlen_q > p.seqlen_kv)
      diag.reject("bottom-right causal with Sq > Skv leaves rows with no visible key, whose output cuDNN does not define");
    if (p.seqlen_kv == 0) diag.reject("cuDNN requires Skv >= 1");
    if (p.maybe_lse && p.lse_seq_stride != 1)
      diag.reject("cuDNN writes LSE with seq stride 1");
    return diag.ok();
  }

 private:
  static void check(cudnnStatus_t s, const char* what) {
    if (s != CUDNN_STATUS_SUCCESS)
      throw runtime_error(std::string("cudnn: ") + what + " failed with status " + std::to_string(static_cast<int>(s)));
  }
  static void check(fe::error_t e, const char* what) {
    if (e.is_bad()) throw runtime_error(std::string("cudnn: ") + what + ": " + e.get_message());
  }

  cudnnHandle_t handle(int index) const {
    auto it = handles_.find(index);
    if (it != handles_.end()) return it->second;
    cudnnHandle_t h = nullptr;
    check(fe::detail::create_handle(&h), "cudnnCreate");
    handles_[index] = h;
    return h;
  }

  static std::string key_of(const problem& p) {
    std::ostringstream k;
    k << p.device.index << ' ' << static_cast<int>(p.dtype) << ' ' << p.batch << ' ' << p.num_heads_q << ' '
      << p.num_heads_kv << ' ' << p.seqlen_q << ' ' << p.seqlen_kv << ' ' << p.head_dim_qk << ' ' << p.scale << ' '
      << p.params.causal << static_cast<int>(p.params.alignment) << (p.maybe_lse != nullptr);
    for (const strides_bshd& s : {p.q, p.k, p.v, p.out}) k << ' ' << s.batch << ',' << s.seq << ',' << s.head;
    k << ' ' << p.lse_batch_stride << ',' << p.lse_head_stride;
    return k.str();
  }

  // Caller holds lock_ and the device guard.
  const cached_graph& graph_for(const problem& p) const {
    const std::string key = key_of(p);
    if (auto it = graph_cache_.find(key); it != graph_cache_.end()) return it->second;
    const fe::DataType_t io = p.dtype == dtype::bf16 ? fe::DataType_t::BFLOAT16 : fe::DataType_t::HALF;
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(io).set_intermediate_data_type(fe::DataType_t::FLOAT).set_compute_data_type(fe::DataType_t::FLOAT);
    const std::int64_t b = p.batch, hq = p.num_heads_q, hk = p.num_heads_kv, sq = p.seqlen_q, skv = p.seqlen_kv,
                       d = p.head_dim_qk;
    auto tensor = [&](const char* name, std::int64_t uid, std::int64_t h, std::int64_t s, const strides_bshd& st) {
      return g->tensor(fe::graph::Tensor_attributes().set_name(name).set_uid(uid).set_dim({b, h, s, d}).set_stride(
          {st.batch, st.head, st.seq, st.dim}));
    };
    auto q = tensor("Q", uid_q, hq, sq, p.q);
    auto k = tensor("K", uid_k, hk, skv, p.k);
    auto v = tensor("V", uid_v, hk, skv, p.v);
    auto options = fe::graph::SDPA_attributes().set_name("sdpa").set_generate_stats(p.maybe_lse != nullptr).set_attn_scale(
        static_cast<float>(p.scale));
    if (p.params.causal) {
      if (p.params.alignment == alignment::bottom_right)
        options.set_causal_mask_bottom_right(true);
      else
        options.set_causal_mask(true);
    }
    auto [o, stats] = g->sdpa(q, k, v, options);
    o->set_output(true).set_uid(uid_o).set_dim({b, hq, sq, d}).set_stride({p.out.batch, p.out.head, p.out.seq, p.out.dim});
    if (p.maybe_lse)
      stats->set_output(true).set_uid(uid_stats).set_data_type(fe::DataType_t::FLOAT).set_dim({b, hq, sq, 1}).set_stride(
          {p.lse_batch_stride, p.lse_head_stride, 1, 1});
    cudnnHandle_t h = handle(p.device.index);
    check(g->validate(), "validate");
    check(g->build_operation_graph(h), "build_operation_graph");
    check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
    check(g->check_support(h), "check_support");
    check(g->build_plans(h), "build_plans");
    cached_graph c;
    c.graph = g;
    check(g->get_workspace_size(c.workspace), "get_workspace_size");
    return graph_cache_.emplace(key, std::move(c)).first->second;
  }

  backend_traits traits_;
  mutable std::mutex lock_;
  mutable std::map<int, cudnnHandle_t> handles_;
  mutable std::map<std::string, cached_graph> graph_cache_;
};

}  // namespace

std::shared_ptr<const backend> make_cudnn_backend() { return std::make_shared<cudnn_backend>(); }

}  // namespace attend::cuda
