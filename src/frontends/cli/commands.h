// Subcommands of the dashlm CLI. Each adds itself to the app and, when chosen, sets the
// action that main() runs; actions return the process exit code.
#pragma once
#include <functional>

#include <CLI/CLI.hpp>

namespace dashlm::cli {

using Action = std::function<int()>;

void add_run_command(CLI::App& app, Action& action);
void add_inspect_command(CLI::App& app, Action& action);
void add_tokenize_command(CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);
void add_eval_command(CLI::App& app, Action& action);
void add_calibrate_command(CLI::App& app, Action& action);
void add_serve_command(CLI::App& app, Action& action);

}  // namespace dashlm::cli
