// The halting config, the policy registry and the session: one parser, formatter, validator and
// JSON writer for every policy; errors that name the setting; every registered policy reachable
// by name and round-tripping through its spec; the session's segments and logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "stories.h"
#include "runtime/dash/calibration.h"
#include "runtime/dash/policy.h"
#include "runtime/engine.h"
#include "runtime/session.h"

using namespace dashlm;

namespace {

using test::stories;

}  // namespace

TEST(DashConfig, EveryRegisteredPolicyIsFoundByNameAndRoundTripsItsSpec) {
  const int L = 12;
  std::set<std::string> names;
  ASSERT_GE(halting_policies().size(), 4u);
  for (const PolicyInfo* p : halting_policies()) {
    SCOPED_TRACE(p->name);
    EXPECT_TRUE(names.insert(p->name).second) << "two policies named " << p->name;
    EXPECT_EQ(find_halting_policy(p->name), p);
    EXPECT_NE(halting_policy_names().find(p->name), std::string::npos);
    EXPECT_NE(HaltingConfig::spec_syntax().find(p->name), std::string::npos);
    ASSERT_TRUE(p->validate && p->describe && p->make);
    EXPECT_LE(p->required, p->fields.size());
    // A spec of the policy's own fields, from the settings of a valid config.
    HaltingConfig hc;
    hc.policy = p->name;
    hc.tau = 0.5;
    hc.patience = 2;
    if (!p->reads(Setting::Tau)) hc.tau = HaltingConfig{}.tau;
    if (!p->reads(Setting::Patience)) hc.patience = HaltingConfig{}.patience;
    hc.kv = KVMode::Drop;
    hc.protect_first = 2;
    hc.keep = 0.25;  // a spec writes 6 significant digits
    ASSERT_NO_THROW(hc.validate(L));
    const HaltingConfig back = HaltingConfig::parse(hc.spec());
    EXPECT_EQ(back.spec(), hc.spec());
    EXPECT_EQ(back.describe(L), hc.describe(L));
    EXPECT_EQ(back.to_json(L).dump(), hc.to_json(L).dump());
    EXPECT_NE(make_halting_policy(hc, L), nullptr);
    // The JSON holds the policy's parameters and the common settings.
    const nlohmann::json j = hc.to_json(L);
    EXPECT_EQ(j.at("policy"), p->name);
    for (Setting s : p->params) EXPECT_TRUE(j.contains(setting_name(s))) << setting_name(s);
    for (const char* k : {"kv_mode", "delta_signal", "protect_first", "protect_last", "describe"}) EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(make_halting_policy(HaltingConfig{}, L), nullptr);  // none
}

TEST(DashConfig, ErrorsNameTheSetting) {
  const int L = 6;
  auto setting_of = [&](const HaltingConfig& hc) -> std::string {
    try {
      hc.validate(L);
    } catch (const SettingError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(setting_name(e.setting), 0), 0u) << e.what();
      return setting_name(e.setting);
    }
    return "";
  };
  HaltingConfig hc = HaltingConfig::parse("topk:0.4:2");
  EXPECT_EQ(setting_of(hc), "keep");
  hc = HaltingConfig::parse("topk:9:0.5");
  EXPECT_EQ(setting_of(hc), "halt_layer");
  hc = HaltingConfig::parse("attn:0.4:0.5:retain:q=0");
  EXPECT_EQ(setting_of(hc), "attn_queries");
  hc = HaltingConfig::parse("threshold:1:0.5:0");
  EXPECT_EQ(setting_of(hc), "patience");
  hc = HaltingConfig::parse("topk:0.4:0.5:retain:pl=0");
  EXPECT_EQ(setting_of(hc), "protect_last");
  hc = HaltingConfig{};
  hc.policy = "sometimes";
  EXPECT_EQ(setting_of(hc), "policy");
  // A setting given for a policy that does not read it.
  hc = HaltingConfig::parse("threshold:1:0.5:2");
  EXPECT_THROW(hc.check_given(std::vector<Setting>{Setting::Keep}), SettingError);
  EXPECT_NO_THROW(hc.check_given(std::vector<Setting>{Setting::Tau, Setting::Kv, Setting::ProtectFirst}));
  EXPECT_THROW(HaltingConfig{}.check_given(std::vector<Setting>{Setting::HaltLayer}), SettingError);
  // Values: not finite, not whole, not a mode.
  for (const char* bad : {"nan", "inf", "", "0.4x"}) EXPECT_THROW(set_setting(hc, Setting::Tau, bad), SettingError) << bad;
  EXPECT_THROW(set_setting(hc, Setting::Patience, "1.5"), SettingError);
  EXPECT_THROW(set_setting(hc, Setting::Kv, "keep"), SettingError);
  // Spec fields that belong to another policy.
  EXPECT_THROW(HaltingConfig::parse("topk:0.4:0.3:retain:q=3"), Error);
  EXPECT_THROW(HaltingConfig::parse("topk:0.4:0.3:retain:seed=3"), Error);
  EXPECT_NO_THROW(HaltingConfig::parse("random:0.4:0.3:retain:seed=3"));
  EXPECT_THROW(HaltingConfig::parse("topk:0.4:0.3:retain:extra"), Error);
}

TEST(DashConfig, CalibrationGridsAreValidSettingsOfTheirPolicy) {
  const int L = 30;
  int with_grid = 0;
  for (const PolicyInfo* p : halting_policies()) {
    if (!p->calibration_grid) continue;
    ++with_grid;
    HaltingConfig base;
    base.kv = KVMode::Drop;
    const auto grid = p->calibration_grid(base, L, [](int layer, double q) { return 0.1 * layer + q; });
    EXPECT_FALSE(grid.empty()) << p->name;
    for (const HaltingConfig& c : grid) {
      EXPECT_EQ(c.policy, p->name);
      EXPECT_EQ(c.kv, KVMode::Drop);
      EXPECT_NO_THROW(c.validate(L)) << c.spec();
      EXPECT_EQ(HaltingConfig::parse(c.spec()).spec(), c.spec());
    }
  }
  EXPECT_GE(with_grid, 2);
}

// Staged schedules and the stable rule extend the spec with options; the specs written before
// them parse and print as they did, and their JSON gains no key.
TEST(DashConfig, StagedAndStableSpecsRoundTripAndOldSpecsStayAsTheyWere) {
  const int L = 24;
  for (const char* old : {"topk:0.4:0.33:drop", "topk:0.4:0.333333:retain", "topk:0.6:0.5:retain", "random:0.4:0.33:retain:seed=3",
                          "attn:0.4:0.2:drop:q=16", "query:0.4:0.2:drop", "query:0.25:0.1:retain:pl=4:pool=5:mix=0.5",
                          "threshold:2:0.5:2:rel:retain", "topk:10:0.5:drop:pf=0"}) {
    SCOPED_TRACE(old);
    const HaltingConfig hc = HaltingConfig::parse(old);
    EXPECT_EQ(hc.spec(), old);
    EXPECT_TRUE(hc.then.empty());
    EXPECT_EQ(hc.decide, DecideRule::Fixed);
    const nlohmann::json j = hc.to_json(L);
    for (const char* k : {"then", "decide", "overlap"}) EXPECT_FALSE(j.contains(k)) << k;
    if (hc.policy != "threshold") EXPECT_FALSE(j.contains("min_layer"));
  }
  for (const char* spec : {"topk:0.25:0.5:drop:then=0.5@0.2", "random:6:0.5:retain:seed=2:then=12@0.25/18@0.1",
                           "attn:0.25:0.5:drop:q=4:then=0.5@0.2", "query:0.25:0.5:drop:then=0.5@0.2",
                           "query:0.5:0.2:retain:decide=stable", "query:0.5:0.5:drop:pool=1:then=0.7@0.2:decide=stable:min=3:overlap=0.8",
                           "topk:12:0.3:drop:decide=stable:min=4"}) {
    SCOPED_TRACE(spec);
    const HaltingConfig hc = HaltingConfig::parse(spec);
    EXPECT_EQ(hc.spec(), spec);
    ASSERT_NO_THROW(hc.validate(L));
    const HaltingConfig back = HaltingConfig::parse(hc.spec());
    EXPECT_EQ(back.describe(L), hc.describe(L));
    EXPECT_EQ(back.to_json(L).dump(), hc.to_json(L).dump());
  }
  const HaltingConfig st = HaltingConfig::parse("query:0.25:0.5:drop:then=0.5@0.2");
  ASSERT_EQ(st.then.size(), 1u);
  EXPECT_DOUBLE_EQ(st.then[0].layer, 0.5);
  EXPECT_DOUBLE_EQ(st.then[0].keep, 0.2);
  EXPECT_EQ(st.describe(L), "query(l=6/12,keep=0.50/0.20,pool=3,words=16,drop)");
  const nlohmann::json j = st.to_json(L);
  ASSERT_TRUE(j.contains("then"));
  EXPECT_EQ(j["then"][0]["layer"], 12);
  EXPECT_DOUBLE_EQ(j["then"][0]["keep"].get<double>(), 0.2);
  const HaltingConfig sb = HaltingConfig::parse("topk:12:0.3:drop:then=18@0.1:decide=stable:min=4:overlap=0.75");
  EXPECT_EQ(sb.describe(L), "topk(l=stable(4-12,0.75)/18,keep=0.30/0.10,drop)");
  EXPECT_EQ(sb.to_json(L)["decide"], "stable");
  EXPECT_EQ(sb.to_json(L)["min_layer"], 4);
  EXPECT_DOUBLE_EQ(sb.to_json(L)["overlap"].get<double>(), 0.75);
  // The same settings through the flags' value parser.
  HaltingConfig f;
  set_setting(f, Setting::Policy, "topk");
  set_setting(f, Setting::Then, "0.5@0.2/0.7@0.1");
  set_setting(f, Setting::Decide, "stable");
  EXPECT_EQ(f.spec(), "topk:0.4:0.333333:retain:then=0.5@0.2/0.7@0.1:decide=stable");
  EXPECT_NE(HaltingConfig::spec_syntax().find("then=L@KEEP"), std::string::npos);
}

TEST(DashConfig, StagedAndStableErrorsNameTheSetting) {
  const int L = 24;
  auto setting_of = [&](const std::string& spec) -> std::string {
    try {
      HaltingConfig::parse(spec).validate(L);
    } catch (const SettingError& e) {
      return setting_name(e.setting);
    }
    return "";
  };
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:then=0.25@0.2"), "then");        // not after the first decision
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.5@0.2/0.5@0.1"), "then");  // two stages at one layer
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.26@0.2"), "then");       // the same layer once rounded
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.5@0.5"), "then");        // keep does not fall
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.5@0.3/0.7@0.4"), "then");
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.5@0"), "then");
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=30@0.2"), "then");         // outside the model
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=12.5@0.2"), "then");
  EXPECT_EQ(setting_of("topk:0.25:0.5:drop:then=0.5@0.2"), "");
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:decide=stable:min=12"), "min_layer");  // not below the decision layer
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:decide=stable:overlap=0"), "overlap");
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:decide=stable:overlap=1.5"), "overlap");
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:min=3"), "min_layer");         // only with decide=stable
  EXPECT_EQ(setting_of("topk:0.5:0.5:drop:overlap=0.5"), "overlap");
  for (const char* bad : {"topk:0.25:0.5:drop:then=0.5", "topk:0.25:0.5:drop:then=0.5@", "topk:0.25:0.5:drop:then=0.5@0.2/",
                          "topk:0.25:0.5:drop:then=@0.2", "topk:0.25:0.5:drop:then=0.5@0.2//0.7@0.1", "topk:0.25:0.5:drop:decide=early",
                          "threshold:2:0.5:2:then=0.5@0.2", "threshold:2:0.5:2:decide=stable", "threshold:2:0.5:2:min=3"}) {
    EXPECT_THROW(HaltingConfig::parse(bad), Error) << bad;
  }
  // Set for a policy that does not read them.
  HaltingConfig th = HaltingConfig::parse("threshold:2:0.5:2");
  th.then = {{0.5, 0.2}};
  EXPECT_EQ([&] {
    try {
      th.validate(L);
    } catch (const SettingError& e) {
      return std::string(setting_name(e.setting));
    }
    return std::string();
  }(), "then");
  EXPECT_THROW(th.check_given(std::vector<Setting>{Setting::Decide}), SettingError);
  EXPECT_NO_THROW(HaltingConfig::parse("topk:0.5:0.5").check_given(std::vector<Setting>{Setting::Then, Setting::Decide, Setting::MinLayer}));
}

TEST(DashConfig, CalibrationFileErrorsSayWhatToDo) {
  try {
    load_calibration("/nonexistent/model.gguf", 6);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("run dashlm calibrate"), std::string::npos) << e.what();
  }
}

// The session: one segment without halting, the query after the document with it; the logits of
// the last N positions across both segments are the same rows either way when nothing halts.
TEST(Session, LogitsOfTheLastPositionsAcrossSegments) {
  const Model& m = stories();
  const Tokenizer& tok = m.tokenizer();
  Prompt p;
  p.document = tok.encode("Once upon a time, there was a little girl named Lily. She loved to play", true, false);
  p.query = tok.encode(" outside in the park with her friends.", false, false);
  const int64_t V = m.hp().n_vocab, nq = static_cast<int64_t>(p.query.size());
  ASSERT_GT(nq, 2);
  HaltingConfig keep_all = HaltingConfig::parse("topk:0.4:1.0:retain");
  for (int64_t last : {int64_t{1}, nq - 1, nq, nq + 3, p.size()}) {
    SCOPED_TRACE(last);
    Engine e1(m, p.size() + 8), e2(m, p.size() + 8);
    PrefillRequest one, two;
    one.logits_last = two.logits_last = last;
    two.halting = &keep_all;  // halting on: the query is a segment of its own
    const PrefillResult a = Session(e1, tok).prefill(p, one);
    const PrefillResult b = Session(e2, tok).prefill(p, two);
    EXPECT_FALSE(a.split);
    EXPECT_TRUE(b.split);
    ASSERT_EQ(a.logits.size(), static_cast<size_t>(last * V));
    ASSERT_EQ(b.logits.size(), a.logits.size());
    EXPECT_EQ(b.document_last.size(), static_cast<size_t>(V));
    for (size_t i = 0; i < a.logits.size(); ++i) ASSERT_NEAR(a.logits[i], b.logits[i], 1e-4f) << i;
    EXPECT_EQ(e1.n_past(), p.size());
    EXPECT_EQ(e2.n_past(), p.size());
  }
}

TEST(Session, GenerationStopsWhenTheStreamAsks) {
  const Model& m = stories();
  const Tokenizer& tok = m.tokenizer();
  Engine e(m, 64);
  Session s(e, tok);
  Prompt p;
  p.document = tok.encode("Once upon a time", true, false);
  const PrefillResult r = s.prefill(p, PrefillRequest{});
  GenerateOptions go;
  go.max_tokens = 20;
  int pieces = 0;
  go.on_text = [&](const std::string&) { return ++pieces < 3; };
  const Generation g = s.generate(r.last(m.hp().n_vocab), p.document.back(), go);
  EXPECT_EQ(g.stop_reason, "stopped");
  EXPECT_EQ(pieces, 3);
  EXPECT_LT(g.ids.size(), 20u);
  EXPECT_EQ(e.n_past(), p.size() + g.forward_passes);
  EXPECT_THROW(s.prefill(Prompt{}, PrefillRequest{}), Error);
}

// The query policy: document and query as one segment whose query rows never halt; with nothing
// halted it computes exactly what a full prefill of the prompt as one segment computes, and
// within rounding what the document-then-query order computes.
TEST(QueryPolicy, OneSegmentWhoseQueryNeverHalts) {
  const Model& m = stories();
  const Tokenizer& tok = m.tokenizer();
  Prompt p;
  p.document = tok.encode(
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. "
      "One day, she saw a big red ball under a tree. She ran to the ball and picked it up.",
      true, false);
  p.query = tok.encode(" What did Lily find? She found a", false, false);
  const int64_t V = m.hp().n_vocab, n = p.size(), nq = static_cast<int64_t>(p.query.size());
  auto run = [&](const HaltingConfig* hc, HaltingTrace* tr, bool visible = true) {
    Engine e(m, n + 4);
    PrefillRequest req;
    req.halting = hc;
    req.trace = tr;
    req.query_visible = visible;
    req.logits_last = n;
    return Session(e, tok).prefill(p, req);
  };
  const PrefillResult full = run(nullptr, nullptr);
  EXPECT_FALSE(full.split);

  const HaltingConfig keep_all = HaltingConfig::parse("query:0.4:1.0:drop");
  HaltingTrace tr;
  const PrefillResult same = run(&keep_all, &tr);
  EXPECT_TRUE(same.joint);
  EXPECT_EQ(tr.n_tokens, n);
  ASSERT_EQ(same.logits.size(), full.logits.size());
  EXPECT_EQ(0, std::memcmp(same.logits.data(), full.logits.data(), full.logits.size() * sizeof(float)));

  // The document-then-query order (halting that never halts, query blind: two segments).
  const HaltingConfig topk_all = HaltingConfig::parse("topk:0.4:1.0:drop");
  const PrefillResult two = run(&topk_all, nullptr);
  EXPECT_TRUE(two.split);
  for (int64_t i = 0; i < n * V; ++i) ASSERT_NEAR(two.logits[static_cast<size_t>(i)], full.logits[static_cast<size_t>(i)], 1e-4f) << i;

  // Halting: the query rows and the protected first tokens never halt; the keep fraction of the
  // rest stays (with whole words, up to a word's length more: the last word kept is whole).
  for (const char* spec : {"query:0.4:0.25:drop", "query:0.4:0.25:drop:words=0", "query:2:0.5:retain:pool=0:words=3",
                           "query:0.4:0.3:drop:pool=5:mix=0.5"}) {
    SCOPED_TRACE(spec);
    const HaltingConfig hc = HaltingConfig::parse(spec);
    HaltingTrace t;
    const PrefillResult r = run(&hc, &t);
    EXPECT_TRUE(r.joint);
    const int L = t.n_layer;
    int64_t halted = 0;
    for (int64_t i = 0; i < n; ++i) {
      const bool halts = t.halted_after[static_cast<size_t>(i)] < L;
      if (i >= n - nq || i < hc.protect_first) EXPECT_FALSE(halts) << "token " << i;
      halted += halts;
    }
    const int64_t eligible = n - nq - hc.protect_first, most = eligible - halting_keep_count(hc.keep, eligible);
    if (hc.words == 0) EXPECT_EQ(halted, most);
    EXPECT_LE(halted, most);
    EXPECT_GE(halted, most - std::max(0, hc.words - 1));
    for (float v : r.logits) ASSERT_TRUE(std::isfinite(v));
  }
  // A task that may not read the query: the document runs with halting, the query after it.
  const HaltingConfig hc = HaltingConfig::parse("query:0.4:0.25:drop");
  const PrefillResult blind = run(&hc, nullptr, false);
  EXPECT_FALSE(blind.joint);
  EXPECT_TRUE(blind.split);
}
