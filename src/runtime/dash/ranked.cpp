#include "runtime/dash/ranked.h"

#include <algorithm>
#include <cmath>

namespace dashlm {

std::vector<int32_t> RankedPolicy::observe(int layer, const LayerSignals& s) {
  if (layer != layer_) return {};
  // Candidates: the eligible active tokens, with their score.
  std::vector<std::pair<float, int32_t>> cand;
  for (size_t i = 0; i < s.active.size(); ++i) {
    const int32_t t = s.active[i];
    if (eligible_[static_cast<size_t>(t)]) cand.emplace_back(score(i, s), t);
  }
  const int64_t n_keep = halting_keep_count(cfg_.keep, static_cast<int64_t>(cand.size()));
  rank(cand);
  std::vector<int32_t> halt;
  for (size_t i = static_cast<size_t>(n_keep); i < cand.size(); ++i) halt.push_back(cand[i].second);
  std::sort(halt.begin(), halt.end());
  return halt;
}

void RankedPolicy::rank(std::vector<std::pair<float, int32_t>>& cand) const {
  // Largest first; ties by position so results are reproducible.
  std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
}

void validate_ranked(const HaltingConfig& hc, int n_layer) {
  if (!(hc.keep > 0.0 && hc.keep <= 1.0)) fail_setting(Setting::Keep, "must be in (0, 1], got {}", hc.keep);
  const double l = hc.halt_layer;
  if (!(l >= 0.0) || (l >= 1.0 && l != std::floor(l))) {
    fail_setting(Setting::HaltLayer, "must be a layer index or a fraction in [0, 1), got {}", l);
  }
  if (l >= 1.0 && l > n_layer - 1) fail_setting(Setting::HaltLayer, "{} is outside the model (layers 0..{})", l, n_layer - 1);
}

std::string describe_ranked(const HaltingConfig& hc, int n_layer) {
  return fmt::format("{}(l={},keep={:.2f},{})", hc.policy, hc.decision_layer(n_layer), hc.keep, kv_mode_name(hc.kv));
}

}  // namespace dashlm
