// The policy registry: the policies of policies.def, looked up by name.
#include <algorithm>

#include "runtime/dash/policy.h"

namespace dashlm {

#define DASHLM_POLICY(name) const PolicyInfo& policy_##name();
#include "runtime/dash/policies.def"
#undef DASHLM_POLICY

const std::vector<const PolicyInfo*>& halting_policies() {
#define DASHLM_POLICY(name) &policy_##name(),
  static const std::vector<const PolicyInfo*> all{
#include "runtime/dash/policies.def"
  };
#undef DASHLM_POLICY
  return all;
}

const PolicyInfo* find_halting_policy(std::string_view name) {
  for (const PolicyInfo* p : halting_policies())
    if (name == p->name) return p;
  return nullptr;
}

std::string halting_policy_names() {
  std::string s;
  for (const PolicyInfo* p : halting_policies()) s += (s.empty() ? "" : ", ") + std::string(p->name);
  return s;
}

bool PolicyInfo::reads(Setting s) const {
  auto in = [s](const std::vector<Setting>& v) { return std::find(v.begin(), v.end(), s) != v.end(); };
  return in(fields) || in(options) || in(params);
}

std::unique_ptr<HaltingPolicy> make_halting_policy(const HaltingConfig& cfg, int n_layer) {
  cfg.validate(n_layer);
  const PolicyInfo* p = find_halting_policy(cfg.policy);
  return p ? p->make(cfg, n_layer) : nullptr;
}

bool signal_wanted(const HaltingPolicy* policy, bool trace, int layer, int n_layer) {
  return trace || (policy && layer + 1 < n_layer && policy->wants_signal(layer));
}

}  // namespace dashlm
