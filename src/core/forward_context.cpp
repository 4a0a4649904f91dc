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

// Guards are scoped objects, so they are usually destroyed in reverse order of construction on
// their own thread, and restoring the parent keeps the stack exact. One destroyed out of that
// order (held by unique_ptrs released in another order) is unlinked from the chain, so no inner
// context keeps pointing at it. One destroyed on another thread (a static context at exit(), a
// shared_ptr dropped last elsewhere) is not on this thread's chain: this thread's chain is left as
// it is, and so is its own thread's, which may have ended (its chain's storage with it); that
// thread must not look contexts up after it (attend/forward_context.h).
forward_context::~forward_context() {
  if (t_innermost == this) {
    t_innermost = parent_;
    return;
  }
  for (const forward_context* c = t_innermost; c != nullptr; c = c->parent_)
    if (c->parent_ == this) {
      c->parent_ = parent_;
      return;
    }
}

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
