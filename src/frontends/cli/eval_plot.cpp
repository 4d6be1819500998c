#include "frontends/cli/eval_plot.h"

#include <png.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"

namespace dashlm::cli {

namespace {

using Rgb = std::array<uint8_t, 3>;

Rgb policy_color(const std::string& p) {
  if (p == "topk") return {31, 119, 180};
  if (p == "threshold") return {255, 127, 14};
  if (p == "random") return {127, 127, 127};
  if (p == "attn") return {44, 160, 44};
  if (p == "query") return {214, 39, 40};
  if (p == "none") return {148, 103, 189};
  return {0, 0, 0};  // full prefill
}

std::string hex(Rgb c) { return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]); }

// Axis range with a margin, always containing `must` (x: speedup 1, y: change 0).
struct Range {
  double lo, hi;
};

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
  const double pad = 0.08 * (hi - lo);
  return {lo - pad, hi + pad};
}

// About five ticks at 1, 2 or 5 times a power of ten.
std::vector<double> ticks(Range r) {
  const double raw = (r.hi - r.lo) / 5.0;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  std::vector<double> t;
  for (double x = std::ceil(r.lo / step) * step; x <= r.hi + 1e-12; x += step) t.push_back(std::fabs(x) < step * 1e-6 ? 0.0 : x);
  return t;
}

std::string tick_label(double v, double step) {
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 4);
  return fmt::format("{:.{}f}", v, decimals);
}

// ---- a 5x7 bitmap font (upper case, digits and a few signs), drawn by hand --------------------

const std::map<char, std::array<const char*, 7>>& font() {
  static const std::map<char, std::array<const char*, 7>> f = {
      {'0', {"01110", "10001", "10011", "10101", "11001", "10001", "01110"}},
      {'1', {"00100", "01100", "00100", "00100", "00100", "00100", "01110"}},
      {'2', {"01110", "10001", "00001", "00010", "00100", "01000", "11111"}},
      {'3', {"11111", "00010", "00100", "00010", "00001", "10001", "01110"}},
      {'4', {"00010", "00110", "01010", "10010", "11111", "00010", "00010"}},
      {'5', {"11111", "10000", "11110", "00001", "00001", "10001", "01110"}},
      {'6', {"00110", "01000", "10000", "11110", "10001", "10001", "01110"}},
      {'7', {"11111", "00001", "00010", "00100", "01000", "01000", "01000"}},
      {'8', {"01110", "10001", "10001", "01110", "10001", "10001", "01110"}},
      {'9', {"01110", "10001", "10001", "01111", "00001", "00010", "01100"}},
      {'A', {"01110", "10001", "10001", "11111", "10001", "10001", "10001"}},
      {'B', {"11110", "10001", "10001", "11110", "10001", "10001", "11110"}},
      {'C', {"01110", "10001", "10000", "10000", "10000", "10001", "01110"}},
      {'D', {"11100", "10010", "10001", "10001", "10001", "10010", "11100"}},
      {'E', {"11111", "10000", "10000", "11110", "10000", "10000", "11111"}},
      {'F', {"11111", "10000", "10000", "11110", "10000", "10000", "10000"}},
      {'G', {"01110", "10001", "10000", "10111", "10001", "10001", "01111"}},
      {'H', {"10001", "10001", "10001", "11111", "10001", "10001", "10001"}},
      {'I', {"01110", "00100", "00100", "00100", "00100", "00100", "01110"}},
      {'J', {"00111", "00010", "00010", "00010", "00010", "10010", "01100"}},
      {'K', {"10001", "10010", "10100", "11000", "10100", "10010", "10001"}},
      {'L', {"10000", "10000", "10000", "10000", "10000", "10000", "11111"}},
      {'M', {"10001", "11011", "10101", "10101", "10001", "10001", "10001"}},
      {'N', {"10001", "10001", "11001", "10101", "10011", "10001", "10001"}},
      {'O', {"01110", "10001", "10001", "10001", "10001", "10001", "01110"}},
      {'P', {"11110", "10001", "10001", "11110", "10000", "10000", "10000"}},
      {'Q', {"01110", "10001", "10001", "10001", "10101", "10010", "01101"}},
      {'R', {"11110", "10001", "10001", "11110", "10100", "10010", "10001"}},
      {'S', {"01111", "10000", "10000", "01110", "00001", "00001", "11110"}},
      {'T', {"11111", "00100", "00100", "00100", "00100", "00100", "00100"}},
      {'U', {"10001", "10001", "10001", "10001", "10001", "10001", "01110"}},
      {'V', {"10001", "10001", "10001", "10001", "10001", "01010", "00100"}},
      {'W', {"10001", "10001", "10001", "10101", "10101", "10101", "01010"}},
      {'X', {"10001", "10001", "01010", "00100", "01010", "10001", "10001"}},
      {'Y', {"10001", "10001", "01010", "00100", "00100", "00100", "00100"}},
      {'Z', {"11111", "00001", "00010", "00100", "01000", "10000", "11111"}},
      {'.', {"00000", "00000", "00000", "00000", "00000", "01100", "01100"}},
      {',', {"00000", "00000", "00000", "00000", "01100", "00100", "01000"}},
      {'-', {"00000", "00000", "00000", "11111", "00000", "00000", "00000"}},
      {'+', {"00000", "00100", "00100", "11111", "00100", "00100", "00000"}},
      {':', {"00000", "01100", "01100", "00000", "01100", "01100", "00000"}},
      {'(', {"00010", "00100", "01000", "01000", "01000", "00100", "00010"}},
      {')', {"01000", "00100", "00010", "00010", "00010", "00100", "01000"}},
      {'/', {"00000", "00001", "00010", "00100", "01000", "10000", "00000"}},
      {'=', {"00000", "00000", "11111", "00000", "11111", "00000", "00000"}},
      {'_', {"00000", "00000", "00000", "00000", "00000", "00000", "11111"}},
  };
  return f;
}

class Canvas {
 public:
  Canvas(int w, int h) : w_(w), h_(h), px_(static_cast<size_t>(w * h * 3), 255) {}
  int width() const { return w_; }
  int height() const { return h_; }

  void set(int x, int y, Rgb c) {
    if (x < 0 || y < 0 || x >= w_ || y >= h_) return;
    std::copy(c.begin(), c.end(), px_.begin() + (static_cast<ptrdiff_t>(y) * w_ + x) * 3);
  }
  void rect(int x0, int y0, int w, int h, Rgb c) {
    for (int y = y0; y < y0 + h; ++y)
      for (int x = x0; x < x0 + w; ++x) set(x, y, c);
  }
  void hline(int x0, int x1, int y, Rgb c) {
    for (int x = std::min(x0, x1); x <= std::max(x0, x1); ++x) set(x, y, c);
  }
  void vline(int x, int y0, int y1, Rgb c) {
    for (int y = std::min(y0, y1); y <= std::max(y0, y1); ++y) set(x, y, c);
  }
  void disc(int cx, int cy, int r, Rgb c) {
    for (int y = -r; y <= r; ++y)
      for (int x = -r; x <= r; ++x)
        if (x * x + y * y <= r * r + r) set(cx + x, cy + y, c);
  }
  void square(int cx, int cy, int r, Rgb c, int thick) {
    for (int t = 0; t < thick; ++t) {
      hline(cx - r, cx + r, cy - r + t, c);
      hline(cx - r, cx + r, cy + r - t, c);
      vline(cx - r + t, cy - r, cy + r, c);
      vline(cx + r - t, cy - r, cy + r, c);
    }
  }
  void cross(int cx, int cy, int r, Rgb c) {
    for (int i = -r; i <= r; ++i) {
      set(cx + i, cy + i, c);
      set(cx + i, cy - i, c);
      set(cx + i + 1, cy + i, c);
      set(cx + i + 1, cy - i, c);
    }
  }
  // Text in the bitmap font; returns the width drawn. Lower case is drawn as upper case.
  int text(int x, int y, const std::string& s, Rgb c, int scale = 1) {
    int cx = x;
    for (char ch : s) {
      const auto it = font().find(static_cast<char>(std::toupper(static_cast<unsigned char>(ch))));
      if (it != font().end()) {
        for (int row = 0; row < 7; ++row)
          for (int col = 0; col < 5; ++col)
            if (it->second[static_cast<size_t>(row)][col] == '1') rect(cx + col * scale, y + row * scale, scale, scale, c);
      }
      cx += 6 * scale;
    }
    return cx - x;
  }
  static int text_width(const std::string& s, int scale = 1) { return static_cast<int>(s.size()) * 6 * scale; }

  void write_png(const std::string& path) const {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
    if (!f) fail("cannot write {}", path);
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
    png_infop info = png ? png_create_info_struct(png) : nullptr;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
      png_destroy_write_struct(&png, &info);
      fail("cannot encode {}", path);
    }
    png_init_io(png, f.get());
    png_set_IHDR(png, info, static_cast<png_uint_32>(w_), static_cast<png_uint_32>(h_), 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h_; ++y) png_write_row(png, const_cast<uint8_t*>(px_.data()) + static_cast<ptrdiff_t>(y) * w_ * 3);
    png_write_end(png, nullptr);
    png_destroy_write_struct(&png, &info);
  }

 private:
  int w_, h_;
  std::vector<uint8_t> px_;
};

// Geometry shared by the PNG and SVG writers.
constexpr int kPanelW = 380, kPanelH = 300;
constexpr int kLeft = 56, kRight = 16, kTop = 30, kBottom = 36;
constexpr int kTitleH = 34, kLegendH = 40;

struct PanelFrame {
  int x0, y0;  // top-left of the panel
  Range xr, yr;
  int px(double x) const { return x0 + kLeft + static_cast<int>(std::lround((x - xr.lo) / (xr.hi - xr.lo) * (kPanelW - kLeft - kRight))); }
  int py(double y) const { return y0 + kPanelH - kBottom - static_cast<int>(std::lround((y - yr.lo) / (yr.hi - yr.lo) * (kPanelH - kTop - kBottom))); }
};

std::vector<PanelFrame> frames(const std::vector<PlotPanel>& panels, int cols) {
  std::vector<PanelFrame> out;
  for (size_t i = 0; i < panels.size(); ++i) {
    std::vector<double> xs, ys;
    for (const PlotPoint& p : panels[i].points) {
      xs.push_back(p.x);
      ys.push_back(p.y);
    }
    out.push_back({static_cast<int>(i % static_cast<size_t>(cols)) * kPanelW, kTitleH + static_cast<int>(i / static_cast<size_t>(cols)) * kPanelH,
                   axis_range(xs, 1.0), axis_range(ys, 0.0)});
  }
  return out;
}

int marker_radius(int rank) { return 3 + std::min(rank, 4); }

// The policies and KV modes that occur, in a fixed order, for the legend.
std::vector<std::string> legend_policies(const std::vector<PlotPanel>& panels) {
  std::vector<std::string> out;
  for (const char* p : {"full", "none", "topk", "threshold", "random", "attn", "query"}) {
    for (const PlotPanel& pn : panels) {
      if (std::any_of(pn.points.begin(), pn.points.end(), [&](const PlotPoint& q) { return q.policy == p; })) {
        out.push_back(p);
        break;
      }
    }
  }
  return out;
}

void write_png_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title) {
  const int cols = std::min<int>(3, static_cast<int>(panels.size()));
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  Canvas c(cols * kPanelW, kTitleH + rows * kPanelH + kLegendH);
  const Rgb black{0, 0, 0}, grey{170, 170, 170}, light{230, 230, 230};
  c.text(8, 8, title, black, 2);
  const auto fr = frames(panels, cols);
  for (size_t i = 0; i < panels.size(); ++i) {
    const PanelFrame& f = fr[i];
    const int ax0 = f.x0 + kLeft, ax1 = f.x0 + kPanelW - kRight, ay0 = f.y0 + kTop, ay1 = f.y0 + kPanelH - kBottom;
    c.text(ax0, f.y0 + 10, panels[i].title, black, 1);
    const auto xt = ticks(f.xr), yt = ticks(f.yr);
    const double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;
    for (double t : xt) {
      c.vline(f.px(t), ay0, ay1, light);
      const std::string s = tick_label(t, xs);
      c.text(f.px(t) - Canvas::text_width(s) / 2, ay1 + 5, s, black);
    }
    for (double t : yt) {
      c.hline(ax0, ax1, f.py(t), light);
      const std::string s = tick_label(t, ys);
      c.text(ax0 - 4 - Canvas::text_width(s), f.py(t) - 3, s, black);
    }
    c.vline(f.px(1.0), ay0, ay1, grey);  // no speedup
    c.hline(ax0, ax1, f.py(0.0), grey);  // no change
    c.hline(ax0, ax1, ay1, black);
    c.vline(ax0, ay0, ay1, black);
    c.text(ax1 - Canvas::text_width(x_label), ay1 + 18, x_label, black);
    for (const PlotPoint& p : panels[i].points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      const int r = marker_radius(p.size_rank);
      const Rgb col = policy_color(p.policy);
      if (p.policy == "full") {
        c.cross(f.px(p.x), f.py(p.y), r, col);
      } else if (p.kv == "drop") {
        c.square(f.px(p.x), f.py(p.y), r, col, 2);
      } else {
        c.disc(f.px(p.x), f.py(p.y), r, col);
      }
    }
  }
  // Legend: policy colours, then the KV mode shapes.
  int x = 10;
  const int y = c.height() - kLegendH + 14;
  for (const std::string& p : legend_policies(panels)) {
    if (p == "full") {
      c.cross(x + 5, y + 3, 5, policy_color(p));
    } else {
      c.disc(x + 5, y + 3, 5, policy_color(p));
    }
    x += 16 + c.text(x + 14, y, p == "full" ? "FULL PREFILL" : p, black) + 10;
  }
  x += 20;
  c.disc(x + 5, y + 3, 5, black);
  x += 16 + c.text(x + 14, y, "RETAIN", black) + 10;
  c.square(x + 5, y + 3, 5, black, 2);
  x += 16 + c.text(x + 14, y, "DROP", black) + 10;
  c.text(x + 20, y, "LARGER: LONGER PROMPT", black);
  c.write_png(path);
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    if (ch == '<') o += "&lt;";
    else if (ch == '>') o += "&gt;";
    else if (ch == '&') o += "&amp;";
    else if (ch == '"') o += "&quot;";
    else o += ch;
  }
  return o;
}

void write_svg_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title) {
  const int cols = std::min<int>(3, static_cast<int>(panels.size()));
  const int rows = (static_cast<int>(panels.size()) + cols - 1) / cols;
  const int w = cols * kPanelW, h = kTitleH + rows * kPanelH + kLegendH;
  std::ofstream out(path);
  if (!out) fail("cannot write {}", path);
  out << fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="11">)"
                     "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", w, h);
  out << fmt::format("<text x=\"8\" y=\"22\" font-size=\"15\">{}</text>\n", xml_escape(title));
  const auto fr = frames(panels, cols);
  for (size_t i = 0; i < panels.size(); ++i) {
    const PanelFrame& f = fr[i];
    const int ax0 = f.x0 + kLeft, ax1 = f.x0 + kPanelW - kRight, ay0 = f.y0 + kTop, ay1 = f.y0 + kPanelH - kBottom;
    out << fmt::format("<text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>\n", ax0, f.y0 + 18, xml_escape(panels[i].title));
    const auto xt = ticks(f.xr), yt = ticks(f.yr);
    const double xs = xt.size() > 1 ? xt[1] - xt[0] : 1, ys = yt.size() > 1 ? yt[1] - yt[0] : 1;
    for (double t : xt) {
      out << fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#e6e6e6\"/>"
                         "<text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{4}</text>\n", f.px(t), ay0, ay1, ay1 + 14, tick_label(t, xs));
    }
    for (double t : yt) {
      out << fmt::format("<line x1=\"{0}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"#e6e6e6\"/>"
                         "<text x=\"{3}\" y=\"{4}\" text-anchor=\"end\">{5}</text>\n", ax0, ax1, f.py(t), ax0 - 4, f.py(t) + 4, tick_label(t, ys));
    }
    out << fmt::format("<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#aaa\"/>\n", f.px(1.0), ay0, ay1);
    out << fmt::format("<line x1=\"{0}\" y1=\"{2}\" x2=\"{1}\" y2=\"{2}\" stroke=\"#aaa\"/>\n", ax0, ax1, f.py(0.0));
    out << fmt::format("<polyline points=\"{0},{1} {0},{2} {3},{2}\" fill=\"none\" stroke=\"black\"/>\n", ax0, ay0, ay1, ax1);
    out << fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", ax1, ay1 + 28, xml_escape(x_label));
    for (const PlotPoint& p : panels[i].points) {
      if (!std::isfinite(p.x) || !std::isfinite(p.y)) continue;
      const int r = marker_radius(p.size_rank);
      const std::string col = hex(policy_color(p.policy));
      const std::string tip = fmt::format("<title>{} ({:.2f}x, {:+.4f})</title>", xml_escape(p.label), p.x, p.y);
      if (p.policy == "full") {
        out << fmt::format("<g stroke=\"{0}\" stroke-width=\"2\"><line x1=\"{1}\" y1=\"{2}\" x2=\"{3}\" y2=\"{4}\"/><line x1=\"{1}\" y1=\"{4}\" x2=\"{3}\" y2=\"{2}\"/>{5}</g>\n",
                           col, f.px(p.x) - r, f.py(p.y) - r, f.px(p.x) + r, f.py(p.y) + r, tip);
      } else if (p.kv == "drop") {
        out << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\">{}</rect>\n",
                           f.px(p.x) - r, f.py(p.y) - r, 2 * r, 2 * r, col, tip);
      } else {
        out << fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\" fill-opacity=\"0.85\">{}</circle>\n", f.px(p.x), f.py(p.y), r, col, tip);
      }
    }
  }
  int x = 10;
  const int y = h - kLegendH + 20;
  for (const std::string& p : legend_policies(panels)) {
    out << fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{}</text>\n", x + 5, y - 4, hex(policy_color(p)),
                       x + 14, y, p == "full" ? "full prefill" : p);
    x += 30 + 7 * static_cast<int>(p.size() + (p == "full" ? 8 : 0));
  }
  out << fmt::format("<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"black\"/><text x=\"{}\" y=\"{}\">retain</text>\n", x + 25, y - 4, x + 34, y);
  out << fmt::format("<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"none\" stroke=\"black\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">drop</text>\n",
                     x + 90, y - 9, x + 104, y);
  out << fmt::format("<text x=\"{}\" y=\"{}\">larger marker: longer prompt</text>\n", x + 150, y);
  out << "</svg>\n";
  if (!out) fail("cannot write {}", path);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

void check_eval_plot_path(const std::string& path) { check_output_path(path, "--plot", {".png", ".svg"}); }

void write_eval_plot(const std::string& path, const std::vector<PlotPanel>& panels, const std::string& x_label, const std::string& title) {
  check_eval_plot_path(path);
  if (panels.empty()) fail("--plot: nothing to draw");
  write_file_atomically(path, [&](const std::string& tmp) {
    if (ends_with(path, ".png")) {
      write_png_plot(tmp, panels, x_label, title);
    } else {
      write_svg_plot(tmp, panels, x_label, title);
    }
  });
}

}  // namespace dashlm::cli
