#include "frontends/cli/halting_output.h"

#include <png.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/error.h"
#include "common/files.h"
#include "runtime/dash/calibration.h"

namespace dashlm::cli {

void add_halting_flags(CLI::App* c, HaltingFlags& f) {
  const HaltingConfig d;
  const std::string policies = "Halting policy: none, " + halting_policy_names() + ", auto (the setting saved by dashlm calibrate)";
  const std::pair<Setting, std::string> flags[] = {
      {Setting::Policy, policies},
      {Setting::HaltLayer, "topk/random/attn/query: decision layer, an index or a fraction of depth"},
      {Setting::Keep, "topk/random/attn/query: fraction of document tokens kept active"},
      {Setting::MinLayer, "threshold: first layer whose delta counts; topk/random/attn/query with --decide stable: first layer ranked"},
      {Setting::Tau, "threshold: halt when the delta stays below this"},
      {Setting::Patience, "threshold: for this many consecutive layers"},
      {Setting::AttnQueries, "attn (and query without a query): last tokens whose attention ranks the document"},
      {Setting::Pool, "query: a token scores the most attention within this many neighbours"},
      {Setting::Words, "query: keep or halt whole words (tokens with no word boundary between them, such as a number's digits) "
                       "of up to this many tokens; 0: single tokens"},
      {Setting::Mix, "query: weight of the delta's rank beside the attention's (0..1)"},
      {Setting::Then, "topk/random/attn/query: later decisions L@KEEP[/L@KEEP...], layers ascending, keep fractions (of the "
                      "tokens eligible at the start) falling"},
      {Setting::Decide, "topk/random/attn/query: where the first decision falls: fixed (--halt-layer) or stable (the first layer "
                        "from --min-layer on whose top set overlaps the previous layer's by --overlap; --halt-layer at the latest)"},
      {Setting::Overlap, "--decide stable: the fraction of the top set that must stay (0..1]"},
      {Setting::Kv, "Keys/values of halted tokens: retain or drop"},
      {Setting::Signal, "Halting signal: abs (||U||), rel (||U||/||h||), block (1-cos)"},
      {Setting::ProtectFirst, "First tokens that never halt (attention sinks)"},
      {Setting::ProtectLast, "Last document tokens that never halt (>= 1)"},
  };
  for (const auto& [s, help] : flags) {
    std::string& v = f.value[s];
    const bool unset = (s == Setting::Tau && d.tau < 0) || (s == Setting::Patience && d.patience == 0);
    v = unset ? "" : setting_value(d, s);
    CLI::Option* o = c->add_option(setting_flag(s), v, help);
    if (!unset) o->default_str(v);
    f.option[s] = o;
  }
}

HaltingConfig resolve_halting(const HaltingFlags& f, int n_layer, uint64_t seed, const std::string& model_path) {
  std::vector<std::pair<Setting, std::string>> given;
  for (const auto& [s, o] : f.option)
    if (o->count()) given.emplace_back(s, f.value.at(s));
  try {
    std::string chosen;
    HaltingConfig hc = resolve_halting_settings(given, n_layer, seed, model_path, &chosen);
    if (!chosen.empty()) fmt::print(stderr, "halting auto: {}\n", chosen);
    return hc;
  } catch (const SettingError& e) {
    fail_with_flag(e);
  }
}

void fail_with_flag(const SettingError& e) { fail("{} {}", setting_flag(e.setting), e.problem); }

nlohmann::json halting_json(const HaltingConfig& hc, int n_layer, const HaltingTrace& tr, const std::vector<double>& layer_ms) {
  nlohmann::json j = hc.to_json(n_layer);
  j["n_document_tokens"] = tr.n_tokens;
  j["active_per_layer"] = tr.active_per_layer;
  j["flops_full"] = tr.flops_full;
  j["flops_done"] = tr.flops_done;
  j["flop_speedup"] = tr.flop_speedup();
  j["decision_layers"] = tr.decision_layers;
  j["layer_ms"] = layer_ms;
  return j;
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Colour maps: halting (light = active, dark blue = halted) and a viridis-like ramp for deltas.
std::array<uint8_t, 3> active_color(double frac) {
  const double a = std::clamp(frac, 0.0, 1.0);
  return {static_cast<uint8_t>(30 + a * 220), static_cast<uint8_t>(40 + a * 210), static_cast<uint8_t>(90 + a * 160)};
}

std::array<uint8_t, 3> ramp_color(double x) {
  static const double stops[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  x = std::clamp(x, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(x));
  const double f = x - i;
  std::array<uint8_t, 3> c{};
  for (int k = 0; k < 3; ++k) c[static_cast<size_t>(k)] = static_cast<uint8_t>(stops[i][k] * (1 - f) + stops[i + 1][k] * f);
  return c;
}

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

constexpr int kGap = 12;
constexpr int kMargin = 8;

void write_png(const std::string& path, const MapCells& m) {
  const int col_w = std::max(1, 1200 / m.bins);
  const int row_h = std::max(3, 300 / m.layers);
  const int width = 2 * kMargin + m.bins * col_w;
  const int panel_h = m.layers * row_h;
  const int height = 2 * kMargin + 2 * panel_h + kGap;
  std::vector<uint8_t> img(static_cast<size_t>(width * height * 3), 255);
  auto fill = [&](int x0, int y0, int w, int h, std::array<uint8_t, 3> c) {
    for (int y = y0; y < y0 + h; ++y)
      for (int x = x0; x < x0 + w; ++x) std::copy(c.begin(), c.end(), img.begin() + (static_cast<ptrdiff_t>(y) * width + x) * 3);
  };
  for (int l = 0; l < m.layers; ++l) {
    for (int b = 0; b < m.bins; ++b) {
      const size_t c = static_cast<size_t>(l * m.bins + b);
      const int x = kMargin + b * col_w;
      fill(x, kMargin + l * row_h, col_w, row_h, active_color(m.active[c]));
      const double dv = m.delta[c];
      fill(x, kMargin + panel_h + kGap + l * row_h, col_w, row_h, std::isnan(dv) ? std::array<uint8_t, 3>{200, 200, 200} : ramp_color(dv));
    }
  }
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) fail("cannot write {}", path);
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fail("cannot encode {}", path);
  }
  png_init_io(png, f.get());
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y) png_write_row(png, img.data() + static_cast<ptrdiff_t>(y) * width * 3);
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
}

std::string map_svg(const MapCells& m, const HaltingTrace& tr, const std::string& title) {
  const double col_w = 1000.0 / m.bins;
  const double row_h = std::max(4.0, 300.0 / m.layers);
  const double left = 60, top = 40, panel_h = m.layers * row_h;
  const double width = left + 1000 + 20, height = top + 2 * panel_h + 3 * 30 + 10;
  std::string out;
  out += fmt::format(R"(<svg xmlns="http://www.w3.org/2000/svg" width="{:.0f}" height="{:.0f}" font-family="sans-serif" font-size="12">)"
                     "\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n", width, height);
  out += fmt::format("<text x=\"{}\" y=\"18\" font-size=\"14\">{} - {} tokens x {} layers</text>\n", left, title, tr.n_tokens, tr.n_layer);
  auto hex = [](std::array<uint8_t, 3> c) { return fmt::format("#{:02x}{:02x}{:02x}", c[0], c[1], c[2]); };
  for (int panel = 0; panel < 2; ++panel) {
    const double y0 = top + panel * (panel_h + 30);
    out += fmt::format("<text x=\"{}\" y=\"{:.1f}\">{}</text>\n", left, y0 - 4,
                       panel == 0 ? "active (light) / halted (dark)" : "log delta, normalised per layer (grey: not computed)");
    for (int l = 0; l < m.layers; ++l) {
      if (l % std::max(1, m.layers / 6) == 0) out += fmt::format("<text x=\"{}\" y=\"{:.1f}\" text-anchor=\"end\">L{}</text>\n", left - 4, y0 + (l + 1) * row_h, l);
      for (int b = 0; b < m.bins; ++b) {
        const size_t c = static_cast<size_t>(l * m.bins + b);
        const std::string col = panel == 0 ? hex(active_color(m.active[c])) : std::isnan(m.delta[c]) ? "#c8c8c8" : hex(ramp_color(m.delta[c]));
        out += fmt::format("<rect x=\"{:.2f}\" y=\"{:.2f}\" width=\"{:.2f}\" height=\"{:.2f}\" fill=\"{}\"/>\n", left + b * col_w,
                           y0 + l * row_h, col_w + 0.05, row_h + 0.05, col);
      }
    }
  }
  out += fmt::format("<text x=\"{}\" y=\"{:.0f}\">token 0</text><text x=\"{}\" y=\"{:.0f}\" text-anchor=\"end\">token {}</text>\n",
                     left, height - 8, left + 1000, height - 8, tr.n_tokens - 1);
  out += "</svg>\n";
  return out;
}

void write_svg(const std::string& path, const MapCells& m, const HaltingTrace& tr, const std::string& title) {
  std::ofstream out(path);
  out << map_svg(m, tr, title);
  if (!out) fail("cannot write {}", path);
}

}  // namespace

void check_deltas_path(const std::string& path) { check_output_path(path, "--dump-deltas", {".npy", ".csv"}); }

void check_halting_map_path(const std::string& path) { check_output_path(path, "--halting-map", {".png", ".svg"}); }

namespace {

void write_deltas_to(const std::string& path, bool csv, const HaltingTrace& tr) {
  if (csv) {
    std::ofstream out(path);
    if (!out) fail("cannot write {}", path);
    out << "token";
    for (int l = 0; l < tr.n_layer; ++l) out << ",L" << l;
    out << "\n";
    for (int64_t t = 0; t < tr.n_tokens; ++t) {
      out << t;
      for (int l = 0; l < tr.n_layer; ++l) {
        const float v = tr.delta[static_cast<size_t>(t * tr.n_layer + l)];
        out << ',';
        if (std::isfinite(v)) out << fmt::format("{:.6g}", v);
      }
      out << "\n";
    }
    if (!out) fail("cannot write {}", path);
    return;
  }
  // NPY v1.0: magic, header length, a Python dict literal padded to a multiple of 64 bytes.
  std::string header = fmt::format("{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}", tr.n_tokens, tr.n_layer);
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::ofstream out(path, std::ios::binary);
  if (!out) fail("cannot write {}", path);
  const auto hlen = static_cast<uint16_t>(header.size());
  out.write("\x93NUMPY\x01\x00", 8);
  out.put(static_cast<char>(hlen & 0xff));
  out.put(static_cast<char>(hlen >> 8));
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(reinterpret_cast<const char*>(tr.delta.data()), static_cast<std::streamsize>(tr.delta.size() * sizeof(float)));
  if (!out) fail("cannot write {}", path);
}

}  // namespace

void write_deltas(const std::string& path, const HaltingTrace& tr) {
  check_deltas_path(path);
  write_file_atomically(path, [&](const std::string& tmp) { write_deltas_to(tmp, ends_with(path, ".csv"), tr); });
}

std::string halting_map_svg(const HaltingTrace& tr, const std::string& title) {
  if (tr.n_tokens == 0 || tr.n_layer == 0) return "";
  return map_svg(map_cells(tr, 500), tr, title);
}

void write_halting_map(const std::string& path, const HaltingTrace& tr, const std::string& title) {
  check_halting_map_path(path);
  if (tr.n_tokens == 0 || tr.n_layer == 0) fail("--halting-map: nothing to draw");
  write_file_atomically(path, [&](const std::string& tmp) {
    if (ends_with(path, ".png")) {
      write_png(tmp, map_cells(tr, 1200));
    } else {
      write_svg(tmp, map_cells(tr, 500), tr, title);
    }
  });
}

}  // namespace dashlm::cli
