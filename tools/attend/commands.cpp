#include "commands.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <random>
#include <sstream>

namespace attend::cli {
namespace {

selection selection_of(const cli_options& o) {
  selection s;
  s.name = o.backend;
  s.allow = o.allow;
  s.deny = o.deny;
  return s;
}

std::string devices_of(const backend_traits& t) {
  std::string s;
  for (device_kind k : t.devices) s += (s.empty() ? "" : ",") + std::string(k == device_kind::cpu ? "cpu" : "cuda");
  return s;
}

std::string dtypes_of(const backend_traits& t) {
  std::string s;
  for (dtype d : t.dtypes) s += (s.empty() ? "" : ",") + std::string(to_string(d));
  return s;
}

// Note [Shape-only views]: `explain` describes a call without touching memory, so its views get
// distinct fake addresses far apart (never dereferenced) instead of allocations of the full size.
// Varlen offsets are real: validation reads them on the host.
struct shape_only_call {
  std::vector<std::int32_t> cu_q, cu_kv;
  attention_params params;
};

shape_only_call shape_only(const cli_options& o) {
  shape_only_call call;
  attention_params& a = call.params;
  std::uintptr_t next = 0;
  auto fake = [&](dtype t, std::initializer_list<std::int64_t> sizes) {
    next += std::uintptr_t{1} << 58;
    return tensor_view::contiguous(reinterpret_cast<void*>(next), t, sizes, o.device);
  };
  const bool varlen = !o.varlen_q.empty();
  std::int64_t total_q = 0, total_kv = 0, max_q = 0, max_kv = 0;
  std::int64_t batch = o.batch;
  if (varlen) {
    call.cu_q = testing::cumulative_offsets(o.varlen_q);
    call.cu_kv = testing::cumulative_offsets(o.varlen_kv);
    max_q = *std::max_element(o.varlen_q.begin(), o.varlen_q.end());
    max_kv = *std::max_element(o.varlen_kv.begin(), o.varlen_kv.end());
    total_q = call.cu_q.back();
    total_kv = call.cu_kv.back();
    batch = static_cast<std::int64_t>(o.varlen_q.size());
    a.q = fake(o.dtype, {total_q, o.heads_q, o.head_dim_qk});
    a.k = fake(o.dtype, {total_kv, o.heads_kv, o.head_dim_qk});
    a.v = fake(o.dtype, {total_kv, o.heads_kv, o.head_dim_v});
    a.out = fake(o.dtype, {total_q, o.heads_q, o.head_dim_v});
    if (o.device.kind == device_kind::cpu) {
      a.maybe_cu_seqlens_q = tensor_view::contiguous(call.cu_q.data(), dtype::i32, {batch + 1});
      a.maybe_cu_seqlens_kv = tensor_view::contiguous(call.cu_kv.data(), dtype::i32, {batch + 1});
    } else {
      a.maybe_cu_seqlens_q = fake(dtype::i32, {batch + 1});
      a.maybe_cu_seqlens_kv = fake(dtype::i32, {batch + 1});
    }
    a.max_seqlen_q = max_q;
    a.max_seqlen_kv = max_kv;
  } else {
    const bool bshd = o.layout == layout::bshd;
    auto view = [&](std::int64_t s, std::int64_t h, std::int64_t d) {
      return bshd ? fake(o.dtype, {o.batch, s, h, d}) : fake(o.dtype, {o.batch, h, s, d});
    };
    a.q = view(o.seqlen_q, o.heads_q, o.head_dim_qk);
    a.k = view(o.seqlen_kv, o.heads_kv, o.head_dim_qk);
    a.v = view(o.seqlen_kv, o.heads_kv, o.head_dim_v);
    a.out = view(o.seqlen_q, o.heads_q, o.head_dim_v);
    max_q = o.seqlen_q;
    max_kv = o.seqlen_kv;
  }
  a.layout = o.layout;
  a.causal = o.causal;
  a.alignment = o.alignment;
  a.window_left = o.window_left;
  a.window_right = o.window_right;
  a.softcap = o.softcap;
  if (o.has_scale) a.maybe_scale = o.scale;
  if (o.lse)
    a.maybe_lse = varlen ? fake(dtype::f32, {o.heads_q, total_q}) : fake(dtype::f32, {o.batch, o.heads_q, o.seqlen_q});
  if (o.mask != testing::mask_type::none)
    a.maybe_mask = fake(o.mask == testing::mask_type::keep ? dtype::boolean : dtype::f32,
                        {batch, o.heads_q, o.mask_keys ? 1 : max_q, max_kv});
  return call;
}

// A progress line on a terminal (stderr), nothing when redirected.
class progress {
 public:
  explicit progress(int total) : total_(total), tty_(isatty(STDERR_FILENO) != 0) {}
  ~progress() { clear(); }
  void step(const std::string& what) {
    ++done_;
    if (!tty_) return;
    std::string line = "[" + std::to_string(done_) + "/" + std::to_string(total_) + "] " + what;
    if (line.size() > 100) line.resize(100);
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    std::fflush(stderr);
  }
  void clear() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  int total_, done_ = 0;
  bool tty_;
};

// The backend a case should be checked on runs on which device?
device device_for(const backend& b) {
  const auto& devices = b.traits().devices;
  if (std::find(devices.begin(), devices.end(), device_kind::cpu) != devices.end()) return {device_kind::cpu, 0};
  return {device_kind::cuda, 0};
}

// The backends `check` and `bench` run: --backend's list (auto: every registered one, exact ones
// only when `include_exact`), narrowed by --allow and --deny as selection narrows them. main has
// checked that every name is registered.
std::vector<std::shared_ptr<const backend>> chosen_backends(const cli_options& o, bool include_exact) {
  if (o.backend == "measure")
    throw usage_error(o.backend_source + ": measure picks one backend per call; check and bench run a list (auto, or names)");
  std::vector<std::shared_ptr<const backend>> listed;
  if (o.backend == "auto" || o.backend.empty()) {
    for (const auto& b : registry::global().list())
      if (include_exact || !b->traits().exact) listed.push_back(b);
  } else {
    for (const std::string& name : backend_names(o)) listed.push_back(registry::global().find(name));
  }
  auto named = [](const std::vector<std::string>& names, std::string_view n) {
    return std::find(names.begin(), names.end(), n) != names.end();
  };
  std::vector<std::shared_ptr<const backend>> out;
  for (const auto& b : listed)
    if ((o.allow.empty() || named(o.allow, b->name())) && !named(o.deny, b->name())) out.push_back(b);
  if (out.empty()) throw usage_error("no backend left to run after " + o.backend_source + ", --allow and --deny");
  return out;
}

std::string fixed(double x, int digits) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << x;
  return os.str();
}

std::string sci(double x) {
  std::ostringstream os;
  os << std::scientific << std::setprecision(1) << x;
  return os.str();
}

std::uint64_t fresh_seed(const cli_options& o) {
  if (o.seed_given) return o.seed;
  std::random_device rd;
  return (static_cast<std::uint64_t>(rd()) << 20) ^ rd();
}

}  // namespace

int run_list(const cli_options&) {
  const auto all = registry::global().list();
  std::cout << std::left << std::setw(14) << "backend" << std::setw(9) << "priority" << std::setw(10) << "devices"
            << std::setw(15) << "dtypes" << std::setw(14) << "head dims" << "features\n";
  for (const auto& b : all) {
    const backend_traits& t = b->traits();
    std::string dims = std::to_string(t.min_head_dim) + ".." + std::to_string(t.max_head_dim);
    if (t.head_dim_multiple > 1) dims += " %" + std::to_string(t.head_dim_multiple);
    std::cout << std::left << std::setw(14) << b->name() << std::setw(9) << t.priority << std::setw(10) << devices_of(t)
              << std::setw(15) << dtypes_of(t) << std::setw(14) << dims << to_string(t.features) << '\n';
    std::cout << "  " << t.description << (t.exact ? " (exact: the oracle)" : "") << '\n';
  }
  return 0;
}

int run_explain(const cli_options& o) {
  const shape_only_call call = shape_only(o);
  const problem p = make_problem(call.params);
  std::cout << "call: " << registry::signature(p) << '\n';
  bool any = false;
  for (const explanation& e : registry::global().explain(p, selection_of(o))) {
    std::cout << (e.selected ? "  * " : "    ") << std::left << std::setw(14) << e.backend
              << (e.selected ? "selected" : e.supported ? "supported, not chosen: " + e.reason : "rejected: " + e.reason)
              << '\n';
    any = any || e.selected;
  }
  if (!any) {
    std::cout << "no backend can run this call\n";
    return 1;
  }
  return 0;
}

int run_check(const cli_options& o) {
  const auto backends = chosen_backends(o, false);  // (a usage error before any output)
  const std::uint64_t seed = fresh_seed(o);
  std::cout << "attend check: seed " << seed << " (rerun with --seed " << seed << ")\n";
  const auto grid = testing::default_grid(seed, o.quick);
  int passed = 0, failed = 0, skipped = 0;
  std::map<std::string, int> skip_reasons;  // "backend: reason" -> cases; printed once at the end
  progress bar(static_cast<int>(grid.size()));
  for (const testing::case_spec& base : grid) {
    bar.step(base.name + " " + base.describe());
    std::vector<std::pair<std::shared_ptr<const backend>, testing::case_spec>> runs;
    for (const auto& b : backends) {
      testing::case_spec spec = base;
      spec.device = device_for(*b);
      runs.emplace_back(b, spec);
    }
    const testing::case_data data(base);  // one reference per case, shared by the backends
    for (auto& [b, spec] : runs) {
      const std::string label = std::string(b->name()) + " | " + spec.name + " | " + spec.describe();
      attention_params probe = data.params();
      diagnostics d;
      // Ask the backend about the call as it would see it on its own device.
      for (tensor_view* t : {&probe.q, &probe.k, &probe.v, &probe.out, &probe.maybe_lse, &probe.maybe_mask,
                             &probe.maybe_cu_seqlens_q, &probe.maybe_cu_seqlens_kv})
        if (!t->empty()) t->device = spec.device;
      if (!b->supports(make_problem(probe), &d)) {
        ++skipped;
        ++skip_reasons[std::string(b->name()) + ": " + d.joined()];
        continue;
      }
      try {
        testing::case_spec on_device = spec;
        const testing::case_data* use = &data;
        std::unique_ptr<testing::case_data> copy;
        if (spec.device.kind != device_kind::cpu) {
          copy = std::make_unique<testing::case_data>(spec);
          use = copy.get();
        }
        const testing::comparison c = testing::check_backend(*b, *use, o.threads);
        bar.clear();
        if (c.ok) {
          ++passed;
          std::cout << "ok    " << label << "  max err " << sci(c.max_abs_error) << " (" << fixed(c.worst_ratio, 2)
                    << " of tolerance)\n";
        } else {
          ++failed;
          std::cout << "FAIL  " << label << ": " << c.detail << '\n';
        }
      } catch (const std::exception& e) {
        ++failed;
        bar.clear();
        std::cout << "FAIL  " << label << ": threw " << e.what() << '\n';
      }
    }
  }
  bar.clear();
  for (const auto& [reason, count] : skip_reasons)
    std::cout << "skip  " << reason << " (" << count << (count == 1 ? " case)\n" : " cases)\n");
  std::cout << passed << " passed, " << failed << " failed, " << skipped << " skipped\n";
  if (passed + failed == 0) {  // a gate that checked nothing must not pass
    std::cout << "nothing was checked: the chosen backends skipped every case (the reasons above)\n";
    return 1;
  }
  return failed == 0 ? 0 : 1;
}

namespace {

struct timed {
  std::string status;
  double seconds = 0;
};

// Times `b` on the case's inputs (uploaded to its device when needed).
timed time_on(const backend& b, const testing::case_data& data, const cli_options& o) {
  const testing::case_spec& spec = data.spec();
  attention_params probe = data.params();
  for (tensor_view* t : {&probe.q, &probe.k, &probe.v, &probe.out, &probe.maybe_lse, &probe.maybe_mask,
                         &probe.maybe_cu_seqlens_q, &probe.maybe_cu_seqlens_kv})
    if (!t->empty()) t->device = spec.device;
  diagnostics d;
  if (!b.supports(make_problem(probe), &d)) return {"skipped: " + d.joined(), 0};
  if (spec.device.kind == device_kind::cpu)
    return {"", testing::time_backend(b, make_problem(data.params()), o.threads, o.min_time, o.reps)};
  memory_resource* memory = b.memory_for(spec.device);
  if (!memory) return {"skipped: cannot reach " + to_string(spec.device), 0};
  testing::device_copy dev(data, *memory, spec.device);
  return {"", testing::time_backend(b, make_problem(dev.params()), o.threads, o.min_time, o.reps)};
}

}  // namespace

int run_bench(const cli_options& o) {
  // The backends first: a list that leaves none for the device is a usage error, before any
  // output and before the case's memory.
  std::vector<std::shared_ptr<const backend>> backends;
  for (const auto& b : chosen_backends(o, true)) {
    const auto& devices = b->traits().devices;
    if (std::find(devices.begin(), devices.end(), o.device.kind) != devices.end()) backends.push_back(b);
  }
  if (backends.empty()) throw usage_error("no chosen backend runs on " + to_string(o.device) + " (see attend list)");
  testing::case_spec spec = to_case(o);
  spec.compute_reference = false;
  spec.seed = fresh_seed(o);
  const testing::case_data data(spec);
  const problem p = make_problem(data.params());
  std::cout << "bench: " << spec.describe() << " on " << to_string(o.device) << '\n';
  std::cout << std::left << std::setw(14) << "backend" << std::right << std::setw(12) << "ms" << std::setw(12) << "GFLOP/s"
            << '\n';
  int timed_rows = 0;
  for (const auto& b : backends) {
    const timed t = time_on(*b, data, o);
    std::cout << std::left << std::setw(14) << b->name();
    if (!t.status.empty()) {
      std::cout << "  " << t.status << '\n';
    } else {
      ++timed_rows;
      std::cout << std::right << std::setw(12) << fixed(t.seconds * 1e3, 3) << std::setw(12)
                << fixed(p.nominal_flops() / t.seconds / 1e9, 2) << '\n';
    }
  }
  // A table without a timing is a failed benchmark, not an empty success.
  if (timed_rows == 0) {
    std::cerr << "attend: no backend ran this call (each row says why)\n";
    return 1;
  }
  return 0;
}

int run_demo(const cli_options& o) {
  // A diffusion-transformer step at 2-core size: self-attention over a 32x32 latent (1024 tokens),
  // cross-attention to 77 text tokens with a padding mask, and windowed attention over a short
  // video clip (4 frames of 24x16 tokens). bf16 like the models; sizes chosen so the fp64 oracle
  // and every backend finish within a minute on 2 cores.
  const std::uint64_t seed = fresh_seed(o);
  std::vector<testing::case_spec> work;
  {
    testing::case_spec c;
    c.name = "self-attn 32x32 latent";
    c.dtype = o.dtype;
    c.batch = 1;
    c.seqlen_q = c.seqlen_kv = o.quick ? 256 : 1024;
    c.heads_q = c.heads_kv = 8;
    c.head_dim_qk = c.head_dim_v = 64;
    c.lse = false;
    work.push_back(c);
    c.name = "cross-attn 77 text tokens";
    c.seqlen_kv = 77;
    c.mask = testing::mask_type::keep;
    c.mask_broadcast = true;
    work.push_back(c);
    c.name = "video window 4x24x16";
    c.mask = testing::mask_type::none;
    c.mask_broadcast = false;
    c.seqlen_q = c.seqlen_kv = o.quick ? 384 : 1536;
    c.window_left = c.window_right = 384;
    c.heads_q = 8;
    c.heads_kv = 2;
    work.push_back(c);
  }
  const auto backends = chosen_backends(o, true);
  std::cout << "attend demo: " << backends.size() << " backends, seed " << seed << ", "
            << (o.threads ? std::to_string(o.threads) : std::string("default")) << " CPU threads\n";
  progress bar(static_cast<int>(work.size() * (1 + backends.size())));
  struct row {
    std::string workload, backend, status, error, ms, gflops;
  };
  std::vector<row> rows;
  bool all_ok = true;
  int checked = 0;
  for (testing::case_spec& spec : work) {
    spec.seed = seed + rows.size();
    bar.step("reference for " + spec.name);
    const testing::case_data data(spec);
    const problem p = make_problem(data.params());
    for (const auto& b : backends) {
      bar.step(std::string(b->name()) + " on " + spec.name);
      row r{spec.name, std::string(b->name()), "", "", "", ""};
      testing::case_spec on = spec;
      on.device = device_for(*b);
      attention_params probe = data.params();
      for (tensor_view* t : {&probe.q, &probe.k, &probe.v, &probe.out, &probe.maybe_lse, &probe.maybe_mask})
        if (!t->empty()) t->device = on.device;
      diagnostics d;
      if (!b->supports(make_problem(probe), &d)) {
        r.status = "skipped: " + d.joined();
        rows.push_back(r);
        continue;
      }
      try {
        std::unique_ptr<testing::case_data> copy;
        const testing::case_data* use = &data;
        if (on.device.kind != device_kind::cpu) {
          copy = std::make_unique<testing::case_data>(on);
          use = copy.get();
        }
        ++checked;  // attempted: a backend that throws is a failure, not a skip
        const testing::comparison c = testing::check_backend(*b, *use, o.threads);
        r.status = c.ok ? "ok" : "MISMATCH";
        r.error = sci(c.max_abs_error);
        all_ok = all_ok && c.ok;
        cli_options timing = o;
        timing.min_time = b->traits().exact ? 0.0 : 0.3;
        timing.reps = b->traits().exact ? 1 : 3;
        const timed t = time_on(*b, *use, timing);
        r.ms = fixed(t.seconds * 1e3, 2);
        r.gflops = fixed(p.flops() / t.seconds / 1e9, 1);
      } catch (const std::exception& e) {
        r.status = std::string("error: ") + e.what();
        all_ok = false;
      }
      rows.push_back(r);
    }
  }
  bar.clear();
  std::cout << std::left << std::setw(28) << "workload" << std::setw(14) << "backend" << std::setw(10) << "check"
            << std::setw(11) << "max err" << std::right << std::setw(10) << "ms" << std::setw(10) << "GFLOP/s*" << '\n';
  for (const row& r : rows) {
    std::cout << std::left << std::setw(28) << r.workload << std::setw(14) << r.backend;
    if (r.status.rfind("skipped", 0) == 0 || r.status.rfind("error", 0) == 0) {
      std::cout << r.status << '\n';
      continue;
    }
    std::cout << std::setw(10) << r.status << std::setw(11) << r.error << std::right << std::setw(10) << r.ms
              << std::setw(10) << r.gflops << '\n';
  }
  std::cout << "* FLOPs of the score pairs each row can see (a window or mask computes less than 4*B*H*Sq*Skv*D)\n";
  if (checked == 0) {  // every row skipped: nothing was compared
    std::cout << "nothing was checked: the chosen backends skipped every workload (each row says why)\n";
    return 1;
  }
  std::cout << (all_ok ? "every backend that ran matches the exact reference\n"
                       : "MISMATCH: a backend disagrees with the reference\n");
  return all_ok ? 0 : 1;
}

}  // namespace attend::cli
