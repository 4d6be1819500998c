// Where dashlm was built without cairo: the pictures are refused by name, before any work.
#include "common/error.h"
#include "frontends/cli/eval_plot.h"
#include "frontends/cli/halting_output.h"

namespace dashlm::cli {

namespace {
[[noreturn]] void unavailable(const char* flag) {
  fail("{}: this dashlm was built without cairo (Debian: libcairo2-dev), so it draws no pictures; rebuild with it installed", flag);
}
}  // namespace

void check_eval_plot_path(const std::string&) { unavailable("--plot"); }
void write_eval_plot(const std::string&, const std::vector<PlotPanel>&, const std::string&, const std::string&) { unavailable("--plot"); }
void check_halting_map_path(const std::string&) { unavailable("--halting-map"); }
void write_halting_map(const std::string&, const HaltingTrace&, const std::string&) { unavailable("--halting-map"); }
std::string halting_map_svg(const HaltingTrace&, const std::string&) { return ""; }

}  // namespace dashlm::cli
