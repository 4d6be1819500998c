// Hostile model files and settings (issue 17): hyperparameters out of range or inconsistent,
// layers declared but not present, non-finite weights, contexts that cannot fit in memory, output
// files, eval metrics that are not numbers. Every model is a tiny GGUF written here.
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/files.h"
#include "common/finite.h"
#include "common/memory.h"
#include "eval/eval.h"
#include "gguf_writer.h"
#include "model/model.h"
#include "runtime/dash/config.h"
#include "runtime/engine.h"
#include "runtime/engine_factory.h"
#include "test_util.h"

namespace dashlm {
namespace {

using test::expect_error;
using test::TempDir;

// A llama of 16 dims, 2 heads, 32 MLP columns and 4 tokens, with small deterministic weights
// (so that it computes finite logits). Metadata can be overridden or removed; the file can hold
// tensors of a different number of layers than it declares; one tensor can be filled with a value.
struct TinyLlama {
  int layers = 2;  // layers whose tensors the file holds
  std::map<std::string, MetaValue> meta;
  std::string poisoned;  // tensor filled with `poison`
  float poison = std::numeric_limits<float>::quiet_NaN();

  TinyLlama() {
    auto u32 = [](uint64_t v) { return MetaValue::of_uint(v, MetaType::U32); };
    meta["general.architecture"] = MetaValue::of_string("llama");
    meta["llama.block_count"] = u32(2);
    meta["llama.embedding_length"] = u32(16);
    meta["llama.feed_forward_length"] = u32(32);
    meta["llama.attention.head_count"] = u32(2);
    meta["llama.context_length"] = u32(64);
    meta["tokenizer.ggml.model"] = MetaValue::of_string("llama");
    MetaArray toks, scores, types;
    for (const char* t : {"<unk>", "<s>", "</s>", "\xe2\x96\x81" "a"}) toks.push_back(MetaValue::of_string(t));
    for (float s : {0.f, 0.f, 0.f, -1.f}) scores.push_back(MetaValue::of_float(s));
    for (int t : {2, 3, 3, 1}) types.push_back(MetaValue::of_int(t, MetaType::I32));
    meta["tokenizer.ggml.tokens"] = MetaValue::of_array(MetaType::STRING, toks);
    meta["tokenizer.ggml.scores"] = MetaValue::of_array(MetaType::F32, scores);
    meta["tokenizer.ggml.token_type"] = MetaValue::of_array(MetaType::I32, types);
    meta["tokenizer.ggml.bos_token_id"] = u32(1);
    meta["tokenizer.ggml.eos_token_id"] = u32(2);
  }

  std::string write(const TempDir& dir, const std::string& name) const {
    test::GgufWriter w;
    for (const auto& [k, v] : meta) w.set(k, v);
    uint32_t seed = 1;
    auto add = [&](const std::string& tname, std::vector<uint64_t> ne, float base) {
      uint64_t n = 1;
      for (uint64_t d : ne) n *= d;
      std::vector<float> v(n);
      for (float& x : v) {
        seed = seed * 1664525u + 1013904223u;
        x = tname == poisoned ? poison : base + 0.1f * (static_cast<float>(seed >> 8) / 16777216.f - 0.5f);
      }
      w.add_f32(tname, std::move(ne), v);
    };
    const uint64_t d = 16, ff = 32, nv = 4;
    add("token_embd.weight", {d, nv}, 0.f);
    add("output_norm.weight", {d}, 1.f);
    for (int i = 0; i < layers; ++i) {
      const std::string p = "blk." + std::to_string(i) + ".";
      add(p + "attn_norm.weight", {d}, 1.f);
      add(p + "ffn_norm.weight", {d}, 1.f);
      add(p + "attn_q.weight", {d, d}, 0.f);
      add(p + "attn_k.weight", {d, d}, 0.f);
      add(p + "attn_v.weight", {d, d}, 0.f);
      add(p + "attn_output.weight", {d, d}, 0.f);
      add(p + "ffn_gate.weight", {d, ff}, 0.f);
      add(p + "ffn_up.weight", {d, ff}, 0.f);
      add(p + "ffn_down.weight", {ff, d}, 0.f);
    }
    const std::string path = dir.str(name);
    w.write(path);
    return path;
  }
};

MetaValue f32(double v) { return MetaValue::of_float(v, MetaType::F32); }
MetaValue u32(uint64_t v) { return MetaValue::of_uint(v, MetaType::U32); }

// --- hyperparameters ----------------------------------------------------------------

TEST(HardeningHParams, TheWellFormedTinyModelLoadsAndRuns) {
  TempDir dir("hp_ok");
  auto m = Model::load(TinyLlama().write(dir, "ok.gguf"));
  EXPECT_EQ(m->hp().n_layer, 2);
  Engine e(*m, 8);
  const std::vector<int32_t> toks = {1, 3, 3};
  const std::vector<float> logits = e.prefill(toks);
  for (float x : logits) EXPECT_TRUE(std::isfinite(x));
}

TEST(HardeningHParams, FloatHyperparametersMustBePositiveAndFinite) {
  TempDir dir("hp_float");
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  struct Case {
    std::string key;
    double value;
    std::string shown;
  };
  const std::vector<Case> cases = {
      {"llama.rope.freq_base", nan, "nan"},   {"llama.rope.freq_base", 0, "0"},
      {"llama.rope.freq_base", -1, "-1"},     {"llama.rope.freq_base", inf, "inf"},
      {"llama.attention.layer_norm_rms_epsilon", inf, "inf"},
      {"llama.attention.layer_norm_rms_epsilon", 0, "0"},
      {"llama.attention.layer_norm_rms_epsilon", nan, "nan"},
      {"llama.attention.layer_norm_rms_epsilon", -1e-5, "-1e-05"},  // shown as the f32 it is
  };
  for (const Case& c : cases) {
    TinyLlama t;
    t.meta[c.key] = f32(c.value);
    const std::string path = t.write(dir, "m.gguf");
    expect_error([&] { Model::load(path); }, "metadata " + c.key + " = " + c.shown + " must be a positive finite number");
  }
  // A RoPE base beyond float's range (an f64 value) is not finite once used.
  TinyLlama big;
  big.meta["llama.rope.freq_base"] = MetaValue::of_float(1e300, MetaType::F64);
  const std::string path = big.write(dir, "big.gguf");
  expect_error([&] { Model::load(path); }, "llama.rope.freq_base = 1e+300");
  // Linear RoPE scaling with a zero factor.
  TinyLlama lin;
  lin.meta["llama.rope.scaling.type"] = MetaValue::of_string("linear");
  lin.meta["llama.rope.scaling.factor"] = f32(0);
  const std::string lp = lin.write(dir, "lin.gguf");
  expect_error([&] { Model::load(lp); }, "llama.rope.scaling.factor = 0");
}

TEST(HardeningHParams, CountsMustBeInRange) {
  TempDir dir("hp_int");
  struct Case {
    std::string key;
    MetaValue value;
    std::string part;
  };
  const std::vector<Case> cases = {
      {"llama.attention.head_count", u32(0), "llama.attention.head_count = 0 is out of range"},
      {"llama.context_length", u32(0), "llama.context_length = 0 is out of range"},
      {"llama.feed_forward_length", MetaValue::of_int(-32, MetaType::I32), "llama.feed_forward_length = -32 is out of range"},
      // 2^31 does not fit an int: refused, not wrapped (the old check let 2^31 itself through).
      {"llama.context_length", MetaValue::of_uint(uint64_t{1} << 31), "llama.context_length = 2147483648 is out of range"},
      {"llama.attention.head_count_kv", MetaValue::of_uint(uint64_t{1} << 31), "= 2147483648 is out of range"},
      {"llama.attention.key_length", u32(0), "llama.attention.key_length = 0 is out of range"},
  };
  for (const Case& c : cases) {
    TinyLlama t;
    t.meta[c.key] = c.value;
    const std::string path = t.write(dir, "m.gguf");
    expect_error([&] { Model::load(path); }, c.part);
  }
  TinyLlama ok_max;
  ok_max.meta["llama.context_length"] = MetaValue::of_uint((uint64_t{1} << 31) - 1);
  const std::string p = ok_max.write(dir, "max.gguf");
  EXPECT_EQ(Model::load(p)->hp().n_ctx_train, (int64_t{1} << 31) - 1);
}

TEST(HardeningHParams, HeadCountsMustDivide) {
  TempDir dir("hp_heads");
  TinyLlama t;
  t.meta["llama.attention.head_count"] = u32(3);  // 16 dims do not split into 3 heads
  std::string path = t.write(dir, "a.gguf");
  expect_error([&] { Model::load(path); }, "llama.embedding_length 16 is not a multiple of llama.attention.head_count 3");
  TinyLlama kv;
  kv.meta["llama.attention.head_count_kv"] = u32(3);  // 2 heads do not share 3 kv heads
  path = kv.write(dir, "b.gguf");
  expect_error([&] { Model::load(path); }, "llama.attention.head_count 2 is not a multiple of llama.attention.head_count_kv 3");
}

TEST(HardeningHParams, LayersPresentMustEqualLayersDeclared) {
  TempDir dir("hp_layers");
  TinyLlama fewer;
  fewer.meta["llama.block_count"] = u32(1);  // declares 1, holds 2
  std::string path = fewer.write(dir, "fewer.gguf");
  expect_error([&] { Model::load(path); }, "block_count declares 1 layers, but the file holds tensors of 2 layers");
  TinyLlama more;
  more.meta["llama.block_count"] = u32(3);  // declares 3, holds 2
  path = more.write(dir, "more.gguf");
  expect_error([&] { Model::load(path); }, "block_count declares 3 layers, but the file holds tensors of 2 layers");
}

TEST(HardeningHParams, ASafetensorsFileWithABadHeaderLengthIsCalledThat) {
  TempDir dir("st_header");
  for (uint64_t n : {uint64_t{1} << 40, uint64_t{5000}, uint64_t{1}}) {
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i) bytes[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
    bytes += R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})";
    bytes += std::string(4, '\0');
    const std::string path = dir.str("model.safetensors");
    std::ofstream(path, std::ios::binary) << bytes;
    // Without its config.json: a safetensors file that lacks one, not "not a llama2.c checkpoint".
    std::filesystem::remove(dir.str("config.json"));
    expect_error([&] { Model::load(path); }, "config.json not found beside it");
    std::ofstream(dir.str("config.json")) << R"({"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10})";
    expect_error([&] { Model::load(path); }, "bad safetensors header (header length " + std::to_string(n));
  }
}

// --- non-finite weights --------------------------------------------------------------

TEST(HardeningNonFinite, NaNWeightsNameTheFirstLayerThatIsNotFinite) {
  TempDir dir("nan");
  const std::vector<int32_t> toks = {1, 3, 3, 3};
  struct Case {
    std::string tensor;
    float value;
    std::string part;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<Case> cases = {
      {"blk.1.ffn_down.weight", nan, "stopped being finite at layer 1 (of layers 0..1)"},
      {"blk.0.attn_v.weight", inf, "stopped being finite at layer 0 (of layers 0..1)"},
      // Every score of a head NaN (a query or key projection): the softmax must not take it
      // for a row that sees no key and output zeros.
      {"blk.1.attn_q.weight", nan, "stopped being finite at layer 1 (of layers 0..1)"},
      {"blk.0.attn_k.weight", inf, "stopped being finite at layer 0 (of layers 0..1)"},
      {"token_embd.weight", nan, "the token embeddings already are"},
      {"output_norm.weight", inf, "the output norm or projection"},
  };
  for (const Case& c : cases) {
    TinyLlama t;
    t.poisoned = c.tensor;
    t.poison = c.value;
    auto m = Model::load(t.write(dir, "m.gguf"));
    // With and without halting, and as a one-token decode step after a clean prompt.
    Engine e(*m, 16);
    expect_error([&] { e.prefill(toks); }, c.part);
    const HaltingConfig hc = HaltingConfig::parse("topk:0.5:0.5:drop");
    PrefillOptions po;
    po.halting = &hc;
    Engine h(*m, 16);
    expect_error([&] { h.prefill(toks, po); }, "the logits are not finite (NaN or Inf)");
  }
}

// --attn-queries beyond the prompt's length means every row (it once sized a buffer by it).
TEST(HardeningBounds, AttnQueriesBeyondThePromptMeanEveryRow) {
  TempDir dir("attnq");
  TinyLlama t;
  auto m = Model::load(t.write(dir, "m.gguf"));
  const std::vector<int32_t> toks = {1, 3, 3, 3, 3, 3, 3, 3};
  auto prefill = [&](int q) {
    HaltingConfig hc = HaltingConfig::parse("attn:0.5:0.5:drop:pf=1");
    hc.attn_queries = q;
    PrefillOptions po;
    po.halting = &hc;
    Engine e(*m, 16);
    return e.prefill(toks, po);
  };
  EXPECT_EQ(prefill(100000000), prefill(static_cast<int>(toks.size())));
}

TEST(HardeningNonFinite, EvalScoresOfNonFiniteLogitsAreAnError) {
  eval::Sample s;
  s.task = "fidelity";
  s.length = 64;
  eval::RunOutput ok, bad;
  ok.query_logits = {0.f, 1.f, 2.f, 3.f};
  ok.document_last = ok.query_logits;
  bad = ok;
  bad.query_logits[2] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NO_THROW(eval::score_run(s, ok, ok, 4));
  expect_error([&] { eval::score_run(s, bad, ok, 4); }, "fidelity sample 0 at 64 tokens: the scored run's logits are not finite");
  expect_error([&] { eval::score_run(s, ok, bad, 4); }, "the reference run's logits are not finite");
}

// --- memory and context bounds -------------------------------------------------------

TEST(HardeningMemory, AContextThatCannotFitIsRefusedBeforeAllocating) {
  TempDir dir("mem");
  auto m = Model::load(TinyLlama().write(dir, "m.gguf"));
  // 2 layers x 2 (K, V) x 16 floats a token, the validity flags, the hidden state, the scratch.
  EXPECT_GE(Engine::memory_bytes(*m, 64), uint64_t{64} * (2 * 2 * 16 * 4 + 2 + 16 * 4));
  EXPECT_LT(Engine::memory_bytes(*m, 64), uint64_t{1} << 20);
  // 2^31 - 1 tokens of this model need ~700 GB: refused with both numbers, not allocated.
  const int64_t huge = std::numeric_limits<int32_t>::max();
  ASSERT_GT(Engine::memory_bytes(*m, huge), available_memory_bytes());
  expect_error([&] { check_engine_fits(*m, huge, "cpu"); }, "of memory is available");
  expect_error([&] { Engine e(*m, huge); }, "the KV cache and buffers of a 2147483647-token context need");
  expect_error([&] { Engine e(*m, huge); }, "of memory is available");
  expect_error([&] { make_engine(*m, huge, "cpu"); }, "of memory is available");
  // Positions are 32-bit: contexts beyond are refused whatever the memory.
  expect_error([&] { make_engine(*m, huge + 1, "cpu"); }, "a context of 2147483648 tokens is out of range (1..2147483647)");
  expect_error([&] { make_engine(*m, 0, "cpu"); }, "a context of 0 tokens is out of range");
  expect_error([&] { Engine e(*m, -5); }, "a context of -5 tokens is out of range");
}

TEST(HardeningMemory, AvailableMemoryAndItsCheck) {
  const uint64_t avail = available_memory_bytes();
  EXPECT_GT(avail, uint64_t{0});
  EXPECT_NO_THROW(check_memory(1024, "a test"));
  expect_error([&] { check_memory(std::numeric_limits<uint64_t>::max(), "a test"); },
               "a test need 17179869184.0 GiB (18446744073709551615 bytes), but only");
  EXPECT_EQ(format_bytes(512), "512 bytes");
  EXPECT_EQ(format_bytes(3 * (uint64_t{1} << 20) / 2), "1.5 MiB");
  EXPECT_EQ(format_bytes(uint64_t{5} << 30), "5.0 GiB");
}

// --- output files ---------------------------------------------------------------------

TEST(HardeningOutput, OutputPathsAreCheckedUpFront) {
  TempDir dir("out");
  EXPECT_NO_THROW(check_output_path(dir.str("x.json"), "--json"));
  EXPECT_NO_THROW(check_output_path(dir.str("map.png"), "--halting-map", {".png", ".svg"}));
  expect_error([&] { check_output_path(dir.path.string(), "--json"); }, "--json: cannot write " + dir.path.string() + ": it is a folder");
  expect_error([&] { check_output_path(dir.str("no/such/x.json"), "--json"); }, "folder " + dir.str("no/such") + " does not exist");
  std::ofstream(dir.str("file")) << "x";
  expect_error([&] { check_output_path(dir.str("file/x.json"), "--json"); }, "is not a folder");
  expect_error([&] { check_output_path(dir.str("map.jpg"), "--halting-map", {".png", ".svg"}); },
               "--halting-map: use a .png or .svg file name, got");
  expect_error([&] { check_output_path("/dev/null", "-o"); }, "it exists and is not a regular file");
  expect_error([&] { check_output_path("", "-o"); }, "-o: no file name given");
  if (::geteuid() != 0) {  // root writes anywhere
    expect_error([&] { check_output_path("/proc/x.json", "--json"); }, "is not writable");
  }
}

TEST(HardeningOutput, FilesAreWrittenWholeOrNotAtAll) {
  TempDir dir("atomic");
  const std::string path = dir.str("out.json");
  write_file_atomically(path, std::string_view("first\n"));
  EXPECT_EQ(read_file(path), "first\n");
  // A writer that fails half way leaves the old file as it was and no temporary file.
  EXPECT_THROW(write_file_atomically(path,
                                     [](const std::string& tmp) {
                                       std::ofstream(tmp) << "half";
                                       throw Error("interrupted");
                                     }),
               Error);
  EXPECT_EQ(read_file(path), "first\n");
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path)) files += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(files, 1u);
  write_file_atomically(path, std::string_view("second\n"));
  EXPECT_EQ(read_file(path), "second\n");
}

// --- seeds in halting specs -------------------------------------------------------------

// --kv-type: each engine keeps its own types; the default resolves per backend; the others are
// refused naming the engine's choices, before any engine (or device) is made.
TEST(HardeningKvType, EachEngineKeepsItsOwnTypes) {
  for (const char* name : {"f32", "f16", "bf16", "fp8"}) EXPECT_STREQ(cache_type_name(parse_cache_type(name)), name);
  expect_error([] { parse_cache_type("q4"); }, "unknown KV cache type 'q4' (f32, f16, bf16, fp8)");
  EXPECT_EQ(resolve_cache_type(CacheType::Default, "cpu"), CacheType::F16);
  EXPECT_EQ(resolve_cache_type(CacheType::Default, "cuda"), CacheType::BF16);
  EXPECT_EQ(resolve_cache_type(CacheType::F32, "cpu"), CacheType::F32);
  EXPECT_EQ(resolve_cache_type(CacheType::FP8, "cuda"), CacheType::FP8);
  EXPECT_EQ(cpu_kv_type(CacheType::Default), kDefaultKvType);
  EXPECT_EQ(cpu_kv_type(CacheType::F32), cpu::KvType::F32);
  expect_error([] { resolve_cache_type(CacheType::FP8, "cpu"); }, "the CPU engine keeps f32 or f16 caches");
  expect_error([] { resolve_cache_type(CacheType::BF16, "cpu"); }, "the CPU engine keeps f32 or f16 caches");
  expect_error([] { resolve_cache_type(CacheType::F16, "cuda"); }, "the CUDA engine keeps bf16 or fp8 caches");
  expect_error([] { resolve_cache_type(CacheType::F32, "cuda"); }, "the CUDA engine keeps bf16 or fp8 caches");
  expect_error([] { resolve_cache_type(CacheType::Default, "tpu"); }, "unknown backend 'tpu'");
  TempDir dir("kvtype");
  auto m = Model::load(TinyLlama().write(dir, "m.gguf"));
  expect_error([&] { make_engine(*m, 64, "cpu", CacheType::FP8); }, "the CPU engine keeps f32 or f16 caches");
  expect_error([&] { make_engine(*m, 64, "cuda", CacheType::F16); }, "the CUDA engine keeps bf16 or fp8 caches");
}

TEST(HardeningSettings, NegativeSpecSeedsAreRefused) {
  HaltingConfig hc;
  expect_error([&] { set_setting(hc, Setting::Seed, "-1"); }, "must be >= 0, got -1");
  set_setting(hc, Setting::Seed, "7");
  EXPECT_EQ(hc.seed, 7u);
}

}  // namespace
}  // namespace dashlm

// all_finite (common/finite.h): every non-finite float is caught wherever it sits, the largest
// finite values and subnormals are not.
TEST(Finite, AllFinite) {
  std::vector<float> v(1003, 1.f);
  v[0] = std::numeric_limits<float>::max();
  v[1] = -std::numeric_limits<float>::max();
  v[2] = std::numeric_limits<float>::denorm_min();
  v[3] = -0.f;
  EXPECT_TRUE(dashlm::all_finite(v));
  EXPECT_TRUE(dashlm::all_finite(std::span<const float>()));
  for (const float bad : {std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                          std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::quiet_NaN()}) {
    for (const size_t at : {size_t{0}, size_t{17}, v.size() - 1}) {
      std::vector<float> w = v;
      w[at] = bad;
      EXPECT_FALSE(dashlm::all_finite(w)) << bad << " at " << at;
    }
  }
}
