#include "runtime/dash/calibration.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json.h"
#include "runtime/dash/policy.h"

namespace dashlm {

std::string calibration_path(const std::string& model_path) { return model_path + ".dash.json"; }

Calibration load_calibration(const std::string& model_path, int n_layer) {
  Calibration c;
  c.path = calibration_path(model_path);
  if (!std::ifstream(c.path)) fail("no calibration for this model: run dashlm calibrate (looked for {})", c.path);
  std::string spec;
  try {
    // The messages name the file and the key ("M.dash.json: key 'spec' is missing").
    const nlohmann::json j = read_json_file(c.path);
    const JsonObject o(j, c.path);
    spec = o.string("spec");
    c.delta_nll = o.number_or("delta_nll", 0.0);
    c.budget = o.number_or("budget", 0.0);
    c.flop_speedup = o.number_or("flop_speedup", 1.0);
    if (o.has("max_retrieval_drop")) {
      c.max_retrieval_drop = o.number("max_retrieval_drop");
      c.retrieval_drop = o.number_or("retrieval_drop", NAN);
      if (o.has("retrieval")) c.retrieval_task = o.object("retrieval").string_or("task", "");
    }
  } catch (const Error& e) {
    fail("{} (not a calibration file: run dashlm calibrate again)", e.what());
  }
  try {
    c.config = HaltingConfig::parse(spec);
  } catch (const Error& e) {
    fail("{} holds no usable setting ({}): run dashlm calibrate again", c.path, e.what());
  }
  c.config.validate(n_layer);
  return c;
}

bool calibration_is_default(const std::string& model_path, int n_layer) {
  if (!std::ifstream(calibration_path(model_path))) return false;
  return !std::isnan(load_calibration(model_path, n_layer).max_retrieval_drop);
}

HaltingConfig resolve_halting_settings(const std::vector<std::pair<Setting, std::string>>& given, int n_layer,
                                       uint64_t seed, const std::string& model_path, std::string* chosen) {
  const bool is_auto = std::any_of(given.begin(), given.end(), [](const auto& g) { return g.first == Setting::Policy && g.second == "auto"; });
  if (is_auto) {
    for (const auto& [s, v] : given)
      if (s != Setting::Policy) fail_setting(s, "cannot be combined with policy auto (the calibrated setting)");
    Calibration c = load_calibration(model_path, n_layer);
    const PolicyInfo* p = find_halting_policy(c.config.policy);
    if (c.config.seed == 0 && p && p->reads(Setting::Seed)) c.config.seed = seed;
    if (chosen) {
      const std::string retrieval =
          std::isnan(c.max_retrieval_drop)
              ? ""
              : fmt::format(", {} score {:+.2f} against full prefill within a drop of {}", c.retrieval_task.empty() ? "retrieval" : c.retrieval_task,
                            -c.retrieval_drop, c.max_retrieval_drop);
      *chosen = fmt::format("{} from {} (continuation NLL {:+.4f} within a budget of {}{}, FLOP speedup {:.2f}x)", c.config.describe(n_layer),
                            c.path, c.delta_nll, c.budget, retrieval, c.flop_speedup);
    }
    return c.config;
  }
  HaltingConfig hc;
  std::vector<Setting> names;
  for (const auto& [s, v] : given) {
    set_setting(hc, s, v);
    names.push_back(s);
  }
  hc.seed = seed;
  hc.validate(n_layer);
  hc.check_given(names);
  return hc;
}

}  // namespace dashlm
