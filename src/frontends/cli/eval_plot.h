// Quality-versus-speedup scatter plots for `dashlm eval --plot`: one panel per task, one point
// per (configuration, length), coloured by halting policy, shaped by KV mode (filled circle:
// retain, hollow square: drop), larger for longer prompts. PNG (libpng, with a small built-in
// bitmap font for titles and axis numbers) or SVG.
#pragma once
#include <string>
#include <vector>

namespace dashlm::cli {

struct PlotPoint {
  double x = 0, y = 0;
  std::string policy;  // none, topk, threshold, random, attn (full prefill: "full")
  std::string kv;      // retain, drop or "" (full prefill)
  int size_rank = 0;   // 0 for the shortest length, growing with length
  std::string label;   // SVG tooltip
};

struct PlotPanel {
  std::string title;   // e.g. "NEEDLE: SCORE CHANGE"
  std::vector<PlotPoint> points;
};

// The check of the path (name, folder) that runs before any work.
void check_eval_plot_path(const std::string& path);
// .png or .svg by the file name; throws dashlm::Error otherwise. Written whole or not at all.
void write_eval_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title);

}  // namespace dashlm::cli
