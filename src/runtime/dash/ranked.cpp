#include "runtime/dash/ranked.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <set>

namespace dashlm {

RankedPolicy::RankedPolicy(const HaltingConfig& cfg, int n_layer) : cfg_(cfg) {
  stages_.push_back({cfg.decision_layer(n_layer), cfg.keep});
  for (const HaltStage& st : cfg.then) stages_.push_back({layer_index(st.layer, n_layer), st.keep});
}

void RankedPolicy::begin(int64_t n_tokens, std::span<const uint8_t> eligible) {
  HaltingPolicy::begin(n_tokens, eligible);
  n_eligible_ = std::count(eligible_.begin(), eligible_.end(), uint8_t{1});
  next_ = 0;
  prev_top_.clear();
  decided_.clear();
  attention_.clear();
}

bool RankedPolicy::ranks_at(int layer) const {
  if (next_ >= stages_.size()) return false;
  if (next_ == 0 && cfg_.decide == DecideRule::Stable) return layer >= cfg_.min_layer && layer <= stages_[0].layer;
  return layer == stages_[next_].layer;
}

int RankedPolicy::attention_source(int layer) const {
  const auto full = [&](int l) { return static_cast<size_t>(l) >= layer_windows_.size() || layer_windows_[static_cast<size_t>(l)] == 0; };
  for (int l = layer; l >= 0; --l) {
    if (full(l)) return l;
  }
  return layer;  // no full layer before it: its own window is all there is
}

int RankedPolicy::attention_rows_for(int layer, int rows) const {
  // Rankings come at this layer or later (at most the last stage's layer).
  for (int l = layer; l <= stages_.back().layer; ++l) {
    if (ranks_at(l) && attention_source(l) == layer) return rows;
  }
  return 0;
}

std::span<const float> RankedPolicy::ranking_attention(int layer, const LayerSignals& s) {
  if (attention_rows_for(layer, 1) > 0) attention_.assign(s.attention_received.begin(), s.attention_received.end());
  return attention_;
}

std::vector<int32_t> RankedPolicy::observe(int layer, const LayerSignals& s) {
  if (!ranks_at(layer)) return {};
  // Candidates: the eligible active tokens, with their score.
  std::vector<std::pair<float, int32_t>> cand;
  for (size_t i = 0; i < s.active.size(); ++i) {
    const int32_t t = s.active[i];
    if (eligible_[static_cast<size_t>(t)]) cand.emplace_back(score(i, s), t);
  }
  // A fraction of the tokens eligible at the start; earlier decisions kept at least as many.
  int64_t n_keep = std::min<int64_t>(halting_keep_count(stages_[next_].keep, n_eligible_), static_cast<int64_t>(cand.size()));
  rank(cand);
  if ((cfg_.words > 0 || cfg_.sentences > 0) && !word_starts_.empty()) n_keep = group_words(cand, n_keep);
  if (next_ == 0 && cfg_.decide == DecideRule::Stable && layer < stages_[0].layer) {
    // Decide here once the top set overlaps the previous layer's by `overlap` (the first layer of
    // the window only sets the reference).
    std::vector<int32_t> top;
    for (size_t i = 0; i < static_cast<size_t>(n_keep); ++i) top.push_back(cand[i].second);
    std::sort(top.begin(), top.end());
    std::vector<int32_t> common;
    std::set_intersection(top.begin(), top.end(), prev_top_.begin(), prev_top_.end(), std::back_inserter(common));
    const bool stable = layer > cfg_.min_layer && static_cast<double>(common.size()) >= cfg_.overlap * static_cast<double>(n_keep) - 1e-9;
    prev_top_.swap(top);
    if (!stable) return {};
  }
  ++next_;
  decided_.push_back(layer);
  std::vector<int32_t> halt;
  for (size_t i = static_cast<size_t>(n_keep); i < cand.size(); ++i) halt.push_back(cand[i].second);
  std::sort(halt.begin(), halt.end());
  return halt;
}

int64_t RankedPolicy::group_words(std::vector<std::pair<float, int32_t>>& cand, int64_t n_keep) const {
  // Word (or sentence) of each token of the segment: a new one at each start and every `cap` tokens.
  const int cap = cfg_.sentences > 0 ? cfg_.sentences : cfg_.words;
  std::vector<int32_t> word(word_starts_.size());
  int32_t w = -1, len = 0;
  for (size_t t = 0; t < word_starts_.size(); ++t) {
    if (w < 0 || word_starts_[t] || len == cap) {
      ++w;
      len = 0;
    }
    word[t] = w;
    ++len;
  }
  // Words in the order of their best candidate (cand is ranked already), each with its candidates
  // in rank order.
  std::vector<std::vector<std::pair<float, int32_t>>> members(static_cast<size_t>(w + 1));
  std::vector<int32_t> order;
  for (const auto& c : cand) {
    const int32_t wc = word.at(static_cast<size_t>(c.second));
    if (members[static_cast<size_t>(wc)].empty()) order.push_back(wc);
    members[static_cast<size_t>(wc)].push_back(c);
  }
  // Whole words are kept until n_keep tokens are: the last one kept may go past it.
  std::vector<std::pair<float, int32_t>> grouped;
  grouped.reserve(cand.size());
  int64_t kept = 0;
  for (int32_t wc : order) {
    const auto& m = members[static_cast<size_t>(wc)];
    grouped.insert(grouped.end(), m.begin(), m.end());
    if (kept < n_keep) kept = static_cast<int64_t>(grouped.size());
  }
  cand.swap(grouped);
  return kept;
}

void RankedPolicy::rank(std::vector<std::pair<float, int32_t>>& cand) const {
  // Largest first; ties by position so results are reproducible.
  std::stable_sort(cand.begin(), cand.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
}

namespace {

void check_layer(Setting s, double l, int n_layer) {
  if (!(l >= 0.0) || (l >= 1.0 && l != std::floor(l))) fail_setting(s, "must be a layer index or a fraction in [0, 1), got {}", l);
  if (l >= 1.0 && l > n_layer - 1) fail_setting(s, "{} is outside the model (layers 0..{})", l, n_layer - 1);
}

}  // namespace

void validate_ranked(const HaltingConfig& hc, int n_layer) {
  if (!(hc.keep > 0.0 && hc.keep <= 1.0)) fail_setting(Setting::Keep, "must be in (0, 1], got {}", hc.keep);
  check_layer(Setting::HaltLayer, hc.halt_layer, n_layer);
  // Later stages: each a layer after the one before with a smaller keep fraction.
  int layer = hc.decision_layer(n_layer);
  double keep = hc.keep;
  for (const HaltStage& st : hc.then) {
    check_layer(Setting::Then, st.layer, n_layer);
    const int l = layer_index(st.layer, n_layer);
    if (l <= layer) fail_setting(Setting::Then, "stages must ascend in layer: {} is layer {}, not after layer {}", st.layer, l, layer);
    if (!(st.keep > 0.0 && st.keep <= 1.0)) fail_setting(Setting::Then, "keep fractions must be in (0, 1], got {}", st.keep);
    if (!(st.keep < keep)) fail_setting(Setting::Then, "keep fractions must fall from stage to stage: {} after {}", st.keep, keep);
    layer = l;
    keep = st.keep;
  }
  const HaltingConfig defaults;
  if (hc.decide == DecideRule::Stable) {
    if (hc.min_layer < 0 || hc.min_layer >= hc.decision_layer(n_layer)) {
      fail_setting(Setting::MinLayer, "must be in 0..{} (below the decision layer, the stable rule's last), got {}", hc.decision_layer(n_layer) - 1,
                   hc.min_layer);
    }
    if (!(hc.overlap > 0.0 && hc.overlap <= 1.0)) fail_setting(Setting::Overlap, "must be in (0, 1], got {}", hc.overlap);
  } else {
    if (hc.min_layer != defaults.min_layer) fail_setting(Setting::MinLayer, "applies to {} only with decide=stable", hc.policy);
    if (hc.overlap != defaults.overlap) fail_setting(Setting::Overlap, "applies only with decide=stable");
  }
}

std::vector<Setting> ranked_options(std::initializer_list<Setting> own) {
  std::vector<Setting> o(own);
  o.insert(o.end(), {Setting::Then, Setting::Decide, Setting::MinLayer, Setting::Overlap});
  return o;
}

std::string ranked_schedule(const HaltingConfig& hc, int n_layer) {
  std::string l = hc.decide == DecideRule::Stable
                      ? fmt::format("stable({}-{},{:g})", hc.min_layer, hc.decision_layer(n_layer), hc.overlap)
                      : fmt::format("{}", hc.decision_layer(n_layer));
  std::string k = fmt::format("{:.2f}", hc.keep);
  for (const HaltStage& st : hc.then) {
    l += fmt::format("/{}", layer_index(st.layer, n_layer));
    k += fmt::format("/{:.2f}", st.keep);
  }
  return fmt::format("l={},keep={}", l, k);
}

std::string describe_ranked(const HaltingConfig& hc, int n_layer) {
  return fmt::format("{}({},{})", hc.policy, ranked_schedule(hc, n_layer), kv_mode_name(hc.kv));
}

std::vector<HaltingConfig> ranked_grid(const HaltingConfig& base, const char* policy, int n_layer,
                                       std::initializer_list<double> layer_fractions, std::initializer_list<double> keeps,
                                       std::initializer_list<StagedPoint> staged) {
  const auto layer = [&](double f) { return std::clamp(static_cast<int>(std::lround(f * n_layer)), 1, n_layer - 1); };
  std::set<int> layers;
  for (double f : layer_fractions) layers.insert(layer(f));
  std::vector<HaltingConfig> grid;
  for (int l : layers) {
    for (double keep : keeps) {
      HaltingConfig c = base;
      c.policy = policy;
      c.halt_layer = l;
      c.keep = keep;
      grid.push_back(c);
    }
  }
  for (const StagedPoint& st : staged) {
    const int l0 = layer(st.layer0), l1 = layer(st.layer1);
    if (l1 <= l0) continue;  // too few layers to stage
    HaltingConfig c = base;
    c.policy = policy;
    c.halt_layer = l0;
    c.keep = st.keep0;
    c.then = {{static_cast<double>(l1), st.keep1}};
    grid.push_back(c);
  }
  return grid;
}

}  // namespace dashlm
