#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstdlib>
#include <sstream>

#include "attend/registry.h"

namespace attend {

registry& registry::global() {
  static registry* instance = [] {
    auto* r = new registry();  // never destroyed: backends may be used from static destructors
    register_builtin_backends(*r);
    return r;
  }();
  return *instance;
}

void registry::add(std::shared_ptr<const backend> b) {
  if (!b) throw invalid_argument("registry::add: backend is null");
  const std::string name(b->name());
  if (name.empty() || name == "auto" || name == "measure")
    throw invalid_argument("registry::add: backend name must be non-empty and not 'auto' or 'measure'; got '" +
                           name + "'");
  // Traits that no call could satisfy, or whose check divides by zero, are the backend's error,
  // refused here as load_plugin refuses them in a plugin's descriptor.
  if (const std::string why = b->traits().problem(); !why.empty())
    throw invalid_argument("registry::add: backend '" + name + "' " + why);
  std::unique_lock lock(mutex_);
  for (const auto& existing : backends_)
    if (existing->name() == name) throw invalid_argument("registry::add: a backend named '" + name + "' exists");
  backends_.push_back(std::move(b));
  std::stable_sort(backends_.begin(), backends_.end(), [](const auto& x, const auto& y) {
    if (x->traits().priority != y->traits().priority) return x->traits().priority > y->traits().priority;
    return x->name() < y->name();
  });
}

bool registry::remove(std::string_view name) {
  std::unique_lock lock(mutex_);
  const auto it = std::find_if(backends_.begin(), backends_.end(), [&](const auto& b) { return b->name() == name; });
  if (it == backends_.end()) return false;
  backends_.erase(it);
  std::lock_guard measured_lock(measured_mutex_);
  measured_.clear();
  return true;
}

std::shared_ptr<const backend> registry::find(std::string_view name) const {
  std::shared_lock lock(mutex_);
  for (const auto& b : backends_)
    if (b->name() == name) return b;
  return nullptr;
}

std::vector<std::shared_ptr<const backend>> registry::list() const {
  std::shared_lock lock(mutex_);
  return backends_;
}

namespace {

bool contains(const std::vector<std::string>& xs, std::string_view x) {
  return std::find(xs.begin(), xs.end(), x) != xs.end();
}

std::string effective_name(const selection& s) {
  if (s.honour_environment) {
    const char* env = std::getenv("ATTEND_BACKEND");
    if (env != nullptr && *env != '\0') return env;
  }
  return s.name.empty() ? "auto" : s.name;
}

// Why `b` is not even considered under `s`, or "" when it is.
std::string excluded_by(const backend& b, const selection& s, const std::string& name) {
  if (name != "auto" && name != "measure" && b.name() != name) return "not the requested backend '" + name + "'";
  if (!s.allow.empty() && !contains(s.allow, b.name())) return "not in the allow list";
  if (contains(s.deny, b.name())) return "in the deny list";
  return "";
}

std::string known_names(const std::vector<std::shared_ptr<const backend>>& all) {
  std::string known;
  for (const auto& b : all) known += (known.empty() ? "" : ", ") + std::string(b->name());
  return known;
}
bool registered(const std::vector<std::shared_ptr<const backend>>& all, std::string_view name) {
  return std::any_of(all.begin(), all.end(), [&](const auto& b) { return b->name() == name; });
}

// Names in the allow and deny lists must be registered backends, or built-in ones that another
// build of attend has (so one program can deny cudnn on builds with and without CUDA): a misspelt
// name would otherwise allow nothing it meant to, or deny nothing.
void require_known_lists(const std::vector<std::shared_ptr<const backend>>& all, const selection& s) {
  const auto builtin = builtin_backend_names();
  for (const auto& [list, names] : {std::pair{"allow", &s.allow}, {"deny", &s.deny}})
    for (const std::string& n : *names)
      if (!registered(all, n) && std::find(builtin.begin(), builtin.end(), n) == builtin.end())
        throw invalid_argument("selection: unknown name '" + n + "' in the " + list + " list; known: " +
                               known_names(all));
}

// A selection naming no registered backend (nor auto/measure) is a caller error, for explain as
// for attention.
void require_known(const std::vector<std::shared_ptr<const backend>>& all, const std::string& name,
                   const selection& s) {
  if (name != "auto" && name != "measure" && !registered(all, name)) {
    // Say where the name came from when the environment replaced the caller's.
    const bool from_env = name != (s.name.empty() ? "auto" : s.name);
    throw invalid_argument("backend: unknown name '" + name + "'" + (from_env ? " (from ATTEND_BACKEND)" : "") +
                           "; known: " + known_names(all) + ", auto, measure");
  }
  require_known_lists(all, s);
}

}  // namespace

std::vector<explanation> registry::explain(const problem& p, const selection& s) const {
  const std::string name = effective_name(s);
  require_known(list(), name, s);
  std::vector<explanation> out;
  bool chosen = false;
  const std::string winner = name == "measure" ? measured(measure_key(p, s)) : "";
  for (const auto& b : list()) {
    explanation e;
    e.backend = std::string(b->name());
    e.priority = b->traits().priority;
    diagnostics d;
    e.supported = b->supports(p, &d);
    std::string excluded = excluded_by(*b, s, name);
    if (!e.supported)
      e.reason = d.joined();
    else if (!excluded.empty())
      e.reason = excluded;
    else if (!winner.empty() && b->name() != winner)
      e.reason = "slower than '" + winner + "' when measured";
    else if (!chosen)
      e.selected = chosen = true;
    else
      e.reason = "a higher-priority backend was chosen";
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<std::shared_ptr<const backend>> registry::candidates(const problem& p, const selection& s) const {
  const std::string name = effective_name(s);
  const auto all = list();
  require_known(all, name, s);
  std::vector<std::shared_ptr<const backend>> found;
  std::vector<rejection> rejections;
  std::string named_excluded;  // why the requested backend is left out by allow/deny, if it is
  for (const auto& b : all) {
    diagnostics d;
    const std::string excluded = excluded_by(*b, s, name);
    if (!excluded.empty()) {
      if (b->name() == name) named_excluded = excluded;
      rejections.push_back({std::string(b->name()), excluded});
    } else if (b->supports(p, &d)) {
      found.push_back(b);
    } else {
      rejections.push_back({std::string(b->name()), d.joined()});
    }
  }
  if (found.empty()) {
    // (a requested backend that allow/deny leave out is not one that lacks the call)
    const std::string what = name == "auto" || name == "measure" ? "no backend supports this call"
                             : named_excluded.empty() ? "backend '" + name + "' does not support this call"
                                                      : "backend '" + name + "' is left out by the selection (" +
                                                            named_excluded + ")";
    throw unsupported(what + " (" + signature(p) + "):", std::move(rejections));
  }
  return found;
}

std::shared_ptr<const backend> registry::select(const problem& p, const selection& s) const {
  // Note [Selection without reasons]: a call asks this once per run, and building every other
  // backend's reason (the rejections' strings) cost about 1 µs of the host's time a call
  // (bench/host_bench.cpp). The answer is the first allowed backend, in priority order, that runs
  // on the call's device and supports it, so that is looked for first: backends excluded by the
  // selection or made for another device are passed over without a word, and supports() words
  // only its own rejections (of backends before the answer). Only when none is found does
  // candidates() build every reason, for its error. "measure" picks among every candidate, so it
  // always takes the full path.
  if (const std::string name = effective_name(s); name != "measure") {
    const auto all = list();
    if (!s.allow.empty() || !s.deny.empty()) require_known_lists(all, s);
    for (const auto& b : all) {
      const backend_traits& t = b->traits();
      if ((name != "auto" && b->name() != name) || (!s.allow.empty() && !contains(s.allow, b->name())) ||
          contains(s.deny, b->name()) || std::find(t.devices.begin(), t.devices.end(), p.device.kind) == t.devices.end())
        continue;
      if (b->supports(p, nullptr)) return b;
    }
  }
  auto found = candidates(p, s);
  if (effective_name(s) == "measure") {
    const std::string winner = measured(measure_key(p, s));
    for (const auto& b : found)
      if (b->name() == winner) return b;
  }
  return found.front();
}

std::string registry::measured(const std::string& sig) const {
  std::lock_guard lock(measured_mutex_);
  const auto it = measured_.find(sig);
  return it == measured_.end() ? std::string() : it->second;
}

void registry::remember_measured(const std::string& sig, std::string backend_name) {
  std::lock_guard lock(measured_mutex_);
  measured_[sig] = std::move(backend_name);
}

namespace {
// Device, dtype, sizes (as given: exact, or a bucket's "<=" bounds) and features of a call.
std::string describe_call(const problem& p, std::string_view sizes) {
  std::ostringstream os;
  os << to_string(p.device) << ' ' << to_string(p.dtype) << ' ' << sizes << " Hq=" << p.num_heads_q
     << " Hkv=" << p.num_heads_kv << " Dqk=" << p.head_dim_qk << " Dv=" << p.head_dim_v
     << " features=" << to_string(p.features);
  return os.str();
}
// The smallest power of two >= n, for n <= 2^31 (sizes of a call with int32 offsets); n when 0.
std::int64_t power_of_two_at_least(std::int64_t n) {
  return n <= 0 ? n : static_cast<std::int64_t>(std::bit_ceil(static_cast<std::uint64_t>(n)));
}
}  // namespace

// Note [Measure keys]: a dense call's key is its signature. A varlen call's batch and longest
// sequences change from call to call (a serving batch), and with host offsets the longest is the
// real one, so keyed exactly, measure timed every candidate again at nearly every call. Its key
// rounds the batch and the longest lengths up to powers of two: the candidates are timed once per
// bucket, on the first call that falls in it, whose sizes are within 2x of the others'.
std::string registry::measure_key(const problem& p, const selection& s) {
  std::string key = !p.is_varlen ? signature(p)
                                  : describe_call(p, "varlen B<=" + std::to_string(power_of_two_at_least(p.batch)) +
                                                         " Sq<=" + std::to_string(power_of_two_at_least(p.seqlen_q)) +
                                                         " Skv<=" + std::to_string(power_of_two_at_least(p.seqlen_kv)));
  for (const auto& [label, names] : {std::pair{" allow=", &s.allow}, {" deny=", &s.deny}}) {
    if (names->empty()) continue;
    std::vector<std::string> sorted = *names;  // the same list in any order is the same choice
    std::sort(sorted.begin(), sorted.end());
    key += label;
    for (std::size_t i = 0; i < sorted.size(); ++i) key += (i ? "," : "") + sorted[i];
  }
  return key;
}

std::string registry::signature(const problem& p) {
  return describe_call(p, "B=" + std::to_string(p.batch) + " Sq=" + std::to_string(p.seqlen_q) +
                              " Skv=" + std::to_string(p.seqlen_kv));
}

}  // namespace attend
