// attend/registry.h: the list of backends and how one is chosen for a call.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "attend/backend.h"
#include "attend/errors.h"

namespace attend {

// How the caller picks a backend. A value, not a global: pass it per call.
struct selection {
  // A backend name; "auto" (highest priority that supports the call); or "measure" (time every
  // supporting backend once per call signature, cache and reuse the fastest).
  std::string name = "auto";
  std::vector<std::string> allow;  // non-empty: only these are considered
  std::vector<std::string> deny;   // never these
  // (Each name in allow and deny must be a registered backend or a built-in one of any build,
  // e.g. cudnn on a build without it; another name is an invalid_argument.)
  // When true, the environment variable ATTEND_BACKEND (if set) replaces `name` (debugging).
  bool honour_environment = true;
};

struct explanation {
  std::string backend;
  int priority = 0;
  bool supported = false;
  bool selected = false;
  std::string reason;  // why not (empty when supported), or why it was skipped
};

class registry {
 public:
  registry() = default;
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  // The process-wide registry, holding the built-in backends of this build.
  static registry& global();

  // Adds a backend. Throws attend::invalid_argument when the name is empty or taken, or its
  // traits admit no call (backend_traits::problem: no device kind, no dtype, or head dims none
  // can meet).
  void add(std::shared_ptr<const backend> b);
  // Removes a backend by name; returns whether one was removed.
  bool remove(std::string_view name);
  std::shared_ptr<const backend> find(std::string_view name) const;
  // Every backend, highest priority first (ties by name).
  std::vector<std::shared_ptr<const backend>> list() const;

  // One line per backend, in priority order, saying whether it supports the call and, if it
  // would be chosen, marking it selected. Runs nothing (except for "measure", which is reported
  // as "auto" here).
  std::vector<explanation> explain(const problem& p, const selection& s = {}) const;
  // The backend that runs `p`. Throws attend::unsupported listing every backend's reason when
  // none fits, and attend::invalid_argument for an unknown name.
  std::shared_ptr<const backend> select(const problem& p, const selection& s = {}) const;
  // Every allowed backend that supports `p`, best first. Throws like select() when empty.
  std::vector<std::shared_ptr<const backend>> candidates(const problem& p, const selection& s = {}) const;

  // The "measure" cache: which backend won for a key (see measure_key()).
  std::string measured(const std::string& key) const;
  void remember_measured(const std::string& key, std::string backend_name);
  // Device, dtype, shape and features of a call.
  static std::string signature(const problem& p);
  // The measure cache's key: the signature (for a varlen call, with its batch and longest lengths
  // rounded up to powers of two: Note [Measure keys]) and the selection's allow/deny lists, since
  // the winner among allowed backends is only the winner for that list.
  static std::string measure_key(const problem& p, const selection& s);

 private:
  mutable std::shared_mutex mutex_;
  std::vector<std::shared_ptr<const backend>> backends_;
  mutable std::mutex measured_mutex_;
  mutable std::map<std::string, std::string> measured_;  // call signature -> backend name
};

// Adds the backends this build was configured with (the one explicit list).
void register_builtin_backends(registry& r);
// The names of the built-in backends of any build (those of other build options too), beside that
// list: a selection may allow or deny them where this build lacks them.
std::span<const std::string_view> builtin_backend_names() noexcept;

// A backend from a shared library that exports the C ABI of attend/plugin.h (Note [Plugin ABI]).
// The library stays loaded while the backend lives. Add it with registry::add. Throws
// attend::invalid_argument when the library cannot be opened, lacks the entry point, has another
// ABI version or declares an invalid name or traits.
std::shared_ptr<const backend> load_plugin(const std::string& path);

}  // namespace attend
