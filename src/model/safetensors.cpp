// Hugging Face checkpoints: safetensors weights (one file, shards listed by
// model.safetensors.index.json, or a directory holding either) plus config.json, and the
// tokenizer.json beside them.
//
// Everything is translated into the vocabulary GGUF files use, so the model code reads one
// format: GGUF tensor names and shapes (HF shape [out, in] becomes ne {in, out}, the same bytes),
// GGUF metadata keys, and the two conversions that llama.cpp's converter bakes into GGUF files:
//   - "llama": the rows of q_proj and k_proj are permuted from HF's rotate-half layout to the
//     interleaved-pair layout of GGUF (see permute_rows);
//   - "gemma3": every RMSNorm weight w is stored as 1 + w (the scale the norm really applies).
// Converted tensors live in owned buffers; all others point into the mappings.
//
// safetensors layout: u64 little-endian N, N bytes of JSON header
// {"name": {"dtype": "BF16", "shape": [out, in], "data_offsets": [begin, end]}, ...,
//  "__metadata__": {...}}, then the data; offsets are relative to the end of the header.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "common/error.h"
#include "common/json.h"
#include "model/mmap_file.h"
#include "model/model_file.h"

namespace dashlm {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

static_assert(std::endian::native == std::endian::little, "the safetensors reader assumes a little-endian host");

// The safetensors format itself caps the header at 100 MB.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
// Token ids beyond this are not a real vocabulary (the largest are ~260k).
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr size_t kMaxDims = 4;

struct StDType {
  DType type;
  size_t size;
};

std::optional<StDType> st_dtype(const std::string& s) {
  if (s == "F32") return StDType{DType::F32, 4};
  if (s == "F16") return StDType{DType::F16, 2};
  if (s == "BF16") return StDType{DType::BF16, 2};
  return std::nullopt;
}

size_t elem_size(DType t) { return t == DType::F32 ? 4 : 2; }

// One line: nlohmann's messages carry no newlines, but be sure.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

// --- safetensors header --------------------------------------------------------

json parse_header_json(const uint8_t* p, size_t n, const std::string& name) {
  // Keys of the top-level object must be unique (nlohmann would silently keep the last one).
  std::unordered_set<std::string> keys;
  std::string duplicate;
  const JsonKeyHook on_key = [&](int depth, const std::string& k) {
    if (depth == 1 && !keys.insert(k).second && duplicate.empty()) duplicate = k;
  };
  json j = parse_json(std::string_view(reinterpret_cast<const char*>(p), n), name + ": safetensors header", on_key);
  if (!duplicate.empty()) fail("{}: safetensors header lists tensor {} twice", name, one_line(duplicate).substr(0, 80));
  return j;
}

uint64_t get_u64(const json& v, const std::string& name, const std::string& tensor, const char* what) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  fail("{}: tensor {} has an invalid {} ({})", name, tensor, what, json_describe(v));
}

// Parses one safetensors image and appends its tensors, with their HF names, to f.
void parse_into(const uint8_t* data, size_t size, const std::string& name, ModelFile& f) {
  if (data == nullptr || size < 8) fail("{}: not a safetensors file ({} bytes, too short for a header)", name, size);
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n < 2) fail("{}: bad safetensors header (header length {} is too short for a JSON object)", name, n);
  if (n > size - 8) fail("{}: bad safetensors header (header length {} exceeds the file size {})", name, n, size);
  if (n > kMaxHeaderBytes) fail("{}: bad safetensors header (header length {} exceeds the 100 MB limit)", name, n);
  const json header = parse_header_json(data + 8, static_cast<size_t>(n), name);
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", name);

  const uint8_t* base = data + 8 + n;
  const uint64_t data_size = size - 8 - n;
  struct Entry {
    TensorInfo t;
    uint64_t begin;
  };
  std::vector<Entry> entries;
  for (const auto& [tname, v] : header.items()) {
    if (tname == "__metadata__") continue;  // free-form strings; nothing dashlm needs
    if (!v.is_object()) fail("{}: tensor {} is not described by a JSON object", name, tname);
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) fail("{}: tensor {} has no dtype", name, tname);
    if (sh == v.end() || !sh->is_array()) fail("{}: tensor {} has no shape", name, tname);
    if (off == v.end() || !off->is_array() || off->size() != 2) {
      fail("{}: tensor {} has no data_offsets pair", name, tname);
    }
    const std::string& dts = dt->get_ref<const std::string&>();
    const auto st = st_dtype(dts);
    if (!st) {
      fail("{}: tensor {} has dtype {}, which dashlm does not support (only F32, F16 and BF16)", name, tname,
           one_line(dts).substr(0, 40));
    }
    if (sh->size() > kMaxDims) fail("{}: tensor {} has {} dimensions (at most {})", name, tname, sh->size(), kMaxDims);
    // HF shape is outermost first; GGUF ne is innermost first. A scalar becomes ne {1}.
    Entry e;
    e.t.name = tname;
    e.t.type = st->type;
    uint64_t n_elem = 1, n_rows = 1;
    std::vector<int64_t> dims;
    for (size_t i = 0; i < sh->size(); ++i) {
      const uint64_t d = get_u64((*sh)[i], name, tname, "shape");
      dims.push_back(static_cast<int64_t>(d));
      if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(n_elem, d, &n_elem) ||
          (i + 1 < sh->size() && __builtin_mul_overflow(n_rows, d, &n_rows)) ||
          n_elem > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          n_rows > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail("{}: tensor {} has an impossibly large shape", name, tname);
      }
    }
    e.t.ne.assign(dims.rbegin(), dims.rend());
    if (e.t.ne.empty()) e.t.ne.push_back(1);
    const uint64_t begin = get_u64((*off)[0], name, tname, "data_offsets");
    const uint64_t end = get_u64((*off)[1], name, tname, "data_offsets");
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(n_elem, uint64_t{st->size}, &nbytes)) {
      fail("{}: tensor {} has an impossibly large shape", name, tname);
    }
    if (begin > end || end > data_size) {
      fail("{}: tensor {} has data_offsets [{}, {}] outside the {} bytes of data", name, tname, begin, end, data_size);
    }
    if (end - begin != nbytes) {
      fail("{}: tensor {} has {} bytes of data but its shape and dtype ({} x {}) need {}", name, tname, end - begin,
           n_elem, dts, nbytes);
    }
    e.t.data = base + begin;
    e.t.nbytes = static_cast<size_t>(nbytes);
    e.begin = begin;
    entries.push_back(std::move(e));
  }
  // File order, which is also the order a converter wrote them in.
  std::stable_sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  for (Entry& e : entries) f.add_tensor(std::move(e.t));
}

// --- small helpers -------------------------------------------------------------

// A JSON value that is absent or null counts as missing.
const json* member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<int64_t> cfg_int(const json& c, const char* key, const std::string& cfg_path) {
  const json* v = member(c, key);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) {
    if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("{}: {} = {} is out of range", cfg_path, key, v->get<uint64_t>());
    }
    return v->get<int64_t>();
  }
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::fabs(d) < 9e18 && d == std::trunc(d)) return static_cast<int64_t>(d);
  }
  fail("{}: {} must be an integer, not {}", cfg_path, key, json_describe(*v));
}

std::optional<double> cfg_float(const json& c, const char* key, const std::string& cfg_path) {
  const json* v = member(c, key);
  if (!v) return std::nullopt;
  if (v->is_number()) return v->get<double>();
  fail("{}: {} must be a number, not {}", cfg_path, key, json_describe(*v));
}

std::optional<std::string> cfg_string(const json& c, const char* key) {
  const json* v = member(c, key);
  if (!v || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

MetaValue u32_value(int64_t v, const char* key, const std::string& cfg_path) {
  if (v < 0 || v > std::numeric_limits<uint32_t>::max()) fail("{}: {} = {} is out of range", cfg_path, key, v);
  return MetaValue::of_uint(static_cast<uint64_t>(v), MetaType::U32);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // zero
  } else {
    // Subnormal half: normalise.
    exp = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --exp;
    }
    bits = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

float load_as_float(DType t, const uint8_t* p, size_t i) {
  if (t == DType::F32) {
    float f;
    std::memcpy(&f, p + 4 * i, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p + 2 * i, 2);
  if (t == DType::BF16) return std::bit_cast<float>(static_cast<uint32_t>(h) << 16);
  return half_to_float(h);
}

// --- HF -> GGUF names -------------------------------------------------------------

enum class Arch { Llama, Qwen2, Gemma3 };

const char* arch_str(Arch a) {
  switch (a) {
    case Arch::Llama:
      return "llama";
    case Arch::Qwen2:
      return "qwen2";
    case Arch::Gemma3:
      return "gemma3";
  }
  return "?";
}

// Per-layer module names (the part after "model.layers.N."), without ".weight"/".bias".
std::optional<std::string> map_layer_module(const std::string& m, Arch arch) {
  static const std::unordered_map<std::string, std::string> common = {
      {"input_layernorm", "attn_norm"},    {"self_attn.q_proj", "attn_q"},      {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},      {"self_attn.o_proj", "attn_output"}, {"self_attn.q_norm", "attn_q_norm"},
      {"self_attn.k_norm", "attn_k_norm"}, {"mlp.gate_proj", "ffn_gate"},       {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},
  };
  if (auto it = common.find(m); it != common.end()) return it->second;
  if (arch == Arch::Gemma3) {
    // Gemma 3 has four norms per layer ("sandwich" norms around attention and MLP).
    if (m == "post_attention_layernorm") return "post_attention_norm";
    if (m == "pre_feedforward_layernorm") return "ffn_norm";
    if (m == "post_feedforward_layernorm") return "post_ffw_norm";
  } else if (m == "post_attention_layernorm") {
    return "ffn_norm";
  }
  return std::nullopt;
}

// Returns the GGUF name, "" for tensors to drop, or the HF name unchanged when unknown.
std::string map_tensor_name(std::string n, Arch arch, int64_t n_layer, const std::string& path) {
  // Gemma3ForConditionalGeneration keeps the text model under language_model (two spellings,
  // depending on the transformers version); its vision tower is not used.
  if (n.rfind("language_model.", 0) == 0) n = n.substr(15);
  if (n.rfind("model.language_model.", 0) == 0) n = "model." + n.substr(21);
  for (const char* skip :
       {"vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."}) {
    if (n.rfind(skip, 0) == 0) return "";
  }
  if (n.ends_with("rotary_emb.inv_freq")) return "";  // recomputed from rope_theta
  if (n == "model.embed_tokens.weight") return "token_embd.weight";
  if (n == "model.norm.weight") return "output_norm.weight";
  if (n == "lm_head.weight") return "output.weight";
  const std::string prefix = "model.layers.";
  if (n.rfind(prefix, 0) != 0) return n;
  size_t i = prefix.size(), j = i;
  while (j < n.size() && j - i < 9 && n[j] >= '0' && n[j] <= '9') ++j;
  if (j == i || j >= n.size() || n[j] != '.') return n;
  const int64_t layer = std::stoll(n.substr(i, j - i));
  const std::string rest = n.substr(j + 1);
  const size_t dot = rest.rfind('.');
  if (dot == std::string::npos) return n;
  const std::string kind = rest.substr(dot + 1);
  if (kind != "weight" && kind != "bias") return n;
  auto mod = map_layer_module(rest.substr(0, dot), arch);
  if (!mod) return n;
  if (layer >= n_layer) {
    fail("{}: tensor {} belongs to layer {}, but config.json has {} layers", path, n, layer, n_layer);
  }
  return "blk." + std::to_string(layer) + "." + *mod + "." + kind;
}

// HF stores q/k rows per head in rotate-half order (the two halves of a head are the two
// members of each rotated pair); GGUF "llama" wants adjacent pairs. Within each head of d rows:
// GGUF row 2i + j is HF row j * d/2 + i (i < d/2, j in {0, 1}); this is the converter's
// reshape(n_head, 2, d/2, ...).swapaxes(1, 2).
void permute_rows(const uint8_t* src, uint8_t* dst, int64_t rows, size_t row_bytes, int64_t n_head) {
  const int64_t d = rows / n_head, half = d / 2;
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(dst + static_cast<size_t>(h * d + 2 * i + j) * row_bytes,
                    src + static_cast<size_t>(h * d + j * half + i) * row_bytes, row_bytes);
      }
    }
  }
}

// --- config.json -> metadata -------------------------------------------------------

struct ArchConfig {
  Arch arch;
  const json* text;  // the (text) model's config object
};

ArchConfig detect_arch(const json& cfg, const std::string& cfg_path) {
  std::string name;
  if (const json* a = member(cfg, "architectures"); a && a->is_array() && !a->empty() && (*a)[0].is_string()) {
    name = (*a)[0].get<std::string>();
  }
  const std::string model_type = cfg_string(cfg, "model_type").value_or("");
  const json* text_config = member(cfg, "text_config");
  if (name == "LlamaForCausalLM" || name == "MistralForCausalLM") return {Arch::Llama, &cfg};
  if (name == "Qwen2ForCausalLM") return {Arch::Qwen2, &cfg};
  if (name == "Gemma3ForCausalLM") return {Arch::Gemma3, &cfg};
  if (name == "Gemma3ForConditionalGeneration") {
    if (!text_config || !text_config->is_object())
      fail("{}: Gemma3ForConditionalGeneration without text_config", cfg_path);
    return {Arch::Gemma3, text_config};
  }
  if (name.empty()) {
    if (model_type == "llama" || model_type == "mistral") return {Arch::Llama, &cfg};
    if (model_type == "qwen2") return {Arch::Qwen2, &cfg};
    if (model_type == "gemma3_text") return {Arch::Gemma3, &cfg};
    if (model_type == "gemma3" && text_config && text_config->is_object()) return {Arch::Gemma3, text_config};
  }
  const std::string what = !name.empty() ? name : !model_type.empty() ? "model_type " + model_type : "(none given)";
  fail(
      "{}: architecture {} is not supported (dashlm reads LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
      "Gemma3ForCausalLM and Gemma3ForConditionalGeneration)",
      cfg_path, what);
}

struct ModelShape {
  int64_t n_layer = 0, n_head = 0, n_head_kv = 0;
  std::optional<bool> tie_embeddings;
};

ModelShape config_to_metadata(const json& cfg, const ArchConfig& ac, const std::string& cfg_path, Metadata& m) {
  const json& c = *ac.text;
  const std::string a = std::string(arch_str(ac.arch)) + ".";
  const bool gemma = ac.arch == Arch::Gemma3;
  // Gemma 3's multimodal configs list only values that differ from Gemma3TextConfig's defaults,
  // so those defaults apply; Llama and Qwen2 configs always spell out the model's shape.
  auto need = [&](const char* key, int64_t gemma_default) {
    auto v = cfg_int(c, key, cfg_path);
    if (!v && gemma) v = gemma_default;
    if (!v) fail("{}: {} is missing", cfg_path, key);
    if (*v <= 0) fail("{}: {} = {} is not positive", cfg_path, key, *v);
    return *v;
  };
  const int64_t hidden = need("hidden_size", 2304);
  const int64_t n_layer = need("num_hidden_layers", 26);
  const int64_t n_ff = need("intermediate_size", 9216);
  const int64_t n_head = need("num_attention_heads", 8);
  const int64_t n_head_kv = cfg_int(c, "num_key_value_heads", cfg_path).value_or(gemma ? 4 : n_head);
  if (n_head_kv <= 0) fail("{}: num_key_value_heads = {} is not positive", cfg_path, n_head_kv);
  std::optional<int64_t> head_dim = cfg_int(c, "head_dim", cfg_path);
  if (!head_dim && gemma) head_dim = 256;
  if (head_dim && *head_dim <= 0) fail("{}: head_dim = {} is not positive", cfg_path, *head_dim);
  const int64_t ctx = cfg_int(c, "max_position_embeddings", cfg_path)
                          .value_or(gemma                    ? 131072
                                    : ac.arch == Arch::Qwen2 ? 32768
                                                             : 2048);

  m.set(a + "embedding_length", u32_value(hidden, "hidden_size", cfg_path));
  m.set(a + "block_count", u32_value(n_layer, "num_hidden_layers", cfg_path));
  m.set(a + "feed_forward_length", u32_value(n_ff, "intermediate_size", cfg_path));
  m.set(a + "attention.head_count", u32_value(n_head, "num_attention_heads", cfg_path));
  m.set(a + "attention.head_count_kv", u32_value(n_head_kv, "num_key_value_heads", cfg_path));
  m.set(a + "context_length", u32_value(ctx, "max_position_embeddings", cfg_path));
  if (head_dim) {
    m.set(a + "attention.key_length", u32_value(*head_dim, "head_dim", cfg_path));
    m.set(a + "attention.value_length", u32_value(*head_dim, "head_dim", cfg_path));
    m.set(a + "rope.dimension_count", u32_value(*head_dim, "head_dim", cfg_path));
  } else if (hidden % n_head == 0) {
    m.set(a + "rope.dimension_count", u32_value(hidden / n_head, "hidden_size / num_attention_heads", cfg_path));
  }
  auto f32 = [](double v) { return MetaValue::of_float(static_cast<float>(v), MetaType::F32); };
  m.set(a + "attention.layer_norm_rms_epsilon", f32(cfg_float(c, "rms_norm_eps", cfg_path).value_or(1e-6)));
  m.set(a + "rope.freq_base", f32(cfg_float(c, "rope_theta", cfg_path).value_or(gemma ? 1e6 : 1e4)));
  if (auto v = cfg_int(c, "vocab_size", cfg_path)) m.set(a + "vocab_size", u32_value(*v, "vocab_size", cfg_path));

  if (gemma) {
    m.set(a + "attention.sliding_window",
          u32_value(cfg_int(c, "sliding_window", cfg_path).value_or(4096), "sliding_window", cfg_path));
    if (auto v = cfg_int(c, "sliding_window_pattern", cfg_path)) {
      m.set(a + "attention.sliding_window_pattern", u32_value(*v, "sliding_window_pattern", cfg_path));
    }
    if (auto v = cfg_float(c, "rope_local_base_freq", cfg_path)) m.set(a + "rope.freq_base_swa", f32(*v));
    if (auto v = cfg_float(c, "final_logit_softcapping", cfg_path)) m.set(a + "final_logit_softcapping", f32(*v));
    if (auto v = cfg_float(c, "attn_logit_softcapping", cfg_path)) m.set(a + "attn_logit_softcapping", f32(*v));
  }

  if (const json* rs = member(c, "rope_scaling")) {
    if (!rs->is_object()) fail("{}: rope_scaling must be an object", cfg_path);
    std::string type = cfg_string(*rs, "rope_type").value_or(cfg_string(*rs, "type").value_or(""));
    if (type.empty()) fail("{}: rope_scaling has no rope_type", cfg_path);
    if (type != "default") {
      m.set(a + "rope.scaling.type", MetaValue::of_string(type));
      if (auto f = cfg_float(*rs, "factor", cfg_path)) m.set(a + "rope.scaling.factor", f32(*f));
      if (type == "llama3") {
        for (const char* k : {"low_freq_factor", "high_freq_factor"}) {
          if (auto v = cfg_float(*rs, k, cfg_path)) m.set(a + "rope.scaling." + k, f32(*v));
        }
        if (auto v = cfg_int(*rs, "original_max_position_embeddings", cfg_path)) {
          // Both the name of the HF key and GGUF's name for the same value.
          m.set(a + "rope.scaling.original_max_position_embeddings",
                u32_value(*v, "original_max_position_embeddings", cfg_path));
          m.set(a + "rope.scaling.original_context_length",
                u32_value(*v, "original_max_position_embeddings", cfg_path));
        }
      }
    }
  }

  ModelShape s;
  s.n_layer = n_layer;
  s.n_head = n_head;
  s.n_head_kv = n_head_kv;
  // tie_word_embeddings sits at the top level of multimodal configs.
  for (const json* obj : {ac.text, &cfg}) {
    if (const json* t = member(*obj, "tie_word_embeddings"); t && t->is_boolean()) {
      s.tie_embeddings = t->get<bool>();
      break;
    }
  }
  return s;
}

// What the loader takes from config.json: the architecture, the metadata keys and the shape.
std::pair<ArchConfig, ModelShape> config_from_json(const json& cfg, const std::string& cfg_path, Metadata& m) {
  if (!cfg.is_object()) fail("{}: expected a JSON object, found {}", cfg_path, json_describe(cfg));
  const ArchConfig ac = detect_arch(cfg, cfg_path);
  m.set("general.architecture", MetaValue::of_string(arch_str(ac.arch)));
  const ModelShape shape = config_to_metadata(cfg, ac, cfg_path, m);
  return {ac, shape};
}

// --- checkpoint files ------------------------------------------------------------------

struct Checkpoint {
  fs::path dir;
  std::vector<fs::path> files;  // safetensors files to read
  fs::path index;               // empty unless sharded
};

Checkpoint locate(const std::string& path) {
  Checkpoint ck;
  std::error_code ec;
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    ck.dir = p;
    if (fs::exists(p / "model.safetensors.index.json", ec)) {
      ck.index = p / "model.safetensors.index.json";
    } else if (fs::exists(p / "model.safetensors", ec)) {
      ck.files.push_back(p / "model.safetensors");
    } else {
      std::vector<fs::path> found;
      for (const auto& e : fs::directory_iterator(p, ec)) {
        if (e.path().extension() == ".safetensors") found.push_back(e.path());
      }
      if (found.empty()) fail("{}: directory holds no .safetensors file", path);
      if (found.size() > 1) {
        fail("{}: directory holds {} .safetensors files but no model.safetensors.index.json", path, found.size());
      }
      ck.files = found;
    }
  } else if (path.ends_with(".json")) {
    ck.index = p;
    ck.dir = p.parent_path();
  } else {
    ck.files.push_back(p);
    ck.dir = p.parent_path();
  }
  if (ck.dir.empty()) ck.dir = ".";
  return ck;
}

// Reads the shard list of an index file; fills weight_map (tensor -> shard file name).
std::vector<std::string> read_index(const fs::path& index, std::unordered_map<std::string, std::string>& weight_map) {
  const std::string ip = index.string();
  const json j = read_json_file(ip);
  const json* wm = member(j, "weight_map");
  if (!wm || !wm->is_object()) fail("{}: no weight_map object", ip);
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [tensor, file] : wm->items()) {
    if (!file.is_string()) fail("{}: weight_map entry {} is not a file name", ip, tensor);
    const std::string& fn = file.get_ref<const std::string&>();
    // Shards are plain file names in the same directory.
    if (fn.empty() || fn.find('/') != std::string::npos || fn.find('\\') != std::string::npos || fn == "." ||
        fn == "..") {
      fail("{}: weight_map names shard '{}', which is not a plain file name", ip, one_line(fn).substr(0, 80));
    }
    weight_map.emplace(tensor, fn);
    if (seen.insert(fn).second) shards.push_back(fn);
  }
  if (shards.empty()) fail("{}: weight_map lists no tensors", ip);
  std::sort(shards.begin(), shards.end());
  return shards;
}

std::string model_name(const fs::path& dir) {
  fs::path p = fs::absolute(dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

// Makes t's data owned (a copy of new_bytes) and keeps the buffer alive with f.
void own(TensorInfo& t, std::vector<uint8_t> bytes, ModelFile& f) {
  auto buf = std::make_shared<std::vector<uint8_t>>(std::move(bytes));
  t.data = buf->data();
  t.nbytes = buf->size();
  f.keep_alive(buf);
}

std::unique_ptr<ModelFile> load_checkpoint(const std::string& path, bool with_tokenizer) {
  Checkpoint ck = locate(path);
  const std::string cfg_path = (ck.dir / "config.json").string();
  std::error_code ec;
  if (!fs::exists(cfg_path, ec)) fail("{}: config.json not found beside it (expected {})", path, cfg_path);
  const json cfg = read_json_file(cfg_path);

  auto f = std::make_unique<ModelFile>();
  f->path = path;
  f->format = "safetensors";
  Metadata& m = f->meta;
  m.set("general.name", MetaValue::of_string(model_name(ck.dir)));
  const auto [ac, shape] = config_from_json(cfg, cfg_path, m);

  // The raw tensors, with HF names, from every file.
  ModelFile raw;
  raw.path = path;
  std::unordered_map<std::string, std::string> weight_map;
  if (!ck.index.empty()) {
    for (const std::string& shard : read_index(ck.index, weight_map)) ck.files.push_back(ck.dir / shard);
  }
  std::unordered_map<std::string, std::string> found_in;  // tensor -> shard file name
  for (const fs::path& file : ck.files) {
    auto map = MmapFile::open(file.string());
    const size_t before = raw.tensors.size();
    parse_into(map->data(), map->size(), file.string(), raw);
    for (size_t i = before; i < raw.tensors.size(); ++i) found_in[raw.tensors[i].name] = file.filename().string();
    f->keep_alive(map);
  }
  for (const auto& [tensor, shard] : weight_map) {
    auto it = found_in.find(tensor);
    if (it == found_in.end() || it->second != shard) {
      fail("{}: index lists tensor {} in {}, but that file does not hold it", ck.index.string(), tensor, shard);
    }
  }

  const bool has_lm_head = std::any_of(raw.tensors.begin(), raw.tensors.end(), [](const TensorInfo& t) {
    return t.name == "lm_head.weight" || t.name == "language_model.lm_head.weight";
  });
  if (shape.tie_embeddings == false && !has_lm_head) {
    fail("{}: config.json sets tie_word_embeddings to false, but the checkpoint has no lm_head.weight", path);
  }
  const bool drop_lm_head = shape.tie_embeddings == true;

  for (TensorInfo& t : raw.tensors) {
    const std::string hf_name = t.name;
    std::string name = map_tensor_name(t.name, ac.arch, shape.n_layer, path);
    if (name.empty() || (name == "output.weight" && drop_lm_head)) continue;
    t.name = name;
    const size_t es = elem_size(t.type);

    const bool is_q = name.ends_with(".attn_q.weight") || name.ends_with(".attn_q.bias");
    const bool is_k = name.ends_with(".attn_k.weight") || name.ends_with(".attn_k.bias");
    if (ac.arch == Arch::Llama && (is_q || is_k)) {
      const int64_t n_head = is_q ? shape.n_head : shape.n_head_kv;
      const int64_t rows = t.ne.size() == 1 ? t.ne[0] : t.rows();
      const size_t row_bytes = t.ne.size() == 1 ? es : static_cast<size_t>(t.ne[0]) * es;
      if (t.ne.size() > 2 || rows % n_head != 0 || (rows / n_head) % 2 != 0) {
        fail("{}: tensor {} has shape {}, which does not split into {} heads of even size", path, hf_name,
             t.shape_str(), n_head);
      }
      std::vector<uint8_t> out(t.nbytes);
      permute_rows(t.data, out.data(), rows, row_bytes, n_head);
      own(t, std::move(out), *f);
    } else if (ac.arch == Arch::Gemma3 && name.ends_with("norm.weight")) {
      // Gemma's RMSNorm multiplies by (1 + w); GGUF stores the effective scale, in F32.
      const auto n = static_cast<size_t>(t.n_elements());
      std::vector<uint8_t> out(n * 4);
      for (size_t i = 0; i < n; ++i) {
        const float v = 1.0f + load_as_float(t.type, t.data, i);
        std::memcpy(out.data() + 4 * i, &v, 4);
      }
      t.type = DType::F32;
      own(t, std::move(out), *f);
    } else if (reinterpret_cast<uintptr_t>(t.data) % es != 0) {
      // safetensors does not promise aligned data; the compute code reads whole elements.
      own(t, std::vector<uint8_t>(t.data, t.data + t.nbytes), *f);
    }
    f->add_tensor(std::move(t));
  }

  if (with_tokenizer) {
    const fs::path tj = ck.dir / "tokenizer.json";
    if (fs::exists(tj, ec)) {
      int64_t n_vocab = 0;
      if (const TensorInfo* e = f->find("token_embd.weight"); e && e->ne.size() == 2) {
        n_vocab = e->ne[1];
      } else if (auto v = m.get_int(std::string(arch_str(ac.arch)) + ".vocab_size")) {
        n_vocab = *v;
      }
      read_hf_tokenizer(tj.string(), m, n_vocab);
    }
  }
  return f;
}

// --- tokenizer.json ---------------------------------------------------------------

// The text of a special token in tokenizer_config.json: "..." or {"content": "..."}.
std::optional<std::string> special_text(const json& tc, const char* key) {
  const json* v = member(tc, key);
  if (!v) return std::nullopt;
  if (v->is_string()) return v->get<std::string>();
  if (const json* c = member(*v, "content"); c && c->is_string()) return c->get<std::string>();
  return std::nullopt;
}

// Whether tokenizer.json's post-processor puts token `bos` in front of a single sequence.
bool post_processor_adds(const json& tj, const std::string& bos) {
  const json* pp = member(tj, "post_processor");
  if (!pp) return false;
  std::vector<const json*> procs{pp};
  if (cfg_string(*pp, "type").value_or("") == "Sequence") {
    procs.clear();
    if (const json* list = member(*pp, "processors"); list && list->is_array()) {
      for (const json& p : *list) procs.push_back(&p);
    }
  }
  for (const json* p : procs) {
    if (cfg_string(*p, "type").value_or("") != "TemplateProcessing") continue;
    const json* single = member(*p, "single");
    if (!single || !single->is_array() || single->empty()) continue;
    const json* st = member((*single)[0], "SpecialToken");
    if (st && cfg_string(*st, "id").value_or("") == bos) return true;
  }
  return false;
}

// The tokenizer files, parsed: tokenizer.json (tj), tokenizer_config.json (tc) and config.json
// (cfg) beside it (empty objects when absent), and chat_template.jinja's text if there is one.
// path names tokenizer.json in messages.
void tokenizer_from_json(const json& tj, const json& tc, const json& cfg, std::optional<std::string> jinja_template,
                         const std::string& path, Metadata& meta, int64_t n_vocab) {
  const json* model = member(tj, "model");
  if (!model || !model->is_object()) fail("{}: tokenizer.json has no model object", path);
  std::string type = cfg_string(*model, "type").value_or(member(*model, "merges") ? "BPE" : "unknown");
  const json* bf = member(*model, "byte_fallback");
  if (type == "BPE" && bf && bf->is_boolean() && bf->get<bool>()) type = "BPE with byte_fallback (SentencePiece-style)";
  if (type != "BPE") {
    fail("{}: tokenizer.json of type {} is not supported; pass --tokenizer with a GGUF file of the same model", path,
         one_line(type).substr(0, 60));
  }

  // Token texts by id: the BPE vocabulary, then added tokens (which may reuse vocabulary ids).
  std::vector<std::optional<std::string>> texts;
  std::vector<int32_t> types;
  auto place = [&](int64_t id, const std::string& text, int32_t tt, bool allow_replace) {
    if (id < 0 || id >= kMaxVocab) fail("{}: token {} has id {}, out of range", path, one_line(text).substr(0, 40), id);
    // Before making room for it: a few bytes of tokenizer.json must not allocate for millions of ids.
    if (n_vocab > 0 && id >= n_vocab) {
      fail("{}: token {} has id {}: more than the model's vocabulary of {} has room for", path,
           one_line(text).substr(0, 40), id, n_vocab);
    }
    const auto i = static_cast<size_t>(id);
    if (i >= texts.size()) {
      texts.resize(i + 1);
      types.resize(i + 1, 5);
    }
    if (texts[i] && !allow_replace) fail("{}: two tokens have id {}", path, id);
    texts[i] = text;
    types[i] = tt;
  };
  const json* vocab = member(*model, "vocab");
  if (!vocab || !vocab->is_object()) fail("{}: tokenizer.json has no BPE vocab", path);
  for (const auto& [text, id] : vocab->items()) {
    if (!id.is_number_integer()) fail("{}: token {} has no integer id", path, one_line(text).substr(0, 40));
    place(id.get<int64_t>(), text, 1, false);
  }
  if (const json* added = member(tj, "added_tokens"); added && added->is_array()) {
    for (const json& a : *added) {
      const json* id = member(a, "id");
      const json* content = member(a, "content");
      if (!id || !id->is_number_integer() || !content || !content->is_string()) {
        fail("{}: an added_tokens entry lacks id or content", path);
      }
      const json* special = member(a, "special");
      const bool is_special = special && special->is_boolean() && special->get<bool>();
      place(id->get<int64_t>(), content->get<std::string>(), is_special ? 3 : 4, true);
    }
  }
  const size_t n_real = texts.size();
  if (n_vocab > 0 && static_cast<int64_t>(n_real) > n_vocab) {
    fail("{}: tokenizer has {} tokens, more than the model's vocabulary of {}", path, n_real, n_vocab);
  }
  // Ids without a token (gaps, and the padding of the embedding matrix) become unused tokens,
  // as llama.cpp's converter writes them.
  if (n_vocab > 0) {
    texts.resize(static_cast<size_t>(n_vocab));
    types.resize(static_cast<size_t>(n_vocab), 5);
  }
  MetaArray tokens, token_types;
  tokens.reserve(texts.size());
  token_types.reserve(texts.size());
  std::unordered_map<std::string, int64_t> ids;
  for (size_t i = 0; i < texts.size(); ++i) {
    std::string t = texts[i] ? *texts[i] : fmt::format("[PAD{}]", i);
    ids.emplace(t, static_cast<int64_t>(i));
    tokens.push_back(MetaValue::of_string(std::move(t)));
    token_types.push_back(MetaValue::of_int(types[i], MetaType::I32));
  }

  MetaArray merges;
  if (const json* mj = member(*model, "merges"); mj && mj->is_array()) {
    merges.reserve(mj->size());
    for (const json& e : *mj) {
      if (e.is_string()) {
        merges.push_back(MetaValue::of_string(e.get<std::string>()));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        // Newer tokenizers write merges as pairs.
        merges.push_back(MetaValue::of_string(e[0].get<std::string>() + " " + e[1].get<std::string>()));
      } else {
        fail("{}: a BPE merge is neither \"a b\" nor [\"a\", \"b\"]", path);
      }
    }
  }

  // Pre-tokenizer, by architecture (HF's tokenizer.json spells the regex out, GGUF names it):
  //   qwen2                          -> "qwen2"
  //   llama with more than 100k tokens -> "llama-bpe" (Llama 3's 128k vocabulary)
  //   llama with fewer               -> "smollm" (SmolLM/SmolLM2, GPT-2 regex, single digits)
  //   anything else                  -> "gpt2"
  const std::string arch = meta.get_string("general.architecture").value_or("");
  std::string pre = "gpt2";
  if (arch == "qwen2") {
    pre = "qwen2";
  } else if (arch == "llama") {
    pre = n_real > 100000 ? "llama-bpe" : "smollm";
  }

  // Special tokens: tokenizer_config.json first, then config.json for what it leaves open.
  auto id_of = [&](const std::optional<std::string>& text) -> std::optional<int64_t> {
    if (!text) return std::nullopt;
    auto it = ids.find(*text);
    if (it == ids.end()) return std::nullopt;
    return it->second;
  };
  auto config_id = [&](const char* key) -> std::optional<int64_t> {
    const json* v = member(cfg, key);
    if (v && v->is_array() && !v->empty()) v = &(*v)[0];  // eos_token_id may be a list
    if (v && v->is_number_integer()) return v->get<int64_t>();
    return std::nullopt;
  };
  const auto bos_text = special_text(tc, "bos_token");
  std::optional<int64_t> bos = id_of(bos_text), eos = id_of(special_text(tc, "eos_token"));
  const std::optional<int64_t> pad = id_of(special_text(tc, "pad_token")), unk = id_of(special_text(tc, "unk_token"));
  if (!bos) bos = config_id("bos_token_id");
  if (!eos) eos = config_id("eos_token_id");
  bool add_bos = false;
  if (const json* v = member(tc, "add_bos_token"); v && v->is_boolean()) {
    add_bos = v->get<bool>();
  } else if (bos && static_cast<size_t>(*bos) < tokens.size()) {
    add_bos = post_processor_adds(tj, *tokens[static_cast<size_t>(*bos)].as_string());
  }

  std::optional<std::string> chat_template;
  if (const json* ct = member(tc, "chat_template")) {
    if (ct->is_string()) {
      chat_template = ct->get<std::string>();
    } else if (ct->is_array()) {
      // A list of named templates: the one called "default", else the first.
      for (const json& e : *ct) {
        auto n = cfg_string(e, "name");
        auto t = cfg_string(e, "template");
        if (t && (!chat_template || n == "default")) chat_template = t;
      }
    }
  }
  if (!chat_template && jinja_template) chat_template = std::move(jinja_template);

  const auto n_tokens = static_cast<int64_t>(tokens.size());
  auto set_id = [&](const char* key, std::optional<int64_t> id) {
    if (id && *id >= 0 && *id < n_tokens) meta.set(key, MetaValue::of_uint(static_cast<uint64_t>(*id), MetaType::U32));
  };
  meta.erase_prefix("tokenizer.");
  meta.set("tokenizer.ggml.model", MetaValue::of_string("gpt2"));
  meta.set("tokenizer.ggml.pre", MetaValue::of_string(pre));
  meta.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, std::move(tokens)));
  meta.set("tokenizer.ggml.token_type", MetaValue::of_array(MetaType::I32, std::move(token_types)));
  meta.set("tokenizer.ggml.merges", MetaValue::of_array(MetaType::STRING, std::move(merges)));
  set_id("tokenizer.ggml.bos_token_id", bos);
  set_id("tokenizer.ggml.eos_token_id", eos);
  set_id("tokenizer.ggml.padding_token_id", pad);
  set_id("tokenizer.ggml.unknown_token_id", unk);
  meta.set("tokenizer.ggml.add_bos_token", MetaValue::of_bool(add_bos));
  if (const json* v = member(tc, "add_eos_token"); v && v->is_boolean()) {
    meta.set("tokenizer.ggml.add_eos_token", MetaValue::of_bool(v->get<bool>()));
  }
  if (chat_template) meta.set("tokenizer.chat_template", MetaValue::of_string(std::move(*chat_template)));
}

void read_hf_tokenizer_impl(const std::string& path, Metadata& meta, int64_t n_vocab) {
  const json tj = read_json_file(path);
  const fs::path dir = fs::path(path).parent_path();
  std::error_code ec;
  json tc = json::object(), cfg = json::object();
  if (fs::exists(dir / "tokenizer_config.json", ec)) tc = read_json_file((dir / "tokenizer_config.json").string());
  if (fs::exists(dir / "config.json", ec)) cfg = read_json_file((dir / "config.json").string());
  std::optional<std::string> jinja;
  if (fs::exists(dir / "chat_template.jinja", ec)) {
    std::ifstream in(dir / "chat_template.jinja", std::ios::binary);
    jinja = std::string(std::istreambuf_iterator<char>(in), {});
  }
  tokenizer_from_json(tj, tc, cfg, std::move(jinja), path, meta, n_vocab);
}

}  // namespace

std::unique_ptr<ModelFile> parse_safetensors(const uint8_t* data, size_t size, const std::string& name) {
  auto f = std::make_unique<ModelFile>();
  f->path = name;
  f->format = "safetensors";
  try {
    parse_into(data, size, name, *f);
  } catch (const json::exception& e) {
    fail("{}: malformed safetensors header: {}", name, json_error_text(e));
  }
  return f;
}

void read_hf_config_text(std::string_view text, const std::string& name, Metadata& meta) {
  try {
    config_from_json(parse_json(text, name), name, meta);
  } catch (const json::exception& e) {
    fail("{}: malformed config: {}", name, json_error_text(e));
  }
}

void read_hf_tokenizer_text(std::string_view tokenizer_json, std::string_view tokenizer_config, std::string_view config,
                            const std::string& name, Metadata& meta, int64_t n_vocab) {
  const fs::path dir = fs::path(name).parent_path();
  try {
    const json tj = parse_json(tokenizer_json, name);
    const json tc = tokenizer_config.empty() ? json::object()
                                             : parse_json(tokenizer_config, (dir / "tokenizer_config.json").string());
    const json cfg = config.empty() ? json::object() : parse_json(config, (dir / "config.json").string());
    tokenizer_from_json(tj, tc, cfg, std::nullopt, name, meta, n_vocab);
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer JSON: {}", name, json_error_text(e));
  }
}

std::unique_ptr<ModelFile> load_safetensors(const std::string& path, bool with_tokenizer) {
  try {
    return load_checkpoint(path, with_tokenizer);
  } catch (const json::exception& e) {
    // Type errors from a JSON value of an unexpected shape that the checks above missed.
    fail("{}: malformed JSON in the checkpoint: {}", path, json_error_text(e));
  } catch (const fs::filesystem_error& e) {
    fail("{}: {}", path, one_line(e.what()));
  }
}

std::unique_ptr<ModelFile> load_safetensors(const std::string& path) { return load_safetensors(path, true); }

void read_hf_tokenizer(const std::string& tokenizer_json_path, Metadata& meta, int64_t n_vocab) {
  try {
    read_hf_tokenizer_impl(tokenizer_json_path, meta, n_vocab);
  } catch (const json::exception& e) {
    fail("{}: malformed tokenizer JSON: {}", tokenizer_json_path, json_error_text(e));
  }
}

}  // namespace dashlm
