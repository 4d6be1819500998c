// random (a baseline): at the decision layer a seeded random `keep` fraction of the eligible
// tokens stays active.
#include <algorithm>
#include <random>

#include "runtime/dash/ranked.h"

namespace dashlm {

namespace {

class RandomPolicy final : public RankedPolicy {
 public:
  using RankedPolicy::RankedPolicy;

 private:
  float score(size_t, const LayerSignals&) const override { return 0.f; }
  void rank(std::vector<std::pair<float, int32_t>>& cand) const override {
    std::mt19937_64 rng(cfg_.seed);
    std::shuffle(cand.begin(), cand.end(), rng);
  }
};

}  // namespace

const PolicyInfo& policy_random() {
  static const PolicyInfo info{
      "random", "keep a seeded random choice of tokens",
      {Setting::HaltLayer, Setting::Keep, Setting::Kv}, 2,
      ranked_options({Setting::Signal, Setting::Seed}),
      {Setting::HaltLayer, Setting::Keep, Setting::Seed},
      validate_ranked, describe_ranked,
      [](const HaltingConfig& hc, int n_layer) -> std::unique_ptr<HaltingPolicy> { return std::make_unique<RandomPolicy>(hc, n_layer); }};
  return info;
}

}  // namespace dashlm
