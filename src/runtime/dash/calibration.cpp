#include "runtime/dash/calibration.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json.h"

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

}  // namespace dashlm
