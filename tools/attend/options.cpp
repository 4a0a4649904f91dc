#include "options.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <limits>
#include <map>
#include <set>
#include <sstream>

namespace attend::cli {
namespace {

std::int64_t to_int(const std::string& flag, const std::string& text, std::int64_t min, std::int64_t max) {
  std::int64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size())
    throw usage_error(flag + " expects an integer; got '" + text + "'");
  if (value < min || value > max)
    throw usage_error(flag + " must be between " + std::to_string(min) + " and " + std::to_string(max) + "; got " + text);
  return value;
}

double to_real(const std::string& flag, const std::string& text) {
  // strtod, not stod: stod throws on a value that underflows (1e-320), which is a number the
  // library's own checks should judge; one that overflows comes back infinite, refused below.
  const auto not_a_number = [&] { return usage_error(flag + " expects a number; got '" + text + "'"); };
  if (text.empty() || std::isspace(static_cast<unsigned char>(text[0]))) throw not_a_number();  // strtod skips spaces
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) throw not_a_number();
  // strtod gives 0 for a value below the smallest double (1e-400): that would switch softcap off
  // silently, so it is refused; one in double's subnormal range comes back as it is.
  if (errno == ERANGE && value == 0.0) throw usage_error(flag + ": '" + text + "' is below the smallest double");
  if (!std::isfinite(value)) throw usage_error(flag + " expects a finite number; got '" + text + "'");
  return value;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream is(text);
  while (std::getline(is, part, sep)) parts.push_back(part);
  if (!text.empty() && text.back() == sep) parts.emplace_back();
  return parts;
}

std::vector<std::int32_t> to_lengths(const std::string& flag, const std::string& text) {
  std::vector<std::int32_t> lengths;
  for (const std::string& part : split(text, ','))
    lengths.push_back(static_cast<std::int32_t>(to_int(flag, part, 0, 1 << 30)));
  if (lengths.empty()) throw usage_error(flag + " expects comma-separated lengths; got '" + text + "'");
  return lengths;
}

struct flag_spec {
  const char* name;
  const char* value;  // nullptr: a switch
  const char* help;
  std::function<void(cli_options&, const std::string&)> apply;
};

constexpr std::int64_t k_max_size = std::int64_t{1} << 40;

const std::vector<flag_spec>& flags() {
  static const std::vector<flag_spec> table = {
      {"--batch", "N", "batch size (default 1)", [](cli_options& o, const std::string& v) { o.batch = to_int("--batch", v, 0, k_max_size); }},
      {"--seqlen", "N", "query and key length (default 1024)",
       [](cli_options& o, const std::string& v) { o.seqlen_q = o.seqlen_kv = to_int("--seqlen", v, 0, k_max_size); }},
      {"--seqlen-q", "N", "query length", [](cli_options& o, const std::string& v) { o.seqlen_q = to_int("--seqlen-q", v, 0, k_max_size); }},
      {"--seqlen-kv", "N", "key/value length", [](cli_options& o, const std::string& v) { o.seqlen_kv = to_int("--seqlen-kv", v, 0, k_max_size); }},
      {"--heads", "N", "query and key/value heads (default 8)",
       [](cli_options& o, const std::string& v) { o.heads_q = o.heads_kv = to_int("--heads", v, 0, 1 << 20); }},
      {"--heads-q", "N", "query heads", [](cli_options& o, const std::string& v) { o.heads_q = to_int("--heads-q", v, 0, 1 << 20); }},
      {"--heads-kv", "N", "key/value heads (GQA/MQA when fewer than --heads-q)",
       [](cli_options& o, const std::string& v) { o.heads_kv = to_int("--heads-kv", v, 0, 1 << 20); }},
      {"--head-dim", "N", "head dim of q, k and v (default 64)",
       [](cli_options& o, const std::string& v) { o.head_dim_qk = o.head_dim_v = to_int("--head-dim", v, 0, 1 << 20); }},
      {"--head-dim-v", "N", "head dim of v and out when it differs",
       [](cli_options& o, const std::string& v) { o.head_dim_v = to_int("--head-dim-v", v, 0, 1 << 20); }},
      {"--dtype", "f32|f16|bf16", "element type (default bf16)",
       [](cli_options& o, const std::string& v) {
         if (v == "f32" || v == "float32") o.dtype = dtype::f32;
         else if (v == "f16" || v == "float16") o.dtype = dtype::f16;
         else if (v == "bf16" || v == "bfloat16") o.dtype = dtype::bf16;
         else throw usage_error("--dtype must be f32, f16 or bf16; got '" + v + "'");
       }},
      {"--layout", "bshd|bhsd", "memory layout (default bshd)",
       [](cli_options& o, const std::string& v) {
         if (v == "bshd") o.layout = layout::bshd;
         else if (v == "bhsd") o.layout = layout::bhsd;
         else throw usage_error("--layout must be bshd or bhsd; got '" + v + "'");
       }},
      {"--causal", nullptr, "causal masking", [](cli_options& o, const std::string&) { o.causal = true; }},
      {"--align", "top_left|bottom_right", "diagonal of causal masks and windows (default top_left)",
       [](cli_options& o, const std::string& v) {
         if (v == "top_left") o.alignment = alignment::top_left;
         else if (v == "bottom_right") o.alignment = alignment::bottom_right;
         else throw usage_error("--align must be top_left or bottom_right; got '" + v + "'");
       }},
      {"--window", "LEFT,RIGHT", "sliding window, -1 for unbounded (e.g. 256,0)",
       [](cli_options& o, const std::string& v) {
         const auto parts = split(v, ',');
         if (parts.size() != 2) throw usage_error("--window expects LEFT,RIGHT; got '" + v + "'");
         o.window_left = to_int("--window", parts[0], -1, k_max_size);
         o.window_right = to_int("--window", parts[1], -1, k_max_size);
       }},
      {"--mask", "none|additive|keep|additive-keys|keep-keys",
       "random mask: additive float or boolean keep-mask, [B, H, Sq, Skv]; *-keys: one row for every query, [B, H, 1, Skv] (a padding mask)",
       [](cli_options& o, const std::string& v) {
         o.mask_keys = v == "additive-keys" || v == "keep-keys";
         if (v == "none") o.mask = testing::mask_type::none;
         else if (v == "additive" || v == "additive-keys") o.mask = testing::mask_type::additive;
         else if (v == "keep" || v == "keep-keys") o.mask = testing::mask_type::keep;
         else throw usage_error("--mask must be none, additive, keep, additive-keys or keep-keys; got '" + v + "'");
       }},
      {"--softcap", "X", "tanh capping of scores (0: off)", [](cli_options& o, const std::string& v) { o.softcap = to_real("--softcap", v); }},
      {"--scale", "X", "score scale (default 1/sqrt(head_dim))",
       [](cli_options& o, const std::string& v) { o.has_scale = true; o.scale = to_real("--scale", v); }},
      {"--lse", nullptr, "also return the log-sum-exp", [](cli_options& o, const std::string&) { o.lse = true; }},
      {"--device", "cpu|cuda[:N]", "where the tensors live (default cpu)",
       [](cli_options& o, const std::string& v) {
         if (v == "cpu") o.device = {device_kind::cpu, 0};
         else if (v == "cuda") o.device = {device_kind::cuda, 0};
         else if (v.rfind("cuda:", 0) == 0) o.device = {device_kind::cuda, static_cast<int>(to_int("--device", v.substr(5), 0, 1024))};
         else throw usage_error("--device must be cpu or cuda[:N]; got '" + v + "'");
       }},
      {"--varlen", "L1,L2,...", "variable-length batch: query lengths (keys too unless --varlen-kv)",
       [](cli_options& o, const std::string& v) { o.varlen_q = to_lengths("--varlen", v); }},
      {"--varlen-kv", "L1,L2,...", "key lengths of a variable-length batch",
       [](cli_options& o, const std::string& v) { o.varlen_kv = to_lengths("--varlen-kv", v); }},
      {"--backend", "NAME", "backend name, auto or measure (bench/check: comma-separated list)",
       [](cli_options& o, const std::string& v) {
         if (v.empty() || v.back() == ',') throw usage_error("--backend: a backend name is empty");
         o.backend = v;
       }},
      {"--allow", "A,B", "consider only these backends",
       [](cli_options& o, const std::string& v) {
         if (v.empty()) throw usage_error("--allow: give at least one backend name");
         o.allow = split(v, ',');
       }},
      {"--deny", "A,B", "never these backends",
       [](cli_options& o, const std::string& v) {
         if (v.empty()) throw usage_error("--deny: give at least one backend name");
         o.deny = split(v, ',');
       }},
      {"--plugin", "PATH", "load a backend from a shared library (attend/plugin.h); repeatable",
       [](cli_options& o, const std::string& v) { o.plugins.push_back(v); }},
      {"--threads", "N", "CPU threads (default OMP_NUM_THREADS or all cores)",
       [](cli_options& o, const std::string& v) { o.threads = static_cast<int>(to_int("--threads", v, 1, 4096)); }},
      {"--seed", "N", "random seed (check: default is fresh each run)",
       [](cli_options& o, const std::string& v) {
         o.seed = static_cast<std::uint64_t>(to_int("--seed", v, 0, std::int64_t{1} << 62));
         o.seed_given = true;
       }},
      {"--quick", nullptr, "check/demo: a smaller grid", [](cli_options& o, const std::string&) { o.quick = true; }},
      {"--min-time", "SECONDS", "bench: minimum time per measurement, at most 3600 (default 0.5; stops at 10^6 runs)",
       [](cli_options& o, const std::string& v) { o.min_time = to_real("--min-time", v); }},
      {"--reps", "N", "bench: minimum repetitions (default 5)",
       [](cli_options& o, const std::string& v) { o.reps = static_cast<int>(to_int("--reps", v, 1, 1000000)); }},
      {"--help", nullptr, "this text", [](cli_options& o, const std::string&) { o.help = true; }},
  };
  return table;
}

}  // namespace

std::string help_text() {
  std::ostringstream os;
  os << "attend " << version() << ": exact attention through interchangeable backends\n\n"
     << "usage: attend COMMAND [flags]\n\n"
     << "commands:\n"
     << "  list      backends of this build and what each supports\n"
     << "  explain   which backend would run the call the flags describe, and why each other is rejected\n"
     << "            (exit 1 when none can)\n"
     << "  check     run every available backend against the exact reference over a grid of awkward cases\n"
     << "            (exit 1 on any mismatch, or when the chosen backends skip every case)\n"
     << "  bench     time backends on the call the flags describe; GFLOP/s with FLOPs = 4*B*H*Sq*Skv*D,\n"
     << "            halved for causal (exit 1 when none could be timed)\n"
     << "  demo      the main job: a diffusion-transformer-like workload, every backend checked and timed\n"
     << "            (exit 1 on any mismatch, or when every backend skips every workload)\n\n"
     << "flags:\n";
  for (const flag_spec& f : flags()) {
    std::string lhs = std::string(f.name) + (f.value ? std::string(" ") + f.value : "");
    os << "  " << lhs;
    for (std::size_t pad = lhs.size(); pad < 28; ++pad) os << ' ';
    os << ' ' << f.help << '\n';
  }
  os << "\nenvironment: ATTEND_BACKEND overrides --backend (debugging); OMP_NUM_THREADS sets CPU threads.\n"
     << "exit status: 0 success, 1 check/explain/demo failure, 2 bad usage.\n";
  return os.str();
}

cli_options parse(int argc, char** argv) {
  cli_options o;
  int i = 1;
  if (argc > 1 && argv[1][0] != '-') o.command = argv[i++];
  std::vector<std::pair<const flag_spec*, std::string>> parsed;
  for (; i < argc; ++i) {
    std::string arg = argv[i];
    std::string value;
    bool has_value = false;
    if (const auto eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      has_value = true;
    }
    if (arg == "-h") arg = "--help";
    const flag_spec* spec = nullptr;
    for (const flag_spec& f : flags())
      if (arg == f.name) spec = &f;
    if (spec == nullptr) {
      if (arg.rfind("-", 0) != 0) throw usage_error("unexpected argument '" + arg + "'");
      throw usage_error("unknown flag '" + arg + "' (see attend --help)");
    }
    if (spec->value != nullptr && !has_value) {
      if (i + 1 >= argc) throw usage_error(arg + " needs a value (" + spec->value + ")");
      value = argv[++i];
    } else if (spec->value == nullptr && has_value) {
      throw usage_error(arg + " takes no value");
    }
    // A flag given twice would keep only its last value, silently (--plugin accumulates).
    if (std::string(spec->name) != "--plugin" && std::find(o.given.begin(), o.given.end(), spec->name) != o.given.end())
      throw usage_error(std::string(spec->name) + " is given twice");
    o.given.push_back(spec->name);
    parsed.emplace_back(spec, std::move(value));
  }
  // A general flag sets what its specific ones refine (--seqlen: --seqlen-q and --seqlen-kv;
  // --heads: --heads-q and --heads-kv; --head-dim: --head-dim-v), so it applies first: the
  // specific value wins whatever the order on the command line.
  const auto general = [](const flag_spec* f) {
    const std::string n = f->name;
    return n == "--seqlen" || n == "--heads" || n == "--head-dim";
  };
  std::stable_partition(parsed.begin(), parsed.end(), [&](const auto& fv) { return general(fv.first); });
  for (const auto& [spec, value] : parsed) spec->apply(o, value);
  if (!o.varlen_kv.empty() && o.varlen_q.empty()) throw usage_error("--varlen-kv needs --varlen");
  if (!o.varlen_q.empty() && o.varlen_kv.empty()) o.varlen_kv = o.varlen_q;
  if (o.varlen_q.size() != o.varlen_kv.size())
    throw usage_error("--varlen and --varlen-kv must list as many sequences");
  if (!o.varlen_q.empty()) {
    // The lengths set the batch and both sequence lengths: a flag for those would be ignored.
    for (const char* f : {"--batch", "--seqlen", "--seqlen-q", "--seqlen-kv"})
      if (std::find(o.given.begin(), o.given.end(), f) != o.given.end())
        throw usage_error(std::string(f) + " does not apply with --varlen (its lengths set the batch and sequence lengths)");
    // Each length is at most 2^30, but the packed tensors' rows are counted in int32 offsets.
    for (const auto& [flag, lengths] : {std::pair{"--varlen", &o.varlen_q}, {"--varlen-kv", &o.varlen_kv}}) {
      std::int64_t total = 0;
      for (const std::int32_t l : *lengths) total += l;
      if (total > std::numeric_limits<std::int32_t>::max())
        throw usage_error(std::string(flag) + ": the lengths add up to " + std::to_string(total) +
                          "; the total must be below 2^31");
    }
  }
  if (!(o.min_time >= 0 && o.min_time <= 3600)) throw usage_error("--min-time must be between 0 and 3600 seconds");
  return o;
}

std::vector<std::string> backend_names(const cli_options& o) { return split(o.backend, ','); }

void check_flags_apply(const cli_options& o) {
  // Flags of the call (shape, dtype, features, device): explain and bench describe one call;
  // check and demo run fixed grids and workloads, so these would be ignored there.
  static const std::set<std::string> call = {"--batch",  "--seqlen", "--seqlen-q", "--seqlen-kv", "--heads",   "--heads-q",
                                             "--heads-kv", "--head-dim", "--head-dim-v", "--layout", "--causal", "--align",
                                             "--window", "--mask",   "--softcap",   "--scale",   "--lse",     "--device",
                                             "--varlen", "--varlen-kv"};
  static const std::set<std::string> everywhere = {"--plugin", "--help"};
  static const std::map<std::string, std::set<std::string>> own = {
      {"list", {}},
      {"explain", {"--dtype", "--backend", "--allow", "--deny"}},
      {"bench", {"--dtype", "--backend", "--allow", "--deny", "--threads", "--seed", "--min-time", "--reps"}},
      {"check", {"--backend", "--allow", "--deny", "--threads", "--seed", "--quick"}},
      {"demo", {"--dtype", "--backend", "--allow", "--deny", "--threads", "--seed", "--quick"}},
  };
  const auto it = own.find(o.command);
  if (it == own.end()) return;  // an unknown command is reported by main
  const bool takes_call = o.command == "explain" || o.command == "bench";
  for (const std::string& f : o.given)
    if (!everywhere.count(f) && !it->second.count(f) && !(takes_call && call.count(f)))
      throw usage_error(f + " does not apply to " + o.command + " (see attend --help)");
}

testing::case_spec to_case(const cli_options& o) {
  testing::case_spec c;
  c.dtype = o.dtype;
  c.layout = o.layout;
  c.batch = o.batch;
  c.seqlen_q = o.seqlen_q;
  c.seqlen_kv = o.seqlen_kv;
  c.heads_q = o.heads_q;
  c.heads_kv = o.heads_kv;
  c.head_dim_qk = o.head_dim_qk;
  c.head_dim_v = o.head_dim_v;
  c.causal = o.causal;
  c.alignment = o.alignment;
  c.window_left = o.window_left;
  c.window_right = o.window_right;
  c.mask = o.mask;
  c.mask_key_only = o.mask_keys;
  c.softcap = o.softcap;
  if (o.has_scale) c.maybe_scale = o.scale;
  c.lse = o.lse;
  c.varlen_q = o.varlen_q;
  c.varlen_kv = o.varlen_kv;
  c.device = o.device;
  c.seed = o.seed;
  return c;
}

}  // namespace attend::cli
