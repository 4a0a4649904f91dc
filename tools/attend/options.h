// Flags of the attend CLI: one table of flags, parsed into cli_options; bad flags throw
// usage_error (exit 2 with a one-line reason).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attend/attend.h"
#include "attend/check.h"

namespace attend::cli {

struct usage_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct cli_options {
  std::string command;
  std::vector<std::string> given;  // the flags on the command line, in order (check_flags_apply)
  std::string backend_source = "--backend";  // or ATTEND_BACKEND, when that replaced it (main)
  // the call
  std::int64_t batch = 1, seqlen_q = 1024, seqlen_kv = 1024, heads_q = 8, heads_kv = 8, head_dim_qk = 64, head_dim_v = 64;
  attend::dtype dtype = attend::dtype::bf16;
  attend::layout layout = attend::layout::bshd;
  bool causal = false;
  attend::alignment alignment = attend::alignment::top_left;
  std::int64_t window_left = -1, window_right = -1;
  testing::mask_type mask = testing::mask_type::none;
  bool mask_keys = false;  // the mask has one row for every query ([B, H, 1, Skv])
  double softcap = 0;
  bool has_scale = false;
  double scale = 0;
  bool lse = false;
  attend::device device{};
  std::vector<std::int32_t> varlen_q, varlen_kv;
  // selection and running
  std::string backend = "auto";
  std::vector<std::string> allow, deny;
  std::vector<std::string> plugins;  // shared libraries to load before the command
  int threads = 0;
  // check / bench / demo
  std::uint64_t seed = 0;
  bool seed_given = false;
  bool quick = false;
  double min_time = 0.5;
  int reps = 5;
  bool help = false;
};

cli_options parse(int argc, char** argv);
// The names --backend lists (one, or a comma-separated list for check and bench).
std::vector<std::string> backend_names(const cli_options& o);
// Throws usage_error for a flag the command would ignore (Nothing is silently ignored).
void check_flags_apply(const cli_options& o);
std::string help_text();

// The call described by the flags as a case_spec (random inputs).
testing::case_spec to_case(const cli_options& o);

}  // namespace attend::cli
