// The one explicit list of built-in backends (Note [Builtin list]). Each entry is guarded by the
// build option that compiles it; user backends are added at run time with registry::add.
#include "attend/registry.h"
#include "cpu/backends.h"

namespace attend {

void register_builtin_backends(registry& r) {
  r.add(cpu::make_reference_backend());
  r.add(cpu::make_unfused_backend());
  r.add(cpu::make_flash_backend());
}

}  // namespace attend
