// dashlm: command-line frontend.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/error.h"
#include "common/json.h"
#include "frontends/cli/commands.h"
#include "frontends/cli/common.h"

int main(int argc, char** argv) {
  CLI::App app{"dashlm: long-context prefill with Delta Attention Selective Halting"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "dashlm 0.1.0");
  dashlm::cli::Action action;
  dashlm::cli::add_run_command(app, action);
  dashlm::cli::add_inspect_command(app, action);
  dashlm::cli::add_tokenize_command(app, action);
  dashlm::cli::add_bench_command(app, action);
  dashlm::cli::add_eval_command(app, action);
  dashlm::cli::add_calibrate_command(app, action);
  dashlm::cli::add_serve_command(app, action);
  dashlm::cli::add_compute_option(app);
  dashlm::cli::check_int_options(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, non-zero: "error: The following argument was not expected: --bogus".
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  }
  try {
    return action ? action() : 0;
  } catch (const dashlm::Error& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  } catch (const nlohmann::json::exception& e) {
    // A JSON value of an unexpected shape that no check caught: still one line, without the
    // library's "[json.exception...]" tag.
    fmt::print(stderr, "error: malformed JSON: {}\n", dashlm::json_error_text(e));
    return 1;
  } catch (const std::bad_alloc&) {
    fmt::print(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
