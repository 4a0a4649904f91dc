// attend::load_plugin: a backend from a shared library through the C ABI of attend/plugin.h
// (Note [Plugin ABI]).
#include <dlfcn.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "attend/errors.h"
#include "attend/forward_context.h"
#include "attend/plugin.h"
#include "attend/registry.h"

namespace attend {
namespace {

std::string hex(std::uint32_t bits) {
  char text[16];
  std::snprintf(text, sizeof text, "%x", static_cast<unsigned>(bits));
  return text;
}

// The ABI's enum values are attend's: they cannot drift apart.
static_assert(ATTEND_DTYPE_F32 == static_cast<int>(dtype::f32) && ATTEND_DTYPE_F16 == static_cast<int>(dtype::f16) &&
              ATTEND_DTYPE_BF16 == static_cast<int>(dtype::bf16) && ATTEND_DTYPE_I32 == static_cast<int>(dtype::i32) &&
              ATTEND_DTYPE_BOOL == static_cast<int>(dtype::boolean));
static_assert(ATTEND_DEVICE_CPU == static_cast<int>(device_kind::cpu) &&
              ATTEND_DEVICE_CUDA == static_cast<int>(device_kind::cuda));
static_assert(ATTEND_FEATURE_CAUSAL == static_cast<unsigned>(feature::causal) &&
              ATTEND_FEATURE_WINDOW == static_cast<unsigned>(feature::window) &&
              ATTEND_FEATURE_MASK_ADDITIVE == static_cast<unsigned>(feature::mask_additive) &&
              ATTEND_FEATURE_MASK_KEEP == static_cast<unsigned>(feature::mask_keep) &&
              ATTEND_FEATURE_GQA == static_cast<unsigned>(feature::gqa) &&
              ATTEND_FEATURE_SOFTCAP == static_cast<unsigned>(feature::softcap) &&
              ATTEND_FEATURE_LSE == static_cast<unsigned>(feature::lse) &&
              ATTEND_FEATURE_VARLEN == static_cast<unsigned>(feature::varlen) &&
              ATTEND_FEATURE_HEAD_DIM_V_DIFFERS == static_cast<unsigned>(feature::head_dim_v_differs) &&
              ATTEND_FEATURE_BOTTOM_RIGHT == static_cast<unsigned>(feature::bottom_right) && k_num_features == 10);

attend_strides_v1 to_c(const strides_bshd& s) { return {s.batch, s.seq, s.head, s.dim}; }

attend_problem_v1 to_c(const problem& p) {
  const attention_params& a = p.params;
  attend_problem_v1 c{};
  c.dtype = static_cast<std::int32_t>(p.dtype);
  c.device_kind = static_cast<std::int32_t>(p.device.kind);
  c.device_index = p.device.index;
  c.features = p.features.bits;
  c.batch = p.batch;
  c.seqlen_q = p.seqlen_q;
  c.seqlen_kv = p.seqlen_kv;
  c.num_heads_q = p.num_heads_q;
  c.num_heads_kv = p.num_heads_kv;
  c.group_size = p.group_size;
  c.head_dim_qk = p.head_dim_qk;
  c.head_dim_v = p.head_dim_v;
  c.scale = p.scale;
  c.softcap = a.softcap;
  c.causal = a.causal ? 1 : 0;
  c.bottom_right = a.alignment == alignment::bottom_right ? 1 : 0;
  c.window_left = a.window_left;
  c.window_right = a.window_right;
  c.q = a.q.data;
  c.k = a.k.data;
  c.v = a.v.data;
  c.out = a.out.data;
  c.q_strides = to_c(p.q);
  c.k_strides = to_c(p.k);
  c.v_strides = to_c(p.v);
  c.out_strides = to_c(p.out);
  c.maybe_lse = p.maybe_lse;
  c.lse_batch_stride = p.lse_batch_stride;
  c.lse_head_stride = p.lse_head_stride;
  c.lse_seq_stride = p.lse_seq_stride;
  c.maybe_mask = p.maybe_mask;
  c.mask_dtype = static_cast<std::int32_t>(p.mask_dtype);
  c.mask_batch_stride = p.mask.batch;
  c.mask_head_stride = p.mask.head;
  c.mask_q_stride = p.mask.q;
  c.mask_kv_stride = p.mask.kv;
  c.maybe_cu_seqlens_q = p.maybe_cu_seqlens_q;
  c.maybe_cu_seqlens_kv = p.maybe_cu_seqlens_kv;
  return c;
}

std::int32_t find_number(const void* self, const char* key, double* out) {
  const auto* ctx = static_cast<const forward_context*>(self);
  const forward_value* v = ctx && key ? ctx->find(key) : nullptr;
  if (v == nullptr || out == nullptr) return 0;
  if (const auto* i = std::get_if<std::int64_t>(v)) *out = static_cast<double>(*i);
  else if (const auto* d = std::get_if<double>(v)) *out = *d;
  else if (const auto* b = std::get_if<bool>(v)) *out = *b ? 1.0 : 0.0;
  else return 0;
  return 1;
}

// A message the plugin wrote into `buffer`, or `fallback` when it wrote none.
std::string message_of(const std::array<char, 512>& buffer, const char* fallback) {
  const std::size_t n = strnlen(buffer.data(), buffer.size());
  return n == 0 ? std::string(fallback) : std::string(buffer.data(), n);
}

struct library {
  void* handle = nullptr;
  explicit library(void* h) : handle(h) {}
  library(const library&) = delete;
  library& operator=(const library&) = delete;
  ~library() {
    if (handle) dlclose(handle);
  }
};

class plugin_backend final : public backend {
 public:
  plugin_backend(std::shared_ptr<library> lib, const attend_plugin_v1& d, std::string path)
      : lib_(std::move(lib)), d_(d), name_(d.name), path_(std::move(path)) {
    traits_.description = std::string(d.description ? d.description : "") + " (plugin " + path_ + ")";
    for (device_kind k : {device_kind::cpu, device_kind::cuda})
      if (d.device_kinds & (1u << static_cast<unsigned>(k))) traits_.devices.push_back(k);
    for (dtype t : {dtype::f32, dtype::f16, dtype::bf16})
      if (d.dtypes & (1u << static_cast<unsigned>(t))) traits_.dtypes.push_back(t);
    traits_.features.bits = d.features & feature_set::all().bits;
    traits_.min_head_dim = d.min_head_dim;
    traits_.max_head_dim = d.max_head_dim;
    traits_.head_dim_multiple = d.head_dim_multiple;
    traits_.priority = d.priority;
  }
  std::string_view name() const override { return name_; }
  const backend_traits& traits() const override { return traits_; }
  // Host memory on the CPU; on a GPU the memory of a built-in backend for that device (the CUDA
  // backends own attend's device allocator), so a CUDA plugin's workspace is planned like theirs.
  // Other plugins are never asked (two of them would ask each other forever).
  memory_resource* memory_for(device d) const override {
    if (d.kind == device_kind::cpu) return &host_memory();
    for (const auto& b : registry::global().list())
      if (dynamic_cast<const plugin_backend*>(b.get()) == nullptr)
        if (memory_resource* m = b->memory_for(d)) return m;
    return nullptr;
  }

  std::size_t workspace_bytes(const problem& p, int num_threads) const override {
    if (d_.workspace_bytes == nullptr) return 0;
    const attend_problem_v1 c = to_c(p);
    return d_.workspace_bytes(d_.user, &c, num_threads);
  }

  void run(const problem& p, const run_context& ctx) const override {
    const attend_problem_v1 c = to_c(p);
    attend_forward_v1 fwd{};
    if (ctx.maybe_forward) {
      const std::optional<double> t = ctx.maybe_forward->timestep();
      const std::optional<std::int64_t> l = ctx.maybe_forward->layer();
      fwd.has_timestep = t.has_value() ? 1 : 0;
      fwd.timestep = t.value_or(0.0);
      fwd.has_layer = l.has_value() ? 1 : 0;
      fwd.layer = l.value_or(0);
      fwd.find_number = &find_number;
      fwd.self = ctx.maybe_forward;
    }
    attend_run_v1 r{};
    r.maybe_cuda_stream = ctx.maybe_cuda_stream;
    r.num_threads = ctx.num_threads;
    r.workspace = ctx.workspace.empty() ? nullptr : ctx.workspace.data();
    r.workspace_bytes = ctx.workspace.size();
    r.maybe_forward = ctx.maybe_forward ? &fwd : nullptr;
    std::array<char, 512> error{};
    if (d_.run(d_.user, &c, &r, error.data(), error.size()) != 0)
      throw runtime_error("plugin backend '" + name_ + "' failed: " + message_of(error, "no message"));
  }

 protected:
  bool check_limits(const problem& p, diagnostics& diag) const override {
    // plugin.h: a call reaches the plugin accepted by its traits; supports() reports the traits'
    // reasons itself.
    if (d_.check_limits == nullptr || !traits_accept(p)) return diag.ok();
    const attend_problem_v1 c = to_c(p);
    std::array<char, 512> why{};
    if (d_.check_limits(d_.user, &c, why.data(), why.size()) == 0) diag.reject(message_of(why, "rejected (no reason given)"));
    return diag.ok();
  }

 private:
  std::shared_ptr<library> lib_;  // keeps the code behind d_ loaded
  attend_plugin_v1 d_;
  std::string name_, path_;
  backend_traits traits_;
};

bool valid_name(const char* name) {
  if (name == nullptr || *name == '\0') return false;
  for (const char* c = name; *c; ++c)
    if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_')) return false;
  return true;
}

}  // namespace

std::shared_ptr<const backend> load_plugin(const std::string& path) {
  // dlopen("") is the running program itself, and a NUL would cut the path short.
  if (path.empty()) throw invalid_argument("plugin: the path is empty");
  if (path.find('\0') != std::string::npos) throw invalid_argument("plugin: the path contains a NUL byte");
  dlerror();
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    throw invalid_argument("plugin: cannot load '" + path + "': " + (why ? why : "unknown error"));
  }
  auto lib = std::make_shared<library>(handle);
  auto entry = reinterpret_cast<attend_plugin_entry_fn>(dlsym(handle, ATTEND_PLUGIN_ENTRY_SYMBOL));
  if (entry == nullptr)
    throw invalid_argument("plugin: '" + path + "' does not export " ATTEND_PLUGIN_ENTRY_SYMBOL " (attend/plugin.h)");
  const attend_plugin_v1* d = entry();
  if (d == nullptr) throw invalid_argument("plugin: " ATTEND_PLUGIN_ENTRY_SYMBOL " of '" + path + "' returned null");
  if (d->abi_version != ATTEND_PLUGIN_ABI_VERSION)
    throw invalid_argument("plugin: '" + path + "' has ABI version " + std::to_string(d->abi_version) +
                           "; this attend reads version " + std::to_string(ATTEND_PLUGIN_ABI_VERSION));
  if (!valid_name(d->name))
    throw invalid_argument("plugin: '" + path + "' names its backend '" + std::string(d->name ? d->name : "") +
                           "'; a name must be non-empty [a-z0-9_]");
  if (d->run == nullptr) throw invalid_argument("plugin: backend '" + std::string(d->name) + "' has no run callback");
  auto b = std::make_shared<plugin_backend>(std::move(lib), *d, path);
  // (the descriptor's bits of device kinds and dtypes attend does not know are not kept: a
  // descriptor with only such bits declares none)
  if (const std::string why = b->traits().problem(); !why.empty())
    throw invalid_argument("plugin: backend '" + std::string(d->name) + "' " + why + " (descriptor: device_kinds 0x" +
                           hex(d->device_kinds) + ", dtypes 0x" + hex(d->dtypes) + ")");
  return b;
}

}  // namespace attend
