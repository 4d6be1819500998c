#include "frontends/cli/eval_plot.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "frontends/cli/figure.h"

namespace dashlm::cli {

namespace {

// The policy a series belongs to: its first word ("query staged" -> "query").
std::string base_policy(const std::string& series) { return series.substr(0, series.find(' ')); }
bool is_variant(const std::string& series) { return series.find(' ') != std::string::npos; }

Rgb series_color(const std::string& series) {
  const std::string p = base_policy(series);
  Rgb c = p == "topk"        ? Rgb{31, 119, 180}
          : p == "threshold" ? Rgb{255, 127, 14}
          : p == "random"    ? Rgb{127, 127, 127}
          : p == "attn"      ? Rgb{44, 160, 44}
          : p == "query"     ? Rgb{214, 39, 40}
          : p == "none"      ? Rgb{148, 103, 189}
                             : Rgb{0, 0, 0};
  // Variants: a shade of the policy's colour (and a line style: series_dash): staged darker,
  // fused darker still, stable lighter.
  if (series.find("stable") != std::string::npos) {
    for (auto& v : c) v = static_cast<uint8_t>(v + (255 - v) * 0.5);
  } else if (is_variant(series)) {
    const double f = series.find("fused") != std::string::npos ? 0.35 : 0.6;
    for (auto& v : c) v = static_cast<uint8_t>(v * f);
  }
  return c;
}

void series_dash(cairo_t* cr, const std::string& series) {
  static const double dashed[] = {6, 3}, dotted[] = {2, 2}, dash_dot[] = {6, 2, 2, 2};
  if (series.find("staged") != std::string::npos) cairo_set_dash(cr, dashed, 2, 0);
  else if (series.find("fused") != std::string::npos) cairo_set_dash(cr, dotted, 2, 0);
  else if (series.find("stable") != std::string::npos) cairo_set_dash(cr, dash_dot, 4, 0);
  else cairo_set_dash(cr, nullptr, 0, 0);
}

double marker_radius(int rank) { return 3.5 + std::min(rank, 4) * 1.2; }

void marker(cairo_t* cr, double x, double y, double r, const std::string& series, const std::string& kv) {
  cairo_set_dash(cr, nullptr, 0, 0);
  set_color(cr, series_color(series));
  if (series == "full") {
    cairo_set_line_width(cr, 2.5);
    cairo_move_to(cr, x - r, y - r);
    cairo_line_to(cr, x + r, y + r);
    cairo_move_to(cr, x - r, y + r);
    cairo_line_to(cr, x + r, y - r);
    cairo_stroke(cr);
  } else if (kv == "drop") {
    cairo_set_line_width(cr, 2);
    cairo_rectangle(cr, x - r, y - r, 2 * r, 2 * r);
    cairo_stroke(cr);
  } else {
    cairo_arc(cr, x, y, r, 0, 2 * M_PI);
    cairo_fill(cr);
  }
}

struct Range {
  double lo, hi;
};

// The data's range with a margin, always holding `must` (x: speedup 1, y: change 0).
Range axis_range(const std::vector<double>& v, double must) {
  double lo = must, hi = must;
  for (double x : v) {
    if (std::isfinite(x)) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
  }
  if (hi - lo < 1e-9) {
    lo -= 0.5;
    hi += 0.5;
  }
  const double pad = 0.06 * (hi - lo);
  return {lo - pad, hi + pad};
}

constexpr double kPanelW = 400, kPanelH = 320, kLeft = 62, kRight = 14, kTop = 28, kBottom = 44, kTitleH = 40;

struct Frame {
  double x0, y0;
  Range xr, yr;
  double px(double x) const { return x0 + kLeft + (x - xr.lo) / (xr.hi - xr.lo) * (kPanelW - kLeft - kRight); }
  double py(double y) const { return y0 + kPanelH - kBottom - (y - yr.lo) / (yr.hi - yr.lo) * (kPanelH - kTop - kBottom); }
};

void draw_panel(cairo_t* cr, const PlotPanel& panel, const Frame& f, const std::string& x_label) {
  const double ax0 = f.x0 + kLeft, ax1 = f.x0 + kPanelW - kRight, ay0 = f.y0 + kTop, ay1 = f.y0 + kPanelH - kBottom;
  cairo_set_source_rgb(cr, 0, 0, 0);
  draw_text(cr, ax0, f.y0 + 8, panel.title, 13, 0, 0, true);
  cairo_set_line_width(cr, 1);
  const auto xt = nice_ticks(f.xr.lo, f.xr.hi), yt = nice_ticks(f.yr.lo, f.yr.hi);
  for (double t : xt) {
    cairo_set_source_rgb(cr, 0.91, 0.91, 0.91);
    cairo_move_to(cr, f.px(t), ay0);
    cairo_line_to(cr, f.px(t), ay1);
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    draw_text(cr, f.px(t), ay1 + 4, tick_label(t, xt), 11, 0.5, 0);
  }
  for (double t : yt) {
    cairo_set_source_rgb(cr, 0.91, 0.91, 0.91);
    cairo_move_to(cr, ax0, f.py(t));
    cairo_line_to(cr, ax1, f.py(t));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0, 0, 0);
    draw_text(cr, ax0 - 5, f.py(t), tick_label(t, yt), 11, 1, 0.5);
  }
  cairo_set_source_rgb(cr, 0.55, 0.55, 0.55);  // no speedup, no change
  cairo_move_to(cr, f.px(1.0), ay0);
  cairo_line_to(cr, f.px(1.0), ay1);
  cairo_move_to(cr, ax0, f.py(0.0));
  cairo_line_to(cr, ax1, f.py(0.0));
  cairo_stroke(cr);
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_rectangle(cr, ax0, ay0, ax1 - ax0, ay1 - ay0);
  cairo_stroke(cr);
  draw_text(cr, (ax0 + ax1) / 2, ay1 + 22, x_label, 12, 0.5, 0);
  draw_text(cr, f.x0 + 12, (ay0 + ay1) / 2, "change vs full prefill", 12, 0.5, 0.5, false, -M_PI / 2);

  cairo_save(cr);
  cairo_rectangle(cr, ax0, ay0, ax1 - ax0, ay1 - ay0);
  cairo_clip(cr);
  // Curves: each series, KV mode and length through its points by speedup.
  std::map<std::tuple<std::string, std::string, int>, std::vector<const PlotPoint*>> curves;
  for (const PlotPoint& p : panel.points)
    if (p.series != "full" && std::isfinite(p.x) && std::isfinite(p.y)) curves[{p.series, p.kv, p.size_rank}].push_back(&p);
  for (auto& [key, pts] : curves) {
    std::sort(pts.begin(), pts.end(), [](const PlotPoint* a, const PlotPoint* b) { return a->x < b->x; });
    if (pts.size() < 2) continue;
    set_color(cr, series_color(std::get<0>(key)), 0.8);
    series_dash(cr, std::get<0>(key));
    cairo_set_line_width(cr, 1.5);
    cairo_move_to(cr, f.px(pts[0]->x), f.py(pts[0]->y));
    for (size_t i = 1; i < pts.size(); ++i) cairo_line_to(cr, f.px(pts[i]->x), f.py(pts[i]->y));
    cairo_stroke(cr);
  }
  cairo_set_dash(cr, nullptr, 0, 0);
  for (const PlotPoint& p : panel.points) {  // intervals, then markers on top
    if (!std::isfinite(p.x) || !std::isfinite(p.y_lo) || !std::isfinite(p.y_hi)) continue;
    set_color(cr, series_color(p.series), 0.45);
    cairo_set_line_width(cr, 1.2);
    const double x = f.px(p.x);
    cairo_move_to(cr, x, f.py(p.y_lo));
    cairo_line_to(cr, x, f.py(p.y_hi));
    cairo_move_to(cr, x - 3, f.py(p.y_lo));
    cairo_line_to(cr, x + 3, f.py(p.y_lo));
    cairo_move_to(cr, x - 3, f.py(p.y_hi));
    cairo_line_to(cr, x + 3, f.py(p.y_hi));
    cairo_stroke(cr);
  }
  for (const PlotPoint& p : panel.points)
    if (std::isfinite(p.x) && std::isfinite(p.y)) marker(cr, f.px(p.x), f.py(p.y), marker_radius(p.size_rank), p.series, p.kv);
  cairo_restore(cr);
}

// The legend's entries in order: series (colour, line style), KV modes (shape), lengths (size).
struct LegendEntry {
  std::string text;
  std::string series;  // its colour and line ("" for the shape entries: black, no line)
  std::string kv;      // the marker's shape
  double radius = 4.5;
};

std::vector<LegendEntry> legend(const std::vector<PlotPanel>& panels) {
  std::vector<std::string> series;
  std::map<int, std::string> lengths;
  bool retain = false, drop = false;
  for (const PlotPanel& pn : panels) {
    for (const PlotPoint& p : pn.points) {
      if (std::find(series.begin(), series.end(), p.series) == series.end()) series.push_back(p.series);
      if (p.series == "full") continue;
      lengths[p.size_rank] = p.length;
      retain |= p.kv == "retain";
      drop |= p.kv == "drop";
    }
  }
  std::stable_sort(series.begin(), series.end(), [](const std::string& a, const std::string& b) { return (a == "full") > (b == "full"); });
  std::vector<LegendEntry> out;
  for (const std::string& s : series) out.push_back({s == "full" ? "full prefill" : s, s, "retain"});
  if (retain) out.push_back({"retain (filled)", "", "retain", marker_radius(1)});
  if (drop) out.push_back({"drop (hollow)", "", "drop", marker_radius(1)});
  for (const auto& [rank, len] : lengths) out.push_back({len + " tokens", "", "retain", marker_radius(rank)});
  return out;
}

constexpr double kLegendRowH = 22;

// Where each entry goes, rows wrapped at `width` (y as a row index), and the number of rows.
struct LegendLayout {
  std::vector<std::pair<double, int>> at;
  int rows = 1;
};

LegendLayout legend_layout(cairo_t* cr, const std::vector<LegendEntry>& entries, double width) {
  LegendLayout l;
  double x = 12;
  for (const LegendEntry& e : entries) {
    const double w = 40 + text_width(cr, e.text, 12) + 18;
    if (x + w > width && x > 12) {
      ++l.rows;
      x = 12;
    }
    l.at.emplace_back(x, l.rows - 1);
    x += w;
  }
  return l;
}

void draw_legend(cairo_t* cr, const std::vector<LegendEntry>& entries, double y0, double width) {
  const LegendLayout l = legend_layout(cr, entries, width);
  for (size_t i = 0; i < entries.size(); ++i) {
    const LegendEntry& e = entries[i];
    const double x = l.at[i].first, y = y0 + l.at[i].second * kLegendRowH;
    if (!e.series.empty() && e.series != "full") {
      set_color(cr, series_color(e.series));
      series_dash(cr, e.series);
      cairo_set_line_width(cr, 1.5);
      cairo_move_to(cr, x, y);
      cairo_line_to(cr, x + 32, y);
      cairo_stroke(cr);
    }
    marker(cr, x + 16, y, e.radius, e.series, e.kv);
    cairo_set_source_rgb(cr, 0, 0, 0);
    draw_text(cr, x + 40, y, e.text, 12, 0, 0.5);
  }
}

void draw_plot(cairo_t* cr, const std::vector<PlotPanel>& panels, int cols, double width, const std::vector<LegendEntry>& entries,
               const std::string& x_label, const std::string& title) {
  cairo_set_source_rgb(cr, 0, 0, 0);
  draw_text(cr, 12, 10, title, 16, 0, 0, true);
  for (size_t i = 0; i < panels.size(); ++i) {
    std::vector<double> xs, ys;
    for (const PlotPoint& p : panels[i].points) {
      xs.push_back(p.x);
      ys.insert(ys.end(), {p.y, p.y_lo, p.y_hi});
    }
    const Frame f{static_cast<double>(i % static_cast<size_t>(cols)) * kPanelW, kTitleH + static_cast<double>(i / static_cast<size_t>(cols)) * kPanelH,
                  axis_range(xs, 1.0), axis_range(ys, 0.0)};
    draw_panel(cr, panels[i], f, x_label);
  }
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  draw_legend(cr, entries, kTitleH + rows * kPanelH + 16, width);
}

}  // namespace

void check_eval_plot_path(const std::string& path) { check_output_path(path, "--plot", {".png", ".svg"}); }

void write_eval_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title) {
  check_eval_plot_path(path);
  if (panels.empty()) fail("--plot: nothing to draw");
  const int cols = std::min<int>(3, static_cast<int>(panels.size()));
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  const double width = cols * kPanelW;
  const std::vector<LegendEntry> entries = legend(panels);
  int legend_h = 0;
  {  // measure the legend's rows with a scratch context
    cairo_surface_t* s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, 1, 1);
    cairo_t* cr = cairo_create(s);
    legend_h = static_cast<int>(legend_layout(cr, entries, width).rows * kLegendRowH + 16);
    cairo_destroy(cr);
    cairo_surface_destroy(s);
  }
  const int height = static_cast<int>(kTitleH + rows * kPanelH) + legend_h;
  write_figure(path, static_cast<int>(width), height, [&](cairo_t* cr) { draw_plot(cr, panels, cols, width, entries, x_label, title); });
}

}  // namespace dashlm::cli
