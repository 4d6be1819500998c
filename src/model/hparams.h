// The hyperparameters of a model: what every layer computes, independent of where the weights
// are or which backend runs them.
#pragma once
#include <cstdint>
#include <string>

namespace dashlm {

enum class Arch { Llama, Qwen2, Gemma3 };
const char* arch_name(Arch a);

enum class Activation { SiLU, GeluTanh };

struct HParams {
  Arch arch = Arch::Llama;
  std::string arch_str;
  int64_t n_vocab = 0;
  int64_t n_embd = 0;
  int n_layer = 0;
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  int64_t n_ff = 0;
  int64_t n_ctx_train = 0;
  float norm_eps = 1e-5f;
  float rope_base = 10000.f;        // global layers
  float rope_base_local = 10000.f;  // sliding-window layers (gemma3)
  float rope_freq_scale = 1.f;      // linear scaling (1 / factor), global layers
  int n_rot = 0;
  bool rope_neox = false;
  int sliding_window = 0;           // 0: none
  int swa_pattern = 0;              // every swa_pattern-th layer is global (gemma3: 6)
  float embed_scale = 1.f;          // multiply token embeddings (gemma: sqrt(n_embd))
  float attn_scale = 1.f;           // query scale
  Activation act = Activation::SiLU;
  bool tied_embeddings = false;

  bool layer_is_swa(int il) const { return sliding_window > 0 && swa_pattern > 0 && (il % swa_pattern) < swa_pattern - 1; }
  // The sliding window of layer il (0: none).
  int layer_window(int il) const { return layer_is_swa(il) ? sliding_window : 0; }
  int64_t q_dim() const { return static_cast<int64_t>(n_head) * head_dim; }
  int64_t kv_dim() const { return static_cast<int64_t>(n_head_kv) * head_dim; }
};

}  // namespace dashlm
