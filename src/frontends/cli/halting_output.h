// Halting results for people and scripts: flag parsing, the JSON object, the deltas file and
// the halting map picture.
#pragma once
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/dash/prefill.h"

namespace CLI {
class App;
class Option;
}

namespace dashlm::cli {

// The halting flags shared by run and bench: each one sets one setting of the HaltingConfig, its
// value parsed by the config's own parser (set_setting).
struct HaltingFlags {
  std::map<Setting, std::string> value;     // each flag's text
  std::map<Setting, CLI::Option*> option;  // ... and whether it was given
};
void add_halting_flags(CLI::App* c, HaltingFlags& f);
// The validated configuration for a model of n_layer layers (seed: for the random policy), with
// errors naming the flag. Policy "auto" loads the setting `dashlm calibrate` saved for the model
// at model_path and says on stderr which one it chose; an error if there is none.
// With calibrated_default (run), no halting flag at all means policy auto where the model's
// calibration qualifies (calibration_is_default), else full prefill.
HaltingConfig resolve_halting(const HaltingFlags& f, int n_layer, uint64_t seed, const std::string& model_path,
                              bool calibrated_default = false);
// A bad setting reported under the flag that sets it ("--keep must be in (0, 1], got 2").
[[noreturn]] void fail_with_flag(const SettingError& e);

// The config's JSON (HaltingConfig::to_json) with what the trace measured: n_document_tokens,
// active_per_layer, flops_full, flops_done, flop_speedup, decision_layers (the layers after which
// a ranking policy decided), layer_ms.
nlohmann::json halting_json(const HaltingConfig& hc, int n_layer, const HaltingTrace& tr, const std::vector<double>& layer_ms);

// Deltas, tokens x layers: .npy (float32, NaN where a token did not run the layer) or .csv.
// Written whole or not at all (common/files.h).
void write_deltas(const std::string& path, const HaltingTrace& tr);
// The checks of the two files' paths (name, folder) that run before any work.
void check_deltas_path(const std::string& path);
void check_halting_map_path(const std::string& path);

// Tokens (columns, binned for long prompts) x layers (rows): on top, where tokens were active
// (light) or halted (dark); below, a heatmap of log deltas, normalised per layer. .png or .svg.
void write_halting_map(const std::string& path, const HaltingTrace& tr, const std::string& title);
// The same picture as SVG text (empty for an empty trace).
std::string halting_map_svg(const HaltingTrace& tr, const std::string& title);

}  // namespace dashlm::cli
