// The halting configuration: which policy halts tokens during a prefill and with which
// settings. One parser (the spec "topk:0.4:0.33:drop"), one formatter (the canonical spec and
// the one-line description), one validator and one JSON writer, used by every command; each
// setting has one name, and the CLI flag that sets it is listed beside it (setting_flag).
// What a policy reads of these settings, and how it checks them, is the policy's own
// (dash/policy.h): nothing here knows a policy by name.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/error.h"

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

// Where a ranking policy takes its first decision.
enum class DecideRule {
  Fixed,   // at the decision layer
  Stable,  // at the first layer from min_layer on whose top set by the policy's score overlaps the
           // previous layer's by at least `overlap`; at the decision layer at the latest
};
const char* decide_rule_name(DecideRule r);

// A later decision of a staged schedule: after `layer` (an index >= 1 or a fraction of depth < 1)
// only `keep` of the tokens eligible at the start stay active.
struct HaltStage {
  double layer = 0;
  double keep = 1;
};

// The settings, by one name each. The policy's name is a setting too.
enum class Setting {
  Policy, HaltLayer, Keep, MinLayer, Tau, Patience, Seed, AttnQueries, Pool, Words, Sentences, Blocks, Mix, Then, Decide, Overlap, Kv, Signal,
  ProtectFirst, ProtectLast
};
// "keep", "halt_layer", ...: the name in messages and JSON.
const char* setting_name(Setting s);
// "--keep", "--halt-layer", ...: the flag of run and bench that sets it.
const char* setting_flag(Setting s);

// A bad setting: what() names the setting ("keep must be in (0, 1], got 2"); `setting` and
// `problem` ("must be in (0, 1], got 2") let a caller name it its own way (the CLI by its flag).
class SettingError : public Error {
 public:
  SettingError(Setting s, const std::string& problem)
      : Error(std::string(setting_name(s)) + " " + problem), setting(s), problem(problem) {}
  Setting setting;
  std::string problem;
};
template <typename... Args>
[[noreturn]] void fail_setting(Setting s, fmt::format_string<Args...> f, Args&&... args) {
  throw SettingError(s, fmt::format(f, std::forward<Args>(args)...));
}

struct HaltingConfig {
  std::string policy = "none";  // a registered policy (dash/policy.h) or "none"
  double halt_layer = 0.4;      // decision layer: an index (>= 1) or a fraction of depth (< 1)
  double keep = 1.0 / 3.0;      // fraction of eligible tokens that stay active
  int min_layer = 1;            // first layer whose delta counts (threshold; the stable rule: first ranked)
  double tau = -1;              // halt below this (< 0: unset)
  int patience = 0;             // consecutive layers below tau
  uint64_t seed = 0;            // random choices
  int attn_queries = 8;         // the last prompt tokens whose attention ranks the others
  int pool = 3;                 // query policy: a token's score is the largest within this many neighbours
  // query policy: > 0 keeps or halts whole words (runs of tokens without a word boundary between
  // them, such as the digits of a number) of at most this many tokens; 0: single tokens. On
  // by default: cutting single digits out of a number cost answers (docs/RESULTS.md).
  int words = 16;
  // query policy: > 0 keeps or halts whole sentences (cut every `sentences` tokens) instead of
  // words: a sentence ranks as its best token, so that what the question matches in a sentence
  // brings the rest (the counted word of "Someone carved the word ... into the door") with it.
  int sentences = 0;
  // query policy: > 0 ranks the document in consecutive blocks of this many tokens, each block
  // keeping the same fraction, so that the attention's decay with distance does not decide which
  // part of the document stays (the early part, on the Qwen models and SmolLM2); 0: one ranking.
  int blocks = 0;
  double mix = 0;               // query policy: weight of the delta's rank beside the attention's
  // Ranking policies: the decisions after the first (halt_layer, keep), ascending in layer with
  // falling keep fractions (spec option then=L@KEEP/L@KEEP...); empty: one decision.
  std::vector<HaltStage> then;
  DecideRule decide = DecideRule::Fixed;  // ranking policies: where the first decision falls
  double overlap = 0.9;                   // decide=stable: the top-set overlap that counts as stable
  KVMode kv = KVMode::Retain;
  DeltaSignal signal = DeltaSignal::Abs;
  // The first tokens never halt: they are attention sinks, and dropping or freezing them costs far
  // more than their share (docs/RESULTS.md measures 0 against 4).
  int protect_first = 4;
  int protect_last = 1;  // the last prompt tokens never halt (at least the last one)

  bool enabled() const { return policy != "none"; }
  // Throws SettingError for an unknown policy or an inconsistent or out-of-range setting.
  void validate(int n_layer) const;
  // Throws SettingError for a setting in `given` (set by a user, e.g. by a flag) that the policy
  // does not read, such as a keep fraction for threshold or any policy setting without a policy.
  void check_given(std::span<const Setting> given) const;
  // The layer index after which a single-decision policy decides (with decide=stable: at the
  // latest).
  int decision_layer(int n_layer) const;
  // "topk(l=12,keep=0.33,retain)" and the like, for tables and logs.
  std::string describe(int n_layer) const;
  // The canonical spec: parse(spec()) == *this for every setting the policy reads.
  std::string spec() const;
  // The spec grammar: "none | topk:L:KEEP[:KV] | ... (optional :pf=N ...)", from the registry.
  static std::string spec_syntax();
  // Parses a spec (the grammar of spec_syntax(); "full" is "none"). Throws with the syntax.
  static HaltingConfig parse(const std::string& spec);
  // policy, describe, the settings the policy reads (halt_layer as the decision layer index),
  // delta_signal, kv_mode, protect_first, protect_last.
  nlohmann::json to_json(int n_layer) const;
};

// A layer given as an index (>= 1) or a fraction of depth (< 1), as an index in 0 .. n_layer - 1.
int layer_index(double layer, int n_layer);

// The eligibility mask of a segment of n tokens: protect_first and protect_last are 0.
std::vector<uint8_t> halting_eligibility(const HaltingConfig& cfg, int64_t n_tokens);

// How many of n eligible tokens a keep fraction keeps: ceil(keep * n), at least 0, at most n.
int64_t halting_keep_count(double keep, int64_t n_eligible);

// Parsing and formatting one setting's value ("0.4", "drop", "rel"): the spec parser and the CLI
// use the same functions. Throw SettingError.
void set_setting(HaltingConfig& hc, Setting s, std::string_view value);
std::string setting_value(const HaltingConfig& hc, Setting s);
KVMode parse_kv_mode(std::string_view s);
DeltaSignal parse_delta_signal(std::string_view s);
DecideRule parse_decide_rule(std::string_view s);

}  // namespace dashlm
