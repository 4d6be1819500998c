// Quality-versus-speedup plots for `dashlm eval --plot` (the Pareto view of halting): one panel
// per task; in each, one curve per halting family (policy, with "staged", "fused" or "stable" where
// the configuration decides in stages, fuses the delta or picks its layer), KV mode and prompt
// length, through that family's configurations sorted by speedup, each point with the 95%
// interval of its paired change against full prefill. Drawn with cairo (figure.h), PNG or SVG.
#pragma once
#include <string>
#include <vector>

namespace dashlm::cli {

struct PlotPoint {
  double x = 0, y = 0;             // speedup; change against full prefill
  double y_lo = 0, y_hi = 0;       // the change's 95% interval (NaN: none)
  std::string series;              // e.g. "query", "query staged", "topk" ("full": full prefill)
  std::string kv;                  // retain, drop or "" (full prefill)
  int size_rank = 0;               // 0 for the shortest length, growing with length
  std::string length;              // e.g. "16k", for the legend
};

struct PlotPanel {
  std::string title;               // e.g. "needle: score change"
  std::vector<PlotPoint> points;
};

// The check of the path (name, folder) that runs before any work; fails at once where dashlm was
// built without cairo.
void check_eval_plot_path(const std::string& path);
// .png or .svg by the file name; throws dashlm::Error otherwise. Written whole or not at all.
void write_eval_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title);

}  // namespace dashlm::cli
