// Factories of the CPU backends; the one explicit list is in src/core/builtin_backends.cpp.
#pragma once

#include <memory>

#include "attend/backend.h"

namespace attend::cpu {

std::shared_ptr<const backend> make_reference_backend();
std::shared_ptr<const backend> make_unfused_backend();
std::shared_ptr<const backend> make_flash_backend();  // flash_cpu (src/cpu/flash)

}  // namespace attend::cpu
