#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>

#include "backends/cpu/quants.h"
#include "common/error.h"

namespace dashlm {

const char* arch_name(Arch a) {
  switch (a) {
    case Arch::Llama: return "llama";
    case Arch::Qwen2: return "qwen2";
    case Arch::Gemma3: return "gemma3";
  }
  return "?";
}

namespace {

Arch parse_arch(const std::string& s) {
  if (s == "llama" || s == "mistral") return Arch::Llama;
  if (s == "qwen2") return Arch::Qwen2;
  if (s == "gemma3") return Arch::Gemma3;
  fail("unsupported architecture '{}' (dashlm supports llama, qwen2, gemma3)", s);
}

// A positive integer hyperparameter; arrays (per-layer values) must be uniform.
int64_t positive(const Metadata& m, const std::string& key, std::optional<int64_t> dflt = std::nullopt) {
  std::optional<int64_t> v;
  if (const MetaValue* mv = m.find(key); mv && mv->is_array()) {
    auto arr = m.get_int_array(key);
    if (!arr || arr->empty()) fail("metadata {} is an empty array", key);
    for (int64_t x : *arr) {
      if (x != arr->front()) fail("metadata {} varies per layer, which dashlm does not support", key);
    }
    v = arr->front();
  } else {
    v = m.get_int(key);
  }
  if (!v) v = dflt;
  if (!v) fail("model metadata lacks {}", key);
  if (*v <= 0 || *v > std::numeric_limits<int32_t>::max()) {
    fail("metadata {} = {} is out of range (1..{})", key, *v, std::numeric_limits<int32_t>::max());
  }
  return *v;
}

// A positive, finite float hyperparameter (an RMS epsilon, a RoPE base, a scaling factor).
float positive_float(const Metadata& m, const std::string& key, double dflt) {
  const double v = m.get_float(key).value_or(dflt);
  if (!std::isfinite(v) || !(v > 0) || v > std::numeric_limits<float>::max()) {
    fail("metadata {} = {} must be a positive finite number", key, m.find(key)->to_display());
  }
  return static_cast<float>(v);
}

// The layers whose tensors the file holds: one more than the highest N of any blk.N. tensor.
int64_t layers_in_file(const ModelFile& f) {
  int64_t n = 0;
  for (const TensorInfo& t : f.tensors) {
    if (t.name.rfind("blk.", 0) != 0) continue;
    int64_t il = 0;
    size_t i = 4;
    for (; i < t.name.size() && i < 14 && t.name[i] >= '0' && t.name[i] <= '9'; ++i) il = il * 10 + (t.name[i] - '0');
    if (i > 4 && i < t.name.size() && t.name[i] == '.') n = std::max(n, il + 1);
  }
  return n;
}

HParams read_hparams(const ModelFile& f) {
  const Metadata& m = f.meta;
  HParams hp;
  hp.arch_str = m.need_string("general.architecture");
  hp.arch = parse_arch(hp.arch_str);
  const std::string a = hp.arch_str + ".";
  hp.n_embd = positive(m, a + "embedding_length");
  hp.n_layer = static_cast<int>(positive(m, a + "block_count"));
  if (const int64_t present = layers_in_file(f); present != hp.n_layer) {
    fail("{}: metadata {}block_count declares {} layers, but the file holds tensors of {} layers", f.path, a, hp.n_layer, present);
  }
  hp.n_ff = positive(m, a + "feed_forward_length");
  hp.n_head = static_cast<int>(positive(m, a + "attention.head_count"));
  hp.n_head_kv = static_cast<int>(positive(m, a + "attention.head_count_kv", hp.n_head));
  if (hp.n_head % hp.n_head_kv != 0) {
    fail("metadata {}attention.head_count {} is not a multiple of {}attention.head_count_kv {}", a, hp.n_head, a, hp.n_head_kv);
  }
  // Without an explicit head size, the heads split the embedding.
  if (!m.has(a + "attention.key_length") && hp.n_embd % hp.n_head != 0) {
    fail("metadata {}embedding_length {} is not a multiple of {}attention.head_count {} (and no {}attention.key_length gives the head size)",
         a, hp.n_embd, a, hp.n_head, a);
  }
  hp.head_dim = static_cast<int>(positive(m, a + "attention.key_length", hp.n_embd / hp.n_head));
  if (positive(m, a + "attention.value_length", hp.head_dim) != hp.head_dim) fail("key and value head sizes differ, which dashlm does not support");
  hp.n_rot = static_cast<int>(positive(m, a + "rope.dimension_count", hp.head_dim));
  if (hp.n_rot > hp.head_dim || hp.n_rot % 2) fail("rope.dimension_count {} does not fit head size {}", hp.n_rot, hp.head_dim);
  hp.n_ctx_train = positive(m, a + "context_length", 2048);
  hp.norm_eps = positive_float(m, a + "attention.layer_norm_rms_epsilon", 1e-5);
  hp.rope_base = positive_float(m, a + "rope.freq_base", 10000.0);
  if (auto t = m.get_string(a + "rope.scaling.type"); t && *t != "none" && *t != "llama3") {
    if (*t != "linear") fail("rope scaling '{}' is not supported (linear, llama3)", *t);
    hp.rope_freq_scale = 1.f / positive_float(m, a + "rope.scaling.factor", 1.0);
  }
  hp.attn_scale = 1.f / std::sqrt(static_cast<float>(hp.head_dim));
  switch (hp.arch) {
    case Arch::Llama:
      hp.rope_neox = false;
      break;
    case Arch::Qwen2:
      hp.rope_neox = true;
      break;
    case Arch::Gemma3:
      hp.rope_neox = true;
      hp.act = Activation::GeluTanh;
      hp.embed_scale = std::sqrt(static_cast<float>(hp.n_embd));
      if (const int64_t sw = m.get_int(a + "attention.sliding_window").value_or(0); sw < 0 || sw > std::numeric_limits<int32_t>::max()) {
        fail("metadata {}attention.sliding_window = {} is out of range (0..{})", a, sw, std::numeric_limits<int32_t>::max());
      } else {
        hp.sliding_window = static_cast<int>(sw);
      }
      hp.swa_pattern = 6;  // five sliding-window layers, then one global
      hp.rope_base_local = 10000.f;
      // Gemma 3 27B scales queries by 1/sqrt(n_embd / n_head) (query_pre_attn_scalar).
      if (hp.n_layer == 62) hp.attn_scale = 1.f / std::sqrt(static_cast<float>(hp.n_embd / hp.n_head));
      break;
  }
  return hp;
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, const std::string& tokenizer_path, bool keep_vocab_metadata) {
  auto model = std::unique_ptr<Model>(new Model());
  model->file_ = open_model_file(path, tokenizer_path);
  model->hp_ = read_hparams(*model->file_);
  model->tok_ = Tokenizer::from_metadata(model->file_->meta);
  model->chat_format_ = chat_format_of(model->file_->meta);
  if (!keep_vocab_metadata) {
    for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}) {
      model->file_->meta.erase(key);
    }
  }
  model->bind_weights();
  return model;
}

std::string Model::name() const {
  if (auto n = file_->meta.get_string("general.name"); n && !n->empty()) return *n;
  return std::filesystem::path(file_->path).filename().string();
}

WeightView Model::matrix(const std::string& name, int64_t in, int64_t out, bool required) const {
  const TensorInfo* t = file_->find(name);
  if (!t) {
    if (required) fail("model file lacks tensor {}", name);
    return {};
  }
  if (t->ne.size() != 2 || t->ne[0] != in || t->ne[1] != out) {
    fail("tensor {} has shape {}, expected [{}, {}] for this architecture", name, t->shape_str(), in, out);
  }
  if (!dtype_traits(t->type).dequantizable) fail("tensor {} has type {}, which dashlm cannot compute with", name, dtype_name(t->type));
  return WeightView{t->type, t->data, in, out};
}

const float* Model::f32_vector(const std::string& name, int64_t n, bool required) {
  const TensorInfo* t = file_->find(name);
  if (!t) {
    if (required) fail("model file lacks tensor {}", name);
    return nullptr;
  }
  if (t->n_elements() != n || t->ne.size() != 1) fail("tensor {} has shape {}, expected [{}]", name, t->shape_str(), n);
  if (t->type == DType::F32) return reinterpret_cast<const float*>(t->data);
  if (!dtype_traits(t->type).dequantizable) fail("tensor {} has type {}, which dashlm cannot compute with", name, dtype_name(t->type));
  std::vector<float> v(static_cast<size_t>(n));
  cpu::dequantize_row(t->type, t->data, v.data(), n);
  owned_.push_back(std::move(v));
  return owned_.back().data();
}

// Llama 3.1's frequency-dependent RoPE scaling as per-pair divisors of the frequency (what GGUF
// files carry as rope_freqs.weight): long wavelengths are slowed by `factor`, short ones kept,
// and the band between is interpolated.
const float* Model::llama3_freq_factors() {
  const Metadata& m = file_->meta;
  const std::string a = hp_.arch_str + ".rope.scaling.";
  const double factor = m.get_float(a + "factor").value_or(8.0);
  const double low = m.get_float(a + "low_freq_factor").value_or(1.0);
  const double high = m.get_float(a + "high_freq_factor").value_or(4.0);
  const double old_ctx = static_cast<double>(m.get_int(a + "original_context_length").value_or(8192));
  if (!(factor > 0) || !(high > low)) fail("llama3 rope scaling needs factor > 0 and high_freq_factor > low_freq_factor");
  const double pi = 3.14159265358979323846;
  std::vector<float> f(static_cast<size_t>(hp_.n_rot / 2));
  for (size_t i = 0; i < f.size(); ++i) {
    const double freq = std::pow(static_cast<double>(hp_.rope_base), -2.0 * static_cast<double>(i) / hp_.n_rot);
    const double wavelen = 2 * pi / freq;
    if (wavelen < old_ctx / high) {
      f[i] = 1.f;
    } else if (wavelen > old_ctx / low) {
      f[i] = static_cast<float>(factor);
    } else {
      const double smooth = (old_ctx / wavelen - low) / (high - low);
      f[i] = static_cast<float>(1.0 / ((1 - smooth) / factor + smooth));
    }
  }
  owned_.push_back(std::move(f));
  return owned_.back().data();
}

void Model::bind_weights() {
  const HParams& hp = hp_;
  const TensorInfo& emb = file_->need("token_embd.weight");
  if (emb.ne.size() != 2 || emb.ne[0] != hp.n_embd) fail("tensor token_embd.weight has shape {}, expected [{}, n_vocab]", emb.shape_str(), hp.n_embd);
  hp_.n_vocab = emb.ne[1];
  // Token ids are 32-bit.
  if (hp_.n_vocab <= 0 || hp_.n_vocab > std::numeric_limits<int32_t>::max()) fail("tensor token_embd.weight has {} rows, not a vocabulary size", hp_.n_vocab);
  if (hp_.n_vocab != tok_->n_vocab()) {
    fail("the model has {} token embeddings but its tokenizer has {} tokens", hp_.n_vocab, tok_->n_vocab());
  }
  tok_embd_ = matrix("token_embd.weight", hp.n_embd, hp_.n_vocab);
  output_norm_ = f32_vector("output_norm.weight", hp.n_embd, true);
  output_ = matrix("output.weight", hp.n_embd, hp_.n_vocab, false);
  hp_.tied_embeddings = output_.data == nullptr;
  if (hp_.tied_embeddings) output_ = tok_embd_;
  rope_freqs_ = f32_vector("rope_freqs.weight", hp.n_rot / 2, false);
  if (!rope_freqs_ && file_->meta.get_string(hp.arch_str + ".rope.scaling.type") == std::optional<std::string>("llama3")) {
    rope_freqs_ = llama3_freq_factors();
  }

  const int64_t d = hp.n_embd, qd = hp.q_dim(), kvd = hp.kv_dim();
  const bool gemma = hp.arch == Arch::Gemma3;
  layers_.resize(static_cast<size_t>(hp.n_layer));
  for (int il = 0; il < hp.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LayerWeights& L = layers_[static_cast<size_t>(il)];
    L.attn_norm = f32_vector(p + "attn_norm.weight", d, true);
    L.wq = matrix(p + "attn_q.weight", d, qd);
    L.wk = matrix(p + "attn_k.weight", d, kvd);
    L.wv = matrix(p + "attn_v.weight", d, kvd);
    L.wo = matrix(p + "attn_output.weight", qd, d);
    const bool qwen = hp.arch == Arch::Qwen2;
    L.bq = f32_vector(p + "attn_q.bias", qd, qwen);
    L.bk = f32_vector(p + "attn_k.bias", kvd, qwen);
    L.bv = f32_vector(p + "attn_v.bias", kvd, qwen);
    L.q_norm = f32_vector(p + "attn_q_norm.weight", hp.head_dim, gemma);
    L.k_norm = f32_vector(p + "attn_k_norm.weight", hp.head_dim, gemma);
    L.post_attn_norm = f32_vector(p + "post_attention_norm.weight", d, gemma);
    L.ffn_norm = f32_vector(p + "ffn_norm.weight", d, true);
    L.w_gate = matrix(p + "ffn_gate.weight", d, hp.n_ff);
    L.w_up = matrix(p + "ffn_up.weight", d, hp.n_ff);
    L.w_down = matrix(p + "ffn_down.weight", hp.n_ff, d);
    L.post_ffn_norm = f32_vector(p + "post_ffw_norm.weight", d, gemma);
  }
}

}  // namespace dashlm
