// Hugging Face checkpoints: stories260K rewritten as a safetensors checkpoint (HF names, HF
// q/k row order, F32/F16/BF16, one file or two shards) must load to exactly the tensors of the
// llama2.c loader; plus Gemma 3 / Qwen2 specifics, tokenizer.json, and malformed inputs.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "gguf_writer.h"
#include "model/model_file.h"

namespace dashlm {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;
using json = nlohmann::json;

const std::string kModel = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/stories260K.bin";
const std::string kTok = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/tok512.bin";

void write_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}
void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// --- float conversions (round to nearest even) --------------------------------------

uint16_t to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const int32_t e = static_cast<int32_t>((x >> 23) & 0xff);
  uint32_t mant = x & 0x7fffffu;
  if (e == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0));
  const int32_t exp = e - 127 + 15;
  if (exp >= 31) return static_cast<uint16_t>(sign | 0x7c00u);
  if (exp <= 0) {
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - exp;
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;
  return static_cast<uint16_t>(sign | h);
}

uint16_t to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

float from_bf16(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// F32 bytes converted to dtype ("F32", "F16", "BF16").
std::vector<uint8_t> convert(const uint8_t* f32, size_t n, const std::string& dtype) {
  if (dtype == "F32") return std::vector<uint8_t>(f32, f32 + n * 4);
  std::vector<uint8_t> out(n * 2);
  for (size_t i = 0; i < n; ++i) {
    float f;
    std::memcpy(&f, f32 + 4 * i, 4);
    const uint16_t h = dtype == "F16" ? to_f16(f) : to_bf16(f);
    std::memcpy(out.data() + 2 * i, &h, 2);
  }
  return out;
}

// --- a safetensors writer -------------------------------------------------------------

struct StTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;  // HF order, outermost first
  std::vector<uint8_t> data;
};

// pad: pad the header with spaces to a multiple of 8 (as the reference writer does); without
// it the data may start at any address.
std::vector<uint8_t> st_build(const std::vector<StTensor>& ts, bool pad = true) {
  json h = json::object();
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const StTensor& t : ts) {
    h[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.data.size()}}};
    off += t.data.size();
  }
  std::string hs = h.dump();
  if (pad) {
    while ((8 + hs.size()) % 8) hs += ' ';
  } else if ((8 + hs.size()) % 2 == 0) {
    hs += ' ';  // make the data start at an odd address
  }
  std::vector<uint8_t> out(8 + hs.size() + off);
  const uint64_t n = hs.size();
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, hs.data(), hs.size());
  size_t pos = 8 + hs.size();
  for (const StTensor& t : ts) {
    if (!t.data.empty()) std::memcpy(out.data() + pos, t.data.data(), t.data.size());
    pos += t.data.size();
  }
  return out;
}

// --- stories260K as an HF checkpoint ----------------------------------------------------

std::string hf_name(const std::string& g) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  static const std::vector<std::pair<std::string, std::string>> layer = {
      {"attn_norm", "input_layernorm"}, {"attn_q", "self_attn.q_proj"},      {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"}, {"ffn_norm", "post_attention_layernorm"},
      {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},           {"ffn_down", "mlp.down_proj"}};
  const size_t d1 = g.find('.', 4);
  const std::string n = g.substr(4, d1 - 4);
  const std::string mod = g.substr(d1 + 1, g.rfind('.') - d1 - 1);
  for (const auto& [a, b] : layer) {
    if (a == mod) return "model.layers." + n + "." + b + ".weight";
  }
  return "";
}

// Undo GGUF's interleaved q/k row order: HF row j*d/2 + i holds GGUF row 2i + j, per head.
std::vector<uint8_t> unpermute(const TensorInfo& t, int64_t n_head) {
  const size_t row = static_cast<size_t>(t.ne[0]) * 4;
  const int64_t rows = t.ne[1], d = rows / n_head, half = d / 2;
  std::vector<uint8_t> out(t.nbytes);
  for (int64_t h = 0; h < n_head; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(out.data() + (h * d + j * half + i) * row, t.data + (h * d + 2 * i + j) * row, row);
      }
    }
  }
  return out;
}

json stories_config() {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"model_type", "llama"},
          {"hidden_size", 64},
          {"intermediate_size", 172},
          {"num_hidden_layers", 5},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 4},
          {"max_position_embeddings", 512},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 10000.0},
          {"vocab_size", 512},
          {"tie_word_embeddings", true},
          {"bos_token_id", 1},
          {"eos_token_id", 2},
          {"torch_dtype", "float32"}};
}

std::vector<StTensor> stories_tensors(const ModelFile& ref, const std::string& dtype) {
  std::vector<StTensor> out;
  for (const TensorInfo& t : ref.tensors) {
    StTensor s;
    s.name = hf_name(t.name);
    EXPECT_FALSE(s.name.empty()) << t.name;
    s.dtype = dtype;
    s.shape.assign(t.ne.rbegin(), t.ne.rend());
    std::vector<uint8_t> f32(t.data, t.data + t.nbytes);
    if (t.name.find(".attn_q.") != std::string::npos) f32 = unpermute(t, 8);
    if (t.name.find(".attn_k.") != std::string::npos) f32 = unpermute(t, 4);
    s.data = convert(f32.data(), f32.size() / 4, dtype);
    out.push_back(std::move(s));
  }
  return out;
}

void write_config(const TempDir& d, const json& cfg) { write_text(d.path / "config.json", cfg.dump(2)); }

// Every tensor of the llama2.c loader, with the same shape and bytes (converted to dtype).
void expect_same_as_llama2c(const ModelFile& got, const ModelFile& ref, const std::string& dtype) {
  EXPECT_EQ(got.tensors.size(), ref.tensors.size());
  const DType want = dtype == "F32" ? DType::F32 : dtype == "F16" ? DType::F16 : DType::BF16;
  for (const TensorInfo& r : ref.tensors) {
    const TensorInfo* g = got.find(r.name);
    ASSERT_NE(g, nullptr) << r.name;
    EXPECT_EQ(g->ne, r.ne) << r.name;
    EXPECT_EQ(g->type, want) << r.name;
    const auto expected = convert(r.data, r.nbytes / 4, dtype);
    ASSERT_EQ(g->nbytes, expected.size()) << r.name;
    EXPECT_EQ(std::memcmp(g->data, expected.data(), expected.size()), 0) << r.name;
  }
  for (const char* k : {"llama.context_length", "llama.embedding_length", "llama.block_count",
                        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                        "llama.rope.dimension_count", "llama.vocab_size"}) {
    EXPECT_EQ(got.meta.get_int(k), ref.meta.get_int(k)) << k;
  }
  for (const char* k : {"llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"}) {
    EXPECT_EQ(got.meta.get_float(k), ref.meta.get_float(k)) << k;
  }
  EXPECT_EQ(got.meta.get_string("general.architecture"), "llama");
}

class StoriesAsHfTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StoriesAsHfTest, SingleFileLoadsLikeTheLlama2cCheckpoint) {
  const std::string dtype = GetParam();
  auto ref = load_llama2c(kModel, kTok);
  TempDir d("st_single_" + dtype);
  write_config(d, stories_config());
  write_bytes(d.path / "model.safetensors", st_build(stories_tensors(*ref, dtype)));

  for (const std::string& p : {d.path.string(), d.str("model.safetensors")}) {
    auto f = load_safetensors(p);
    EXPECT_EQ(f->format, "safetensors");
    expect_same_as_llama2c(*f, *ref, dtype);
    EXPECT_FALSE(f->meta.has("tokenizer.ggml.model"));  // no tokenizer.json here
  }
  // Through the dispatcher, with the llama2.c tokenizer supplying the vocabulary.
  auto f = open_model_file(d.path.string(), kTok);
  EXPECT_EQ(f->meta.get_string_array("tokenizer.ggml.tokens"), ref->meta.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(open_model_file(d.str("model.safetensors"))->format, "safetensors");
}

TEST_P(StoriesAsHfTest, TwoShardsWithAnIndexLoadLikeTheLlama2cCheckpoint) {
  const std::string dtype = GetParam();
  auto ref = load_llama2c(kModel, kTok);
  TempDir d("st_shards_" + dtype);
  write_config(d, stories_config());
  auto all = stories_tensors(*ref, dtype);
  std::vector<StTensor> a, b;
  json wm = json::object();
  for (size_t i = 0; i < all.size(); ++i) {
    const std::string shard = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    wm[all[i].name] = shard;
    (i % 2 ? b : a).push_back(all[i]);
  }
  write_bytes(d.path / "model-00001-of-00002.safetensors", st_build(a));
  write_bytes(d.path / "model-00002-of-00002.safetensors", st_build(b));
  write_text(d.path / "model.safetensors.index.json",
             json{{"metadata", {{"total_size", 1}}}, {"weight_map", wm}}.dump());
  expect_same_as_llama2c(*load_safetensors(d.path.string()), *ref, dtype);
  expect_same_as_llama2c(*open_model_file(d.str("model.safetensors.index.json")), *ref, dtype);

  // The index must agree with the shards.
  json wrong = wm;
  wrong["model.norm.weight"] = wm["model.norm.weight"] == "model-00001-of-00002.safetensors"
                                   ? "model-00002-of-00002.safetensors"
                                   : "model-00001-of-00002.safetensors";
  write_text(d.path / "model.safetensors.index.json", json{{"weight_map", wrong}}.dump());
  expect_error([&] { load_safetensors(d.path.string()); }, "model.norm.weight");
  json escape = wm;
  escape["model.norm.weight"] = "../model.safetensors";
  write_text(d.path / "model.safetensors.index.json", json{{"weight_map", escape}}.dump());
  expect_error([&] { load_safetensors(d.path.string()); }, "not a plain file name");
}

INSTANTIATE_TEST_SUITE_P(DTypes, StoriesAsHfTest, ::testing::Values("F32", "F16", "BF16"));

TEST(SafetensorsTest, UnalignedDataIsCopiedToAlignedMemory) {
  auto ref = load_llama2c(kModel, kTok);
  TempDir d("st_unaligned");
  write_config(d, stories_config());
  write_bytes(d.path / "model.safetensors", st_build(stories_tensors(*ref, "F32"), /*pad=*/false));
  auto f = load_safetensors(d.path.string());
  expect_same_as_llama2c(*f, *ref, "F32");
  for (const TensorInfo& t : f->tensors) EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % 4, 0u) << t.name;
}

TEST(SafetensorsTest, UntiedEmbeddingsNeedAnLmHead) {
  auto ref = load_llama2c(kModel, kTok);
  TempDir d("st_untied");
  json cfg = stories_config();
  cfg["tie_word_embeddings"] = false;
  write_config(d, cfg);
  auto ts = stories_tensors(*ref, "F32");
  write_bytes(d.path / "model.safetensors", st_build(ts));
  expect_error([&] { load_safetensors(d.path.string()); }, "lm_head.weight");
  StTensor head = ts[0];  // the embedding, as a separate classifier
  head.name = "lm_head.weight";
  ts.push_back(head);
  write_bytes(d.path / "model.safetensors", st_build(ts));
  auto f = load_safetensors(d.path.string());
  ASSERT_NE(f->find("output.weight"), nullptr);
  EXPECT_EQ(f->need("output.weight").ne, (std::vector<int64_t>{64, 512}));
  // Tied: an lm_head in the file is ignored, as the HF model ignores it.
  cfg["tie_word_embeddings"] = true;
  write_config(d, cfg);
  EXPECT_EQ(load_safetensors(d.path.string())->find("output.weight"), nullptr);
}

// --- small synthetic models ---------------------------------------------------------------

// Values 0.01 * (i + 1) + offset, as dtype.
StTensor tensor(const std::string& name, const std::string& dtype, std::vector<int64_t> shape, float offset = 0) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> v(static_cast<size_t>(n));
  for (size_t i = 0; i < v.size(); ++i) v[i] = 0.01f * static_cast<float>(i + 1) + offset;
  return {name, dtype, std::move(shape), convert(reinterpret_cast<const uint8_t*>(v.data()), v.size(), dtype)};
}

// A one-layer decoder: hidden 8, 2 heads of 4, 1 KV head, FFN 16, vocab 10.
std::vector<StTensor> tiny_layer(const std::string& prefix, const std::string& dtype, bool gemma, bool bias) {
  const std::string l = prefix + "model.layers.0.";
  std::vector<StTensor> t = {
      tensor(prefix + "model.embed_tokens.weight", dtype, {10, 8}),
      tensor(l + "input_layernorm.weight", dtype, {8}, 1),
      tensor(l + "self_attn.q_proj.weight", dtype, {8, 8}),
      tensor(l + "self_attn.k_proj.weight", dtype, {4, 8}),
      tensor(l + "self_attn.v_proj.weight", dtype, {4, 8}),
      tensor(l + "self_attn.o_proj.weight", dtype, {8, 8}),
      tensor(l + "post_attention_layernorm.weight", dtype, {8}, 2),
      tensor(l + "mlp.gate_proj.weight", dtype, {16, 8}),
      tensor(l + "mlp.up_proj.weight", dtype, {16, 8}),
      tensor(l + "mlp.down_proj.weight", dtype, {8, 16}),
      tensor(prefix + "model.norm.weight", dtype, {8}, 3),
  };
  if (gemma) {
    t.push_back(tensor(l + "self_attn.q_norm.weight", dtype, {4}, 4));
    t.push_back(tensor(l + "self_attn.k_norm.weight", dtype, {4}, 5));
    t.push_back(tensor(l + "pre_feedforward_layernorm.weight", dtype, {8}, 6));
    t.push_back(tensor(l + "post_feedforward_layernorm.weight", dtype, {8}, 7));
  }
  if (bias) {
    t.push_back(tensor(l + "self_attn.q_proj.bias", dtype, {8}));
    t.push_back(tensor(l + "self_attn.k_proj.bias", dtype, {4}));
    t.push_back(tensor(l + "self_attn.v_proj.bias", dtype, {4}));
  }
  return t;
}

json tiny_config(const std::string& arch) {
  return {{"architectures", {arch}}, {"hidden_size", 8},         {"intermediate_size", 16},
          {"num_hidden_layers", 1},  {"num_attention_heads", 2}, {"num_key_value_heads", 1},
          {"vocab_size", 10},        {"rms_norm_eps", 1e-6},     {"max_position_embeddings", 128}};
}

const StTensor& by_name(const std::vector<StTensor>& ts, const std::string& n) {
  for (const StTensor& t : ts) {
    if (t.name == n) return t;
  }
  throw std::runtime_error("no " + n);
}

TEST(SafetensorsTest, Gemma3NormsBecomeOnePlusWeightAndNothingIsPermuted) {
  TempDir d("st_gemma3");
  json cfg = tiny_config("Gemma3ForCausalLM");
  cfg["model_type"] = "gemma3_text";
  cfg["head_dim"] = 4;
  cfg["sliding_window"] = 512;
  cfg["rope_theta"] = 1000000.0;
  cfg["rope_local_base_freq"] = 10000.0;
  cfg["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 8.0}};
  write_config(d, cfg);
  const auto ts = tiny_layer("", "BF16", true, false);
  write_bytes(d.path / "model.safetensors", st_build(ts));
  auto f = load_safetensors(d.path.string());
  const std::vector<std::pair<std::string, std::string>> norms = {
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.0.post_attention_norm.weight", "model.layers.0.post_attention_layernorm.weight"},
      {"blk.0.ffn_norm.weight", "model.layers.0.pre_feedforward_layernorm.weight"},
      {"blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"},
      {"blk.0.attn_q_norm.weight", "model.layers.0.self_attn.q_norm.weight"},
      {"blk.0.attn_k_norm.weight", "model.layers.0.self_attn.k_norm.weight"},
      {"output_norm.weight", "model.norm.weight"},
  };
  for (const auto& [g, h] : norms) {
    const TensorInfo& t = f->need(g);
    EXPECT_EQ(t.type, DType::F32) << g;
    const StTensor& src = by_name(ts, h);
    ASSERT_EQ(t.nbytes, src.data.size() * 2) << g;
    for (size_t i = 0; i < src.data.size() / 2; ++i) {
      uint16_t b;
      std::memcpy(&b, src.data.data() + 2 * i, 2);
      float got;
      std::memcpy(&got, t.data + 4 * i, 4);
      EXPECT_EQ(got, 1.0f + from_bf16(b)) << g << " [" << i << "]";
    }
  }
  // q/k keep HF order for gemma3 (GGUF uses the NeoX rotation for it).
  const TensorInfo& q = f->need("blk.0.attn_q.weight");
  EXPECT_EQ(q.type, DType::BF16);
  EXPECT_EQ(q.ne, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(std::memcmp(q.data, by_name(ts, "model.layers.0.self_attn.q_proj.weight").data.data(), q.nbytes), 0);
  EXPECT_EQ(f->need("blk.0.attn_k.weight").ne, (std::vector<int64_t>{8, 4}));
  EXPECT_EQ(f->need("blk.0.ffn_down.weight").ne, (std::vector<int64_t>{16, 8}));

  const Metadata& m = f->meta;
  EXPECT_EQ(m.get_string("general.architecture"), "gemma3");
  EXPECT_EQ(m.get_int("gemma3.embedding_length"), 8);
  EXPECT_EQ(m.get_int("gemma3.attention.key_length"), 4);
  EXPECT_EQ(m.get_int("gemma3.attention.value_length"), 4);
  EXPECT_EQ(m.get_int("gemma3.attention.sliding_window"), 512);
  EXPECT_EQ(m.get_int("gemma3.context_length"), 128);
  EXPECT_EQ(m.get_float("gemma3.rope.freq_base"), 1e6);
  EXPECT_EQ(m.get_float("gemma3.rope.freq_base_swa"), 1e4);
  EXPECT_EQ(m.get_string("gemma3.rope.scaling.type"), "linear");
  EXPECT_EQ(m.get_float("gemma3.rope.scaling.factor"), 8.0);
  EXPECT_FLOAT_EQ(static_cast<float>(*m.get_float("gemma3.attention.layer_norm_rms_epsilon")), 1e-6f);

  // With a tokenizer smaller than the embedding, the padding rows are dropped (as llama.cpp's
  // converter does for Gemma 3).
  test::GgufWriter w;
  w.set("tokenizer.ggml.model", MetaValue::of_string("llama"));
  MetaArray toks;
  for (int i = 0; i < 8; ++i) toks.push_back(MetaValue::of_string("t" + std::to_string(i)));
  w.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, toks));
  w.write(d.str("tok.gguf"));
  auto g = open_model_file(d.path.string(), d.str("tok.gguf"));
  EXPECT_EQ(g->need("token_embd.weight").ne, (std::vector<int64_t>{8, 8}));
  EXPECT_EQ(g->need("token_embd.weight").nbytes, 8u * 8u * 2u);
  EXPECT_EQ(g->meta.get_int("gemma3.vocab_size"), 8);
}

TEST(SafetensorsTest, Gemma3MultimodalCheckpointUsesTheTextModel) {
  TempDir d("st_gemma3_mm");
  json text = tiny_config("unused");
  text.erase("architectures");
  text["model_type"] = "gemma3_text";
  text["head_dim"] = 4;
  json cfg = {{"architectures", {"Gemma3ForConditionalGeneration"}}, {"model_type", "gemma3"}, {"text_config", text}};
  write_config(d, cfg);
  auto ts = tiny_layer("language_model.", "F32", true, false);
  ts.push_back(tensor("vision_tower.vision_model.embeddings.patch_embedding.weight", "F32", {4, 3}));
  ts.push_back(tensor("multi_modal_projector.mm_input_projection_weight", "F32", {2, 2}));
  write_bytes(d.path / "model.safetensors", st_build(ts));
  auto f = load_safetensors(d.path.string());
  EXPECT_EQ(f->meta.get_string("general.architecture"), "gemma3");
  EXPECT_EQ(f->tensors.size(), 15u);
  EXPECT_NE(f->find("token_embd.weight"), nullptr);
  EXPECT_NE(f->find("blk.0.post_ffw_norm.weight"), nullptr);
  // Gemma3TextConfig defaults fill what the multimodal config leaves out.
  EXPECT_EQ(f->meta.get_int("gemma3.attention.sliding_window"), 4096);
}

TEST(SafetensorsTest, Qwen2KeepsRowOrderAndMapsBiases) {
  TempDir d("st_qwen2");
  write_config(d, tiny_config("Qwen2ForCausalLM"));
  auto ts = tiny_layer("", "F32", false, true);
  ts.push_back(tensor("lm_head.weight", "F32", {10, 8}));
  ts.push_back(tensor("model.layers.0.self_attn.rotary_emb.inv_freq", "F32", {2}));
  write_bytes(d.path / "model.safetensors", st_build(ts));
  auto f = load_safetensors(d.path.string());
  EXPECT_EQ(f->meta.get_string("general.architecture"), "qwen2");
  EXPECT_EQ(f->tensors.size(), 15u);  // inv_freq dropped
  for (const auto& [g, h] : std::vector<std::pair<std::string, std::string>>{
           {"blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"},
           {"blk.0.attn_q.bias", "model.layers.0.self_attn.q_proj.bias"},
           {"blk.0.attn_k.bias", "model.layers.0.self_attn.k_proj.bias"},
           {"blk.0.attn_v.bias", "model.layers.0.self_attn.v_proj.bias"},
           {"blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"},
           {"output.weight", "lm_head.weight"}}) {
    const TensorInfo& t = f->need(g);
    const StTensor& s = by_name(ts, h);
    ASSERT_EQ(t.nbytes, s.data.size()) << g;
    EXPECT_EQ(std::memcmp(t.data, s.data.data(), t.nbytes), 0) << g;
  }
  EXPECT_EQ(f->need("blk.0.attn_q.bias").ne, (std::vector<int64_t>{8}));
}

TEST(SafetensorsTest, LlamaPermutesBiasesToo) {
  TempDir d("st_llama_bias");
  write_config(d, tiny_config("LlamaForCausalLM"));
  const auto ts = tiny_layer("", "F32", false, true);
  write_bytes(d.path / "model.safetensors", st_build(ts));
  auto f = load_safetensors(d.path.string());
  // 2 heads of 4: GGUF order within a head is HF rows 0, 2, 1, 3.
  const TensorInfo& b = f->need("blk.0.attn_q.bias");
  const StTensor& s = by_name(ts, "model.layers.0.self_attn.q_proj.bias");
  const int order[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  for (int i = 0; i < 8; ++i) EXPECT_EQ(std::memcmp(b.data + 4 * i, s.data.data() + 4 * order[i], 4), 0) << i;
  const TensorInfo& q = f->need("blk.0.attn_q.weight");
  const StTensor& qs = by_name(ts, "model.layers.0.self_attn.q_proj.weight");
  for (int i = 0; i < 8; ++i) EXPECT_EQ(std::memcmp(q.data + 32 * i, qs.data.data() + 32 * order[i], 32), 0) << i;
  // k has one head of 4.
  const TensorInfo& k = f->need("blk.0.attn_k.weight");
  const StTensor& ks = by_name(ts, "model.layers.0.self_attn.k_proj.weight");
  for (int i = 0; i < 4; ++i) EXPECT_EQ(std::memcmp(k.data + 32 * i, ks.data.data() + 32 * order[i], 32), 0) << i;
  EXPECT_EQ(f->meta.get_string("general.name"), d.path.filename().string());
}

TEST(SafetensorsTest, RopeScalingKeys) {
  TempDir d("st_rope");
  json cfg = tiny_config("LlamaForCausalLM");
  cfg["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}};
  cfg["rope_theta"] = 500000.0;
  write_config(d, cfg);
  write_bytes(d.path / "model.safetensors", st_build(tiny_layer("", "F32", false, false)));
  auto f = load_safetensors(d.path.string());
  const Metadata& m = f->meta;
  EXPECT_EQ(m.get_string("llama.rope.scaling.type"), "llama3");
  EXPECT_EQ(m.get_float("llama.rope.scaling.factor"), 8.0);
  EXPECT_EQ(m.get_float("llama.rope.scaling.low_freq_factor"), 1.0);
  EXPECT_EQ(m.get_float("llama.rope.scaling.high_freq_factor"), 4.0);
  EXPECT_EQ(m.get_int("llama.rope.scaling.original_max_position_embeddings"), 8192);
  EXPECT_EQ(m.get_float("llama.rope.freq_base"), 500000.0);
  cfg["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  write_config(d, cfg);
  f = load_safetensors(d.path.string());
  EXPECT_EQ(f->meta.get_string("llama.rope.scaling.type"), "linear");
  EXPECT_EQ(f->meta.get_float("llama.rope.scaling.factor"), 2.0);
}

// --- tokenizer.json ----------------------------------------------------------------------

json byte_level_tokenizer() {
  return {{"version", "1.0"},
          {"added_tokens",
           {{{"id", 5}, {"content", "<|endoftext|>"}, {"special", true}},
            {{"id", 7}, {"content", "<tool>"}, {"special", false}}}},
          {"pre_tokenizer", {{"type", "ByteLevel"}}},
          {"post_processor", nullptr},
          {"model",
           {{"type", "BPE"},
            {"byte_fallback", false},
            {"vocab",
             {{"a", 0},
              {"b", 1},
              {"ab", 2},
              {"\xc4\xa0", 3},
              {"\xc4\xa0"
               "ab",
               4}}},
            {"merges", {"a b", {"\xc4\xa0", "ab"}}}}}};
}

TEST(SafetensorsTest, ByteLevelBpeTokenizerJsonBecomesGpt2Keys) {
  TempDir d("st_tok");
  write_config(d, tiny_config("LlamaForCausalLM"));
  write_bytes(d.path / "model.safetensors", st_build(tiny_layer("", "F32", false, false)));
  write_text(d.path / "tokenizer.json", byte_level_tokenizer().dump());
  write_text(d.path / "tokenizer_config.json",
             json{{"eos_token", "<|endoftext|>"}, {"bos_token", nullptr}, {"chat_template", "{{ messages }}"}}.dump());
  auto f = load_safetensors(d.path.string());
  const Metadata& m = f->meta;
  EXPECT_EQ(m.get_string("tokenizer.ggml.model"), "gpt2");
  EXPECT_EQ(m.get_string("tokenizer.ggml.pre"), "smollm");
  const auto tokens = *m.get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(tokens.size(), 10u);  // padded to the embedding's 10 rows
  EXPECT_EQ(tokens[4],
            "\xc4\xa0"
            "ab");
  EXPECT_EQ(tokens[5], "<|endoftext|>");
  EXPECT_EQ(tokens[6], "[PAD6]");
  EXPECT_EQ(tokens[7], "<tool>");
  EXPECT_EQ(tokens[9], "[PAD9]");
  EXPECT_EQ(m.get_int_array("tokenizer.ggml.token_type"), (std::vector<int64_t>{1, 1, 1, 1, 1, 3, 5, 4, 5, 5}));
  EXPECT_EQ(m.get_string_array("tokenizer.ggml.merges"), (std::vector<std::string>{"a b", "\xc4\xa0 ab"}));
  EXPECT_EQ(m.get_int("tokenizer.ggml.eos_token_id"), 5);
  EXPECT_FALSE(m.has("tokenizer.ggml.bos_token_id"));  // neither file names one that exists
  EXPECT_EQ(m.get_bool("tokenizer.ggml.add_bos_token"), false);
  EXPECT_EQ(m.get_string("tokenizer.chat_template"), "{{ messages }}");

  // config.json fills in a BOS that tokenizer_config.json leaves out; a TemplateProcessing
  // post-processor that starts with it means add_bos_token.
  json cfg = tiny_config("LlamaForCausalLM");
  cfg["bos_token_id"] = 5;
  write_config(d, cfg);
  json tj = byte_level_tokenizer();
  tj["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single",
       {{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  write_text(d.path / "tokenizer.json", tj.dump());
  f = load_safetensors(d.path.string());
  EXPECT_EQ(f->meta.get_int("tokenizer.ggml.bos_token_id"), 5);
  EXPECT_EQ(f->meta.get_bool("tokenizer.ggml.add_bos_token"), true);

  // A tokenizer.json passed with --tokenizer works the same way.
  auto g = open_model_file(d.path.string(), d.str("tokenizer.json"));
  EXPECT_EQ(g->meta.get_string_array("tokenizer.ggml.tokens")->size(), 10u);
  // So does a folder holding one.
  g = open_model_file(d.path.string(), d.path.string());
  EXPECT_EQ(g->meta.get_string("tokenizer.ggml.model"), "gpt2");
  TempDir empty("st_tok_empty");
  expect_error([&] { open_model_file(d.path.string(), empty.path.string()); }, "has no tokenizer.json");
}

TEST(SafetensorsTest, UnsupportedTokenizerJsonKinds) {
  TempDir d("st_tok_bad");
  write_config(d, tiny_config("LlamaForCausalLM"));
  write_bytes(d.path / "model.safetensors", st_build(tiny_layer("", "F32", false, false)));
  json uni = {{"model", {{"type", "Unigram"}, {"vocab", json::array()}}}};
  write_text(d.path / "tokenizer.json", uni.dump());
  expect_error([&] { load_safetensors(d.path.string()); },
               "tokenizer.json of type Unigram is not supported; pass --tokenizer with a GGUF file of the same model");
  json spm = byte_level_tokenizer();
  spm["model"]["byte_fallback"] = true;
  write_text(d.path / "tokenizer.json", spm.dump());
  expect_error([&] { load_safetensors(d.path.string()); }, "byte_fallback");

  // With --tokenizer naming a GGUF, the unsupported tokenizer.json beside the weights is ignored.
  test::GgufWriter w;
  w.set("tokenizer.ggml.model", MetaValue::of_string("llama"));
  w.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("x")}));
  w.write(d.str("tok.gguf"));
  auto f = open_model_file(d.path.string(), d.str("tok.gguf"));
  EXPECT_EQ(f->meta.get_string("tokenizer.ggml.model"), "llama");

  // More tokens than the model has rows.
  json big = byte_level_tokenizer();
  big["added_tokens"].push_back({{"id", 12}, {"content", "<x>"}, {"special", true}});
  write_text(d.path / "tokenizer.json", big.dump());
  expect_error([&] { load_safetensors(d.path.string()); }, "more than the model's vocabulary of 10");
}

// --- malformed checkpoints ---------------------------------------------------------------

TEST(SafetensorsTest, MalformedHeadersAndTensors) {
  auto parse = [](const std::vector<uint8_t>& b) { return parse_safetensors(b.data(), b.size(), "x.safetensors"); };
  // In memory, names stay HF names.
  auto ok = parse(st_build({tensor("a.weight", "F16", {2, 3}), tensor("b", "F32", {})}));
  EXPECT_EQ(ok->tensors.size(), 2u);
  EXPECT_EQ(ok->need("a.weight").ne, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(ok->need("a.weight").type, DType::F16);
  EXPECT_EQ(ok->need("b").ne, (std::vector<int64_t>{1}));

  expect_error([&] { parse(st_build({tensor("x", "I64", {2})})); }, "tensor x has dtype I64");
  expect_error([&] { parse(st_build({tensor("x", "F8_E4M3", {2})})); }, "F8_E4M3");
  auto b = st_build({tensor("t", "F32", {4})});
  b.resize(b.size() - 4);
  expect_error([&] { parse(b); }, "tensor t has data_offsets [0, 16] outside");
  // Offsets whose length disagrees with shape x dtype.
  auto mismatch = st_build({tensor("m", "F32", {4})});
  std::vector<uint8_t> mm = mismatch;
  const std::string text(mismatch.begin(), mismatch.end());
  mm[text.find("[4]") + 1] = '3';
  expect_error([&] { parse(mm); }, "tensor m has 16 bytes of data but its shape and dtype");
  // Header problems.
  std::vector<uint8_t> h(8, 0);
  uint64_t n = 1000;
  std::memcpy(h.data(), &n, 8);
  h.push_back('{');
  expect_error([&] { parse(h); }, "header length 1000 exceeds");
  auto mk = [](const std::string& header) {
    std::vector<uint8_t> v(8 + header.size());
    const uint64_t len = header.size();
    std::memcpy(v.data(), &len, 8);
    std::memcpy(v.data() + 8, header.data(), header.size());
    return v;
  };
  expect_error([&] { parse(mk("{\"a\": ")); }, "not valid JSON");
  expect_error([&] { parse(mk("[1, 2]")); }, "not a JSON object");
  expect_error(
      [&] {
        parse(mk(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
                                   "a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}})"));
      },
      "lists tensor a twice");
  expect_error([&] { parse(mk(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})")); }, "shape");
  expect_error([&] { parse(mk(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})")); }, "data_offsets");
  expect_error([&] { parse(mk(R"({"a": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}})")); }, "dtype");
  expect_error(
      [&] { parse(mk(R"({"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})")); },
      "impossibly large");
  expect_error([&] { parse(mk(R"({"a": {"dtype": "F32", "shape": [1,1,1,1,1], "data_offsets": [0, 4]}})")); },
               "5 dimensions");
  expect_error([&] { parse(mk(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})")); }, "outside");
  expect_error([&] { parse(std::vector<uint8_t>(5, 0)); }, "too short");
}

TEST(SafetensorsTest, ConfigProblems) {
  TempDir d("st_cfg");
  write_bytes(d.path / "model.safetensors", st_build(tiny_layer("", "F32", false, false)));
  expect_error([&] { load_safetensors(d.path.string()); }, "config.json not found");
  write_text(d.path / "config.json", "{not json");
  expect_error([&] { load_safetensors(d.path.string()); }, "not valid JSON");
  write_config(d, tiny_config("BertModel"));
  expect_error([&] { load_safetensors(d.path.string()); }, "architecture BertModel is not supported");
  json cfg = tiny_config("LlamaForCausalLM");
  cfg.erase("hidden_size");
  write_config(d, cfg);
  expect_error([&] { load_safetensors(d.path.string()); }, "hidden_size is missing");
  cfg = tiny_config("LlamaForCausalLM");
  cfg["num_attention_heads"] = "eight";
  write_config(d, cfg);
  expect_error([&] { load_safetensors(d.path.string()); }, "num_attention_heads must be an integer");
  cfg = tiny_config("LlamaForCausalLM");
  cfg["num_hidden_layers"] = 0;
  write_config(d, cfg);
  expect_error([&] { load_safetensors(d.path.string()); }, "num_hidden_layers = 0");
  // Only model_type, no architectures list.
  cfg = tiny_config("x");
  cfg.erase("architectures");
  cfg["model_type"] = "mistral";
  write_config(d, cfg);
  EXPECT_EQ(load_safetensors(d.path.string())->meta.get_string("general.architecture"), "llama");
  // A layer beyond num_hidden_layers.
  auto ts = tiny_layer("", "F32", false, false);
  ts.push_back(tensor("model.layers.3.input_layernorm.weight", "F32", {8}));
  write_bytes(d.path / "model.safetensors", st_build(ts));
  expect_error([&] { load_safetensors(d.path.string()); }, "layer 3");
  // Directories without weights, or with several files and no index.
  TempDir e("st_cfg_empty");
  write_config(e, tiny_config("LlamaForCausalLM"));
  expect_error([&] { load_safetensors(e.path.string()); }, "no .safetensors file");
  write_bytes(e.path / "a.safetensors", st_build({}));
  write_bytes(e.path / "b.safetensors", st_build({}));
  expect_error([&] { load_safetensors(e.path.string()); }, "no model.safetensors.index.json");
}

}  // namespace
}  // namespace dashlm
