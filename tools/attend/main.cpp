// attend: the command-line tool. `attend --help` lists commands and flags.
#include <cstdio>
#include <exception>
#include <iostream>

#include "attend/registry.h"
#include "commands.h"

int main(int argc, char** argv) {
  using namespace attend::cli;
  try {
    const cli_options o = parse(argc, argv);
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
  } catch (const std::exception& e) {
    std::cerr << "attend: error: " << e.what() << '\n';
    return 1;
  }
}
