// attend: the command-line tool. `attend --help` lists commands and flags.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "attend/registry.h"
#include "commands.h"

int main(int argc, char** argv) {
  using namespace attend::cli;
  try {
    cli_options o = parse(argc, argv);
    // ATTEND_BACKEND replaces --backend (debugging) for every command that selects backends, as
    // the library's selection does for explain and for Python callers (`list` selects none).
    if (const char* env = std::getenv("ATTEND_BACKEND"); env != nullptr && *env != '\0' && o.command != "list") {
      o.backend = env;
      o.backend_source = "ATTEND_BACKEND";
    }
    if (o.help || o.command == "help") {
      std::cout << help_text();
      return 0;
    }
    if (o.command.empty()) throw usage_error("missing command (list, explain, check, bench, demo; see attend --help)");
    for (const std::string& path : o.plugins) {
      try {
        attend::registry::global().add(attend::load_plugin(path));
      } catch (const attend::invalid_argument& e) {
        throw usage_error(e.what());
      }
    }
    // Every backend name given must name one (after plugins loaded): an unknown or empty name is a
    // usage error, the same for every command, not "no backend can run this call".
    auto check_names = [](const std::string& flag, const std::vector<std::string>& names, bool choices) {
      for (const std::string& n : names) {
        const bool choice = n == "auto" || n == "measure";
        if (choice && choices && names.size() > 1)
          throw usage_error(flag + ": '" + n + "' stands alone; a list names backends (see attend list)");
        if (!(choices && choice) && !attend::registry::global().find(n))
          throw usage_error(flag + ": unknown backend '" + n + "' (see attend list)");
      }
    };
    check_names(o.backend_source, backend_names(o), true);
    if (o.command == "explain" && backend_names(o).size() > 1)
      throw usage_error(o.backend_source + ": explain takes one backend name, auto or measure (lists are for check and bench)");
    check_names("--allow", o.allow, false);
    check_names("--deny", o.deny, false);
    check_flags_apply(o);
    if (o.command == "list") return run_list(o);
    if (o.command == "explain") return run_explain(o);
    if (o.command == "check") return run_check(o);
    if (o.command == "bench") return run_bench(o);
    if (o.command == "demo") return run_demo(o);
    throw usage_error("unknown command '" + o.command + "' (list, explain, check, bench, demo)");
  } catch (const usage_error& e) {
    std::cerr << "attend: " << e.what() << '\n';
    return 2;
  } catch (const attend::unsupported& e) {
    // One line first (the summary), then one line per backend.
    std::cerr << "attend: " << e.what() << '\n';
    return 1;
  } catch (const attend::invalid_argument& e) {
    std::cerr << "attend: invalid call: " << e.what() << '\n';
    return 2;
  } catch (const std::bad_alloc&) {
    std::cerr << "attend: out of memory: this call's tensors or workspace do not fit (std::bad_alloc)\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "attend: error: " << e.what() << '\n';
    return 1;
  }
}
