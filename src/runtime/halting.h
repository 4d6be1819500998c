// DASH halting policies. A policy watches one number per active token per layer (the size of
// the attention update) and says which tokens stop; the forward pass does not know which
// policy runs. Baselines (random, attention-score pruning) implement the same interface.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace dashlm {

// What "how much the layer changed the token" means.
enum class DeltaSignal {
  Abs,    // ||U||: L2 norm of the attention branch output before the residual add (the paper's)
  Rel,    // ||U|| / ||h||: relative to the token's hidden state entering the layer
  Block,  // 1 - cos(h_in, h_out) over the whole block (attention and MLP)
};
const char* delta_signal_name(DeltaSignal s);

// What happens to a halted token's keys and values in later layers.
enum class KVMode {
  Retain,  // projected from its frozen hidden state at every later layer
  Drop,    // absent from later layers' attention and KV cache
};
const char* kv_mode_name(KVMode m);

struct HaltingConfig {
  std::string policy = "none";  // none | topk | threshold | random | attn
  double halt_layer = 0.4;      // topk/random/attn: a layer index (>= 1) or a fraction of depth (< 1)
  double keep = 1.0 / 3.0;      // topk/random/attn: fraction of eligible tokens that stay active
  int min_layer = 1;            // threshold: first layer whose delta counts
  double tau = -1;              // threshold: halt below this (< 0: unset)
  int patience = 0;             // threshold: consecutive layers below tau
  uint64_t seed = 0;            // random
  int attn_queries = 8;         // attn: the last prompt tokens whose attention ranks the others
  KVMode kv = KVMode::Retain;
  DeltaSignal signal = DeltaSignal::Abs;
  // The first tokens never halt: they are attention sinks, and dropping or freezing them costs far
  // more than their share (docs/RESULTS.md measures 0 against 4).
  int protect_first = 4;
  int protect_last = 1;         // the last prompt tokens never halt (at least the last one)

  bool enabled() const { return policy != "none"; }
  // Throws dashlm::Error with a clear message for inconsistent or out-of-range settings.
  void validate(int n_layer) const;
  // The layer index after which topk/random/attn decide.
  int decision_layer(int n_layer) const;
  // "topk(l=12,keep=0.33,retain)" and the like, for tables and logs.
  std::string describe(int n_layer) const;
};

class HaltingPolicy {
 public:
  virtual ~HaltingPolicy() = default;
  // Once per prefill: n_tokens in the segment; eligible[t] is 0 for protected tokens.
  virtual void begin(int64_t n_tokens, std::span<const uint8_t> eligible) { eligible_.assign(eligible.begin(), eligible.end()); (void)n_tokens; }
  // True if observe() at this layer needs, for every token, the attention it receives from the
  // last prompt tokens (the attn baseline).
  virtual bool wants_attention(int layer) const { return false; }
  // True if observe() at this layer reads the signal: engines skip computing and copying it
  // otherwise (unless a trace asks for every layer's).
  virtual bool wants_signal(int layer) const { return true; }
  // The topk rule, for engines that decide where the signals are (on the GPU): after `layer`,
  // of the active eligible tokens the halting_keep_count(keep, their number) with the largest
  // signal stay (ties to the earlier token) and the other eligible ones halt, which is what
  // observe() returns for signals that are not NaN (the host's order of NaNs is unspecified).
  // Empty for every other policy.
  struct TopK {
    int layer;
    double keep;
  };
  virtual std::optional<TopK> topk_rule() const { return std::nullopt; }
  // After layer `layer`: active[i] is a token (index in the segment) that ran this layer and
  // signal[i] its delta. attention_received (when asked for) has one value per token of the
  // segment. Returns the tokens that halt now: a subset of active, never a protected token.
  virtual std::vector<int32_t> observe(int layer, std::span<const int32_t> active, std::span<const float> signal,
                                       std::span<const float> attention_received) = 0;

 protected:
  std::vector<uint8_t> eligible_;
};

// Which tokens of a segment still run each layer (active) and which have halted, both ascending,
// with their positions: the bookkeeping every engine shares.
struct TokenSets {
  std::vector<int32_t> active, halted, pos_active, pos_halted;
  void reset(int64_t n_tokens);  // every token active
  // Moves `newly` (ascending, a subset of active) to halted; pos[t] is token t's position.
  // Throws if a token is not active or if the segment's last token would halt.
  void halt(const std::vector<int32_t>& newly, std::span<const int32_t> pos);
};

// Whether an engine computes the halting signal after this layer: at every layer for a trace,
// otherwise where the policy reads it, and never after the last layer (nothing decides there).
bool signal_wanted(const HaltingPolicy* policy, bool trace, int layer, int n_layer);

// Builds the policy named in the config (after validate()).
std::unique_ptr<HaltingPolicy> make_halting_policy(const HaltingConfig& cfg, int n_layer);

// The eligibility mask of a segment of n tokens: protect_first and protect_last are 0.
std::vector<uint8_t> halting_eligibility(const HaltingConfig& cfg, int64_t n_tokens);

// How many of n eligible tokens a keep fraction keeps: ceil(keep * n), at least 0, at most n.
int64_t halting_keep_count(double keep, int64_t n_eligible);

}  // namespace dashlm
