// The halting map (run --halting-map, the server's chat page), drawn with cairo: tokens across,
// layers down; on top where tokens ran (light) or had halted (dark), below their log deltas; each
// panel with its axes, tick labels and colour scale.
#include <algorithm>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "frontends/cli/figure.h"
#include "frontends/cli/halting_output.h"

namespace dashlm::cli {

namespace {

// Light = active, dark blue = halted.
Rgb active_color(double frac) {
  const double a = std::clamp(frac, 0.0, 1.0);
  return {static_cast<uint8_t>(30 + a * 220), static_cast<uint8_t>(40 + a * 210), static_cast<uint8_t>(90 + a * 160)};
}
const Rgb kNotComputed{200, 200, 200};

// The two panels as cells: rows = layers, columns = token bins.
struct MapCells {
  int bins = 0, layers = 0;
  std::vector<double> active;  // fraction of the bin's tokens that ran the layer
  std::vector<double> delta;   // normalised log delta in [0, 1], NaN if none ran
};

MapCells map_cells(const HaltingTrace& tr, int max_bins) {
  MapCells m;
  m.layers = tr.n_layer;
  m.bins = static_cast<int>(std::min<int64_t>(tr.n_tokens, max_bins));
  const auto cells = static_cast<size_t>(m.bins * m.layers);
  m.active.assign(cells, 0.0);
  m.delta.assign(cells, std::nan(""));
  std::vector<double> sum(cells, 0.0);
  std::vector<int> cnt(cells, 0);
  std::vector<int64_t> bin_size(static_cast<size_t>(m.bins), 0);
  for (int64_t t = 0; t < tr.n_tokens; ++t) {
    const int b = static_cast<int>(t * m.bins / tr.n_tokens);
    ++bin_size[static_cast<size_t>(b)];
    for (int l = 0; l < m.layers; ++l) {
      const size_t c = static_cast<size_t>(l * m.bins + b);
      if (l <= tr.halted_after[static_cast<size_t>(t)]) m.active[c] += 1.0;
      const float dv = tr.delta[static_cast<size_t>(t * tr.n_layer + l)];
      if (std::isfinite(dv) && dv > 0) {
        sum[c] += std::log(static_cast<double>(dv));
        ++cnt[c];
      }
    }
  }
  for (int l = 0; l < m.layers; ++l) {
    double lo = INFINITY, hi = -INFINITY;
    for (int b = 0; b < m.bins; ++b) {
      const size_t c = static_cast<size_t>(l * m.bins + b);
      m.active[c] /= static_cast<double>(std::max<int64_t>(1, bin_size[static_cast<size_t>(b)]));
      if (cnt[c]) {
        m.delta[c] = sum[c] / cnt[c];
        lo = std::min(lo, m.delta[c]);
        hi = std::max(hi, m.delta[c]);
      }
    }
    for (int b = 0; b < m.bins; ++b) {
      double& v = m.delta[static_cast<size_t>(l * m.bins + b)];
      if (!std::isnan(v)) v = hi > lo ? (v - lo) / (hi - lo) : 0.5;
    }
  }
  return m;
}

// Geometry: the plot area is kPlotW wide; each panel a row of cells per layer.
constexpr int kPlotW = 1000, kLeft = 64, kRight = 150, kTop = 58, kPanelGap = 58, kBottom = 52;

struct MapLayout {
  int row_h, panel_h, width, height;
  int panel_y(int panel) const { return kTop + panel * (panel_h + kPanelGap); }
};

MapLayout layout(const MapCells& m) {
  MapLayout g{};
  g.row_h = std::max(3, 300 / std::max(1, m.layers));
  g.panel_h = g.row_h * m.layers;
  g.width = kLeft + kPlotW + kRight;
  g.height = kTop + 2 * g.panel_h + kPanelGap + kBottom;
  return g;
}

// One panel's cells as an image at its displayed size (so PNG and SVG show the same pixels).
void paint_cells(cairo_t* cr, const MapCells& m, const MapLayout& g, int panel) {
  using Image = std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)>;
  Image img(cairo_image_surface_create(CAIRO_FORMAT_RGB24, kPlotW, g.panel_h), &cairo_surface_destroy);
  cairo_surface_flush(img.get());
  unsigned char* data = cairo_image_surface_get_data(img.get());
  const int stride = cairo_image_surface_get_stride(img.get());
  for (int y = 0; y < g.panel_h; ++y) {
    const int l = y / g.row_h;
    auto* row = reinterpret_cast<uint32_t*>(data + static_cast<ptrdiff_t>(y) * stride);
    for (int x = 0; x < kPlotW; ++x) {
      const int b = std::min(m.bins - 1, x * m.bins / kPlotW);
      const size_t c = static_cast<size_t>(l * m.bins + b);
      const Rgb col = panel == 0 ? active_color(m.active[c]) : std::isnan(m.delta[c]) ? kNotComputed : ramp_color(m.delta[c]);
      row[x] = (uint32_t{col[0]} << 16) | (uint32_t{col[1]} << 8) | col[2];
    }
  }
  cairo_surface_mark_dirty(img.get());
  cairo_set_source_surface(cr, img.get(), kLeft, g.panel_y(panel));
  cairo_paint(cr);
}

// A vertical colour scale beside a panel, with its two end labels.
void color_scale(cairo_t* cr, double x, double y, double h, const std::function<Rgb(double)>& color, const std::string& top,
                 const std::string& bottom) {
  const int steps = 64;
  for (int i = 0; i < steps; ++i) {
    set_color(cr, color(1.0 - (i + 0.5) / steps));
    cairo_rectangle(cr, x, y + h * i / steps, 14, h / steps + 0.5);
    cairo_fill(cr);
  }
  cairo_set_source_rgb(cr, 0, 0, 0);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, x + 0.5, y + 0.5, 14, h);
  cairo_stroke(cr);
  draw_text(cr, x + 20, y, top, 11);
  draw_text(cr, x + 20, y + h, bottom, 11, 0, 1);
}

void draw_map(cairo_t* cr, const MapCells& m, const MapLayout& g, const HaltingTrace& tr, const std::string& title) {
  cairo_set_source_rgb(cr, 0, 0, 0);
  draw_text(cr, kLeft, 10, fmt::format("{}: {} document tokens x {} layers", title, tr.n_tokens, tr.n_layer), 14, 0, 0, true);
  const char* panel_titles[2] = {"where tokens ran: active (light) or halted (dark)", "log delta ||U||, normalised per layer"};
  const auto xt = nice_ticks(0, static_cast<double>(tr.n_tokens), 8);
  const auto yt = nice_ticks(0, m.layers - 1, std::min(6, m.layers));
  for (int panel = 0; panel < 2; ++panel) {
    const double y0 = g.panel_y(panel);
    paint_cells(cr, m, g, panel);
    cairo_set_source_rgb(cr, 0, 0, 0);
    draw_text(cr, kLeft, y0 - 6, panel_titles[panel], 12, 0, 1);
    cairo_set_line_width(cr, 1);
    cairo_rectangle(cr, kLeft - 0.5, y0 - 0.5, kPlotW + 1, g.panel_h + 1);
    cairo_stroke(cr);
    // Layer axis: layer l is the l-th row from the top, labelled at the row's middle.
    for (double t : yt) {
      const double y = y0 + (t + 0.5) * g.row_h;
      cairo_move_to(cr, kLeft - 5, y);
      cairo_line_to(cr, kLeft - 1, y);
      cairo_stroke(cr);
      draw_text(cr, kLeft - 8, y, tick_label(t, yt), 11, 1, 0.5);
    }
    draw_text(cr, 16, y0 + g.panel_h / 2.0, "layer", 12, 0.5, 0.5, false, -M_PI / 2);
    // Token axis under each panel.
    for (double t : xt) {
      const double x = kLeft + t / static_cast<double>(tr.n_tokens) * kPlotW;
      cairo_move_to(cr, x, y0 + g.panel_h + 1);
      cairo_line_to(cr, x, y0 + g.panel_h + 5);
      cairo_stroke(cr);
      draw_text(cr, x, y0 + g.panel_h + 7, tick_label(t, xt), 11, 0.5, 0);
    }
    const double sx = kLeft + kPlotW + 16;
    if (panel == 0) {
      color_scale(cr, sx, y0, g.panel_h, active_color, "all ran", "all halted");
    } else {
      color_scale(cr, sx, y0, g.panel_h, ramp_color, "largest", "smallest");
      set_color(cr, kNotComputed);
      cairo_rectangle(cr, sx, y0 + g.panel_h + 12, 14, 10);
      cairo_fill(cr);
      cairo_set_source_rgb(cr, 0, 0, 0);
      draw_text(cr, sx + 20, y0 + g.panel_h + 10, "not computed", 11);
    }
  }
  draw_text(cr, kLeft + kPlotW / 2.0, g.height - 8, "document token position", 12, 0.5, 1);
}

}  // namespace

void check_halting_map_path(const std::string& path) { check_output_path(path, "--halting-map", {".png", ".svg"}); }

std::string halting_map_svg(const HaltingTrace& tr, const std::string& title) {
  if (tr.n_tokens == 0 || tr.n_layer == 0) return "";
  const MapCells m = map_cells(tr, kPlotW);
  const MapLayout g = layout(m);
  return figure_svg(g.width, g.height, [&](cairo_t* cr) { draw_map(cr, m, g, tr, title); });
}

void write_halting_map(const std::string& path, const HaltingTrace& tr, const std::string& title) {
  check_halting_map_path(path);
  if (tr.n_tokens == 0 || tr.n_layer == 0) fail("--halting-map: nothing to draw");
  const MapCells m = map_cells(tr, kPlotW);
  const MapLayout g = layout(m);
  write_figure(path, g.width, g.height, [&](cairo_t* cr) { draw_map(cr, m, g, tr, title); });
}

}  // namespace dashlm::cli
