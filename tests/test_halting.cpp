// DASH in the engine, on the real stories260K checkpoint: exactness of the no-op settings,
// frozen states, retained and dropped keys/values, protection, reproducibility, decoding.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "backends/cpu/ops.h"
#include "backends/cpu/quants.h"
#include "common/error.h"
#include "model/model.h"
#include "stories.h"
#include "runtime/engine.h"
#include "runtime/dash/policy.h"
#include "runtime/sampler.h"

using namespace dashlm;

namespace {

using test::stories;

std::vector<int32_t> prompt_tokens() {
  const std::string text =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
      "friends. One day, she saw a big red ball under a tree and ran to get it, but a dog got there first.";
  return stories().tokenizer().encode(text, true, false);
}

struct PrefillRun {
  std::vector<float> logits;      // all positions
  std::vector<float> hidden;      // (L+1) x T x d
  HaltingTrace trace;
};

PrefillRun prefill(const HaltingConfig& hc, Engine* engine_out = nullptr, int64_t query_rows = 0) {
  const Model& m = stories();
  auto toks = prompt_tokens();
  Engine local(m, static_cast<int64_t>(toks.size()) + 32);
  Engine& e = engine_out ? *engine_out : local;
  PrefillRun r;
  PrefillOptions po;
  po.halting = &hc;
  po.trace = &r.trace;
  po.logits_all = &r.logits;
  po.hidden_per_layer = &r.hidden;
  po.query_rows = query_rows;
  e.prefill(toks, po);
  return r;
}

HaltingConfig topk(double keep, KVMode kv = KVMode::Retain) {
  HaltingConfig hc;
  hc.policy = "topk";
  hc.halt_layer = 0.4;
  hc.keep = keep;
  hc.kv = kv;
  return hc;
}

}  // namespace

TEST(Halting, KeepAllAndTauZeroAreBitIdenticalToFullPrefill) {
  HaltingConfig none;
  const PrefillRun full = prefill(none);
  HaltingConfig thr;
  thr.policy = "threshold";
  thr.tau = 0.0;
  thr.patience = 1;
  for (const HaltingConfig& hc : {topk(1.0), topk(1.0, KVMode::Drop), thr}) {
    const PrefillRun r = prefill(hc);
    ASSERT_EQ(r.logits.size(), full.logits.size());
    EXPECT_EQ(0, std::memcmp(r.logits.data(), full.logits.data(), full.logits.size() * sizeof(float))) << hc.policy;
    for (int64_t n : r.trace.active_per_layer) EXPECT_EQ(n, r.trace.n_tokens);
  }
}

TEST(Halting, ChunkedLayersEqualOneChunk) {
  // The layers run their rows in chunks. With 7 rows per chunk the prompt crosses many chunk
  // boundaries, gathered active rows and retained halted rows straddle them, and the last 8
  // tokens (whose attention the attn policy records) span two chunks: everything equals the
  // single-chunk run to float rounding, and the same tokens halt.
  const Model& m = stories();
  const auto n = static_cast<int64_t>(prompt_tokens().size());
  ASSERT_GT(n, 30);
  HaltingConfig none, attn = topk(1.0 / 3.0), rel = topk(0.5, KVMode::Drop);
  attn.policy = "attn";
  rel.signal = DeltaSignal::Rel;
  HaltingConfig block = topk(0.5);
  block.signal = DeltaSignal::Block;
  for (const HaltingConfig& hc : {none, topk(1.0 / 3.0), topk(1.0 / 3.0, KVMode::Drop), attn, rel, block}) {
    Engine one(m, n + 8), many(m, n + 8);
    many.set_chunk_rows(7);
    const PrefillRun a = prefill(hc, &one), b = prefill(hc, &many);
    EXPECT_EQ(a.trace.halted_after, b.trace.halted_after) << hc.policy;
    ASSERT_EQ(a.logits.size(), b.logits.size());
    float mx = 1.f, diff = 0.f;
    for (size_t i = 0; i < a.logits.size(); ++i) {
      mx = std::max(mx, std::abs(a.logits[i]));
      diff = std::max(diff, std::abs(a.logits[i] - b.logits[i]));
    }
    EXPECT_LE(diff, 1e-5f * mx) << hc.policy;
    for (int il = 0; il < m.hp().n_layer; ++il) {
      const auto& ka = one.cache().k[static_cast<size_t>(il)];
      const auto& kb = many.cache().k[static_cast<size_t>(il)];
      for (size_t j = 0; j < ka.size(); ++j) ASSERT_NEAR(ka[j], kb[j], 1e-4f) << hc.policy << " layer " << il;
      EXPECT_EQ(one.cache().valid[static_cast<size_t>(il)], many.cache().valid[static_cast<size_t>(il)]);
    }
  }
}

TEST(Halting, FullPrefillInPiecesEqualsLayerByLayer) {
  // A full prefill with nothing that reads the whole segment runs as consecutive pieces of at most
  // the chunk size (prefill_segment); a traced one runs the whole segment layer by layer. The
  // pieces split where the layers' own chunks would, so the logits, every cache slot and the
  // tokens decoded after it are bit-identical, with the f32 and the f16 cache.
  const Model& m = stories();
  const auto toks = prompt_tokens();
  const auto n = static_cast<int64_t>(toks.size());
  ASSERT_GT(n, 30);
  for (cpu::KvType kv : {cpu::KvType::F32, cpu::KvType::F16}) {
    Engine pieces(m, n + 8, kv), whole(m, n + 8, kv);
    pieces.set_chunk_rows(7);
    whole.set_chunk_rows(7);
    ForwardStats stats;
    const std::vector<float> a = pieces.prefill(toks, {}, &stats);
    HaltingTrace tr;
    PrefillOptions traced;
    traced.trace = &tr;
    const std::vector<float> b = whole.prefill(toks, traced);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
    EXPECT_EQ(stats.n_tokens, n);
    EXPECT_EQ(static_cast<int>(stats.layer_ms.size()), m.hp().n_layer);
    for (int il = 0; il < m.hp().n_layer; ++il) {
      const auto i = static_cast<size_t>(il);
      if (kv == cpu::KvType::F32) {
        EXPECT_EQ(pieces.cache().k[i], whole.cache().k[i]) << "layer " << il;
        EXPECT_EQ(pieces.cache().v[i], whole.cache().v[i]) << "layer " << il;
      } else {
        EXPECT_EQ(pieces.cache().k16[i], whole.cache().k16[i]) << "layer " << il;
        EXPECT_EQ(pieces.cache().v16[i], whole.cache().v16[i]) << "layer " << il;
      }
    }
    EXPECT_EQ(pieces.n_past(), whole.n_past());
    const std::vector<float> da = pieces.decode(5), db = whole.decode(5);
    EXPECT_EQ(0, std::memcmp(da.data(), db.data(), da.size() * sizeof(float)));
  }
}

TEST(Halting, TopkKeepsExactlyCeilKeepTimesEligible) {
  for (double keep : {0.1, 1.0 / 3.0, 0.5, 0.9}) {
    HaltingConfig hc = topk(keep);
    hc.protect_first = 2;
    hc.protect_last = 3;
    const PrefillRun r = prefill(hc);
    const int64_t n = r.trace.n_tokens, eligible = n - 5;
    const int l = hc.decision_layer(stories().hp().n_layer);
    const int64_t expect = static_cast<int64_t>(std::ceil(keep * static_cast<double>(eligible) - 1e-9)) + 5;
    for (int il = 0; il < stories().hp().n_layer; ++il) {
      EXPECT_EQ(r.trace.active_per_layer[static_cast<size_t>(il)], il <= l ? n : expect) << "keep " << keep << " layer " << il;
    }
    EXPECT_EQ(halting_keep_count(keep, eligible) + 5, expect);
    // The kept tokens are those with the largest deltas at the decision layer.
    const int L = r.trace.n_layer;
    float min_kept = INFINITY, max_halted = -INFINITY;
    for (int64_t t = 2; t < n - 3; ++t) {
      const float dv = r.trace.delta[static_cast<size_t>(t * L + l)];
      if (r.trace.halted_after[static_cast<size_t>(t)] == L) min_kept = std::min(min_kept, dv);
      else max_halted = std::max(max_halted, dv);
    }
    EXPECT_GE(min_kept, max_halted);
  }
}

TEST(Halting, ProtectedTokensNeverHalt) {
  for (const std::string policy : {"topk", "random", "attn", "threshold"}) {
    HaltingConfig hc = topk(0.1);
    hc.policy = policy;
    if (policy == "threshold") {
      hc.tau = 1e9;  // everything is below: all eligible tokens halt at min_layer
      hc.patience = 1;
    }
    hc.protect_first = 4;
    hc.protect_last = 2;
    const PrefillRun r = prefill(hc);
    const int64_t n = r.trace.n_tokens;
    const int L = r.trace.n_layer;
    int halted = 0;
    for (int64_t t = 0; t < n; ++t) {
      const bool prot = t < 4 || t >= n - 2;
      if (prot) EXPECT_EQ(r.trace.halted_after[static_cast<size_t>(t)], L) << policy << " token " << t;
      halted += r.trace.halted_after[static_cast<size_t>(t)] < L;
    }
    EXPECT_GT(halted, 0) << policy;
  }
}

TEST(Halting, RandomIsReproducibleWithASeed) {
  HaltingConfig hc = topk(0.3);
  hc.policy = "random";
  hc.seed = 11;
  const PrefillRun a = prefill(hc), b = prefill(hc);
  EXPECT_EQ(a.trace.halted_after, b.trace.halted_after);
  hc.seed = 12;
  const PrefillRun c = prefill(hc);
  EXPECT_NE(a.trace.halted_after, c.trace.halted_after);
}

TEST(Halting, HaltedStateStaysFrozen) {
  const PrefillRun r = prefill(topk(1.0 / 3.0));
  const int L = r.trace.n_layer;
  const int64_t n = r.trace.n_tokens, d = stories().hp().n_embd;
  int checked = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int h = r.trace.halted_after[static_cast<size_t>(t)];
    if (h == L) continue;
    // State after layer h (entry h+1) equals the state after the last layer (entry L).
    const float* at_halt = r.hidden.data() + ((h + 1) * n + t) * d;
    const float* at_end = r.hidden.data() + (L * n + t) * d;
    EXPECT_EQ(0, std::memcmp(at_halt, at_end, static_cast<size_t>(d) * sizeof(float))) << "token " << t;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST(Halting, RetainProjectsFrozenStatesAndDropLeavesThemOut) {
  const Model& m = stories();
  const HParams& hp = m.hp();
  for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
    const auto n = static_cast<int64_t>(prompt_tokens().size());
    Engine e(m, n + 8);
    const PrefillRun r = prefill(topk(1.0 / 3.0, kv), &e);
    const int L = hp.n_layer;
    int checked = 0;
    for (int64_t t = 0; t < n; ++t) {
      const int h = r.trace.halted_after[static_cast<size_t>(t)];
      if (h == L) continue;
      for (int il = h + 1; il < L; ++il) {
        if (kv == KVMode::Drop) {
          EXPECT_EQ(e.cache().valid[static_cast<size_t>(il)][static_cast<size_t>(t)], 0);
          continue;
        }
        // Direct computation: K = RoPE(Wk RMSNorm(h_frozen)), V = Wv RMSNorm(h_frozen).
        const LayerWeights& lw = m.layer(il);
        std::vector<float> xn(static_cast<size_t>(hp.n_embd)), k(static_cast<size_t>(hp.kv_dim())), v(k.size());
        cpu::rmsnorm(r.hidden.data() + ((h + 1) * n + t) * hp.n_embd, lw.attn_norm, xn.data(), 1, hp.n_embd, hp.norm_eps);
        cpu::matmul(lw.wk, xn.data(), 1, k.data(), lw.bk);
        cpu::matmul(lw.wv, xn.data(), 1, v.data(), lw.bv);
        cpu::RopeParams rp;
        rp.head_dim = hp.head_dim;
        rp.n_rot = hp.n_rot;
        rp.freq_base = hp.rope_base;
        rp.neox = hp.rope_neox;
        const auto pos = static_cast<int32_t>(t);
        cpu::rope(k.data(), 1, hp.n_head_kv, hp.kv_dim(), &pos, rp);
        const float* kc = e.cache().k[static_cast<size_t>(il)].data() + t * hp.kv_dim();
        const float* vc = e.cache().v[static_cast<size_t>(il)].data() + t * hp.kv_dim();
        for (int64_t j = 0; j < hp.kv_dim(); ++j) {
          ASSERT_NEAR(kc[j], k[static_cast<size_t>(j)], 1e-5f);
          ASSERT_NEAR(vc[j], v[static_cast<size_t>(j)], 1e-5f);
        }
        EXPECT_EQ(e.cache().valid[static_cast<size_t>(il)][static_cast<size_t>(t)], 1);
      }
      ++checked;
    }
    EXPECT_GT(checked, 0);
  }
}

TEST(Halting, DecodingAfterKeepAllEqualsDecodingAfterFullPrefill) {
  const Model& m = stories();
  auto greedy = [&](const HaltingConfig& hc) {
    auto toks = prompt_tokens();
    Engine e(m, static_cast<int64_t>(toks.size()) + 40);
    PrefillOptions po;
    po.halting = &hc;
    std::vector<float> l = e.prefill(toks, po);
    std::vector<int32_t> out;
    for (int i = 0; i < 32; ++i) {
      out.push_back(argmax(l));
      l = e.decode(out.back());
    }
    return out;
  };
  HaltingConfig none;
  const auto ref = greedy(none);
  EXPECT_EQ(greedy(topk(1.0)), ref);
  EXPECT_EQ(greedy(topk(1.0, KVMode::Drop)), ref);
  // And a real halting prefill decodes in both KV modes.
  EXPECT_EQ(greedy(topk(0.5)).size(), 32u);
  EXPECT_EQ(greedy(topk(0.5, KVMode::Drop)).size(), 32u);
}

TEST(Halting, FlopModelMatchesTheSchedule) {
  const PrefillRun full = prefill(HaltingConfig{});
  EXPECT_EQ(full.trace.flops_done, full.trace.flops_full);
  const PrefillRun drop = prefill(topk(1.0 / 3.0, KVMode::Drop)), keep = prefill(topk(1.0 / 3.0, KVMode::Retain));
  EXPECT_LT(drop.trace.flops_done, keep.trace.flops_done);  // retain pays for K/V projections and keys
  EXPECT_LT(keep.trace.flops_done, keep.trace.flops_full);
  EXPECT_DOUBLE_EQ(drop.trace.flops_full, full.trace.flops_full);
}

TEST(Halting, BadSettingsAreClearErrors) {
  const int L = stories().hp().n_layer;
  HaltingConfig hc = topk(0.0);
  EXPECT_THROW(hc.validate(L), Error);
  hc = topk(1.5);
  EXPECT_THROW(hc.validate(L), Error);
  hc = topk(0.5);
  hc.halt_layer = 7;  // 5 layers
  EXPECT_THROW(hc.validate(L), Error);
  hc = HaltingConfig{};
  hc.policy = "threshold";
  hc.tau = 0.1;
  EXPECT_THROW(hc.validate(L), Error);  // tau without patience
  hc.policy = "bogus";
  EXPECT_THROW(hc.validate(L), Error);
  hc = topk(0.5);
  hc.tau = 0.3;  // tau belongs to threshold
  EXPECT_THROW(hc.validate(L), Error);
}

// Engines compute and copy deltas only where the policy reads them; topk exposes its rule for
// engines that decide on the GPU.
TEST(Halting, PoliciesSayWhichLayersTheyRead) {
  const int L = 10;
  auto tk = make_halting_policy(topk(0.3), L);
  const int l = topk(0.3).decision_layer(L);
  for (int il = 0; il < L; ++il) EXPECT_EQ(tk->wants_signal(il), il == l) << il;
  ASSERT_TRUE(tk->topk_rule().has_value());
  EXPECT_EQ(tk->topk_rule()->layer, l);
  EXPECT_DOUBLE_EQ(tk->topk_rule()->keep, 0.3);

  HaltingConfig th;
  th.policy = "threshold";
  th.min_layer = 3;
  th.tau = 0.1;
  th.patience = 2;
  auto tp = make_halting_policy(th, L);
  for (int il = 0; il < L; ++il) EXPECT_EQ(tp->wants_signal(il), il >= 3) << il;
  EXPECT_FALSE(tp->topk_rule().has_value());

  for (const char* name : {"random", "attn"}) {
    HaltingConfig hc = topk(0.3);
    hc.policy = name;
    auto p = make_halting_policy(hc, L);
    for (int il = 0; il < L; ++il) EXPECT_FALSE(p->wants_signal(il)) << name << " " << il;
    EXPECT_FALSE(p->topk_rule().has_value()) << name;
  }
}

// Without a trace the engine computes the delta at the decision layer only; the result is the
// same as with one (the deltas do not feed back into the hidden states).
TEST(Halting, PrefillWithoutTraceEqualsPrefillWithTrace) {
  const Model& m = stories();
  const auto toks = prompt_tokens();
  for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
    const HaltingConfig hc = topk(0.4, kv);
    Engine a(m, static_cast<int64_t>(toks.size()) + 8), b(m, static_cast<int64_t>(toks.size()) + 8);
    HaltingTrace tr;
    PrefillOptions traced, plain;
    traced.halting = plain.halting = &hc;
    traced.trace = &tr;
    EXPECT_EQ(a.prefill(toks, traced), b.prefill(toks, plain)) << kv_mode_name(kv);
    EXPECT_LT(tr.active_per_layer.back(), static_cast<int64_t>(toks.size()));
    EXPECT_EQ(a.cache().valid, b.cache().valid) << kv_mode_name(kv);
  }
}

// A trace without deltas (the server's statistics): the same tokens halt after the same layers,
// the same FLOP counts and logits as a trace with deltas, and every delta left NaN.
TEST(Halting, TraceWithoutDeltasRecordsTheSameSchedule) {
  const Model& m = stories();
  const auto toks = prompt_tokens();
  for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
    const HaltingConfig hc = topk(0.4, kv);
    Engine a(m, static_cast<int64_t>(toks.size()) + 8), b(m, static_cast<int64_t>(toks.size()) + 8);
    HaltingTrace full, light;
    PrefillOptions with, without;
    with.halting = without.halting = &hc;
    with.trace = &full;
    without.trace = &light;
    without.trace_deltas = false;
    EXPECT_EQ(a.prefill(toks, with), b.prefill(toks, without)) << kv_mode_name(kv);
    EXPECT_EQ(light.halted_after, full.halted_after);
    EXPECT_EQ(light.active_per_layer, full.active_per_layer);
    EXPECT_EQ(light.flops_done, full.flops_done);
    EXPECT_EQ(light.flops_full, full.flops_full);
    EXPECT_EQ(light.decision_layers, full.decision_layers);
    EXPECT_TRUE(std::all_of(light.delta.begin(), light.delta.end(), [](float v) { return std::isnan(v); }));
  }
}

// Staged schedules: each decision keeps its fraction of the tokens eligible at the start, ranking
// only the tokens still active; every ranking policy, both KV modes; the FLOP model counts what
// ran.
TEST(Halting, StagedScheduleKeepsEachStagesFractionOfTheEligibleTokens) {
  const HParams& hp = stories().hp();
  const int L = hp.n_layer;  // 5
  for (const char* policy : {"topk", "random", "attn", "query"}) {
    for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
      SCOPED_TRACE(std::string(policy) + " " + kv_mode_name(kv));
      HaltingConfig hc = topk(0.5, kv);
      hc.policy = policy;
      hc.halt_layer = 1;
      hc.then = {{3, 0.2}};
      hc.protect_first = 2;
      hc.protect_last = 1;
      const int64_t nq = hc.policy == "query" ? 6 : 0;  // the query's rows never halt
      const PrefillRun r = prefill(hc, nullptr, nq);
      const int64_t n = r.trace.n_tokens, fixed = 2 + std::max<int64_t>(1, nq), eligible = n - fixed;
      const int64_t k1 = halting_keep_count(0.5, eligible), k2 = halting_keep_count(0.2, eligible);
      ASSERT_LT(k2, k1);
      const std::vector<int64_t> expect{n, n, k1 + fixed, k1 + fixed, k2 + fixed};
      EXPECT_EQ(r.trace.active_per_layer, expect);
      EXPECT_EQ(r.trace.decision_layers, (std::vector<int32_t>{1, 3}));
      int64_t at1 = 0, at3 = 0;
      for (int64_t t = 0; t < n; ++t) {
        const int h = r.trace.halted_after[static_cast<size_t>(t)];
        if (t < 2 || t >= n - std::max<int64_t>(1, nq)) EXPECT_EQ(h, L) << "protected token " << t;
        at1 += h == 1;
        at3 += h == 3;
        EXPECT_TRUE(h == 1 || h == 3 || h == L) << "token " << t << " halted after " << h;
      }
      EXPECT_EQ(at1, eligible - k1);
      EXPECT_EQ(at3, k1 - k2);
      // The FLOP model from the schedule alone: token t runs layer l while l <= halted_after[t];
      // in drop mode its key is gone from later layers, in retain mode its K/V are projected.
      double full = 0, done = 0;
      for (int il = 0; il < L; ++il) {
        int64_t na = 0;
        double keys_full = 0, keys_done = 0;
        for (int64_t t = 0; t < n; ++t) {
          keys_full += static_cast<double>(t + 1);
          if (il > r.trace.halted_after[static_cast<size_t>(t)]) continue;
          ++na;
          for (int64_t j = 0; j <= t; ++j) keys_done += kv == KVMode::Retain || il <= r.trace.halted_after[static_cast<size_t>(j)];
        }
        full += layer_flops(hp, n, keys_full, 0);
        done += layer_flops(hp, na, keys_done, kv == KVMode::Retain ? n - na : 0);
      }
      EXPECT_DOUBLE_EQ(r.trace.flops_full, full);
      EXPECT_DOUBLE_EQ(r.trace.flops_done, done);
      // A later stage saves more than the first one alone.
      HaltingConfig one = hc;
      one.then.clear();
      EXPECT_GT(r.trace.flop_speedup(), prefill(one, nullptr, nq).trace.flop_speedup());
      for (float v : r.logits) ASSERT_TRUE(std::isfinite(v));
    }
  }
}

// topk's second stage keeps the tokens whose update was largest at its own layer, among those the
// first stage kept.
TEST(Halting, StagedTopkRanksTheStillActiveTokensAtEachStage) {
  HaltingConfig hc = topk(0.6);
  hc.halt_layer = 1;
  hc.then = {{3, 0.25}};
  const PrefillRun r = prefill(hc);
  const int L = r.trace.n_layer;
  const int64_t n = r.trace.n_tokens;
  float min_kept = INFINITY, max_halted = -INFINITY;
  int64_t ranked = 0;
  for (int64_t t = hc.protect_first; t < n - hc.protect_last; ++t) {
    const int h = r.trace.halted_after[static_cast<size_t>(t)];
    if (h == 1) continue;  // halted at the first stage: not ranked at the second
    ++ranked;
    const float dv = r.trace.delta[static_cast<size_t>(t * L + 3)];
    if (h == L) min_kept = std::min(min_kept, dv);
    else max_halted = std::max(max_halted, dv);
  }
  EXPECT_EQ(ranked, halting_keep_count(0.6, n - hc.protect_first - hc.protect_last));
  EXPECT_GE(min_kept, max_halted);
}

// The stable rule on stories260K: one decision, within [min_layer + 1, decision layer], the same
// on every run; then the keep fraction holds from there on, in both KV modes.
TEST(Halting, StableRuleDecidesWithinItsWindowAndIsDeterministic) {
  const int L = stories().hp().n_layer;
  for (const char* policy : {"topk", "random", "attn", "query"}) {
    for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
      for (double overlap : {0.5, 0.9, 1.0}) {
        SCOPED_TRACE(std::string(policy) + " " + kv_mode_name(kv) + " overlap " + std::to_string(overlap));
        HaltingConfig hc = topk(0.3, kv);
        hc.policy = policy;
        hc.halt_layer = 3;
        hc.decide = DecideRule::Stable;
        hc.min_layer = 0;
        hc.overlap = overlap;
        const PrefillRun a = prefill(hc), b = prefill(hc);
        ASSERT_EQ(a.trace.decision_layers.size(), 1u);
        const int l = a.trace.decision_layers[0];
        EXPECT_GE(l, 1);
        EXPECT_LE(l, 3);
        EXPECT_EQ(a.trace.decision_layers, b.trace.decision_layers);
        EXPECT_EQ(a.trace.halted_after, b.trace.halted_after);
        EXPECT_EQ(a.logits, b.logits);
        const int64_t n = a.trace.n_tokens, eligible = n - hc.protect_first - hc.protect_last;
        for (int il = 0; il < L; ++il) {
          EXPECT_EQ(a.trace.active_per_layer[static_cast<size_t>(il)],
                    il <= l ? n : halting_keep_count(0.3, eligible) + hc.protect_first + hc.protect_last) << il;
        }
        // A random ranking never changes between layers: stable at once.
        if (hc.policy == "random") EXPECT_EQ(l, 1);
      }
    }
  }
  // With a later stage: the stable decision, then the fixed one.
  HaltingConfig hc = topk(0.5);
  hc.halt_layer = 2;
  hc.decide = DecideRule::Stable;
  hc.min_layer = 0;
  hc.then = {{3, 0.2}};
  const PrefillRun r = prefill(hc);
  ASSERT_EQ(r.trace.decision_layers.size(), 2u);
  EXPECT_LE(r.trace.decision_layers[0], 2);
  EXPECT_EQ(r.trace.decision_layers[1], 3);
}

namespace {

// A ranked policy driven by hand: `sig(layer)` gives each active token's signal.
std::vector<int32_t> observe_all(HaltingPolicy& p, int layer, const std::vector<int32_t>& active, const std::vector<float>& sig) {
  LayerSignals s;
  s.active = active;
  s.signal = sig;
  return p.observe(layer, s);
}

// A segment of n tokens for a policy driven by hand: every token eligible but the last, and the
// list 0 .. n - 1.
std::pair<std::vector<uint8_t>, std::vector<int32_t>> hand_segment(int64_t n) {
  std::vector<uint8_t> eligible(static_cast<size_t>(n), 1);
  eligible.back() = 0;
  std::vector<int32_t> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  return {eligible, all};
}

// The tokens a query-policy spec (protect_first 0) keeps of a hand segment whose attention
// received is `att`, its groups starting at `starts` (empty: none given).
std::vector<int32_t> query_kept(const char* spec, int n_layer, const std::vector<float>& att,
                                const std::vector<uint8_t>& starts = {}) {
  const auto n = static_cast<int64_t>(att.size());
  const auto [eligible, all] = hand_segment(n);
  HaltingConfig hc = HaltingConfig::parse(spec);
  hc.protect_first = 0;
  hc.validate(n_layer);
  auto p = make_halting_policy(hc, n_layer);
  if (!starts.empty()) p->set_word_starts(starts);
  p->begin(n, eligible);
  LayerSignals s;
  s.active = all;
  s.attention_received = att;
  const std::vector<int32_t> h = p->observe(hc.decision_layer(n_layer), s);
  std::vector<int32_t> k;
  std::set_difference(all.begin(), all.end() - 1, h.begin(), h.end(), std::back_inserter(k));
  return k;
}

}  // namespace

// Where a ranking policy reads its signal follows its schedule; the stable rule decides at the
// first layer whose top set overlaps the previous layer's by the overlap asked for.
TEST(Halting, StagedAndStablePoliciesReadTheLayersOfTheirSchedule) {
  const int L = 12;
  const int64_t n = 21;
  const auto [eligible, all] = hand_segment(n);
  // Staged topk: layers 3 then 7; no rule for the device.
  HaltingConfig hc = topk(0.5);
  hc.protect_first = 0;
  hc.halt_layer = 3;
  hc.then = {{7, 0.2}};
  auto p = make_halting_policy(hc, L);
  EXPECT_FALSE(p->topk_rule().has_value());
  p->begin(n, eligible);
  for (int il = 0; il < L; ++il) EXPECT_EQ(p->wants_signal(il), il == 3) << il;
  std::vector<float> sig(all.begin(), all.end());  // later tokens rank higher
  EXPECT_TRUE(observe_all(*p, 2, all, sig).empty());
  const std::vector<int32_t> h1 = observe_all(*p, 3, all, sig);
  EXPECT_EQ(h1.size(), 10u);  // 20 eligible, 10 kept
  EXPECT_EQ(h1.front(), 0);
  for (int il = 0; il < L; ++il) EXPECT_EQ(p->wants_signal(il), il == 7) << il;
  std::vector<int32_t> rest;
  std::set_difference(all.begin(), all.end(), h1.begin(), h1.end(), std::back_inserter(rest));
  const std::vector<int32_t> h2 = observe_all(*p, 7, rest, std::vector<float>(rest.begin(), rest.end()));
  EXPECT_EQ(h2, (std::vector<int32_t>{10, 11, 12, 13, 14, 15}));  // 4 of 20 stay
  for (int il = 0; il < L; ++il) EXPECT_FALSE(p->wants_signal(il)) << il;
  EXPECT_EQ(p->decision_layers(), (std::vector<int>{3, 7}));

  // Stable between layers 2 and 8.
  hc.then.clear();
  hc.halt_layer = 8;
  hc.decide = DecideRule::Stable;
  hc.min_layer = 2;
  for (double overlap : {0.9, 1.0}) {
    hc.overlap = overlap;
    auto q = make_halting_policy(hc, L);
    q->begin(n, eligible);
    EXPECT_FALSE(q->topk_rule().has_value());
    for (int il = 0; il < L; ++il) EXPECT_EQ(q->wants_signal(il), il >= 2 && il <= 8) << il;
    std::vector<int32_t> h;
    int decided = -1;
    for (int il = 2; il <= 8 && decided < 0; ++il) {
      // Layers 2..4: the top 10 alternate between the odd tokens and the even ones; from layer 5 on
      // the odd ones lead, with token 19 swapped for token 18 at layer 5 only (9 of 10 in common).
      std::vector<float> v(static_cast<size_t>(n));
      for (int64_t t = 0; t < n; ++t) v[static_cast<size_t>(t)] = static_cast<float>((il <= 4 ? (t + il) % 2 : t % 2) * 100 + t);
      if (il == 5) std::swap(v[18], v[19]);
      h = observe_all(*q, il, all, v);
      if (!h.empty()) decided = il;
    }
    EXPECT_EQ(decided, overlap == 1.0 ? 7 : 5) << overlap;
    EXPECT_EQ(q->decision_layers(), (std::vector<int>{decided}));
    EXPECT_EQ(h.size(), 10u);
  }
}

// The query policy with words (the default, 16): a word ranks as its best token and is kept or
// halted whole (cut every `words` tokens); the last word kept may take the kept count past the
// keep fraction.
TEST(Halting, QueryPolicyKeepsWholeWords) {
  const int L = 8;
  const int64_t n = 16;
  const auto [eligible, all] = hand_segment(n);
  // Tokens 4..9 are one word; token 6 draws the most attention, then 9, then 12.
  std::vector<uint8_t> starts(static_cast<size_t>(n), 1);
  for (int t = 5; t <= 9; ++t) starts[static_cast<size_t>(t)] = 0;
  std::vector<float> att(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) att[static_cast<size_t>(t)] = 0.01f * static_cast<float>(t);
  att[6] = 1.f;
  att[9] = 0.9f;
  att[12] = 0.8f;
  auto halted = [&](const char* spec, bool with_starts) {
    HaltingConfig hc = HaltingConfig::parse(spec);
    hc.protect_first = 0;
    auto p = make_halting_policy(hc, L);
    if (with_starts) p->set_word_starts(starts);
    p->begin(n, eligible);
    const int layer = hc.decision_layer(L);
    EXPECT_GT(p->attention_rows(layer), 0);
    LayerSignals s;
    s.active = all;
    s.attention_received = att;
    std::vector<int32_t> h = p->observe(layer, s);
    std::vector<int32_t> kept;
    std::set_difference(all.begin(), all.end() - 1, h.begin(), h.end(), std::back_inserter(kept));
    return kept;
  };
  ASSERT_EQ(halting_keep_count(0.2, n - 1), 3);
  EXPECT_EQ(halted("query:2:0.2:drop:pool=0:words=0", true), (std::vector<int32_t>{6, 9, 12}));
  EXPECT_EQ(halted("query:2:0.2:drop:pool=0:words=4", false), (std::vector<int32_t>{6, 9, 12}));  // no word starts given
  EXPECT_EQ(halted("query:2:0.2:drop:pool=0:words=4", true), (std::vector<int32_t>{4, 5, 6, 7}));
  EXPECT_EQ(halted("query:2:0.2:drop:pool=0", true), (std::vector<int32_t>{4, 5, 6, 7, 8, 9}));
  EXPECT_EQ(halted("query:2:0.5:drop:pool=0:words=16", true), (std::vector<int32_t>{4, 5, 6, 7, 8, 9, 12, 14}));
  EXPECT_EQ(HaltingConfig::parse("query:2:0.2:drop:words=4").describe(L), "query(l=2,keep=0.20,pool=3,words=4,drop)");
  EXPECT_THROW(HaltingConfig::parse("topk:2:0.2:drop:words=4").validate(L), Error);
  EXPECT_THROW(HaltingConfig::parse("query:2:0.2:drop:words=65").validate(L), Error);
}

// The query policy with blocks: each block of `blocks` eligible tokens keeps the same fraction,
// its own best tokens, where one ranking of the document would keep only its most attended part.
TEST(Halting, QueryPolicyRanksInBlocks) {
  const int L = 8;
  const int64_t n = 33;  // 32 eligible tokens and the protected last one
  // Attention grows with position (as it decays with distance from the query), with a bump at
  // token 3 above its block's neighbours but below every token of the last block.
  std::vector<float> att(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) att[static_cast<size_t>(t)] = 0.01f * static_cast<float>(t);
  att[3] = 0.2f;
  auto kept = [&](const char* spec) { return query_kept(spec, L, att); };
  ASSERT_EQ(halting_keep_count(0.25, n - 1), 8);
  EXPECT_EQ(kept("query:2:0.25:drop:pool=0:words=0"), (std::vector<int32_t>{24, 25, 26, 27, 28, 29, 30, 31}));
  EXPECT_EQ(kept("query:2:0.25:drop:pool=0:words=0:blocks=8"), (std::vector<int32_t>{3, 7, 14, 15, 22, 23, 30, 31}));
  // A last block shorter than the others keeps its share too.
  EXPECT_EQ(kept("query:2:0.25:drop:pool=0:words=0:blocks=12"), (std::vector<int32_t>{3, 10, 11, 21, 22, 23, 30, 31}));
  EXPECT_EQ(HaltingConfig::parse("query:2:0.2:drop:blocks=256").describe(L), "query(l=2,keep=0.20,pool=3,words=16,blocks=256,drop)");
  EXPECT_EQ(HaltingConfig::parse("query:2:0.2:drop:blocks=256").spec(), "query:2:0.2:drop:blocks=256");
  EXPECT_THROW(HaltingConfig::parse("topk:2:0.2:drop:blocks=8").validate(L), Error);
  EXPECT_THROW(HaltingConfig::parse("query:2:0.2:drop:blocks=-1").validate(L), Error);
}

// The query policy with sentences: the groups are the sentences the session marks (cut every
// `sentences` tokens), kept or halted whole as words are.
TEST(Halting, QueryPolicyKeepsWholeSentences) {
  const int L = 8;
  const int64_t n = 16;
  std::vector<uint8_t> starts(static_cast<size_t>(n), 0);
  starts[0] = starts[5] = starts[10] = 1;  // sentences 0..4, 5..9, 10..15
  std::vector<float> att(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t) att[static_cast<size_t>(t)] = 0.01f * static_cast<float>(t);
  att[7] = 1.f;
  auto kept = [&](const char* spec) { return query_kept(spec, L, att, starts); };
  ASSERT_EQ(halting_keep_count(0.2, n - 1), 3);
  EXPECT_EQ(kept("query:2:0.2:drop:pool=0:words=0:sentences=16"), (std::vector<int32_t>{5, 6, 7, 8, 9}));
  EXPECT_EQ(kept("query:2:0.2:drop:pool=0:words=0:sentences=2"), (std::vector<int32_t>{7, 8, 14}));
  EXPECT_EQ(HaltingConfig::parse("query:2:0.2:drop:sentences=48").describe(L), "query(l=2,keep=0.20,pool=3,words=16,sentences=48,drop)");
  EXPECT_THROW(HaltingConfig::parse("query:2:0.2:drop:sentences=257").validate(L), Error);
  EXPECT_THROW(HaltingConfig::parse("attn:2:0.2:drop:sentences=8").validate(L), Error);
}

// On a model whose sliding-window layers see only their window (Gemma 3), the attention rankings
// read the attention of the latest full layer up to the decision layer: there a token far before
// the query can draw attention, in the window it cannot. Layers 0-4 and 6-9 are windowed, 5 full.
TEST(Halting, AttentionRankingsReadTheLatestFullLayer) {
  const int L = 10;
  const int64_t n = 16;
  const auto [eligible, all] = hand_segment(n);
  std::vector<int> windows(L, 4);
  windows[5] = 0;
  // What the rows pay at the full layer 5 (token 2 most, then 11) and at the windowed layer 7
  // (only the last few tokens).
  std::vector<float> full(static_cast<size_t>(n), 0.01f), windowed(static_cast<size_t>(n), 0.f);
  full[2] = 1.f;
  full[11] = 0.5f;
  for (int64_t t = n - 4; t < n; ++t) windowed[static_cast<size_t>(t)] = 1.f;
  for (const char* spec : {"query:7:0.2:drop:pool=0:words=0", "attn:7:0.2:drop"}) {
    for (bool with_windows : {true, false}) {
      HaltingConfig hc = HaltingConfig::parse(spec);
      hc.protect_first = 0;
      auto p = make_halting_policy(hc, L);
      if (with_windows) p->set_layer_windows(windows);
      p->begin(n, eligible);
      std::vector<int32_t> h;
      for (int layer = 0; layer <= 7; ++layer) {
        const bool records = p->attention_rows(layer) > 0;
        EXPECT_EQ(records, layer == (with_windows ? 5 : 7)) << spec << " layer " << layer;
        LayerSignals s;
        s.active = all;
        if (records) s.attention_received = layer == 5 ? full : windowed;
        h = p->observe(layer, s);
        if (layer < 7) EXPECT_TRUE(h.empty()) << spec << " layer " << layer;
      }
      ASSERT_FALSE(h.empty()) << spec;
      std::vector<int32_t> kept;
      std::set_difference(all.begin(), all.end() - 1, h.begin(), h.end(), std::back_inserter(kept));
      if (with_windows) {
        EXPECT_TRUE(std::find(kept.begin(), kept.end(), 2) != kept.end()) << spec;
        EXPECT_TRUE(std::find(kept.begin(), kept.end(), 11) != kept.end()) << spec;
      } else {
        EXPECT_TRUE(std::find(kept.begin(), kept.end(), 2) == kept.end()) << spec;
      }
    }
  }
}

TEST(Halting, F16CacheRunsBothKvModesCloseToF32) {
  // An f16 KV cache in both KV modes: drop leaves the halted tokens' slots out exactly as with
  // f32, retain stores their projections rounded to f16, the logits stay close to the f32
  // cache's, and decoding after either runs on the f16 cache.
  const Model& m = stories();
  const HParams& hp = m.hp();
  const auto n = static_cast<int64_t>(prompt_tokens().size());
  for (const HaltingConfig& hc : {HaltingConfig{}, topk(1.0 / 3.0), topk(1.0 / 3.0, KVMode::Drop)}) {
    Engine e32(m, n + 8), e16(m, n + 8, cpu::KvType::F16);
    const PrefillRun a = prefill(hc, &e32), b = prefill(hc, &e16);
    EXPECT_EQ(a.trace.halted_after, b.trace.halted_after) << hc.policy;
    float mx = 1.f, diff = 0.f;
    for (size_t i = 0; i < a.logits.size(); ++i) {
      mx = std::max(mx, std::abs(a.logits[i]));
      diff = std::max(diff, std::abs(a.logits[i] - b.logits[i]));
    }
    EXPECT_LE(diff, 1e-2f * mx) << hc.policy << (hc.enabled() ? kv_mode_name(hc.kv) : "");
    for (int il = 0; il < hp.n_layer; ++il) {
      EXPECT_EQ(e32.cache().valid[static_cast<size_t>(il)], e16.cache().valid[static_cast<size_t>(il)]);
      for (int64_t t = 0; t < n; ++t) {
        const std::vector<float> k32 = e32.cache().k_at(il, t), k16 = e16.cache().k_at(il, t);
        for (size_t j = 0; j < k32.size(); ++j) {
          // Layer 0's keys come from the embeddings alone: exactly the f32 keys rounded to f16.
          // Later layers' differ also by what the earlier layers' rounded keys did to the states.
          if (il == 0) {
            ASSERT_EQ(k16[j], cpu::fp16_to_fp32(cpu::fp32_to_fp16(k32[j]))) << t;
          } else {
            ASSERT_NEAR(k16[j], k32[j], 2e-2f * std::max(1.f, std::abs(k32[j]))) << il << " " << t;
          }
        }
      }
    }
    EXPECT_EQ(e16.cache().bytes() * 2, e32.cache().bytes());
    const std::vector<float> d32 = e32.decode(5), d16 = e16.decode(5);
    float dd = 0.f;
    for (size_t i = 0; i < d32.size(); ++i) dd = std::max(dd, std::abs(d32[i] - d16[i]));
    EXPECT_LE(dd, 1e-2f * mx);
  }
}
