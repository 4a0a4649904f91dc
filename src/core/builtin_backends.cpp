// The one explicit list of built-in backends (Note [Builtin list]). Each entry is guarded by the
// build option that compiles it; user backends are added at run time with registry::add.
#include "attend/registry.h"
#include "cpu/backends.h"
#if defined(ATTEND_HAVE_CUDA)
#include "cuda/backends.h"
#endif

namespace attend {

void register_builtin_backends(registry& r) {
  r.add(cpu::make_reference_backend());
  r.add(cpu::make_unfused_backend());
  r.add(cpu::make_flash_backend());
#if defined(ATTEND_HAVE_CUDA)
  r.add(cuda::make_flash_cuda_backend());
#endif
#if defined(ATTEND_HAVE_CUDNN)
  r.add(cuda::make_cudnn_backend());
#endif
}

std::span<const std::string_view> builtin_backend_names() noexcept {
  static constexpr std::string_view names[] = {"reference", "unfused_cpu", "flash_cpu", "flash_cuda", "cudnn"};
  return names;
}

}  // namespace attend
