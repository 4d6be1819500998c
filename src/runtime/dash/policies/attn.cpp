// attn (attention-score pruning, the FastV/LazyLLM family): at the decision layer the tokens that
// the segment's last attn_queries rows pay the most attention stay active (the attention of the
// latest layer up to it that sees every earlier key: RankedPolicy::ranking_attention).
#include "runtime/dash/ranked.h"

namespace dashlm {

namespace {

class AttnPolicy final : public RankedPolicy {
 public:
  using RankedPolicy::RankedPolicy;
  int attention_rows(int layer) const override { return attention_rows_for(layer, cfg_.attn_queries); }
  std::vector<int32_t> observe(int layer, const LayerSignals& s) override {
    LayerSignals r = s;
    r.attention_received = ranking_attention(layer, s);
    return RankedPolicy::observe(layer, r);
  }

 private:
  float score(size_t i, const LayerSignals& s) const override { return s.attention_received[static_cast<size_t>(s.active[i])]; }
};

void validate_attn(const HaltingConfig& hc, int n_layer) {
  validate_ranked(hc, n_layer);
  if (hc.attn_queries < 1) fail_setting(Setting::AttnQueries, "must be >= 1, got {}", hc.attn_queries);
}

}  // namespace

const PolicyInfo& policy_attn() {
  static const PolicyInfo info{
      "attn", "keep the tokens the last rows attend to most",
      {Setting::HaltLayer, Setting::Keep, Setting::Kv}, 2,
      ranked_options({Setting::Signal, Setting::AttnQueries}),
      {Setting::HaltLayer, Setting::Keep, Setting::AttnQueries},
      validate_attn, describe_ranked,
      [](const HaltingConfig& hc, int n_layer) -> std::unique_ptr<HaltingPolicy> { return std::make_unique<AttnPolicy>(hc, n_layer); }};
  return info;
}

}  // namespace dashlm
