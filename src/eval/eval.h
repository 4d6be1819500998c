// Measuring what halting costs in answer quality: the metrics (NLL, KL divergence, top-1
// agreement, exact-match answers), the datasets that scripts/build-datasets writes, the
// construction of evaluation samples at exact token lengths, and one run of a sample through an
// engine (a runtime Session). An application beside the frontends, used by `dashlm eval` and
// `dashlm calibrate`; halting settings are the runtime's HaltingConfig and its specs.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine_factory.h"

namespace dashlm::eval {

// ---- metrics ---------------------------------------------------------------------------------

// log p(token) under softmax(logits), computed stably in double precision.
double log_prob(std::span<const float> logits, int32_t token);
// Mean negative log-likelihood of targets[i] under logit row i (rows: targets.size() x n_vocab).
double mean_nll(std::span<const float> rows, int64_t n_vocab, std::span<const int32_t> targets);
// KL(P || Q) in nats, P = softmax(p_logits) (the reference), Q = softmax(q_logits).
double kl_divergence(std::span<const float> p_logits, std::span<const float> q_logits);
// Tokens equal from the start until the first difference.
int64_t common_prefix(std::span<const int32_t> a, std::span<const int32_t> b);
// Lower-case (ASCII), every run of whitespace one space, no leading or trailing space.
std::string normalize_answer(std::string_view s);
// Exact match: the normalised expected answer occurs in the normalised generation.
bool answer_found(std::string_view generated, std::string_view expected);
// The same, and no wrong answer occurs before the expected one (a generation that lists every
// candidate counts only when the right one comes first).
bool answer_found_first(std::string_view generated, std::string_view expected, const std::vector<std::string>& wrong);

// ---- deterministic random numbers (the same on every platform and standard library) ----------
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  uint64_t below(uint64_t n);  // uniform in [0, n), n > 0
  double uniform();            // [0, 1)
 private:
  uint64_t state_;
};
// A seed for one (task, length, sample) from the run's seed.
uint64_t sample_seed(uint64_t seed, std::string_view task, int64_t length, int index);

// ---- datasets (written by scripts/build-datasets) ---------------------------------------------
struct Book {
  std::string id, title, role;           // role: "eval" or "heldout"
  std::string group;                     // books of one author form a group (default: the id)
  std::vector<std::string> paragraphs;
};
struct Fact {
  std::string table, key, statement, question, answer;
};
struct Dataset {
  std::string dir;
  bool minimal = false;
  std::vector<Book> books;  // sorted by id
  std::vector<Fact> facts;
  std::vector<const Book*> with_role(const std::string& role) const;
};
// Reads DIR/manifest.json, DIR/books/*.txt and DIR/facts.jsonl; a missing folder or file is an
// error that tells the user to run scripts/build-datasets.
Dataset load_dataset(const std::string& dir);
// A dataset of one text file (calibrate --text): one book, role "heldout", no facts.
Dataset dataset_from_text(const std::string& path, const std::string& text);
// A book's paragraphs cut into sentence-like units (the places where needles can go).
std::vector<std::string> split_sentences(const std::string& paragraph);

// ---- samples ------------------------------------------------------------------------------
// needle, passkey, multi-needle, variable-tracking, aggregation, continuation, fidelity
const std::vector<std::string>& task_names();
// "needle, passkey, ..." for messages.
std::string task_names_text();
// The tasks answered by a greedy generation checked for exact answers (all but continuation and
// fidelity).
bool is_retrieval_task(const std::string& task);

struct Sample {
  std::string task;
  int64_t length = 0;   // requested length in tokens
  int index = 0;
  std::string book;     // haystack or continuation source
  // The prompt: the document is prefilled with halting, the query after it in full. For the
  // continuation task the query is the continuation itself (teacher-forced).
  std::vector<int32_t> document, query;
  std::vector<std::string> answers;    // retrieval: expected answer strings
  // retrieval: answers that are wrong but planted in the document (the other chain's value, the
  // less frequent words); an answer counts as found only when none of these comes before it.
  std::vector<std::string> wrong_answers;
  std::vector<double> depths;          // retrieval: where each planted text starts, 0..1
  std::vector<int64_t> needle_offsets; // ... as token offsets in the document
  std::vector<int64_t> needle_lengths; // ... and their lengths in tokens
  std::vector<std::string> needles;    // ... and the planted text
  std::string question;
  std::vector<int32_t> closed_book;    // retrieval: prefix + query without the document (control)
  int n_generate = 0;                  // greedy tokens to generate (0: none)
  bool ignore_eos = false;             // fidelity: always generate n_generate tokens
  int64_t n_tokens() const { return static_cast<int64_t>(document.size() + query.size()); }
};

struct SampleOptions {
  bool chat = false;
  std::string chat_before, chat_after;  // a user turn's text before and after the message
  int n_samples = 5;                    // samples per (task, length): spreads needle depths
  int continuation_tokens = 256;        // continuation: teacher-forced tokens (at most half the length)
  int n_generate = 32;                  // retrieval tasks: greedy tokens
  int fidelity_tokens = 32;             // fidelity: greedy tokens compared with full prefill
  uint64_t seed = 0;
  std::string role = "eval";            // the books to use: "eval" (eval) or "heldout" (calibrate)
};

// Haystack text as tokens with the places (token offsets) between units where text can be
// planted; offsets include 0 and ids.size().
struct Haystack {
  std::vector<int32_t> ids;
  std::vector<int64_t> boundaries;
};
// The document body with needles planted at the unit boundaries nearest to each depth (0: at the
// start, 1: at the end), in order of depth; starts[i] is where needle i begins.
struct Planted {
  std::vector<int32_t> ids;
  std::vector<int64_t> starts;
};
Planted plant_needles(const Haystack& hay, const std::vector<std::vector<int32_t>>& needles, const std::vector<double>& depths);

class SampleBuilder {
 public:
  SampleBuilder(const Tokenizer& tok, const Dataset& ds, SampleOptions opt);
  // The sample `index` of a task at a total length (document + query tokens); deterministic
  // given the options' seed. Sample i of a task has the same fact, passkey and book at every
  // length, so that lengths compare like with like. Throws when the length cannot hold the
  // task's fixed parts.
  Sample build(const std::string& task, int64_t length, int index) const;
  // Exactly n tokens of a book's text from paragraph `start` on (wrapping to the start).
  Haystack haystack(const Book& book, size_t start, int64_t n) const;
  // Text tokenized as one unit that follows other text (sep: " " or "\n" before it).
  std::vector<int32_t> encode_unit(const std::string& text, const std::string& sep) const;

 private:
  Sample retrieval(const std::string& task, int64_t length, int index) const;
  Sample continuation(int64_t length, int index) const;
  Sample fidelity(int64_t length, int index) const;
  std::vector<int32_t> prefix() const;                       // BOS and the chat turn's opening
  std::vector<int32_t> query_tokens(const std::string& text) const;  // question and chat closing
  const Book& pick_book(Rng& rng, int64_t n_tokens, size_t* start) const;

  const Tokenizer& tok_;
  const Dataset& ds_;
  SampleOptions opt_;
  std::vector<const Book*> books_;
};

// ---- running a sample ---------------------------------------------------------------------
struct RunOutput {
  double document_ms = 0;                 // prefill of the document segment (halting acts here)
  double query_ms = 0;                    // the query segment
  double flops_full = 0, flops_done = 0;  // FLOP model of the document segment
  int64_t active_after = 0;               // document tokens still active in the last layer
  HaltingTrace trace;                     // of the document segment (deltas of every layer)
  std::vector<float> document_last;       // logits at the last document position
  // Logits of every query position (query.size() x vocab) for continuation and fidelity, of the
  // last one for the other tasks.
  std::vector<float> query_logits;
  std::vector<int32_t> generated;
  std::string text;
};
// Prefills the sample's document (with halting when hc is given and enabled), then its query in
// full, then generates greedily.
// Without halting, trace_signal is the signal the trace records (calibration reads its quantiles).
RunOutput run_sample(EngineSlot& slot, const Sample& s, const HaltingConfig* hc, DeltaSignal trace_signal = DeltaSignal::Abs);
// For each planted text of a retrieval sample, the share of its tokens that never halted in the
// run's trace (a halted token skips the later layers, and in drop mode its keys and values are
// gone): 1 where halting kept the whole fact. Empty without planted text or without a trace.
std::vector<double> needles_kept(const Sample& s, const HaltingTrace& tr);
// Greedy generation of a prompt prefilled in full (closed-book control).
std::string generate_text(EngineSlot& slot, const std::vector<int32_t>& prompt, int n);

// For each of a retrieval sample's answers, whether the generated text gives it (answer_found, or
// answer_found_first when the sample has wrong answers).
std::vector<bool> answers_found(const Sample& s, std::string_view text);

// The metrics of one run, as JSON fields: retrieval "score" (fraction of answers found) and
// "found"; continuation "nll"; fidelity "top1", "kl", "greedy_match"; every task "top1_last" and
// "kl_last" (the last prompt position) against the reference run `ref` (full prefill).
nlohmann::json score_run(const Sample& s, const RunOutput& out, const RunOutput& ref, int64_t n_vocab);
// The metric a task is judged by: "score" for retrieval, "nll", "top1".
const char* primary_metric(const std::string& task);
// True when a larger value of the metric is better.
bool higher_is_better(const std::string& metric);

}  // namespace dashlm::eval
