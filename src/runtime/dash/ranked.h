// The base of the policies that decide once, at one layer, which tokens stay: the `keep`
// fraction of the eligible active tokens ranked highest by the policy's score. topk, random and
// attn are this with different scores.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "runtime/dash/policy.h"

namespace dashlm {

class RankedPolicy : public HaltingPolicy {
 public:
  RankedPolicy(const HaltingConfig& cfg, int n_layer) : cfg_(cfg), layer_(cfg.decision_layer(n_layer)) {}
  std::vector<int32_t> observe(int layer, const LayerSignals& s) override;

 protected:
  // The score of active token s.active[i] (higher: more worth keeping).
  virtual float score(size_t i, const LayerSignals& s) const = 0;
  // Puts the (score, token) candidates in the order of preference; default: largest score
  // first, ties to the earlier token.
  virtual void rank(std::vector<std::pair<float, int32_t>>& cand) const;

  HaltingConfig cfg_;
  int layer_;
};

// The settings every ranked policy reads: decision layer and keep fraction (spec fields
// L:KEEP[:KV]).
void validate_ranked(const HaltingConfig& hc, int n_layer);
// "name(l=12,keep=0.33,retain)".
std::string describe_ranked(const HaltingConfig& hc, int n_layer);

}  // namespace dashlm
