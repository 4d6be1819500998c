#include "runtime/halting.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include <fmt/format.h>

#include "backends/error.h"

namespace dashlm {

const char* delta_signal_name(DeltaSignal s) {
  switch (s) {
    case DeltaSignal::Abs: return "abs";
    case DeltaSignal::Rel: return "rel";
    case DeltaSignal::Block: return "block";
  }
  return "?";
}

const char* kv_mode_name(KVMode m) { return m == KVMode::Retain ? "retain" : "drop"; }

int HaltingConfig::decision_layer(int n_layer) const {
  const int l = halt_layer >= 1.0 ? static_cast<int>(halt_layer) : static_cast<int>(std::lround(halt_layer * n_layer));
  return std::clamp(l, 0, n_layer - 1);
}

void HaltingConfig::validate(int n_layer) const {
  static const char* kPolicies[] = {"none", "topk", "threshold", "random", "attn"};
  if (std::find_if(std::begin(kPolicies), std::end(kPolicies), [&](const char* p) { return policy == p; }) == std::end(kPolicies)) {
    fail("unknown halting policy '{}' (none, topk, threshold, random, attn)", policy);
  }
  if (protect_first < 0) fail("--protect-first must be >= 0");
  if (protect_last < 1) fail("--protect-last must be >= 1: the last prompt token is always protected");
  if (policy == "topk" || policy == "random" || policy == "attn") {
    if (!(keep > 0.0 && keep <= 1.0)) fail("--keep must be in (0, 1], got {}", keep);
    if (!(halt_layer >= 0.0) || (halt_layer >= 1.0 && halt_layer != std::floor(halt_layer))) {
      fail("--halt-layer must be a layer index or a fraction in [0, 1), got {}", halt_layer);
    }
    if (halt_layer >= 1.0 && halt_layer > n_layer - 1) {
      fail("--halt-layer {} is outside the model (layers 0..{})", halt_layer, n_layer - 1);
    }
    if (policy == "attn" && attn_queries < 1) fail("--attn-queries must be >= 1");
  }
  if (policy == "threshold") {
    if (tau < 0 && patience <= 0) fail("--halting threshold needs --tau and --patience");
    if (tau < 0) fail("--halting threshold needs --tau (>= 0)");
    if (patience <= 0) fail("--tau needs --patience (>= 1 consecutive layers)");
    if (min_layer < 0 || min_layer > n_layer - 1) fail("--min-layer {} is outside the model (layers 0..{})", min_layer, n_layer - 1);
  } else if (tau >= 0 || patience > 0) {
    fail("--tau and --patience belong to --halting threshold");
  }
}

std::string HaltingConfig::describe(int n_layer) const {
  if (policy == "none") return "none";
  if (policy == "threshold") {
    return fmt::format("threshold(min={},tau={:g},patience={},{},{})", min_layer, tau, patience, delta_signal_name(signal), kv_mode_name(kv));
  }
  return fmt::format("{}(l={},keep={:.2f},{})", policy, decision_layer(n_layer), keep, kv_mode_name(kv));
}

std::vector<uint8_t> halting_eligibility(const HaltingConfig& cfg, int64_t n_tokens) {
  std::vector<uint8_t> e(static_cast<size_t>(n_tokens), 1);
  for (int64_t t = 0; t < std::min<int64_t>(cfg.protect_first, n_tokens); ++t) e[static_cast<size_t>(t)] = 0;
  for (int64_t t = std::max<int64_t>(0, n_tokens - cfg.protect_last); t < n_tokens; ++t) e[static_cast<size_t>(t)] = 0;
  return e;
}

int64_t halting_keep_count(double keep, int64_t n_eligible) {
  // ceil with a guard against 0.3333 * 300 = 99.99999 style rounding.
  const auto k = static_cast<int64_t>(std::ceil(keep * static_cast<double>(n_eligible) - 1e-9));
  return std::clamp<int64_t>(k, 0, n_eligible);
}

namespace {

// One decision at a fixed layer: keep the best-ranked `keep` fraction of the eligible tokens.
class SingleShotPolicy : public HaltingPolicy {
 public:
  SingleShotPolicy(const HaltingConfig& cfg, int n_layer) : cfg_(cfg), layer_(cfg.decision_layer(n_layer)) {}

  bool wants_attention(int layer) const override { return cfg_.policy == "attn" && layer == layer_; }
  bool wants_signal(int layer) const override { return cfg_.policy == "topk" && layer == layer_; }
  std::optional<TopK> topk_rule() const override {
    if (cfg_.policy != "topk") return std::nullopt;
    return TopK{layer_, cfg_.keep};
  }

  std::vector<int32_t> observe(int layer, std::span<const int32_t> active, std::span<const float> signal,
                               std::span<const float> attention_received) override {
    if (layer != layer_) return {};
    // Candidates: the eligible active tokens, with their score (higher = more worth keeping).
    std::vector<std::pair<float, int32_t>> cand;
    for (size_t i = 0; i < active.size(); ++i) {
      const int32_t t = active[i];
      if (!eligible_[static_cast<size_t>(t)]) continue;
      float score = 0.f;
      if (cfg_.policy == "topk") score = signal[i];
      if (cfg_.policy == "attn") score = attention_received[static_cast<size_t>(t)];
      cand.emplace_back(score, t);
    }
    const int64_t n_keep = halting_keep_count(cfg_.keep, static_cast<int64_t>(cand.size()));
    if (cfg_.policy == "random") {
      std::mt19937_64 rng(cfg_.seed);
      std::shuffle(cand.begin(), cand.end(), rng);
    } else {
      // Largest first; ties by position so results are reproducible.
      std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    }
    std::vector<int32_t> halt;
    for (size_t i = static_cast<size_t>(n_keep); i < cand.size(); ++i) halt.push_back(cand[i].second);
    std::sort(halt.begin(), halt.end());
    return halt;
  }

 private:
  HaltingConfig cfg_;
  int layer_;
};

// Per-layer form: halt after `patience` consecutive layers with a delta below tau.
class ThresholdPolicy : public HaltingPolicy {
 public:
  explicit ThresholdPolicy(const HaltingConfig& cfg) : cfg_(cfg) {}
  bool wants_signal(int layer) const override { return layer >= cfg_.min_layer; }

  void begin(int64_t n_tokens, std::span<const uint8_t> eligible) override {
    HaltingPolicy::begin(n_tokens, eligible);
    below_.assign(static_cast<size_t>(n_tokens), 0);
  }

  std::vector<int32_t> observe(int layer, std::span<const int32_t> active, std::span<const float> signal,
                               std::span<const float>) override {
    std::vector<int32_t> halt;
    if (layer < cfg_.min_layer) return halt;
    for (size_t i = 0; i < active.size(); ++i) {
      const auto t = static_cast<size_t>(active[i]);
      below_[t] = signal[i] < cfg_.tau ? below_[t] + 1 : 0;
      if (eligible_[t] && below_[t] >= cfg_.patience) halt.push_back(active[i]);
    }
    return halt;
  }

 private:
  HaltingConfig cfg_;
  std::vector<int> below_;
};

}  // namespace

void TokenSets::reset(int64_t n_tokens) {
  active.resize(static_cast<size_t>(n_tokens));
  std::iota(active.begin(), active.end(), 0);
  halted.clear();
  pos_active.clear();
  pos_halted.clear();
}

void TokenSets::halt(const std::vector<int32_t>& newly, std::span<const int32_t> pos) {
  if (newly.empty()) return;
  const auto n = static_cast<int32_t>(pos.size());
  std::vector<int32_t> rest, merged;
  std::set_difference(active.begin(), active.end(), newly.begin(), newly.end(), std::back_inserter(rest));
  if (rest.size() + newly.size() != active.size()) fail("halting policy returned tokens that are not active");
  if (rest.empty() || rest.back() != n - 1) fail("halting policy halted the last token");
  active.swap(rest);
  std::merge(halted.begin(), halted.end(), newly.begin(), newly.end(), std::back_inserter(merged));
  halted.swap(merged);
  pos_active.resize(active.size());
  for (size_t i = 0; i < active.size(); ++i) pos_active[i] = pos[static_cast<size_t>(active[i])];
  pos_halted.resize(halted.size());
  for (size_t i = 0; i < halted.size(); ++i) pos_halted[i] = pos[static_cast<size_t>(halted[i])];
}

bool signal_wanted(const HaltingPolicy* policy, bool trace, int layer, int n_layer) {
  return trace || (policy && layer + 1 < n_layer && policy->wants_signal(layer));
}

std::unique_ptr<HaltingPolicy> make_halting_policy(const HaltingConfig& cfg, int n_layer) {
  cfg.validate(n_layer);
  if (cfg.policy == "none") return nullptr;
  if (cfg.policy == "threshold") return std::make_unique<ThresholdPolicy>(cfg);
  return std::make_unique<SingleShotPolicy>(cfg, n_layer);
}

}  // namespace dashlm
