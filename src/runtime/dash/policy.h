// Halting policies. A policy watches what the prefill gives it after each layer (the size of each
// active token's update, or the attention tokens receive) and says which tokens stop; the prefill
// driver (dash/prefill.h) and the backends do not know which policy runs.
//
// A policy is one file in dash/policies/ that defines its class and its PolicyInfo (name, the
// settings it reads, how it checks and describes them, a factory), plus one line in
// dash/policies.def. Nothing outside that file compares a policy's name.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "runtime/dash/config.h"

namespace dashlm {

// What a layer gave the policy.
struct LayerSignals {
  std::span<const int32_t> active;  // tokens (indices in the segment) that ran the layer, ascending
  std::span<const float> signal;    // their deltas, where the policy asked for them (wants_signal)
  // Per token of the segment, the attention it received from the segment's last rows, where the
  // policy asked for it (attention_rows > 0).
  std::span<const float> attention_received;
};

class HaltingPolicy {
 public:
  virtual ~HaltingPolicy() = default;
  // Once per prefill: n_tokens in the segment; eligible[t] is 0 for protected tokens.
  virtual void begin(int64_t n_tokens, std::span<const uint8_t> eligible) {
    (void)n_tokens;
    eligible_.assign(eligible.begin(), eligible.end());
  }
  // Whether observe() at this layer reads the signal: the executor computes it only then (or
  // when a trace asks for every layer's).
  virtual bool wants_signal(int layer) const { return false; }
  // How many of the segment's last rows rank the tokens by the attention they pay them at this
  // layer (0: observe() does not read attention_received).
  virtual int attention_rows(int layer) const { return 0; }
  // A rule that an executor may apply where the signals are (on the GPU) instead of calling
  // observe(): after `layer`, of the active eligible tokens the halting_keep_count(keep, their
  // number) with the largest signal stay (ties to the earlier token) and the other eligible ones
  // halt, which is what observe() returns for signals that are not NaN. Empty where the policy
  // offers none.
  struct TopK {
    int layer;
    double keep;
  };
  virtual std::optional<TopK> topk_rule() const { return std::nullopt; }
  // After layer `layer`: returns the tokens that halt now, ascending: a subset of s.active, never
  // a protected token.
  virtual std::vector<int32_t> observe(int layer, const LayerSignals& s) = 0;
  // After the prefill: the layers after which the policy took its decisions, where it decides for
  // all tokens at once (one per stage of a ranking policy; empty for per-token rules).
  virtual std::vector<int> decision_layers() const { return {}; }
  // Before begin(): the segment's last n rows are the query (they never halt), for the policies
  // that read it (PolicyInfo::reads_query); 0: no query in the segment.
  void set_query_rows(int64_t n) { query_rows_ = n; }
  // Before begin(): word_starts[t] is 1 where token t of the segment begins a word, or a sentence
  // for a policy that keeps whole sentences (empty: every
  // token is a word), for the policies that keep whole words.
  void set_word_starts(std::vector<uint8_t> w) { word_starts_ = std::move(w); }
  // Before begin(): windows[l] is layer l's sliding attention window (0: it sees every earlier
  // key; empty: every layer does).
  void set_layer_windows(std::vector<int> windows) { layer_windows_ = std::move(windows); }

 protected:
  std::vector<uint8_t> eligible_;
  int64_t query_rows_ = 0;
  std::vector<uint8_t> word_starts_;
  std::vector<int> layer_windows_;
};

// A policy as the registry knows it.
struct PolicyInfo {
  const char* name;
  const char* help;             // one line: what it ranks by
  std::vector<Setting> fields;  // positional fields of its spec after the name, in order
  size_t required = 0;          // how many of them a spec must give
  std::vector<Setting> options; // settings a spec gives as :key=value (besides pf and pl)
  std::vector<Setting> params;  // its parameters, written to JSON in this order
  // Checks the policy's own settings (the common ones are checked before); throws SettingError.
  void (*validate)(const HaltingConfig& hc, int n_layer) = nullptr;
  std::string (*describe)(const HaltingConfig& hc, int n_layer) = nullptr;
  std::unique_ptr<HaltingPolicy> (*make)(const HaltingConfig& hc, int n_layer) = nullptr;
  // The settings `dashlm calibrate` searches for this policy (null: it is not calibrated). base
  // holds the KV mode and the signal; quantile(from_layer, q) is the q-quantile of that signal
  // over the layers from from_layer on, measured on full prefills of the calibration text.
  using Quantile = std::function<double(int from_layer, double q)>;
  std::vector<HaltingConfig> (*calibration_grid)(const HaltingConfig& base, int n_layer, const Quantile& quantile) = nullptr;
  // Whether it ranks the document by the query: then a session prefills document and query as one
  // segment whose query rows never halt (set_query_rows), where the task lets it see the query.
  bool reads_query = false;

  // Whether the policy reads this setting (as a field, an option or a parameter).
  bool reads(Setting s) const;
};

// Every registered policy, in the order of dash/policies.def.
const std::vector<const PolicyInfo*>& halting_policies();
// The policy of that name, or null.
const PolicyInfo* find_halting_policy(std::string_view name);
// "topk, threshold, random, attn".
std::string halting_policy_names();

// The policy named in the config, after validate(); null for "none".
std::unique_ptr<HaltingPolicy> make_halting_policy(const HaltingConfig& cfg, int n_layer);

// Whether the prefill computes the halting signal after this layer: at every layer for a trace,
// otherwise where the policy reads it, and never after the last layer (nothing decides there).
bool signal_wanted(const HaltingPolicy* policy, bool trace, int layer, int n_layer);

}  // namespace dashlm
