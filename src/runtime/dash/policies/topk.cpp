// topk (DASH, the paper's): at the decision layer the eligible tokens whose update was largest
// stay active, the rest halt. Offers its rule to executors that rank on the device.
#include <algorithm>
#include <cmath>
#include <set>

#include "runtime/dash/ranked.h"

namespace dashlm {

namespace {

class TopKPolicy final : public RankedPolicy {
 public:
  using RankedPolicy::RankedPolicy;
  bool wants_signal(int layer) const override { return ranks_at(layer); }
  std::optional<TopK> topk_rule() const override {
    return single_fixed_decision() ? std::optional<TopK>(TopK{first_layer(), cfg_.keep}) : std::nullopt;
  }

 private:
  float score(size_t i, const LayerSignals& s) const override { return s.signal[i]; }
};

// Decision layers at 0.2 .. 0.8 of the depth, keep fractions from 1/5 to 4/5; and a few staged
// schedules (a first cut early, a deeper one later) at similar budgets.
std::vector<HaltingConfig> topk_grid(const HaltingConfig& base, int n_layer, const PolicyInfo::Quantile&) {
  return ranked_grid(base, "topk", n_layer, {0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8}, {0.2, 0.33, 0.5, 0.67, 0.8},
                     {{0.25, 0.5, 0.5, 0.2}, {0.2, 0.67, 0.4, 0.33}, {0.3, 0.5, 0.6, 0.25}, {0.4, 0.5, 0.7, 0.2}});
}

}  // namespace

const PolicyInfo& policy_topk() {
  static const PolicyInfo info{
      "topk", "keep the tokens whose update at the decision layer was largest",
      {Setting::HaltLayer, Setting::Keep, Setting::Kv}, 2,
      ranked_options({Setting::Signal}),
      {Setting::HaltLayer, Setting::Keep},
      validate_ranked, describe_ranked,
      [](const HaltingConfig& hc, int n_layer) -> std::unique_ptr<HaltingPolicy> { return std::make_unique<TopKPolicy>(hc, n_layer); },
      topk_grid};
  return info;
}

}  // namespace dashlm
