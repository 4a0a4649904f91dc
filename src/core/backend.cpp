// The trait-driven checks every backend's supports() starts with (Note [Features]).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>

#include "attend/backend.h"
#include "attend/errors.h"

namespace attend {

std::string diagnostics::joined() const {
  std::string s;
  for (const std::string& line : lines_) s += (s.empty() ? "" : "; ") + line;
  return s;
}

namespace {

template <class T, class F>
std::string list_of(const std::vector<T>& xs, F name) {
  std::string s;
  for (const T& x : xs) s += (s.empty() ? "" : "/") + std::string(name(x));
  return s;
}

// Each check appends one line "requires X; got Y" when it fails.
void check_device(const backend_traits& t, const problem& p, diagnostics& d) {
  if (std::find(t.devices.begin(), t.devices.end(), p.device.kind) == t.devices.end())
    d.reject("device must be " +
             list_of(t.devices, [](device_kind k) { return k == device_kind::cpu ? "cpu" : "cuda"; }) + "; got " +
             to_string(p.device));
}

void check_dtype(const backend_traits& t, const problem& p, diagnostics& d) {
  if (std::find(t.dtypes.begin(), t.dtypes.end(), p.dtype) == t.dtypes.end())
    d.reject("dtype must be " + list_of(t.dtypes, [](dtype x) { return to_string(x); }) + "; got " +
             std::string(to_string(p.dtype)));
}

void check_head_dims(const backend_traits& t, const problem& p, diagnostics& d) {
  for (auto [dim, name] : {std::pair{p.head_dim_qk, "head_dim_qk"}, {p.head_dim_v, "head_dim_v"}}) {
    if (dim < t.min_head_dim || dim > t.max_head_dim || dim % t.head_dim_multiple != 0) {
      std::string want = "between " + std::to_string(t.min_head_dim) + " and " + std::to_string(t.max_head_dim);
      if (t.head_dim_multiple > 1) want += " and a multiple of " + std::to_string(t.head_dim_multiple);
      d.reject(std::string(name) + " must be " + want + "; got " + std::to_string(dim));
    }
  }
}

void check_features(const backend_traits& t, const problem& p, diagnostics& d) {
  for (int i = 0; i < k_num_features; ++i) {
    const auto f = static_cast<feature>(1u << i);
    if (p.features.has(f) && !t.features.has(f)) d.reject(std::string(to_string(f)) + " is not supported");
  }
}

class host_memory_resource final : public memory_resource {
 public:
  void* allocate(std::size_t bytes) override {
    // Past PTRDIFF_MAX no object can exist, and near SIZE_MAX the aligned new's rounding up to the
    // alignment wraps (libstdc++), returning a small block for a huge request: refused here, so a
    // plugin's workspace_bytes of (size_t)-1 is an error, not a heap overflow.
    if (bytes > static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()))
      throw runtime_error("host allocation of " + std::to_string(bytes) + " bytes refused: larger than any object");
    void* p = ::operator new(bytes == 0 ? 1 : bytes, std::align_val_t{64}, std::nothrow);
    if (p == nullptr) throw runtime_error("host allocation of " + std::to_string(bytes) + " bytes failed");
    return p;
  }
  void deallocate(void* p) noexcept override { ::operator delete(p, std::align_val_t{64}); }
  void copy(void* dst, const void* src, std::size_t bytes, copy_direction) override {
    if (bytes != 0) std::memcpy(dst, src, bytes);
  }
  void synchronize() override {}
};

// Every trait check (Note [Features]).
void check_traits(const backend_traits& t, const problem& p, diagnostics& d) {
  check_device(t, p, d);
  check_dtype(t, p, d);
  check_head_dims(t, p, d);
  check_features(t, p, d);
}

}  // namespace

std::string backend_traits::problem() const {
  if (devices.empty()) return "declares no device kind attend knows (cpu, cuda): no call could reach it";
  if (dtypes.empty()) return "declares no dtype attend runs (f32, f16, bf16): no call could reach it";
  if (min_head_dim >= 1 && max_head_dim >= min_head_dim && head_dim_multiple >= 1) return "";
  return "declares head dims min " + std::to_string(min_head_dim) + ", max " + std::to_string(max_head_dim) +
         ", multiple " + std::to_string(head_dim_multiple) + "; need 1 <= min <= max and multiple >= 1";
}

void* memory_resource::allocate_in_order(std::size_t bytes, void* stream) {
  (void)bytes, (void)stream;
  throw runtime_error("this memory has no streams to allocate in the order of");
}

memory_resource& host_memory() {
  static host_memory_resource resource;
  return resource;
}

bool backend::supports(const problem& p, diagnostics* maybe_diag) const {
  diagnostics local;
  diagnostics& d = maybe_diag ? *maybe_diag : local;
  const std::size_t before = d.lines().size();
  check_traits(traits(), p, d);
  // Backend-specific limits see a fresh diagnostics so their return value is their own verdict.
  diagnostics limits;
  check_limits(p, limits);
  for (const std::string& line : limits.lines()) d.reject(line);
  return d.lines().size() == before;
}

bool backend::traits_accept(const problem& p) const {
  diagnostics d;
  check_traits(traits(), p, d);
  return d.ok();
}

}  // namespace attend
