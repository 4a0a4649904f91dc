#pragma once

#include "options.h"

namespace attend::cli {

// Each returns the process exit status (0 ok, 1 failure). Errors of the library propagate as
// exceptions and are turned into one-line messages by main().
int run_list(const cli_options& o);
int run_explain(const cli_options& o);
int run_check(const cli_options& o);
int run_bench(const cli_options& o);
int run_demo(const cli_options& o);

}  // namespace attend::cli
