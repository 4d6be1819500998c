// The evaluation's measuring instruments: metrics on hand-computed cases, config specs, the
// deterministic sample builder (exact lengths, needles at the stated depth), and teacher forcing
// on the real stories260K checkpoint.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "common/error.h"
#include "model/model.h"
#include "stories.h"
#include "runtime/engine.h"
#include "common/lists.h"
#include "eval/eval.h"
#include "runtime/sampler.h"

using namespace dashlm;

namespace {

using test::stories;

// A small dataset built in memory: two books of plain sentences and a few facts.
const eval::Dataset& small_dataset() {
  static const eval::Dataset ds = [] {
    eval::Dataset d;
    d.dir = "(test)";
    const char* names[] = {"Lily", "Tom", "Sue", "Max", "Ben", "Mia"};
    const char* things[] = {"a red ball", "a big tree", "a little cat", "a blue boat", "a warm cake", "a happy dog"};
    for (int b = 0; b < 2; ++b) {
      eval::Book book;
      book.id = b == 0 ? "alpha" : "beta";
      book.role = "eval";
      for (int p = 0; p < 60; ++p) {
        std::string para;
        for (int s = 0; s < 4; ++s) {
          para += (s ? " " : "") + std::string(names[(p + s + b) % 6]) + " saw " + things[(p * 3 + s) % 6] + " in the park.";
        }
        book.paragraphs.push_back(para);
      }
      d.books.push_back(book);
    }
    d.facts = {{"t", "Mars", "The capital of Mars is Olympus.", "What is the capital of Mars?", "Olympus"},
               {"t", "Venus", "The capital of Venus is Cloudtown.", "What is the capital of Venus?", "Cloudtown"},
               {"t", "Pluto", "The capital of Pluto is Icehaven.", "What is the capital of Pluto?", "Icehaven"},
               {"t", "Io", "The capital of Io is Sulfuria.", "What is the capital of Io?", "Sulfuria"},
               {"t", "Ceres", "The capital of Ceres is Dawnport.", "What is the capital of Ceres?", "Dawnport"}};
    return d;
  }();
  return ds;
}

eval::SampleOptions options(uint64_t seed = 0) {
  eval::SampleOptions o;
  o.n_samples = 5;
  o.seed = seed;
  o.continuation_tokens = 64;
  o.n_generate = 8;
  o.fidelity_tokens = 8;
  return o;
}

}  // namespace

// ---- metrics on hand-computed cases ---------------------------------------------------------------

TEST(EvalMetrics, LogProbAndNll) {
  const std::vector<float> uniform = {0.f, 0.f};
  EXPECT_NEAR(eval::log_prob(uniform, 0), -std::log(2.0), 1e-12);
  // softmax([0, ln 3]) = [0.25, 0.75]
  const std::vector<float> l = {0.f, static_cast<float>(std::log(3.0))};
  EXPECT_NEAR(eval::log_prob(l, 1), std::log(0.75), 1e-7);
  EXPECT_NEAR(eval::log_prob(l, 0), std::log(0.25), 1e-7);
  // Two rows: targets 1 and 0 -> mean of -ln 0.75 and -ln 0.5.
  std::vector<float> rows = l;
  rows.insert(rows.end(), uniform.begin(), uniform.end());
  const std::vector<int32_t> targets = {1, 0};
  EXPECT_NEAR(eval::mean_nll(rows, 2, targets), 0.5 * (-std::log(0.75) - std::log(0.5)), 1e-7);
  // Large logits stay finite (computed in a stable way).
  const std::vector<float> big = {1000.f, 0.f};
  EXPECT_NEAR(eval::log_prob(big, 0), 0.0, 1e-12);
  EXPECT_NEAR(eval::log_prob(big, 1), -1000.0, 1e-9);
  EXPECT_THROW(eval::log_prob(big, 2), Error);
}

TEST(EvalMetrics, KlDivergence) {
  const std::vector<float> p = {0.f, static_cast<float>(std::log(3.0))};  // [0.25, 0.75]
  const std::vector<float> q = {0.f, 0.f};                                // [0.5, 0.5]
  const double expected = 0.25 * std::log(0.25 / 0.5) + 0.75 * std::log(0.75 / 0.5);
  EXPECT_NEAR(eval::kl_divergence(p, q), expected, 1e-7);
  EXPECT_NEAR(expected, 0.130812, 1e-6);
  EXPECT_EQ(eval::kl_divergence(p, p), 0.0);
  // Logits shifted by a constant are the same distribution.
  const std::vector<float> p_shift = {5.f, 5.f + static_cast<float>(std::log(3.0))};
  EXPECT_NEAR(eval::kl_divergence(p, p_shift), 0.0, 1e-6);
  EXPECT_THROW(eval::kl_divergence(p, std::vector<float>{0.f}), Error);
}

TEST(EvalMetrics, ArgmaxAndPrefix) {
  EXPECT_EQ(argmax(std::vector<float>{1.f, 3.f, 3.f, 2.f}), 1);  // first on ties
  const std::vector<int32_t> a = {5, 6, 7, 8}, b = {5, 6, 9, 8}, c = {5, 6};
  EXPECT_EQ(eval::common_prefix(a, b), 2);
  EXPECT_EQ(eval::common_prefix(a, a), 4);
  EXPECT_EQ(eval::common_prefix(a, c), 2);
  EXPECT_EQ(eval::common_prefix(a, std::vector<int32_t>{}), 0);
}

TEST(EvalMetrics, ExactMatchNormalisation) {
  EXPECT_EQ(eval::normalize_answer("  Hello \n\t World  "), "hello world");
  EXPECT_EQ(eval::normalize_answer("ABC"), "abc");
  EXPECT_EQ(eval::normalize_answer(""), "");
  EXPECT_TRUE(eval::answer_found("The capital is  Ouagadougou.", "ouagadougou"));
  EXPECT_TRUE(eval::answer_found("It is New\nYork City", "new york"));
  EXPECT_TRUE(eval::answer_found("the pass key is 68213", "68213"));
  EXPECT_FALSE(eval::answer_found("the pass key is 6821", "68213"));
  EXPECT_FALSE(eval::answer_found("NewYork", "new york"));
  EXPECT_FALSE(eval::answer_found("anything", ""));
  EXPECT_FALSE(eval::answer_found("anything", "  "));
  // With wrong answers: whole words only, and the right one first.
  const std::vector<std::string> wrong = {"22222", "raven"};
  EXPECT_TRUE(eval::answer_found_first("VAR X = 12345.", "12345", wrong));
  EXPECT_FALSE(eval::answer_found_first("123456", "12345", wrong));
  EXPECT_FALSE(eval::answer_found_first("22222 or 12345", "12345", wrong));
  EXPECT_TRUE(eval::answer_found_first("12345, not 22222", "12345", wrong));
  EXPECT_TRUE(eval::answer_found_first("\"Falcon\"", "falcon", wrong));
  EXPECT_FALSE(eval::answer_found_first("Ravens and falcons", "falcon", wrong));
}

// ---- configuration specs ---------------------------------------------------------------------

TEST(EvalSpecs, ParseAndRoundTrip) {
  HaltingConfig hc = HaltingConfig::parse("topk:0.4:0.33:drop");
  EXPECT_EQ(hc.policy, "topk");
  EXPECT_DOUBLE_EQ(hc.halt_layer, 0.4);
  EXPECT_DOUBLE_EQ(hc.keep, 0.33);
  EXPECT_EQ(hc.kv, KVMode::Drop);
  EXPECT_EQ(hc.spec(), "topk:0.4:0.33:drop");

  hc = HaltingConfig::parse("threshold:2:0.5:2:rel:retain");
  EXPECT_EQ(hc.policy, "threshold");
  EXPECT_EQ(hc.min_layer, 2);
  EXPECT_DOUBLE_EQ(hc.tau, 0.5);
  EXPECT_EQ(hc.patience, 2);
  EXPECT_EQ(hc.signal, DeltaSignal::Rel);
  EXPECT_EQ(hc.kv, KVMode::Retain);
  EXPECT_EQ(hc.spec(), "threshold:2:0.5:2:rel:retain");

  hc = HaltingConfig::parse("attn:12:0.5:retain:pf=4:q=16");
  EXPECT_EQ(hc.protect_first, 4);
  EXPECT_EQ(hc.attn_queries, 16);
  EXPECT_EQ(HaltingConfig::parse(hc.spec()).attn_queries, 16);
  EXPECT_EQ(HaltingConfig::parse("random:0.4:0.33:retain:seed=7").spec(), "random:0.4:0.33:retain:seed=7");
  EXPECT_EQ(HaltingConfig::parse("topk:0.4:1.0").spec(), "topk:0.4:1:retain");
  EXPECT_EQ(HaltingConfig::parse("none").policy, "none");
  EXPECT_EQ(HaltingConfig::parse("full").policy, "none");

  for (const char* bad : {"", "topk", "topk:0.4", "topk:a:0.3:retain", "topk:0.4:0.3:keep", "threshold:2:0.5", "threshold:2.5:0.5:2",
                          "nonsense:1:2:3", "none:1", "topk:0.4:0.3:retain:zz=1", "threshold:2:0.5:2:cos:retain"}) {
    EXPECT_THROW(HaltingConfig::parse(bad), Error) << bad;
  }
}

TEST(EvalSpecs, Lengths) {
  EXPECT_EQ(parse_lengths("1k,0.5k, 300"), (std::vector<int64_t>{1024, 512, 300}));
  EXPECT_THROW(parse_lengths("0"), Error);
  EXPECT_THROW(parse_lengths("abc"), Error);
  EXPECT_THROW(parse_lengths(""), Error);
}

// ---- determinism ---------------------------------------------------------------------------

TEST(EvalRng, SplitMix64IsPortable) {
  eval::Rng r(0);
  EXPECT_EQ(r.next(), 0xE220A8397B1DCDAFull);  // SplitMix64's published first value for seed 0
  eval::Rng a(42), b(42);
  for (int i = 0; i < 100; ++i) {
    const uint64_t x = a.below(7);
    EXPECT_EQ(x, b.below(7));
    EXPECT_LT(x, 7u);
    const double u = a.uniform();
    EXPECT_EQ(u, b.uniform());
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
  EXPECT_NE(eval::sample_seed(0, "needle", 1024, 0), eval::sample_seed(0, "needle", 1024, 1));
  EXPECT_NE(eval::sample_seed(0, "needle", 1024, 0), eval::sample_seed(0, "passkey", 1024, 0));
  EXPECT_NE(eval::sample_seed(0, "needle", 1024, 0), eval::sample_seed(1, "needle", 1024, 0));
  EXPECT_EQ(eval::sample_seed(3, "needle", 1024, 2), eval::sample_seed(3, "needle", 1024, 2));
}

// ---- needle planting ----------------------------------------------------------------------------

TEST(EvalSamples, PlantNeedlesAtDepth) {
  eval::Haystack hay;
  for (int i = 0; i < 100; ++i) hay.ids.push_back(i);
  for (int b = 0; b <= 100; b += 10) hay.boundaries.push_back(b);
  const std::vector<int32_t> n1 = {-1, -1}, n2 = {-2};
  // One needle: 0 -> the start, 1 -> the end, 0.33 -> the nearest boundary (30).
  for (auto [depth, start] : std::vector<std::pair<double, int64_t>>{{0.0, 0}, {1.0, 100}, {0.33, 30}, {0.5, 50}, {0.96, 100}}) {
    const eval::Planted p = eval::plant_needles(hay, {n1}, {depth});
    ASSERT_EQ(p.ids.size(), 102u);
    EXPECT_EQ(p.starts[0], start) << depth;
    EXPECT_EQ(p.ids[static_cast<size_t>(start)], -1);
    EXPECT_EQ(p.ids[static_cast<size_t>(start) + 1], -1);
  }
  // Two needles, given out of order: each lands at its depth, the haystack stays in order.
  const eval::Planted p = eval::plant_needles(hay, {n1, n2}, {0.8, 0.2});
  ASSERT_EQ(p.ids.size(), 103u);
  EXPECT_EQ(p.starts[1], 20);
  EXPECT_EQ(p.starts[0], 81);  // 80 haystack tokens and the one-token needle before it
  std::vector<int32_t> rest;
  for (int32_t id : p.ids) {
    if (id >= 0) rest.push_back(id);
  }
  EXPECT_EQ(rest, hay.ids);
}

TEST(EvalSamples, NeedleLengthDepthAndDeterminism) {
  const Tokenizer& tok = stories().tokenizer();
  const eval::SampleBuilder builder(tok, small_dataset(), options());
  // The longest unit (sentence) of the haystack: needles go to the unit boundary nearest the depth.
  size_t longest = 0;
  for (const eval::Book& b : small_dataset().books)
    for (const std::string& p : b.paragraphs)
      for (const std::string& u : eval::split_sentences(p)) longest = std::max(longest, builder.encode_unit(u, "\n").size());
  for (int64_t length : {200, 448}) {
    for (int i = 0; i < 5; ++i) {
      const eval::Sample s = builder.build("needle", length, i);
      EXPECT_EQ(s.n_tokens(), length);  // lengths are exact, in the model's tokens
      ASSERT_EQ(s.needles.size(), 1u);
      ASSERT_EQ(s.answers.size(), 1u);
      // The needle's tokens are in the document where the sample says.
      const std::vector<int32_t> needle = builder.encode_unit(s.needles[0], " ");
      const auto at = static_cast<size_t>(s.needle_offsets[0]);
      ASSERT_LE(at + needle.size(), s.document.size());
      EXPECT_TRUE(std::equal(needle.begin(), needle.end(), s.document.begin() + static_cast<std::ptrdiff_t>(at)));
      // ... at the stated depth: sample i of 5 at i/4, within half a sentence of the haystack.
      const size_t bos = tok.add_bos_default() && tok.bos() >= 0 ? 1 : 0;
      const auto h = static_cast<double>(s.document.size() - needle.size() - bos);
      EXPECT_NEAR(s.depths[0], i / 4.0, 0.5 * static_cast<double>(longest) / h) << "length " << length << " sample " << i;
      EXPECT_NEAR(static_cast<double>(at - bos), s.depths[0] * h, 1e-9);
      if (i == 0) EXPECT_EQ(s.depths[0], 0.0);
      if (i == 4) EXPECT_EQ(s.depths[0], 1.0);
      // The answer text is in the needle, and the question is in the query.
      EXPECT_NE(s.needles[0].find(s.answers[0]), std::string::npos);
      EXPECT_NE(tok.decode(s.query).find(s.question), std::string::npos);
      // Deterministic given the seed.
      const eval::Sample again = builder.build("needle", length, i);
      EXPECT_EQ(again.document, s.document);
      EXPECT_EQ(again.query, s.query);
    }
  }
  // Another seed gives other samples.
  const eval::SampleBuilder other(tok, small_dataset(), options(7));
  int differ = 0;
  for (int i = 0; i < 5; ++i) differ += other.build("needle", 448, i).document != builder.build("needle", 448, i).document;
  EXPECT_GT(differ, 0);
  EXPECT_THROW(builder.build("needle", 20, 0), Error);
  EXPECT_THROW(builder.build("unknown-task", 256, 0), Error);
}

TEST(EvalSamples, OtherTasks) {
  const Tokenizer& tok = stories().tokenizer();
  const eval::SampleBuilder builder(tok, small_dataset(), options());
  for (const std::string task : {"passkey", "multi-needle", "variable-tracking", "aggregation", "continuation", "fidelity"}) {
    for (int i = 0; i < 3; ++i) {
      const eval::Sample s = builder.build(task, 400, i);
      EXPECT_EQ(s.n_tokens(), 400) << task;
      EXPECT_EQ(builder.build(task, 400, i).document, s.document) << task;
      if (task == "passkey") {
        ASSERT_EQ(s.answers.size(), 1u);
        EXPECT_GE(s.answers[0].size(), 5u);
        EXPECT_LE(s.answers[0].size(), 7u);
        EXPECT_TRUE(std::all_of(s.answers[0].begin(), s.answers[0].end(), [](char c) { return c >= '0' && c <= '9'; }));
        EXPECT_EQ(s.needles[0], "The pass key is " + s.answers[0] + ". Remember it.");
      }
      if (task == "multi-needle") {
        EXPECT_EQ(s.needles.size(), 4u);
        ASSERT_EQ(s.answers.size(), 2u);
        EXPECT_NE(s.answers[0], s.answers[1]);
        for (size_t k = 0; k < s.needles.size(); ++k) {
          const std::vector<int32_t> n = builder.encode_unit(s.needles[k], " ");
          EXPECT_TRUE(std::equal(n.begin(), n.end(), s.document.begin() + s.needle_offsets[k])) << k;
        }
      }
      if (task == "variable-tracking" || task == "aggregation") {
        // Every planted statement is in the document where the sample says, in order of depth,
        // and the question is in the query.
        ASSERT_EQ(s.needles.size(), 8u) << task;
        for (size_t k = 0; k < s.needles.size(); ++k) {
          const std::vector<int32_t> n = builder.encode_unit(s.needles[k], " ");
          EXPECT_TRUE(std::equal(n.begin(), n.end(), s.document.begin() + s.needle_offsets[k])) << task << " " << k;
          if (k > 0) EXPECT_GT(s.needle_offsets[k], s.needle_offsets[k - 1]);
        }
        EXPECT_NE(tok.decode(s.query).find(s.question), std::string::npos) << task;
        ASSERT_EQ(s.answers.size(), 1u);
        EXPECT_FALSE(s.wrong_answers.empty());
        for (const std::string& w : s.wrong_answers) EXPECT_NE(w, s.answers[0]);
      }
      if (task == "variable-tracking") {
        // Two chains of four: the first assigns the answer, and each copy names a variable
        // assigned before it; the question asks for the last variable of the answer's chain.
        ASSERT_EQ(s.wrong_answers.size(), 1u);
        std::map<std::string, std::string> value;
        for (const std::string& n : s.needles) {
          ASSERT_EQ(n.rfind("VAR ", 0), 0u) << n;
          const size_t eq = n.find(" = ");
          const std::string var = n.substr(4, eq - 4), rhs = n.substr(eq + 3, n.size() - eq - 4);
          if (rhs.rfind("VAR ", 0) == 0) {
            ASSERT_TRUE(value.count(rhs.substr(4))) << "used before it is assigned: " << n;
            value[var] = value[rhs.substr(4)];
          } else {
            value[var] = rhs;
          }
        }
        const std::string last = s.question.substr(s.question.find("VAR ") + 4, 5);
        EXPECT_EQ(value.at(last), s.answers[0]);
      }
      if (task == "aggregation") {
        // The answer is carved 4 times, the wrong answers 2, 1 and 1 times.
        auto count = [&](const std::string& w) {
          return std::count_if(s.needles.begin(), s.needles.end(), [&](const std::string& n) { return n.find("\"" + w + "\"") != std::string::npos; });
        };
        EXPECT_EQ(count(s.answers[0]), 4);
        ASSERT_EQ(s.wrong_answers.size(), 3u);
        EXPECT_EQ(count(s.wrong_answers[0]) + count(s.wrong_answers[1]) + count(s.wrong_answers[2]), 4);
      }
      if (task == "continuation") EXPECT_EQ(s.query.size(), 64u);
      if (task == "fidelity") EXPECT_TRUE(s.ignore_eos);
    }
  }
}

TEST(EvalSamples, SentencesAndDatasetFiles) {
  EXPECT_EQ(eval::split_sentences("One. Two! Three? \"Four.\" Five"),
            (std::vector<std::string>{"One.", "Two!", "Three?", "\"Four.\"", "Five"}));
  EXPECT_EQ(eval::split_sentences("No stop here"), (std::vector<std::string>{"No stop here"}));

  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "dashlm_test_eval_dataset";
  fs::remove_all(dir);
  try {
    eval::load_dataset(dir.string());
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scripts/build-datasets"), std::string::npos) << e.what();
  }
  fs::create_directories(dir / "books");
  std::ofstream(dir / "manifest.json") << R"({"books": [{"id": "b", "title": "B", "role": "eval"}, {"id": "h", "role": "heldout"}]})";
  std::ofstream(dir / "books" / "b.txt") << "First paragraph. Two sentences.\nSecond paragraph.\n";
  std::ofstream(dir / "books" / "h.txt") << "Held out.\n";
  std::ofstream(dir / "facts.jsonl") << R"({"table": "t", "key": "k", "statement": "S.", "question": "Q?", "answer": "A"})" << "\n";
  const eval::Dataset ds = eval::load_dataset(dir.string());
  ASSERT_EQ(ds.books.size(), 2u);
  EXPECT_EQ(ds.books[0].paragraphs.size(), 2u);
  EXPECT_EQ(ds.with_role("heldout").size(), 1u);
  ASSERT_EQ(ds.facts.size(), 1u);
  EXPECT_EQ(ds.facts[0].answer, "A");
  fs::remove_all(dir);
}

// ---- runs on the real model ---------------------------------------------------------------------

// Teacher forcing through the document/query split scores the continuation exactly as one
// prefill of the whole text with logits at every position does.
TEST(EvalRun, TeacherForcedNllMatchesOnePass) {
  const Model& m = stories();
  const eval::SampleBuilder builder(m.tokenizer(), small_dataset(), options());
  const eval::Sample s = builder.build("continuation", 300, 1);
  EngineSlot slot(m, "cpu");
  const eval::RunOutput out = eval::run_sample(slot, s, nullptr);
  const double nll = eval::score_run(s, out, out, m.hp().n_vocab)["nll"].get<double>();

  std::vector<int32_t> all = s.document;
  all.insert(all.end(), s.query.begin(), s.query.end());
  Engine e(m, static_cast<int64_t>(all.size()));
  std::vector<float> logits;
  PrefillOptions po;
  po.logits_all = &logits;
  e.prefill(all, po);
  const auto v = static_cast<size_t>(m.hp().n_vocab);
  const size_t d = s.document.size();
  std::vector<float> rows(logits.begin() + static_cast<std::ptrdiff_t>((d - 1) * v), logits.begin() + static_cast<std::ptrdiff_t>((all.size() - 1) * v));
  EXPECT_NEAR(nll, eval::mean_nll(rows, m.hp().n_vocab, s.query), 1e-4);
  EXPECT_GT(nll, 0.0);
}

// keep = 1 halts nothing: every metric equals full prefill's exactly.
TEST(EvalRun, KeepOneEqualsFullPrefill) {
  const Model& m = stories();
  const eval::SampleBuilder builder(m.tokenizer(), small_dataset(), options());
  const HaltingConfig keep_all = HaltingConfig::parse("topk:0.4:1.0:retain");
  const HaltingConfig third = HaltingConfig::parse("topk:0.4:0.33:drop");
  EngineSlot slot(m, "cpu");
  for (const std::string task : {"fidelity", "continuation", "needle"}) {
    const eval::Sample s = builder.build(task, 256, 0);
    const eval::RunOutput ref = eval::run_sample(slot, s, nullptr);
    const eval::RunOutput same = eval::run_sample(slot, s, &keep_all);
    const auto j = eval::score_run(s, same, ref, m.hp().n_vocab);
    EXPECT_EQ(same.query_logits, ref.query_logits) << task;
    EXPECT_EQ(same.generated, ref.generated) << task;
    EXPECT_EQ(j["kl_last"].get<double>(), 0.0);
    EXPECT_EQ(j["top1_last"].get<double>(), 1.0);
    if (task == "fidelity") {
      EXPECT_EQ(j["top1"].get<double>(), 1.0);
      EXPECT_EQ(j["kl"].get<double>(), 0.0);
      EXPECT_EQ(j["greedy_match"].get<int64_t>(), 8);
    }
    // A real halting setting computes less and changes the distribution.
    const eval::RunOutput less = eval::run_sample(slot, s, &third);
    EXPECT_LT(less.flops_done, less.flops_full);
    EXPECT_EQ(less.flops_full, ref.flops_full);
    EXPECT_GT(eval::score_run(s, less, ref, m.hp().n_vocab)["kl_last"].get<double>(), 0.0) << task;
  }
}

// The engine an evaluation reuses forgets everything between runs: after a drop-mode run (which
// leaves invalid cache slots) and a longer one, a full prefill on the reused engine is bit-identical
// to one on a fresh engine.
TEST(EvalRun, ReusedEngineEqualsFreshEngine) {
  const Model& m = stories();
  const eval::SampleBuilder builder(m.tokenizer(), small_dataset(), options());
  const HaltingConfig third = HaltingConfig::parse("topk:0.4:0.33:drop");
  const eval::Sample s = builder.build("fidelity", 200, 0);
  const eval::Sample longer = builder.build("continuation", 300, 0);
  EngineSlot reused(m, "cpu");
  const InferenceEngine* first = &reused.get(longer.n_tokens() + longer.n_generate);
  (void)eval::run_sample(reused, longer, nullptr);
  (void)eval::run_sample(reused, s, &third);
  const eval::RunOutput again = eval::run_sample(reused, s, nullptr);
  EXPECT_EQ(&reused.get(1), first) << "a smaller run must not recreate the engine";
  EngineSlot fresh(m, "cpu");
  const eval::RunOutput ref = eval::run_sample(fresh, s, nullptr);
  EXPECT_EQ(again.query_logits, ref.query_logits);
  EXPECT_EQ(again.document_last, ref.document_last);
  EXPECT_EQ(again.generated, ref.generated);
}
