// A loaded model: hyperparameters read from the file's metadata, weights bound by name,
// and the tokenizer. Supported architectures: llama (Llama 2/3, Mistral, SmolLM2, TinyLlama),
// qwen2 (QKV bias), gemma3 (sliding-window/global layers, QK-norm, GeGLU, sandwich norms).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backends/dtype.h"
#include "model/chat.h"
#include "model/hparams.h"
#include "model/model_file.h"
#include "model/tokenizer.h"

namespace dashlm {

struct LayerWeights {
  const float* attn_norm = nullptr;
  WeightView wq, wk, wv, wo;
  const float* bq = nullptr;
  const float* bk = nullptr;
  const float* bv = nullptr;
  const float* q_norm = nullptr;        // per-head RMSNorm of queries (gemma3)
  const float* k_norm = nullptr;
  const float* post_attn_norm = nullptr;  // gemma3 sandwich norm
  const float* ffn_norm = nullptr;
  WeightView w_gate, w_up, w_down;
  const float* post_ffn_norm = nullptr;
};

class Model {
 public:
  // Loads and validates: every tensor the architecture needs must exist with the shape the
  // hyperparameters imply, in a type dashlm can compute with; errors name the tensor.
  // Once the tokenizer is built it holds the vocabulary, so the metadata's copies of it
  // (tokenizer.ggml.tokens, .scores, .token_type, .merges: tens of MB for a 262k vocabulary)
  // are released, unless keep_vocab_metadata (for inspect, which shows them).
  static std::unique_ptr<Model> load(const std::string& path, const std::string& tokenizer_path = "",
                                     bool keep_vocab_metadata = false);

  const HParams& hp() const { return hp_; }
  const ModelFile& file() const { return *file_; }
  const Tokenizer& tokenizer() const { return *tok_; }
  // chat_format_of(metadata), decided at load time while the vocabulary was still there.
  ChatFormat chat_format() const { return chat_format_; }
  const LayerWeights& layer(int il) const { return layers_[static_cast<size_t>(il)]; }
  const WeightView& tok_embd() const { return tok_embd_; }
  const WeightView& output() const { return output_; }
  const float* output_norm() const { return output_norm_; }
  const float* rope_freq_factors() const { return rope_freqs_; }
  std::string name() const;

 private:
  void bind_weights();
  const float* f32_vector(const std::string& name, int64_t n, bool required);
  const float* llama3_freq_factors();
  WeightView matrix(const std::string& name, int64_t in, int64_t out, bool required = true) const;

  std::unique_ptr<ModelFile> file_;
  std::unique_ptr<Tokenizer> tok_;
  HParams hp_;
  ChatFormat chat_format_ = ChatFormat::None;
  std::vector<LayerWeights> layers_;
  WeightView tok_embd_, output_;
  const float* output_norm_ = nullptr;
  const float* rope_freqs_ = nullptr;
  std::vector<std::vector<float>> owned_;  // float32 copies of small non-F32 vectors
};

}  // namespace dashlm
