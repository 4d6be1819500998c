// The forward pass on the CPU: batched prefill of a whole prompt, then one token at a time, over a
// KV cache. The layer loop, halting included, is the backend-neutral prefill driver
// (dash/prefill.h); this engine is its LayerExecutor: every layer runs on a list of token rows
// with their own positions, gathered chunk by chunk into dense batches for the GEMMs and the
// attention, each token keeping its original position for RoPE and the causal mask.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "backends/cpu/ops.h"
#include "model/model.h"
#include "runtime/dash/prefill.h"
#include "runtime/engine_iface.h"

namespace dashlm {

struct KVCache {
  int64_t n_ctx = 0;    // slots per layer; slot s holds the token at position s
  int64_t kv_dim = 0;
  cpu::KvType type = cpu::KvType::F32;
  std::vector<std::vector<float>> k, v;         // f32: per layer n_ctx x kv_dim (empty for f16)
  std::vector<std::vector<uint16_t>> k16, v16;  // f16: per layer n_ctx x kv_dim halves (empty for f32)
  std::vector<std::vector<uint8_t>> valid;      // per layer: 0 where a halted token's K/V were dropped
  std::vector<uint8_t> has_holes;               // per layer: any slot invalid?

  void init(int n_layer, int64_t n_ctx_, int64_t kv_dim_, cpu::KvType type_ = cpu::KvType::F32);
  void clear_holes();  // every slot valid again
  void clear_holes_from(int64_t pos);  // slots pos.. valid again
  float* k_row(int il, int64_t pos) { return k[static_cast<size_t>(il)].data() + pos * kv_dim; }  // f32 only
  float* v_row(int il, int64_t pos) { return v[static_cast<size_t>(il)].data() + pos * kv_dim; }  // f32 only
  // Rows k[i], v[i] (kv_dim floats each) into the slots pos[i], converted to the cache's type.
  void store(int il, const float* k_rows, const float* v_rows, const int32_t* pos, int64_t n);
  // Slot `pos` of layer il as float32 (tests, tools).
  std::vector<float> k_at(int il, int64_t pos) const;
  std::vector<float> v_at(int il, int64_t pos) const;
  cpu::KvRef layer(int il) const;
  const uint8_t* valid_mask(int il) const { return has_holes[static_cast<size_t>(il)] ? valid[static_cast<size_t>(il)].data() : nullptr; }
  size_t bytes() const;
};

class Engine final : public InferenceEngine, private LayerExecutor {
 public:
  // n_ctx: KV cache size in tokens (prompt plus generated tokens); kv: the cache's element type.
  Engine(const Model& model, int64_t n_ctx, cpu::KvType kv = cpu::KvType::F32);

  // Runs `tokens` at positions n_past() .. n_past()+T-1 through every layer, appends their keys
  // and values to the cache, and returns the logits of the last token.
  std::vector<float> prefill(std::span<const int32_t> tokens, const PrefillOptions& opt = {}, ForwardStats* stats = nullptr) override;
  // One token at position n_past(): returns its logits.
  std::vector<float> decode(int32_t token) override { return prefill(std::span<const int32_t>(&token, 1)); }

  int64_t n_past() const override { return n_past_; }
  int64_t n_ctx() const override { return cache_.n_ctx; }
  void reset() override {
    n_past_ = 0;
    cache_.clear_holes();
  }
  void truncate(int64_t n) override;
  std::string kernels() const override;
  // Bytes an engine holds with a context of n_ctx tokens and a prompt that fills it: the KV cache,
  // the hidden states, the layer scratch and a row of logits.
  static uint64_t memory_bytes(const Model& model, int64_t n_ctx, cpu::KvType kv = cpu::KvType::F32,
                               int64_t chunk_rows = kChunkRows);
  // Throws, naming both numbers, when a context of n_ctx tokens is out of range or its
  // memory_bytes exceed the memory available; the constructor checks this before allocating.
  static void check_memory_for(const Model& model, int64_t n_ctx, cpu::KvType kv = cpu::KvType::F32);
  const KVCache& cache() const { return cache_; }
  const Model& model() const { return model_; }
  // Most rows a layer computes at once (default kChunkRows); tests set small values to cross
  // chunk boundaries with short prompts.
  void set_chunk_rows(int64_t rows) { chunk_rows_ = std::max<int64_t>(1, rows); }

  // Rows per chunk: prompt rows are processed in balanced chunks of at most this many.
  static constexpr int64_t kChunkRows = 512;
  // Width of the MLP's slices of n_ff (see Scratch): about kFfSlice, in at most kFfSlices slices.
  // Each slice costs a pass over the chunk's update rows (down's partial products added up) and
  // the products' fork/joins: in slices of 256 the 1.5B's n_ff of 8960 took 35. Its pp512 (q8, 2
  // threads) ran 1.05x faster in 4 slices on a quiet machine (one slice: no faster), 1.18x faster
  // in about 8 on a busy one and 1.02x more in 4; Gemma 3 and Qwen2.5-Coder-0.5B 1.05x / 1.07x in
  // 4. The scratch of gate and up rows grows to 2 x 512 x 2304 floats (9 MiB) for the 1.5B.
  static constexpr int64_t kFfSlice = 256;
  static constexpr int64_t kFfSlices = 4;

 private:
  // LayerExecutor: the CPU side of the prefill driver.
  void begin_segment(std::span<const int32_t> tokens, std::span<const int32_t> pos, bool block_signal) override;
  void run_layer(const LayerRun& r) override;
  void project_kv(int il, std::span<const int32_t> rows, std::span<const int32_t> pos) override;
  void drop_slots(int il, std::span<const int32_t> pos) override;
  const uint8_t* valid_slots(int il) const override { return cache_.valid_mask(il); }
  void read_hidden(float* out) override;
  void output_logits(int64_t first, int64_t n, float* out) override;
  // A full prefill runs one chunk of rows at a time through every layer (the same chunks a
  // layer would cut), so its hidden states are a chunk's, not the prompt's.
  int64_t segment_rows() const override { return chunk_rows_; }

  // Float storage that is not zeroed (pages the engine never writes stay unmapped) and only
  // grows.
  struct Buffer {
    std::unique_ptr<float[]> p;
    size_t cap = 0;
    float* data() { return p.get(); }
    void reserve(size_t n);
  };
  // Scratch of the layer loop, sized for one chunk of rows (at most kChunkRows), not for the
  // prompt: the layers run the rows in chunks, so no array of prompt length times n_ff (or
  // n_embd) exists besides the hidden states. Reserved once per prefill, before the layer loop.
  // The MLP runs in slices of its n_ff columns (ff_slice: gate and up rows, the matching
  // input columns of down, whose partial products add up), so that no chunk x n_ff array exists.
  struct Scratch {
    int64_t rows = 0;  // capacity in rows
    // Buffers are reused once their contents are used: xn (normed rows) also holds the
    // attention's output, q the attention's and the MLP's updates; gate and up hold one slice
    // of the MLP.
    Buffer xc, xn, q, k, v, gate, up, x_in, norms;
    // xn quantized once for the products that share it (K and V; every slice of gate and up).
    cpu::Q8Activations xn_q8;
    cpu::Bf16Activations xn_bf16;
    void reserve(const HParams& hp, int64_t rows, int64_t ff_slice);
  };
  struct LayerIO {
    float* x;                  // the hidden states of the segment (rows of n_embd), updated in place
    const int32_t* rows;       // the n rows of x this layer computes, ascending (null: 0 .. n-1)
    const int32_t* pos;        // their positions, ascending
    int64_t n;
    DeltaSignal signal = DeltaSignal::Abs;
    float* delta = nullptr;           // n values, when wanted
    int attn_rows = 0;                // > 0: attention received from the last attn_rows rows...
    float* attn_received = nullptr;   // ... per cache slot (n_ctx values)
    float* q_tail = nullptr;          // scratch for those rows' queries (attn_rows x q_dim)
  };
  void forward_layer(int il, const LayerIO& io);
  // K and V of n rows of x (rows: indices into x, null for 0 .. n-1) at positions pos, into the
  // cache: from the hidden states of the tokens that run the layer, or the frozen states of
  // retained halted tokens.
  void project_kv(int il, float* x, const int32_t* rows, const int32_t* pos, int64_t n);
  void write_kv(int il, float* k, float* v, const int32_t* pos, int64_t n, bool in_cache);
  void logits_of_rows(const float* x, int64_t n, float* out);
  cpu::RopeParams rope_params(int il) const;
  // The rotation's angles (cpu::rope_angles) of n rows at positions pos with layer il's
  // parameters rp (rope_params(il)): kept per set of frequencies, global or sliding-window, which
  // also fixes the position scale, for the next call at the same positions (a chunk's queries and
  // keys in every layer; a sine and a cosine per value were 2-4% of the small models' prefill).
  const float* rope_angles(int il, const cpu::RopeParams& rp, const int32_t* pos, int64_t n);
  cpu::AttentionParams attention_params(int il) const;
  // Width of layer il's MLP slices (the last one may be narrower).
  static int64_t ff_slice(const Model& model, int il);

  const Model& model_;
  KVCache cache_;
  Scratch s_;
  int64_t n_past_ = 0;
  std::vector<float> x_;       // the segment's hidden states (rows of n_embd)
  std::vector<float> q_tail_;  // queries of the rows whose attention ranks tokens (attn policies)
  int64_t chunk_rows_ = kChunkRows;
  int64_t ff_slice_max_ = 0;  // the widest of ff_slice() over the layers
  // RoPE frequencies of the global and the sliding-window layers, computed once.
  std::vector<double> rope_freq_global_, rope_freq_local_;
  struct RopeAngles {
    std::vector<int32_t> pos;
    std::vector<float> cs;
  };
  RopeAngles rope_angles_[2];  // global, local (sliding-window) layers' frequencies
};

}  // namespace dashlm
