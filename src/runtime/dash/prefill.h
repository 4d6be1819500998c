// The DASH prefill, once for every backend. The driver owns the per-layer sequence of a prefill:
// which rows run each layer, the keys and values of halted rows (retained or dropped), asking the
// policy what halts, the trace and the FLOP model, the hidden-state and timing reports and the
// logits. A backend contributes a LayerExecutor: the few operations that touch its memory and
// kernels (run layer l on these rows, project frozen rows' K/V, mark dropped slots, hand over the
// signal, rank on the device).
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "model/hparams.h"
#include "runtime/dash/config.h"
#include "runtime/dash/policy.h"

namespace dashlm {

struct ForwardStats {
  int64_t n_tokens = 0;
  double total_ms = 0;
  std::vector<double> layer_ms;  // per layer
  double logits_ms = 0;
};

// What halting did during one prefill.
struct HaltingTrace {
  int64_t n_tokens = 0;
  int n_layer = 0;
  std::vector<int32_t> halted_after;      // per token: the layer after which it halted (n_layer: never)
  std::vector<int64_t> active_per_layer;  // tokens computed at each layer
  std::vector<float> delta;               // n_tokens x n_layer; NaN where the token did not run
  double flops_full = 0;                  // GEMM and attention FLOPs of a full prefill
  double flops_done = 0;                  // the same, counting only what ran
  std::vector<int32_t> decision_layers;   // the layers after which the policy decided for all tokens

  // Empty trace of a segment: nobody halted, no delta yet (NaN), no FLOPs.
  void reset(int64_t n, int layers);
  double flop_speedup() const { return flops_done > 0 ? flops_full / flops_done : 1.0; }
};

struct PrefillOptions {
  const HaltingConfig* halting = nullptr;  // null or "none": full prefill
  HaltingTrace* trace = nullptr;           // filled when given (deltas recorded for every layer)
  // Off: the trace keeps who halted where and the FLOP counts but no deltas (they stay NaN), so
  // the layers compute the halting signal only where the policy reads it and nothing is copied
  // back per layer: what a server needs for its statistics, at the cost of a plain halted prefill.
  bool trace_deltas = true;
  DeltaSignal trace_signal = DeltaSignal::Abs;  // the signal a trace records without halting
  // The segment's last query_rows tokens are the query: they never halt, and a policy that reads
  // the query ranks the others by the attention these rows pay them (0: no query here).
  int64_t query_rows = 0;
  // Per token of the segment, 1 where it begins a word (empty: every token is one), for policies
  // that keep whole words (Tokenizer::word_starts) or sentences (Tokenizer::sentence_starts).
  std::vector<uint8_t> word_starts;
  std::function<void(int layers_done, int n_layers)> progress;
  std::vector<float>* logits_all = nullptr;  // (T - logits_first) x n_vocab logits of the tokens
  int64_t logits_first = 0;                  // from this token of the segment on
  // Tests: hidden states of every token after each layer ((n_layer + 1) x T x n_embd, entry 0 =
  // embeddings).
  std::vector<float>* hidden_per_layer = nullptr;
};

// Which tokens of a segment still run each layer (active) and which have halted, both ascending,
// with their positions.
struct TokenSets {
  std::vector<int32_t> active, halted, pos_active, pos_halted;
  void reset(int64_t n_tokens);  // every token active
  // Moves `newly` (ascending, a subset of active) to halted; pos[t] is token t's position.
  // Throws if a token is not active or if the segment's last token would halt.
  void halt(const std::vector<int32_t>& newly, std::span<const int32_t> pos);
};

// One layer's work as the driver asks for it.
struct LayerRun {
  int layer = 0;
  // The rows of the segment that run (indices into the segment, ascending) and their positions;
  // all: every row of the segment runs (rows is then 0 .. n - 1).
  const int32_t* rows = nullptr;
  const int32_t* pos = nullptr;
  int64_t n = 0;
  bool all = true;
  // The halting signal of every row that runs: computed where `signal` is set, written to
  // signal_out (n values, host) where that is given; an executor that can rank on the device
  // keeps it there for rank_topk.
  bool signal = false;
  DeltaSignal kind = DeltaSignal::Abs;
  float* signal_out = nullptr;
  // > 0: the attention the segment's last attention_rows running rows pay each cache slot, into
  // attention_out (n_ctx values, host).
  int attention_rows = 0;
  float* attention_out = nullptr;
};

// The backend side of a prefill. Calls come in this order: begin_segment; per layer the
// frozen-row calls (project_kv or drop_slots), then run_layer, then (after halting)
// rows_changed; logits last.
class LayerExecutor {
 public:
  virtual ~LayerExecutor() = default;
  // The segment's tokens at positions pos (consecutive, after the cache): embeds them.
  // block_signal: the Block signal may be asked for (keep the layer's input).
  virtual void begin_segment(std::span<const int32_t> tokens, std::span<const int32_t> pos, bool block_signal) = 0;
  virtual void run_layer(const LayerRun& r) = 0;
  // Retain mode: keys and values of these rows of the segment (frozen hidden states) into layer
  // il's cache slots at their positions.
  virtual void project_kv(int il, std::span<const int32_t> rows, std::span<const int32_t> pos) = 0;
  // Drop mode: layer il's cache slots at these positions no longer hold a key.
  virtual void drop_slots(int il, std::span<const int32_t> pos) = 0;
  // The active and halted rows changed (after a decision).
  virtual void rows_changed(const TokenSets& sets) {}
  // Layer il's slot validity (host, n_ctx values), or null when every slot is valid.
  virtual const uint8_t* valid_slots(int il) const = 0;
  // Whether rank_topk can rank this signal where it is.
  virtual bool ranks_on_device(DeltaSignal kind) const { return false; }
  // The topk rule applied to the signal of the last run_layer (one value per active row):
  // returns the active tokens that halt, ascending.
  virtual std::vector<int32_t> rank_topk(std::span<const int32_t> active, std::span<const uint8_t> eligible, double keep) {
    return {};
  }
  // Hidden states of every row of the segment (n x n_embd, host).
  virtual void read_hidden(float* out) = 0;
  // Logits of rows first .. first + n - 1 of the segment (n x n_vocab, host).
  virtual void output_logits(int64_t first, int64_t n, float* out) = 0;
  // Waits for queued work (timing).
  virtual void synchronize() {}
  // > 0: a full prefill that nothing reads whole may run as consecutive pieces of at most this
  // many tokens (prefill_segment), so that only one piece's hidden states exist at a time; 0: the
  // whole segment layer by layer.
  virtual int64_t segment_rows() const { return 0; }
};

// n rows cut into the fewest chunks of at most max_rows, of balanced sizes (so that no chunk is
// a thin remainder): chunk c is rows begin(c) .. begin(c + 1) - 1. The CPU engine's layers and
// the pieces of a full prefill cut the same way.
struct Chunks {
  int64_t n, count;
  int64_t begin(int64_t c) const { return n * c / count; }
};
inline Chunks chunks_of(int64_t n, int64_t max_rows) { return {n, std::max<int64_t>(1, (n + max_rows - 1) / max_rows)}; }

// Runs a segment of tokens at positions n_past .. n_past + T - 1 through every layer of a model of
// hyperparameters hp, on `ex`, with halting when opt.halting enables it; returns the logits of
// the last token. A full prefill runs in pieces where the executor asks for them
// (LayerExecutor::segment_rows). Throws for an empty segment, one that overflows n_ctx or a token outside the
// vocabulary, and for logits that are not finite (naming the first layer whose hidden state is
// not, found by running the segment again with a check after every layer).
std::vector<float> prefill_segment(LayerExecutor& ex, const HParams& hp, std::span<const int32_t> tokens, int64_t n_past,
                                   int64_t n_ctx, const PrefillOptions& opt, ForwardStats* stats);

// The context size of every engine: 1 .. 2^31 - 1 tokens (positions are 32-bit).
void check_context_size(int64_t n_ctx);

// The input check of every forward pass (prefill and decode).
void check_tokens(std::span<const int32_t> tokens, int64_t n_past, int64_t n_ctx, int64_t n_vocab);

// FLOPs of one layer's GEMMs and attention for n_q query rows that see `keys` keys in total, plus
// K/V projections for n_kv_only rows (retained halted tokens).
double layer_flops(const HParams& hp, int64_t n_q, double keys, int64_t n_kv_only);

// Sum over query rows (positions pos, ascending) of the keys each can see: slots lo..pos, within
// the sliding window, that hold a valid key (valid may be null: all valid). prefix is scratch.
double visible_keys(const int32_t* pos, int64_t n, int window, const uint8_t* valid, std::vector<int64_t>& prefix);

}  // namespace dashlm
