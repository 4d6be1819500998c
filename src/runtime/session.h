// One prompt through an engine, the way every frontend runs it: the document prefilled (with
// halting when asked), the query after it in full, then the generated tokens. run, bench and eval
// use this; so will the server.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "model/tokenizer.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine_iface.h"
#include "runtime/sampler.h"

namespace dashlm {

// A prompt as the runtime sees it: the document, which a halting policy may thin out, and the
// query (the question, the chat turn's closing), always processed in full.
struct Prompt {
  std::vector<int32_t> document, query;
  int64_t size() const { return static_cast<int64_t>(document.size() + query.size()); }
  std::vector<int32_t> tokens() const;  // document then query
};

struct PrefillRequest {
  const HaltingConfig* halting = nullptr;  // halting of the document; null or "none": full prefill
  // The query runs as a segment of its own after the document when halting is on (so that it
  // attends to what the document left in the cache, as the KVPress harness does) or when this is
  // set (eval times the document alone); otherwise the prompt is one segment.
  bool separate_query = false;
  // Whether a policy that ranks by the query may see it (a task whose "query" is the text to
  // predict, as eval's continuation, must not). With such a policy and a query, document and query
  // run as one segment in which the query rows never halt.
  bool query_visible = true;
  // Logits of the last this many prompt positions are returned (1: the last one; at most the
  // prompt's length).
  int64_t logits_last = 1;
  HaltingTrace* trace = nullptr;  // of the first segment (the document, or the whole prompt)
  DeltaSignal trace_signal = DeltaSignal::Abs;  // what the trace records when nothing halts
  bool trace_deltas = true;                     // PrefillOptions::trace_deltas
  // Fill PrefillResult::stats (per-layer times; on the GPU this waits for every layer).
  bool layer_times = false;
  std::function<void(int layers_done, int n_layers)> progress;  // of the first segment
};

struct PrefillResult {
  bool split = false;                // the query ran as its own segment
  bool joint = false;                // document and query ran as one segment, the query never halting
  std::vector<float> logits;         // logits_last x n_vocab, the last position last
  std::vector<float> document_last;  // with split: the logits at the last document position
  ForwardStats stats;                // both segments added up (with layer_times)
  double document_ms = 0;            // wall time of the first segment
  double query_ms = 0;               // of the query segment (0 without split)
  // The logits of the last prompt position.
  std::span<const float> last(int64_t n_vocab) const {
    return std::span<const float>(logits).subspan(logits.size() - static_cast<size_t>(n_vocab));
  }
};

struct GenerateOptions {
  int64_t max_tokens = 0;
  SamplerParams sampling;  // temperature 0: greedy
  bool ignore_eos = false;
  // Each piece of text as soon as it is complete (streaming); returning false stops generation.
  std::function<bool(const std::string& piece)> on_text;
};

struct Generation {
  std::vector<int32_t> ids;
  std::string text;                  // the streamed pieces joined
  std::string stop_reason = "length";  // "length", "eos" or "stopped" (on_text returned false)
  double ms = 0;                     // wall time of the generation
  int64_t forward_passes = 0;        // decode steps run (the first token comes from the prefill)
};

class Session {
 public:
  Session(InferenceEngine& engine, const Tokenizer& tok) : engine_(engine), tok_(tok) {}
  // Prefills the prompt after whatever the engine's cache holds.
  PrefillResult prefill(const Prompt& p, const PrefillRequest& req);
  // Generates after a prefill whose last position had these logits and whose last token was
  // last_token (for detokenization).
  Generation generate(std::span<const float> logits, int32_t last_token, const GenerateOptions& opt);

 private:
  InferenceEngine& engine_;
  const Tokenizer& tok_;
};

}  // namespace dashlm
