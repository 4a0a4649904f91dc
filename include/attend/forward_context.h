// attend/forward_context.h: per-step metadata (timestep, layer, sparse configs, user values)
// that reaches backends without widening every call signature.
//
// A forward_context is a scoped RAII guard: constructing one pushes it onto the calling
// thread's stack, destroying it pops it (or, destroyed out of order, unlinks it). Destroyed on
// another thread, it cannot unlink itself from its own thread's stack: that thread must not look
// contexts up (call attention()) afterwards; the destroying thread's stack is untouched. Contexts
// nest; a lookup walks from the innermost context outwards, so an inner context overrides only
// the keys it sets. Each thread has its own stack (no global mutable state): a context on one
// thread is invisible to every other thread.
// attend::attention() hands the innermost context of the calling thread to the backend through
// run_context::maybe_forward, so a backend that runs work on other threads still sees it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>

namespace attend {

// A user value: integer, real, string, or an opaque shared object (e.g. a sparse-attention
// config a backend knows how to read).
using forward_value =
    std::variant<std::int64_t, double, bool, std::string, std::shared_ptr<const void>>;

struct forward_metadata {
  std::optional<double> timestep;
  std::optional<std::int64_t> layer;
  std::map<std::string, forward_value, std::less<>> values;
};

class forward_context {
 public:
  explicit forward_context(forward_metadata metadata);
  ~forward_context();
  forward_context(const forward_context&) = delete;
  forward_context& operator=(const forward_context&) = delete;

  // The innermost context of the calling thread, or nullptr.
  static const forward_context* current() noexcept;

  const forward_context* parent() const noexcept { return parent_; }
  int depth() const noexcept;
  // Innermost timestep / layer / value along the chain from this context outwards.
  std::optional<double> timestep() const;
  std::optional<std::int64_t> layer() const;
  const forward_value* find(std::string_view key) const;

  const forward_metadata& own() const noexcept { return metadata_; }

 private:
  forward_metadata metadata_;
  mutable const forward_context* parent_;  // relinked when an outer context is destroyed first
};

}  // namespace attend
