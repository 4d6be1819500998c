// query (query-aware halting, in the spirit of GemFilter, FastKV and LazyLLM): at the decision
// layer the document tokens that the query's rows pay the most attention stay active (the
// attention of the latest layer up to it that sees every earlier key: on Gemma 3 a sliding-window
// decision layer ranks by the full layer before it). A token's
// score is the largest attention received within `pool` tokens on either side, so that a fact's
// neighbouring tokens stay together; with mix > 0 the score's rank is mixed with the rank of the
// token's delta (DASH's signal). With words > 0 whole words are ranked (by their best token) and
// kept or halted together, so that a number's digits stay or go as one; with sentences > 0 whole
// sentences are, so that the words a question cannot name stay with the ones it matches. With
// blocks > 0 each block of that many document tokens keeps the same fraction (a token's score
// becomes its rank within its block): attention decays with distance, and on the Qwen models and
// SmolLM2 one ranking of the whole document halts most of its early part. The query rows
// themselves never halt. Without a query (a task
// that may not read it, or a prompt without one) the segment's last attn_queries rows rank the
// others instead, as the attn policy does.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "runtime/dash/ranked.h"

namespace dashlm {

namespace {

class QueryPolicy final : public RankedPolicy {
 public:
  using RankedPolicy::RankedPolicy;
  int attention_rows(int layer) const override {
    return attention_rows_for(layer, query_rows_ > 0 ? static_cast<int>(query_rows_) : cfg_.attn_queries);
  }
  bool wants_signal(int layer) const override { return ranks_at(layer) && cfg_.mix > 0; }

  std::vector<int32_t> observe(int layer, const LayerSignals& s) override {
    const std::span<const float> att = ranking_attention(layer, s);
    if (!ranks_at(layer)) return {};
    const size_t n = att.size();
    // Attention received, max-pooled over the neighbourhood.
    std::vector<float> pooled(n, 0.f);
    const auto r = static_cast<size_t>(std::max(0, cfg_.pool));
    for (size_t t = 0; t < n; ++t) {
      const size_t lo = t >= r ? t - r : 0, hi = std::min(n - 1, t + r);
      pooled[t] = *std::max_element(att.begin() + static_cast<std::ptrdiff_t>(lo), att.begin() + static_cast<std::ptrdiff_t>(hi) + 1);
    }
    score_.assign(s.active.size(), 0.f);
    for (size_t i = 0; i < s.active.size(); ++i) score_[i] = pooled[static_cast<size_t>(s.active[i])];
    if (cfg_.mix > 0) {
      // Ranks in [0, 1] of both scores among the active tokens, mixed.
      const std::vector<float> a = ranks(score_), d = ranks(std::vector<float>(s.signal.begin(), s.signal.end()));
      for (size_t i = 0; i < score_.size(); ++i) score_[i] = static_cast<float>((1.0 - cfg_.mix) * a[i] + cfg_.mix * d[i]);
    }
    if (cfg_.blocks > 0) rank_in_blocks(s.active);
    return RankedPolicy::observe(layer, s);
  }

 private:
  float score(size_t i, const LayerSignals&) const override { return score_[i]; }
  // Each eligible token's score becomes 1 - its rank within its block of cfg_.blocks eligible
  // tokens (in position order) / the block's size: every block's best token scores 1, and the
  // global ranking takes the same fraction of each block (ties by position).
  void rank_in_blocks(std::span<const int32_t> active) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < active.size(); ++i)
      if (eligible_[static_cast<size_t>(active[i])]) idx.push_back(i);
    const auto b = static_cast<size_t>(cfg_.blocks);
    for (size_t b0 = 0; b0 < idx.size(); b0 += b) {
      std::vector<size_t> blk(idx.begin() + static_cast<std::ptrdiff_t>(b0),
                              idx.begin() + static_cast<std::ptrdiff_t>(std::min(idx.size(), b0 + b)));
      std::stable_sort(blk.begin(), blk.end(), [&](size_t x, size_t y) { return score_[x] > score_[y]; });
      const double m = static_cast<double>(blk.size());
      for (size_t k = 0; k < blk.size(); ++k) score_[blk[k]] = static_cast<float>(1.0 - static_cast<double>(k) / m);
    }
  }
  // The rank of each value among all, scaled to [0, 1] (ties by position).
  static std::vector<float> ranks(const std::vector<float>& v) {
    std::vector<size_t> idx(v.size());
    std::iota(idx.begin(), idx.end(), size_t{0});
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
    std::vector<float> r(v.size(), 0.f);
    const double den = v.size() > 1 ? static_cast<double>(v.size() - 1) : 1.0;
    for (size_t k = 0; k < idx.size(); ++k) r[idx[k]] = static_cast<float>(static_cast<double>(k) / den);
    return r;
  }
  std::vector<float> score_;
};

void validate_query(const HaltingConfig& hc, int n_layer) {
  validate_ranked(hc, n_layer);
  if (hc.attn_queries < 1) fail_setting(Setting::AttnQueries, "must be >= 1, got {}", hc.attn_queries);
  if (hc.pool < 0 || hc.pool > 64) fail_setting(Setting::Pool, "must be in 0..64, got {}", hc.pool);
  if (hc.words < 0 || hc.words > 64) fail_setting(Setting::Words, "must be in 0..64, got {}", hc.words);
  if (hc.sentences < 0 || hc.sentences > 256) fail_setting(Setting::Sentences, "must be in 0..256, got {}", hc.sentences);
  if (hc.blocks < 0 || hc.blocks > (1 << 24)) fail_setting(Setting::Blocks, "must be in 0..16777216, got {}", hc.blocks);
  if (!(hc.mix >= 0 && hc.mix <= 1)) fail_setting(Setting::Mix, "must be in [0, 1], got {}", hc.mix);
}

std::string describe_query(const HaltingConfig& hc, int n_layer) {
  std::string s = fmt::format("query({},pool={}", ranked_schedule(hc, n_layer), hc.pool);
  if (hc.words > 0) s += fmt::format(",words={}", hc.words);
  if (hc.sentences > 0) s += fmt::format(",sentences={}", hc.sentences);
  if (hc.blocks > 0) s += fmt::format(",blocks={}", hc.blocks);
  if (hc.mix > 0) s += fmt::format(",mix={:g}", hc.mix);
  return s + "," + kv_mode_name(hc.kv) + ")";
}

// Decision layers at 0.25 .. 0.5 of the depth keeping 1/10 to 1/2 (the query keeps the answer at
// smaller keep fractions than the query-agnostic policies), and staged schedules that halve the
// document early and cut deeper later.
std::vector<HaltingConfig> query_grid(const HaltingConfig& base, int n_layer, const PolicyInfo::Quantile&) {
  return ranked_grid(base, "query", n_layer, {0.25, 0.3, 0.4, 0.5}, {0.1, 0.2, 0.33, 0.5},
                     {{0.2, 0.5, 0.4, 0.2}, {0.25, 0.5, 0.5, 0.2}, {0.3, 0.5, 0.6, 0.2}, {0.25, 0.33, 0.5, 0.1}});
}

}  // namespace

const PolicyInfo& policy_query() {
  static const PolicyInfo info{
      "query", "keep the tokens the query attends to most (and their neighbours)",
      {Setting::HaltLayer, Setting::Keep, Setting::Kv}, 2,
      ranked_options({Setting::Signal, Setting::AttnQueries, Setting::Pool, Setting::Words, Setting::Sentences, Setting::Blocks, Setting::Mix}),
      {Setting::HaltLayer, Setting::Keep, Setting::Pool, Setting::Words, Setting::Sentences, Setting::Blocks, Setting::Mix, Setting::AttnQueries},
      validate_query, describe_query,
      [](const HaltingConfig& hc, int n_layer) -> std::unique_ptr<HaltingPolicy> { return std::make_unique<QueryPolicy>(hc, n_layer); },
      query_grid, true};
  return info;
}

}  // namespace dashlm
