// The halting setting that `dashlm calibrate` chose for a model, saved beside the model file and
// used by `--halting auto` (run, bench, and any other frontend).
#pragma once
#include <string>

#include "runtime/dash/config.h"

namespace dashlm {

// Where the choice for a model file is saved: MODEL.dash.json beside it.
std::string calibration_path(const std::string& model_path);

struct Calibration {
  HaltingConfig config;     // validated for the model
  std::string path;         // the file it came from
  double delta_nll = 0;     // the continuation NLL change it was chosen with
  double budget = 0;        // within this budget
  double flop_speedup = 1;  // its FLOP-model speedup on the calibration text
};

// The calibrated setting for a model of n_layer layers; throws an Error that says to run
// `dashlm calibrate` when there is none, or when the file is not one.
Calibration load_calibration(const std::string& model_path, int n_layer);

}  // namespace dashlm
