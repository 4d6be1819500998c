// The base of the policies that keep the eligible active tokens ranked highest by the policy's
// score: topk, random, attn and query are this with different scores. Its schedule is one
// decision (halt_layer, keep) or several (then=L@KEEP/...: each later decision keeps a smaller
// fraction of the tokens eligible at the start, ranking only the tokens still active); the first
// decision falls at the decision layer, or with decide=stable at the first layer from min_layer on
// where the policy's top set stops changing (overlap with the previous layer's), at the decision
// layer at the latest.
#pragma once
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dash/policy.h"

namespace dashlm {

class RankedPolicy : public HaltingPolicy {
 public:
  RankedPolicy(const HaltingConfig& cfg, int n_layer);
  void begin(int64_t n_tokens, std::span<const uint8_t> eligible) override;
  std::vector<int32_t> observe(int layer, const LayerSignals& s) override;
  std::vector<int> decision_layers() const override { return decided_; }

 protected:
  // Whether observe() ranks the tokens after this layer (and so reads the policy's signal there):
  // at the next decision's layer, or with decide=stable at every layer of its window until the
  // first decision.
  bool ranks_at(int layer) const;
  // One decision at a fixed layer: the schedule an executor may apply itself (topk_rule).
  bool single_fixed_decision() const { return stages_.size() == 1 && cfg_.decide == DecideRule::Fixed; }
  // The layer of the first decision (with decide=stable: the latest).
  int first_layer() const { return stages_.front().layer; }
  // The score of active token s.active[i] (higher: more worth keeping).
  virtual float score(size_t i, const LayerSignals& s) const = 0;
  // Puts the (score, token) candidates in the order of preference; default: largest score
  // first, ties to the earlier token.
  virtual void rank(std::vector<std::pair<float, int32_t>>& cand) const;
  // With cfg_.words > 0: reorders the ranked candidates by word (a word ranks as its best token
  // and brings its other candidates along) and returns how many lead the order once whole words
  // are kept until at least n_keep tokens are.
  int64_t group_words(std::vector<std::pair<float, int32_t>>& cand, int64_t n_keep) const;

  // The rankings by attention (attn, query) read the attention of the latest layer at or before
  // the ranking layer that sees every earlier key: a sliding-window layer's rows see only their
  // window, so on models that interleave windowed and full layers (Gemma 3) a token further back
  // than the window would rank last whatever the query asks. attention_rows_for: `rows` at the
  // layers whose attention an upcoming ranking reads, else 0. ranking_attention: called in
  // observe() at every layer; keeps what such a layer recorded and returns, per token of the
  // segment, the attention that the ranking at this layer reads.
  int attention_rows_for(int layer, int rows) const;
  std::span<const float> ranking_attention(int layer, const LayerSignals& s);

  HaltingConfig cfg_;

 private:
  struct Stage {
    int layer;
    double keep;
  };
  std::vector<Stage> stages_;     // ascending layers and falling keep fractions
  size_t next_ = 0;               // the next decision
  int64_t n_eligible_ = 0;        // at the start of the prefill
  std::vector<int32_t> prev_top_; // decide=stable: the previous layer's top set, ascending
  std::vector<int> decided_;      // the layers of the decisions taken
  std::vector<float> attention_;  // attention recorded at the last source layer
  // The layer whose attention the ranking at `layer` reads (see attention_rows_for).
  int attention_source(int layer) const;
};

// The settings every ranked policy reads: decision layer and keep fraction (spec fields
// L:KEEP[:KV]), the later stages, the decide rule (with min_layer and overlap).
void validate_ranked(const HaltingConfig& hc, int n_layer);
// A ranked policy's spec options: its own, then the schedule's (then, decide, min, overlap).
std::vector<Setting> ranked_options(std::initializer_list<Setting> own);
// "l=12,keep=0.33", "l=6/12,keep=0.50/0.20", "l=stable(2-6,0.9)/12,keep=0.50/0.20".
std::string ranked_schedule(const HaltingConfig& hc, int n_layer);
// "name(l=12,keep=0.33,retain)".
std::string describe_ranked(const HaltingConfig& hc, int n_layer);

// A calibration grid of a ranked policy: every decision layer at the given fractions of the depth
// with every keep fraction, then the staged schedules {first layer fraction, its keep, second layer
// fraction, its keep} whose two layers fall apart at this depth.
struct StagedPoint {
  double layer0, keep0, layer1, keep1;
};
std::vector<HaltingConfig> ranked_grid(const HaltingConfig& base, const char* policy, int n_layer,
                                       std::initializer_list<double> layer_fractions, std::initializer_list<double> keeps,
                                       std::initializer_list<StagedPoint> staged);

}  // namespace dashlm
