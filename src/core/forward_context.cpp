#include "attend/forward_context.h"

namespace attend {

namespace {
// The innermost context of this thread. Each thread starts with none (Note [Forward context]).
thread_local const forward_context* t_innermost = nullptr;
}  // namespace

forward_context::forward_context(forward_metadata metadata)
    : metadata_(std::move(metadata)), parent_(t_innermost) {
  t_innermost = this;
}

// Guards are scoped objects, so they are destroyed in reverse order of construction on their
// own thread; restoring the parent keeps the stack exact.
forward_context::~forward_context() { t_innermost = parent_; }

const forward_context* forward_context::current() noexcept { return t_innermost; }

int forward_context::depth() const noexcept {
  int n = 0;
  for (const forward_context* c = this; c; c = c->parent_) ++n;
  return n;
}

std::optional<double> forward_context::timestep() const {
  for (const forward_context* c = this; c; c = c->parent_)
    if (c->metadata_.timestep) return c->metadata_.timestep;
  return std::nullopt;
}

std::optional<std::int64_t> forward_context::layer() const {
  for (const forward_context* c = this; c; c = c->parent_)
    if (c->metadata_.layer) return c->metadata_.layer;
  return std::nullopt;
}

const forward_value* forward_context::find(std::string_view key) const {
  for (const forward_context* c = this; c; c = c->parent_) {
    const auto it = c->metadata_.values.find(key);
    if (it != c->metadata_.values.end()) return &it->second;
  }
  return nullptr;
}

}  // namespace attend
