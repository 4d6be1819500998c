// The halting setting that `dashlm calibrate` chose for a model, saved beside the model file and
// used by `--halting auto` (run, bench, and any other frontend).
#pragma once
#include <cmath>
#include <string>
#include <utility>
#include <vector>

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
  // With a retrieval budget (calibrate --max-retrieval-drop): the task, the score's fall below full
  // prefill's that the setting was chosen with, and that budget; NaN without one.
  std::string retrieval_task;
  double retrieval_drop = NAN, max_retrieval_drop = NAN;
};

// The calibrated setting for a model of n_layer layers; throws an Error that says to run
// `dashlm calibrate` when there is none, or when the file is not one.
Calibration load_calibration(const std::string& model_path, int n_layer);

// Whether `run` without halting settings uses the model's calibration: only a setting chosen
// within a retrieval budget as well as the NLL budget (calibrate --max-retrieval-drop) is taken
// by default, since a setting chosen on continuation NLL alone has been seen to lose answers
// (docs/RESULTS.md). False when there is no calibration file; throws when there is one that is
// not a calibration.
bool calibration_is_default(const std::string& model_path, int n_layer);

// The configuration a user's settings give, each value parsed by set_setting: run's and bench's
// flags and the server's per-request "dash" object. Settings not given keep their defaults; the
// seed is for the random policy. Policy "auto" is the calibrated setting for the model file at
// model_path (no other setting may come with it), and `chosen` then receives a line saying
// which one it is. Throws SettingError naming the setting, or Error when there is no calibration.
HaltingConfig resolve_halting_settings(const std::vector<std::pair<Setting, std::string>>& given, int n_layer,
                                       uint64_t seed, const std::string& model_path, std::string* chosen = nullptr);

}  // namespace dashlm
