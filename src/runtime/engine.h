// The forward pass: batched prefill of a whole prompt, then one token at a time, over a KV
// cache. Layers run on a list of token rows with their own positions, so a halting policy can
// later shrink the set of tokens a layer computes without the layer code changing.
#pragma once
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "model/model.h"

namespace dashlm {

struct KVCache {
  int64_t n_ctx = 0;    // slots per layer; slot s holds the token at position s
  int64_t kv_dim = 0;
  std::vector<std::vector<float>> k, v;  // per layer: n_ctx x kv_dim

  void init(int n_layer, int64_t n_ctx_, int64_t kv_dim_);
  float* k_row(int il, int64_t pos) { return k[static_cast<size_t>(il)].data() + pos * kv_dim; }
  float* v_row(int il, int64_t pos) { return v[static_cast<size_t>(il)].data() + pos * kv_dim; }
  size_t bytes() const;
};

struct ForwardStats {
  int64_t n_tokens = 0;
  double total_ms = 0;
  std::vector<double> layer_ms;  // per layer
  double logits_ms = 0;
};

class Engine {
 public:
  // n_ctx: KV cache size in tokens (prompt plus generated tokens).
  Engine(const Model& model, int64_t n_ctx);

  using Progress = std::function<void(int layers_done, int n_layers)>;

  // Runs `tokens` at positions n_past() .. n_past()+T-1 through every layer, appends their keys
  // and values to the cache, and returns the logits of the last token. With logits_all, the
  // logits of every token are written there (T x n_vocab).
  std::vector<float> prefill(std::span<const int32_t> tokens, ForwardStats* stats = nullptr,
                             const Progress& progress = {}, std::vector<float>* logits_all = nullptr);
  // One token at position n_past(): returns its logits.
  std::vector<float> decode(int32_t token) { return prefill(std::span<const int32_t>(&token, 1)); }

  int64_t n_past() const { return n_past_; }
  int64_t n_ctx() const { return cache_.n_ctx; }
  const KVCache& cache() const { return cache_; }
  const Model& model() const { return model_; }
  void reset() { n_past_ = 0; }

 private:
  struct Scratch {
    int64_t cap = 0;
    std::vector<float> xn, q, attn, u, gate, up;
    void reserve(const HParams& hp, int64_t n);
  };
  // One transformer block on n token rows x (updated in place) at positions pos.
  void forward_layer(int il, float* x, const int32_t* pos, int64_t n);
  void logits(const float* x, int64_t n, float* out);

  const Model& model_;
  KVCache cache_;
  Scratch s_;
  int64_t n_past_ = 0;
};

}  // namespace dashlm
