// threshold (DASH's per-layer form): a token halts after `patience` consecutive layers from
// min_layer on whose delta stays below tau.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>

#include "runtime/dash/policy.h"

namespace dashlm {

namespace {

class ThresholdPolicy final : public HaltingPolicy {
 public:
  explicit ThresholdPolicy(const HaltingConfig& cfg) : cfg_(cfg) {}
  bool wants_signal(int layer) const override { return layer >= cfg_.min_layer; }

  void begin(int64_t n_tokens, std::span<const uint8_t> eligible) override {
    HaltingPolicy::begin(n_tokens, eligible);
    below_.assign(static_cast<size_t>(n_tokens), 0);
  }

  std::vector<int32_t> observe(int layer, const LayerSignals& s) override {
    std::vector<int32_t> halt;
    if (layer < cfg_.min_layer) return halt;
    for (size_t i = 0; i < s.active.size(); ++i) {
      const auto t = static_cast<size_t>(s.active[i]);
      below_[t] = s.signal[i] < cfg_.tau ? below_[t] + 1 : 0;
      if (eligible_[t] && below_[t] >= cfg_.patience) halt.push_back(s.active[i]);
    }
    return halt;
  }

 private:
  HaltingConfig cfg_;
  std::vector<int> below_;
};

void validate_threshold(const HaltingConfig& hc, int n_layer) {
  if (hc.tau < 0) fail_setting(Setting::Tau, "must be given (>= 0) for policy threshold, with patience");
  if (hc.patience <= 0) fail_setting(Setting::Patience, "must be >= 1 (consecutive layers below tau), got {}", hc.patience);
  if (hc.min_layer < 0 || hc.min_layer > n_layer - 1) {
    fail_setting(Setting::MinLayer, "{} is outside the model (layers 0..{})", hc.min_layer, n_layer - 1);
  }
}

std::string describe_threshold(const HaltingConfig& hc, int) {
  return fmt::format("threshold(min={},tau={:g},patience={},{},{})", hc.min_layer, hc.tau, hc.patience, delta_signal_name(hc.signal),
                     kv_mode_name(hc.kv));
}

// Rounds a threshold to 3 significant digits, so that the saved spec is short and exact (through
// its decimal text, so that the value prints as 28.2 rather than 28.200000000000003).
double round_sig(double x) { return x <= 0 ? x : std::stod(fmt::format("{:.3g}", x)); }

// Min layers at 1/4 and 1/2 of the depth, tau at quantiles of the signal from there on,
// patience 1 to 3.
std::vector<HaltingConfig> threshold_grid(const HaltingConfig& base, int n_layer, const PolicyInfo::Quantile& quantile) {
  std::set<int> mins;
  for (double f : {0.25, 0.5}) mins.insert(std::clamp(static_cast<int>(std::lround(f * n_layer)), 1, n_layer - 1));
  std::vector<HaltingConfig> grid;
  for (int m : mins) {
    for (double q : {0.05, 0.1, 0.2, 0.3, 0.5}) {
      const double tau = quantile(m, q);
      for (int patience : {1, 2, 3}) {
        if (m + patience > n_layer) continue;
        HaltingConfig c = base;
        c.policy = "threshold";
        c.min_layer = m;
        c.tau = round_sig(tau);
        c.patience = patience;
        grid.push_back(c);
      }
    }
  }
  return grid;
}

}  // namespace

const PolicyInfo& policy_threshold() {
  static const PolicyInfo info{
      "threshold", "halt a token once its update stays small for some layers",
      {Setting::MinLayer, Setting::Tau, Setting::Patience, Setting::Signal, Setting::Kv}, 3,
      {},
      {Setting::MinLayer, Setting::Tau, Setting::Patience},
      validate_threshold, describe_threshold,
      [](const HaltingConfig& hc, int) -> std::unique_ptr<HaltingPolicy> { return std::make_unique<ThresholdPolicy>(hc); },
      threshold_grid};
  return info;
}

}  // namespace dashlm
