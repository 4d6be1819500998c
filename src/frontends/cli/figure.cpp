#include "frontends/cli/figure.h"

#include <cairo-svg.h>

#include <algorithm>
#include <cmath>
#include <memory>

#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"

namespace dashlm::cli {

namespace {

using Surface = std::unique_ptr<cairo_surface_t, decltype(&cairo_surface_destroy)>;
using Context = std::unique_ptr<cairo_t, decltype(&cairo_destroy)>;

void paint(cairo_surface_t* s, const Draw& draw, const std::string& what) {
  if (cairo_surface_status(s) != CAIRO_STATUS_SUCCESS) fail("cannot write {}: {}", what, cairo_status_to_string(cairo_surface_status(s)));
  Context cr(cairo_create(s), &cairo_destroy);
  cairo_set_source_rgb(cr.get(), 1, 1, 1);
  cairo_paint(cr.get());
  cairo_select_font_face(cr.get(), "sans-serif", CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_NORMAL);
  draw(cr.get());
  if (cairo_status(cr.get()) != CAIRO_STATUS_SUCCESS) fail("cannot draw {}: {}", what, cairo_status_to_string(cairo_status(cr.get())));
}

cairo_status_t append(void* closure, const unsigned char* data, unsigned int length) {
  static_cast<std::string*>(closure)->append(reinterpret_cast<const char*>(data), length);
  return CAIRO_STATUS_SUCCESS;
}

}  // namespace

void write_figure(const std::string& path, int w, int h, const Draw& draw) {
  write_file_atomically(path, [&](const std::string& tmp) {
    if (path.ends_with(".png")) {
      Surface s(cairo_image_surface_create(CAIRO_FORMAT_RGB24, w, h), &cairo_surface_destroy);
      paint(s.get(), draw, path);
      const cairo_status_t st = cairo_surface_write_to_png(s.get(), tmp.c_str());
      if (st != CAIRO_STATUS_SUCCESS) fail("cannot write {}: {}", path, cairo_status_to_string(st));
    } else {
      Surface s(cairo_svg_surface_create(tmp.c_str(), w, h), &cairo_surface_destroy);
      cairo_svg_surface_set_document_unit(s.get(), CAIRO_SVG_UNIT_PX);
      paint(s.get(), draw, path);
      cairo_surface_finish(s.get());
      if (cairo_surface_status(s.get()) != CAIRO_STATUS_SUCCESS)
        fail("cannot write {}: {}", path, cairo_status_to_string(cairo_surface_status(s.get())));
    }
  });
}

std::string figure_svg(int w, int h, const Draw& draw) {
  std::string out;
  {
    Surface s(cairo_svg_surface_create_for_stream(&append, &out, w, h), &cairo_surface_destroy);
    cairo_svg_surface_set_document_unit(s.get(), CAIRO_SVG_UNIT_PX);
    paint(s.get(), draw, "the SVG picture");
    cairo_surface_finish(s.get());
  }
  const size_t start = out.find("<svg");
  return start == std::string::npos ? out : out.substr(start);
}

void set_color(cairo_t* cr, Rgb c, double alpha) { cairo_set_source_rgba(cr, c[0] / 255.0, c[1] / 255.0, c[2] / 255.0, alpha); }

double text_width(cairo_t* cr, const std::string& s, double size, bool bold) {
  cairo_select_font_face(cr, "sans-serif", CAIRO_FONT_SLANT_NORMAL, bold ? CAIRO_FONT_WEIGHT_BOLD : CAIRO_FONT_WEIGHT_NORMAL);
  cairo_set_font_size(cr, size);
  cairo_text_extents_t e;
  cairo_text_extents(cr, s.c_str(), &e);
  return e.x_advance;
}

double draw_text(cairo_t* cr, double x, double y, const std::string& s, double size, double h_align, double v_align, bool bold, double angle) {
  const double w = text_width(cr, s, size, bold);
  cairo_font_extents_t fe;
  cairo_font_extents(cr, &fe);
  cairo_save(cr);
  cairo_translate(cr, x, y);
  cairo_rotate(cr, angle);
  // v_align 0: (x, y) is the top of the text; 1: the bottom of its descenders.
  cairo_move_to(cr, -h_align * w, fe.ascent - v_align * (fe.ascent + fe.descent));
  cairo_show_text(cr, s.c_str());
  cairo_restore(cr);
  return w;
}

std::vector<double> nice_ticks(double lo, double hi, int n) {
  if (!(hi > lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, n);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / mag;
  const double step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag;
  std::vector<double> t;
  for (double x = std::ceil(lo / step - 1e-9) * step; x <= hi + step * 1e-9; x += step) t.push_back(std::fabs(x) < step * 1e-6 ? 0.0 : x);
  return t;
}

std::string tick_label(double v, const std::vector<double>& ticks) {
  const double step = ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(step) + 1e-9)), 0, 4);
  return fmt::format("{:.{}f}", v, decimals);
}

Rgb ramp_color(double x) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  x = std::clamp(x, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(x));
  const double f = x - i;
  Rgb c{};
  for (int k = 0; k < 3; ++k) c[static_cast<size_t>(k)] = static_cast<uint8_t>(stops[i][k] * (1 - f) + stops[i + 1][k] * f);
  return c;
}

}  // namespace dashlm::cli
