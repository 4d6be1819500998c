#include "runtime/dash/config.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "runtime/dash/policy.h"

namespace dashlm {

namespace {

struct SettingInfo {
  Setting id;
  const char* name;      // in messages and JSON
  const char* flag;      // of run and bench
  const char* spec_key;  // as a :key=value field of a spec (null: positional only)
};

constexpr SettingInfo kSettings[] = {
    {Setting::Policy, "policy", "--halting", nullptr},
    {Setting::HaltLayer, "halt_layer", "--halt-layer", nullptr},
    {Setting::Keep, "keep", "--keep", nullptr},
    {Setting::MinLayer, "min_layer", "--min-layer", "min"},
    {Setting::Tau, "tau", "--tau", nullptr},
    {Setting::Patience, "patience", "--patience", nullptr},
    {Setting::Seed, "seed", "--seed", "seed"},
    {Setting::AttnQueries, "attn_queries", "--attn-queries", "q"},
    {Setting::Pool, "pool", "--pool", "pool"},
    {Setting::Words, "words", "--words", "words"},
    {Setting::Sentences, "sentences", "--sentences", "sentences"},
    {Setting::Blocks, "blocks", "--blocks", "blocks"},
    {Setting::Mix, "mix", "--mix", "mix"},
    {Setting::Then, "then", "--then", "then"},
    {Setting::Decide, "decide", "--decide", "decide"},
    {Setting::Overlap, "overlap", "--overlap", "overlap"},
    {Setting::Kv, "kv_mode", "--kv", nullptr},
    {Setting::Signal, "delta_signal", "--delta", "delta"},
    {Setting::ProtectFirst, "protect_first", "--protect-first", "pf"},
    {Setting::ProtectLast, "protect_last", "--protect-last", "pl"},
};

const SettingInfo& info(Setting s) {
  for (const SettingInfo& i : kSettings)
    if (i.id == s) return i;
  fail("unknown halting setting");
}

// The settings every policy reads, checked and written for all of them.
constexpr Setting kCommon[] = {Setting::Kv, Setting::Signal, Setting::ProtectFirst, Setting::ProtectLast};
// The settings written as :key=value for every policy when not at their default.
constexpr Setting kCommonOptions[] = {Setting::ProtectFirst, Setting::ProtectLast};
// The order of :key=value fields in a canonical spec.
constexpr Setting kOptionOrder[] = {Setting::Signal, Setting::ProtectFirst, Setting::ProtectLast, Setting::AttnQueries, Setting::Seed,
                                    Setting::Pool, Setting::Words, Setting::Sentences, Setting::Blocks, Setting::Mix, Setting::Then, Setting::Decide, Setting::MinLayer, Setting::Overlap};
// Settings that belong to some policies only: giving one to a policy that does not read it is an
// error (the seed is shared with sampling and so not among them).
constexpr Setting kPolicyOwn[] = {Setting::HaltLayer, Setting::Keep, Setting::MinLayer, Setting::Tau, Setting::Patience,
                                  Setting::AttnQueries, Setting::Pool, Setting::Words, Setting::Sentences, Setting::Blocks, Setting::Mix, Setting::Then, Setting::Decide, Setting::Overlap};

bool contains(std::span<const Setting> set, Setting s) { return std::find(set.begin(), set.end(), s) != set.end(); }

double parse_number(Setting s, std::string_view v) {
  const std::string str(v);
  char* end = nullptr;
  const double x = std::strtod(str.c_str(), &end);
  if (str.empty() || *end != '\0' || !std::isfinite(x)) fail_setting(s, "'{}' is not a number", str);
  return x;
}

int parse_int(Setting s, std::string_view v) {
  const double x = parse_number(s, v);
  if (x != std::floor(x) || std::fabs(x) > 1e9) fail_setting(s, "'{}' is not a whole number", v);
  return static_cast<int>(x);
}

// "0.5@0.2/0.7@0.1": the later stages of a staged schedule ("": none).
std::vector<HaltStage> parse_stages(std::string_view v) {
  std::vector<HaltStage> stages;
  for (size_t a = 0; a < v.size();) {
    const size_t b = std::min(v.find('/', a), v.size());
    const std::string_view item = v.substr(a, b - a);
    const size_t at = item.find('@');
    if (at == std::string_view::npos) fail_setting(Setting::Then, "'{}' is not LAYER@KEEP (stages: L@KEEP/L@KEEP...)", item);
    stages.push_back({parse_number(Setting::Then, item.substr(0, at)), parse_number(Setting::Then, item.substr(at + 1))});
    if (b == v.size() - 1) fail_setting(Setting::Then, "'{}' ends with '/'", v);
    a = b + 1;
  }
  return stages;
}

}  // namespace

const char* setting_name(Setting s) { return info(s).name; }
const char* setting_flag(Setting s) { return info(s).flag; }

const char* delta_signal_name(DeltaSignal s) {
  switch (s) {
    case DeltaSignal::Abs: return "abs";
    case DeltaSignal::Rel: return "rel";
    case DeltaSignal::Block: return "block";
  }
  return "?";
}

const char* kv_mode_name(KVMode m) { return m == KVMode::Retain ? "retain" : "drop"; }

const char* decide_rule_name(DecideRule r) { return r == DecideRule::Fixed ? "fixed" : "stable"; }

DecideRule parse_decide_rule(std::string_view s) {
  if (s == "fixed") return DecideRule::Fixed;
  if (s == "stable") return DecideRule::Stable;
  fail_setting(Setting::Decide, "must be fixed or stable, got '{}'", s);
}

KVMode parse_kv_mode(std::string_view s) {
  if (s == "retain") return KVMode::Retain;
  if (s == "drop") return KVMode::Drop;
  fail_setting(Setting::Kv, "must be retain or drop, got '{}'", s);
}

DeltaSignal parse_delta_signal(std::string_view s) {
  if (s == "abs") return DeltaSignal::Abs;
  if (s == "rel") return DeltaSignal::Rel;
  if (s == "block") return DeltaSignal::Block;
  fail_setting(Setting::Signal, "must be abs, rel or block, got '{}'", s);
}

void set_setting(HaltingConfig& hc, Setting s, std::string_view v) {
  switch (s) {
    case Setting::Policy: hc.policy = std::string(v); break;
    case Setting::HaltLayer: hc.halt_layer = parse_number(s, v); break;
    case Setting::Keep: hc.keep = parse_number(s, v); break;
    case Setting::MinLayer: hc.min_layer = parse_int(s, v); break;
    case Setting::Tau: hc.tau = parse_number(s, v); break;
    case Setting::Patience: hc.patience = parse_int(s, v); break;
    case Setting::Seed: {
      const int seed = parse_int(s, v);
      if (seed < 0) fail_setting(s, "must be >= 0, got {}", seed);
      hc.seed = static_cast<uint64_t>(seed);
      break;
    }
    case Setting::AttnQueries: hc.attn_queries = parse_int(s, v); break;
    case Setting::Pool: hc.pool = parse_int(s, v); break;
    case Setting::Words: hc.words = parse_int(s, v); break;
    case Setting::Sentences: hc.sentences = parse_int(s, v); break;
    case Setting::Blocks: hc.blocks = parse_int(s, v); break;
    case Setting::Mix: hc.mix = parse_number(s, v); break;
    case Setting::Then: hc.then = parse_stages(v); break;
    case Setting::Decide: hc.decide = parse_decide_rule(v); break;
    case Setting::Overlap: hc.overlap = parse_number(s, v); break;
    case Setting::Kv: hc.kv = parse_kv_mode(v); break;
    case Setting::Signal: hc.signal = parse_delta_signal(v); break;
    case Setting::ProtectFirst: hc.protect_first = parse_int(s, v); break;
    case Setting::ProtectLast: hc.protect_last = parse_int(s, v); break;
  }
}

std::string setting_value(const HaltingConfig& hc, Setting s) {
  switch (s) {
    case Setting::Policy: return hc.policy;
    case Setting::HaltLayer: return fmt::format("{}", hc.halt_layer);
    case Setting::Keep: return fmt::format("{:.6g}", hc.keep);
    case Setting::MinLayer: return fmt::format("{}", hc.min_layer);
    case Setting::Tau: return fmt::format("{:.6g}", hc.tau);
    case Setting::Patience: return fmt::format("{}", hc.patience);
    case Setting::Seed: return fmt::format("{}", hc.seed);
    case Setting::AttnQueries: return fmt::format("{}", hc.attn_queries);
    case Setting::Pool: return fmt::format("{}", hc.pool);
    case Setting::Words: return fmt::format("{}", hc.words);
    case Setting::Sentences: return fmt::format("{}", hc.sentences);
    case Setting::Blocks: return fmt::format("{}", hc.blocks);
    case Setting::Mix: return fmt::format("{:.6g}", hc.mix);
    case Setting::Then: {
      std::string v;
      for (const HaltStage& st : hc.then) v += fmt::format("{}{}@{:.6g}", v.empty() ? "" : "/", st.layer, st.keep);
      return v;
    }
    case Setting::Decide: return decide_rule_name(hc.decide);
    case Setting::Overlap: return fmt::format("{:.6g}", hc.overlap);
    case Setting::Kv: return kv_mode_name(hc.kv);
    case Setting::Signal: return delta_signal_name(hc.signal);
    case Setting::ProtectFirst: return fmt::format("{}", hc.protect_first);
    case Setting::ProtectLast: return fmt::format("{}", hc.protect_last);
  }
  return "";
}

int layer_index(double layer, int n_layer) {
  const int l = layer >= 1.0 ? static_cast<int>(layer) : static_cast<int>(std::lround(layer * n_layer));
  return std::clamp(l, 0, n_layer - 1);
}

int HaltingConfig::decision_layer(int n_layer) const { return layer_index(halt_layer, n_layer); }

void HaltingConfig::validate(int n_layer) const {
  const PolicyInfo* p = find_halting_policy(policy);
  if (!p && policy != "none") fail_setting(Setting::Policy, "'{}' is not a halting policy (none, {})", policy, halting_policy_names());
  if (protect_first < 0) fail_setting(Setting::ProtectFirst, "must be >= 0, got {}", protect_first);
  if (protect_last < 1) fail_setting(Setting::ProtectLast, "must be >= 1: the last prompt token is always protected");
  // Settings whose default means "not set": setting them for a policy that does not read them is
  // a mistake wherever they come from.
  const HaltingConfig defaults;
  for (Setting s : {Setting::Tau, Setting::Patience, Setting::Then, Setting::Decide, Setting::Overlap}) {
    if ((!p || !p->reads(s)) && setting_value(*this, s) != setting_value(defaults, s)) {
      fail_setting(s, "does not apply to halting policy '{}'", policy);
    }
  }
  if (p) p->validate(*this, n_layer);
}

void HaltingConfig::check_given(std::span<const Setting> given) const {
  const PolicyInfo* p = find_halting_policy(policy);
  for (Setting s : given) {
    const bool own = contains(kPolicyOwn, s);
    if (own && (!p || !p->reads(s))) fail_setting(s, "does not apply to halting policy '{}'", policy);
  }
}

std::string HaltingConfig::describe(int n_layer) const {
  const PolicyInfo* p = find_halting_policy(policy);
  return p ? p->describe(*this, n_layer) : "none";
}

std::string HaltingConfig::spec() const {
  const PolicyInfo* p = find_halting_policy(policy);
  if (!p) return "none";
  std::string s = p->name;
  for (Setting f : p->fields) {
    s += ':';
    s += setting_value(*this, f);
  }
  const HaltingConfig defaults;
  auto option = [&](Setting o) {
    if (setting_value(*this, o) != setting_value(defaults, o)) s += fmt::format(":{}={}", info(o).spec_key, setting_value(*this, o));
  };
  for (Setting o : kOptionOrder) {
    if (contains(kCommonOptions, o) || contains(p->options, o)) option(o);
  }
  return s;
}

std::string HaltingConfig::spec_syntax() {
  std::string s = "none";
  for (const PolicyInfo* p : halting_policies()) {
    s += std::string(" | ") + p->name;
    for (size_t i = 0; i < p->fields.size(); ++i) {
      std::string f = setting_name(p->fields[i]);
      std::transform(f.begin(), f.end(), f.begin(), [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
      s += i < p->required ? ":" + f : "[:" + f + "]";
    }
  }
  s += " (KV_MODE retain|drop, DELTA_SIGNAL abs|rel|block, optional :pf=N :pl=N";
  for (const SettingInfo& i : kSettings) {
    if (i.spec_key && !contains(kCommonOptions, i.id)) {
      s += fmt::format(" :{}=...", i.spec_key);
    }
  }
  return s + "; then=L@KEEP[/L@KEEP...]: later decisions with falling keep fractions, decide=fixed|stable)";
}

HaltingConfig HaltingConfig::parse(const std::string& spec) {
  std::vector<std::string> fields;
  for (size_t a = 0;;) {
    const size_t b = spec.find(':', a);
    fields.push_back(spec.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  if (fields[0].empty()) fail("empty halting config; syntax: {}", spec_syntax());
  HaltingConfig hc;
  if (fields[0] == "none" || fields[0] == "full") {
    if (fields.size() > 1) fail("config '{}': 'none' takes no parameters", spec);
    return hc;
  }
  const PolicyInfo* p = find_halting_policy(fields[0]);
  if (!p) fail("config '{}': unknown policy '{}'; syntax: {}", spec, fields[0], spec_syntax());
  hc.policy = p->name;
  // Positional fields first, then name=value fields.
  size_t i = 1;
  try {
    for (; i < fields.size() && fields[i].find('=') == std::string::npos; ++i) {
      if (i - 1 >= p->fields.size()) fail("config '{}': {} takes at most {} fields; syntax: {}", spec, p->name, p->fields.size(), spec_syntax());
      set_setting(hc, p->fields[i - 1], fields[i]);
    }
    if (i - 1 < p->required) fail("config '{}': {} needs {} fields; syntax: {}", spec, p->name, p->required, spec_syntax());
    for (; i < fields.size(); ++i) {
      const size_t eq = fields[i].find('=');
      const std::string k = fields[i].substr(0, eq), v = eq == std::string::npos ? "" : fields[i].substr(eq + 1);
      const SettingInfo* s = nullptr;
      for (const SettingInfo& si : kSettings)
        if (si.spec_key && k == si.spec_key) s = &si;
      if (!s || eq == std::string::npos || (!contains(kCommonOptions, s->id) && !contains(p->options, s->id))) {
        fail("config '{}': '{}' is not a field of {}; syntax: {}", spec, fields[i], p->name, spec_syntax());
      }
      set_setting(hc, s->id, v);
    }
  } catch (const SettingError& e) {
    fail("config '{}': {}", spec, e.what());
  }
  return hc;
}

nlohmann::json HaltingConfig::to_json(int n_layer) const {
  nlohmann::json j;
  j["policy"] = policy;
  j["describe"] = describe(n_layer);
  if (const PolicyInfo* p = find_halting_policy(policy)) {
    for (Setting s : p->params) {
      switch (s) {
        case Setting::HaltLayer: j[setting_name(s)] = decision_layer(n_layer); break;
        case Setting::Keep: j[setting_name(s)] = keep; break;
        case Setting::MinLayer: j[setting_name(s)] = min_layer; break;
        case Setting::Tau: j[setting_name(s)] = tau; break;
        case Setting::Patience: j[setting_name(s)] = patience; break;
        case Setting::Seed: j[setting_name(s)] = seed; break;
        case Setting::AttnQueries: j[setting_name(s)] = attn_queries; break;
        case Setting::Pool: j[setting_name(s)] = pool; break;
        case Setting::Words: j[setting_name(s)] = words; break;
        case Setting::Sentences: j[setting_name(s)] = sentences; break;
        case Setting::Blocks: j[setting_name(s)] = blocks; break;
        case Setting::Mix: j[setting_name(s)] = mix; break;
        default: j[setting_name(s)] = setting_value(*this, s); break;
      }
    }
    // Options that are not parameters, where set: the later stages (as layer indices) and the
    // rule that places the first decision.
    const HaltingConfig defaults;
    for (Setting s : p->options) {
      if (contains(p->params, s) || contains(kCommon, s) || setting_value(*this, s) == setting_value(defaults, s)) continue;
      switch (s) {
        case Setting::Then:
          j[setting_name(s)] = nlohmann::json::array();
          for (const HaltStage& st : then) j[setting_name(s)].push_back({{"layer", layer_index(st.layer, n_layer)}, {"keep", st.keep}});
          break;
        case Setting::MinLayer: j[setting_name(s)] = min_layer; break;
        case Setting::Overlap: j[setting_name(s)] = overlap; break;
        default: j[setting_name(s)] = setting_value(*this, s); break;
      }
    }
  }
  for (Setting s : kCommon) {
    if (s == Setting::ProtectFirst) j[setting_name(s)] = protect_first;
    else if (s == Setting::ProtectLast) j[setting_name(s)] = protect_last;
    else j[setting_name(s)] = setting_value(*this, s);
  }
  return j;
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

}  // namespace dashlm
