#include "runtime/dash/calibration.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace dashlm {

std::string calibration_path(const std::string& model_path) { return model_path + ".dash.json"; }

Calibration load_calibration(const std::string& model_path, int n_layer) {
  Calibration c;
  c.path = calibration_path(model_path);
  std::ifstream in(c.path);
  if (!in) fail("no calibration for this model: run dashlm calibrate (looked for {})", c.path);
  try {
    const nlohmann::json j = nlohmann::json::parse(in);
    c.config = HaltingConfig::parse(j.at("spec").get<std::string>());
    c.delta_nll = j.value("delta_nll", 0.0);
    c.budget = j.value("budget", 0.0);
    c.flop_speedup = j.value("flop_speedup", 1.0);
  } catch (const nlohmann::json::exception& e) {
    fail("{} is not a calibration file ({}): run dashlm calibrate again", c.path, e.what());
  } catch (const Error& e) {
    fail("{} holds no usable setting ({}): run dashlm calibrate again", c.path, e.what());
  }
  c.config.validate(n_layer);
  return c;
}

}  // namespace dashlm
