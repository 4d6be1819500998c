// Pictures for people: the eval plot and the halting map are drawn once, with cairo, onto a PNG
// or an SVG surface. Built only where cairo is (CMake's DASHLM_HAVE_CAIRO); elsewhere the
// pictures are refused by name before any work starts (plots_unavailable.cpp).
#pragma once
#include <cairo.h>

#include <array>
#include <functional>
#include <string>
#include <vector>

namespace dashlm::cli {

using Rgb = std::array<uint8_t, 3>;
using Draw = std::function<void(cairo_t*)>;

// Draws a w x h picture (white background) and writes it to `path`, PNG or SVG by its name, whole
// or not at all. Throws Error "cannot write PATH: REASON".
void write_figure(const std::string& path, int w, int h, const Draw& draw);
// The same picture as SVG text, without the XML declaration (for embedding in a page).
std::string figure_svg(int w, int h, const Draw& draw);

void set_color(cairo_t* cr, Rgb c, double alpha = 1.0);

// Text at (x, y): h_align 0 left, 0.5 centre, 1 right of x; v_align likewise from the top of the
// text to its baseline's bottom; rotated by `angle` radians about (x, y). Returns the width drawn.
double draw_text(cairo_t* cr, double x, double y, const std::string& s, double size, double h_align = 0, double v_align = 0,
                 bool bold = false, double angle = 0);
double text_width(cairo_t* cr, const std::string& s, double size, bool bold = false);

// About `n` ticks at 1, 2 or 5 times a power of ten within [lo, hi], and their labels with as many
// decimals as the step needs.
std::vector<double> nice_ticks(double lo, double hi, int n = 5);
std::string tick_label(double v, const std::vector<double>& ticks);

// A colour ramp from dark violet through blue and green to yellow (viridis-like), x in [0, 1].
Rgb ramp_color(double x);

}  // namespace dashlm::cli
