// CudaEngine against the CPU Engine: logits, hidden states, halting decisions and the KV cache,
// on stories260K (head dim 8: the simple attention kernel) and on small random-weight models
// with llama, qwen2 and gemma3 shapes written as F32 GGUF files (weights rounded to bf16 so both
// engines compute with the same weights).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <ostream>
#include <random>

#include "common/error.h"
#include "cuda/cuda_test_util.h"
#include "gguf_writer.h"
#include "model/model.h"
#include "runtime/engine.h"
#include "runtime/engine_cuda.h"
#include "runtime/dash/policy.h"

using namespace dashlm;
using namespace dashlm::test;
namespace fs = std::filesystem;

namespace {

// Where stories260K lives: $DASHLM_TEST_MODELS/stories260K, else the shared fixtures folder.
std::string stories_dir() {
  if (const char* e = std::getenv("DASHLM_TEST_MODELS")) return std::string(e) + "/stories260K/";
  return std::string(DASHLM_SHARED_DIR) + "/models/stories260K/";
}

struct Shape {
  std::string arch;
  int64_t d = 256, ff = 512, vocab = 320;
  int layers = 4, heads = 4, heads_kv = 2;
  int window = 0;
  bool tied = false;
  std::string poisoned;  // a tensor whose first value is NaN
};

// A random model of this shape as a GGUF file (F32 tensors holding bf16-representable values).
std::string write_random_model(const Shape& s, uint32_t seed) {
  GgufWriter w;
  const std::string a = s.arch;
  w.set("general.architecture", MetaValue::of_string(a));
  w.set(a + ".block_count", MetaValue::of_uint(static_cast<uint64_t>(s.layers), MetaType::U32));
  w.set(a + ".embedding_length", MetaValue::of_uint(static_cast<uint64_t>(s.d), MetaType::U32));
  w.set(a + ".feed_forward_length", MetaValue::of_uint(static_cast<uint64_t>(s.ff), MetaType::U32));
  w.set(a + ".attention.head_count", MetaValue::of_uint(static_cast<uint64_t>(s.heads), MetaType::U32));
  w.set(a + ".attention.head_count_kv", MetaValue::of_uint(static_cast<uint64_t>(s.heads_kv), MetaType::U32));
  w.set(a + ".context_length", MetaValue::of_uint(4096, MetaType::U32));
  w.set(a + ".rope.freq_base", MetaValue::of_float(a == "gemma3" ? 1e6 : 10000.0, MetaType::F32));
  w.set(a + ".attention.layer_norm_rms_epsilon", MetaValue::of_float(1e-6, MetaType::F32));
  if (s.window) w.set(a + ".attention.sliding_window", MetaValue::of_uint(static_cast<uint64_t>(s.window), MetaType::U32));
  MetaArray toks, scores, types;
  for (int64_t i = 0; i < s.vocab; ++i) {
    toks.push_back(MetaValue::of_string(i == 0 ? "<unk>" : i == 1 ? "<s>" : i == 2 ? "</s>" : "\xe2\x96\x81t" + std::to_string(i)));
    scores.push_back(MetaValue::of_float(-static_cast<double>(i), MetaType::F32));
    types.push_back(MetaValue::of_int(i == 0 ? 2 : i < 3 ? 3 : 1, MetaType::I32));
  }
  w.set("tokenizer.ggml.model", MetaValue::of_string("llama"));
  w.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, toks));
  w.set("tokenizer.ggml.scores", MetaValue::of_array(MetaType::F32, scores));
  w.set("tokenizer.ggml.token_type", MetaValue::of_array(MetaType::I32, types));
  w.set("tokenizer.ggml.bos_token_id", MetaValue::of_uint(1, MetaType::U32));
  w.set("tokenizer.ggml.eos_token_id", MetaValue::of_uint(2, MetaType::U32));

  uint32_t sd = seed;
  auto mat = [&](const std::string& name, int64_t in, int64_t out) {
    const float a_ = std::sqrt(3.f / static_cast<float>(in));  // std 1/sqrt(in)
    std::vector<float> v = round_bf16(random_floats(static_cast<size_t>(in * out), ++sd, -a_, a_));
    if (name == s.poisoned) v[0] = std::numeric_limits<float>::quiet_NaN();
    w.add_f32(name, {static_cast<uint64_t>(in), static_cast<uint64_t>(out)}, v);
  };
  auto vec = [&](const std::string& name, int64_t n, float lo, float hi) {
    w.add_f32(name, {static_cast<uint64_t>(n)}, random_floats(static_cast<size_t>(n), ++sd, lo, hi));
  };
  const int64_t hd = s.d / s.heads, qd = hd * s.heads, kvd = hd * s.heads_kv;
  w.add_f32("token_embd.weight", {static_cast<uint64_t>(s.d), static_cast<uint64_t>(s.vocab)},
            round_bf16(random_floats(static_cast<size_t>(s.d * s.vocab), ++sd, -1.f, 1.f)));
  vec("output_norm.weight", s.d, 0.8f, 1.2f);
  if (!s.tied) mat("output.weight", s.d, s.vocab);
  for (int il = 0; il < s.layers; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    vec(p + "attn_norm.weight", s.d, 0.8f, 1.2f);
    vec(p + "ffn_norm.weight", s.d, 0.8f, 1.2f);
    mat(p + "attn_q.weight", s.d, qd);
    mat(p + "attn_k.weight", s.d, kvd);
    mat(p + "attn_v.weight", s.d, kvd);
    mat(p + "attn_output.weight", qd, s.d);
    mat(p + "ffn_gate.weight", s.d, s.ff);
    mat(p + "ffn_up.weight", s.d, s.ff);
    mat(p + "ffn_down.weight", s.ff, s.d);
    if (a == "qwen2") {
      vec(p + "attn_q.bias", qd, -0.2f, 0.2f);
      vec(p + "attn_k.bias", kvd, -0.2f, 0.2f);
      vec(p + "attn_v.bias", kvd, -0.2f, 0.2f);
    }
    if (a == "gemma3") {
      vec(p + "attn_q_norm.weight", hd, 0.8f, 1.2f);
      vec(p + "attn_k_norm.weight", hd, 0.8f, 1.2f);
      vec(p + "post_attention_norm.weight", s.d, 0.8f, 1.2f);
      vec(p + "post_ffw_norm.weight", s.d, 0.8f, 1.2f);
    }
  }
  const fs::path path = fs::temp_directory_path() / ("dashlm_cuda_test_" + a + "_" + std::to_string(seed) + ".gguf");
  w.write(path.string());
  return path.string();
}

std::vector<int32_t> random_tokens(int64_t n, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = static_cast<int32_t>(3 + rng() % static_cast<uint32_t>(vocab - 3));
  return t;
}

struct Run {
  std::vector<float> last, logits, hidden;
  HaltingTrace trace;
};

template <typename E>
Run run(E& e, const std::vector<int32_t>& toks, const HaltingConfig* hc) {
  Run r;
  PrefillOptions po;
  po.halting = hc;
  po.trace = &r.trace;
  po.logits_all = &r.logits;
  po.hidden_per_layer = &r.hidden;
  r.last = e.prefill(toks, po);
  return r;
}

HaltingConfig topk(KVMode kv) {
  HaltingConfig hc;
  hc.policy = "topk";
  hc.halt_layer = 0.4;
  hc.keep = 1.0 / 3.0;
  hc.kv = kv;
  return hc;
}

int count_halting_mismatches(const HaltingTrace& a, const HaltingTrace& b) {
  int m = 0;
  for (size_t t = 0; t < a.halted_after.size(); ++t) m += a.halted_after[t] != b.halted_after[t];
  return m;
}

// Compares both engines on one model: full prefill, then topk halting in both KV modes.
void compare_engines(const Model& model, const std::vector<int32_t>& toks, double budget) {
  const auto n = static_cast<int64_t>(toks.size());
  {
    Engine cpu(model, n + 16);
    CudaEngine gpu(model, n + 16);
    const Run rc = run(cpu, toks, nullptr), rg = run(gpu, toks, nullptr);
    EXPECT_LT(norm_err(rg.logits, rc.logits), budget) << "full prefill logits";
    EXPECT_LT(norm_err(rg.hidden, rc.hidden), budget) << "hidden states";
    EXPECT_LT(norm_err(rg.last, rc.last), budget);
    // Deltas of the full prefill (every token, every layer).
    EXPECT_LT(norm_err(rg.trace.delta, rc.trace.delta), budget) << "deltas";
    EXPECT_DOUBLE_EQ(rg.trace.flops_full, rc.trace.flops_full);
    // Decoding continues from the cache: the first step runs as it is, the second is recorded
    // into a CUDA graph, the later ones replay it.
    for (int i = 0; i < 5; ++i) {
      const auto dc = cpu.decode(toks[static_cast<size_t>(3 + i)]), dg = gpu.decode(toks[static_cast<size_t>(3 + i)]);
      EXPECT_LT(norm_err(dg, dc), budget) << "decode step " << i;
    }
    // A prefill after the recorded graph (the graph is dropped and recorded anew), then decoding on.
    const std::vector<int32_t> more(toks.begin(), toks.begin() + std::min<int64_t>(n, 3));
    EXPECT_LT(norm_err(gpu.prefill(more), cpu.prefill(more)), budget) << "prefill after decoding";
    for (int i = 0; i < 4; ++i) {
      const auto dc = cpu.decode(toks[static_cast<size_t>(i)]), dg = gpu.decode(toks[static_cast<size_t>(i)]);
      EXPECT_LT(norm_err(dg, dc), budget) << "decode step " << i << " after the second prefill";
    }
    EXPECT_EQ(gpu.n_past(), cpu.n_past());
  }
  for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
    SCOPED_TRACE(kv_mode_name(kv));
    const HaltingConfig hc = topk(kv);
    Engine cpu(model, n + 16);
    CudaEngine gpu(model, n + 16);
    const Run rc = run(cpu, toks, &hc), rg = run(gpu, toks, &hc);
    EXPECT_EQ(rg.trace.active_per_layer, rc.trace.active_per_layer);
    const int mism = count_halting_mismatches(rg.trace, rc.trace);
    EXPECT_LE(mism, std::max<int64_t>(2, n / 25)) << "tokens halting differently (ties aside)";
    if (mism == 0) {
      EXPECT_LT(norm_err(rg.logits, rc.logits), budget) << "halted prefill logits";
      EXPECT_NEAR(rg.trace.flops_done, rc.trace.flops_done, 1e-9 * rc.trace.flops_done);
      // The cache of the last layer: retained K/V of halted tokens, or their dropped slots.
      const int il = model.hp().n_layer - 1;
      std::vector<float> k, v;
      std::vector<uint8_t> valid;
      gpu.read_cache(il, &k, &v, &valid);
      const auto& ck = cpu.cache().k[static_cast<size_t>(il)];
      const auto& cv = cpu.cache().v[static_cast<size_t>(il)];
      const size_t used = static_cast<size_t>(n * model.hp().kv_dim());
      EXPECT_LT(norm_err(std::vector<float>(k.begin(), k.begin() + static_cast<long>(used)),
                         std::vector<float>(ck.begin(), ck.begin() + static_cast<long>(used))), budget) << "K cache";
      EXPECT_LT(norm_err(std::vector<float>(v.begin(), v.begin() + static_cast<long>(used)),
                         std::vector<float>(cv.begin(), cv.begin() + static_cast<long>(used))), budget) << "V cache";
      EXPECT_EQ(valid, cpu.cache().valid[static_cast<size_t>(il)]);
      // Decoding after the halted prefill: retained slots, or around the dropped ones.
      for (int i = 0; i < 4; ++i) {
        const auto dc = cpu.decode(toks[static_cast<size_t>(i)]), dg = gpu.decode(toks[static_cast<size_t>(i)]);
        EXPECT_LT(norm_err(dg, dc), budget) << "decode step " << i << " after the halted prefill";
      }
    }
  }
}

// Hyperparameters of a small random-weight model: head dim 64, two KV heads.
HParams small_hparams(Arch arch, int64_t vocab, int64_t d, int layers, int heads, int64_t ff) {
  HParams hp;
  hp.arch = arch;
  hp.n_vocab = vocab;
  hp.n_embd = d;
  hp.n_layer = layers;
  hp.n_head = heads;
  hp.n_head_kv = 2;
  hp.head_dim = 64;
  hp.n_ff = ff;
  hp.attn_scale = 0.125f;
  return hp;
}

// stories260K, or null when it is not found.
std::unique_ptr<Model> load_stories() {
  const std::string dir = stories_dir();
  if (!fs::exists(dir + "stories260K.bin")) return nullptr;
  return Model::load(dir + "stories260K.bin", dir + "tok512.bin");
}
constexpr const char* kStoriesText =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "friends. One day, she saw a big red ball under a tree and ran to get it, but a dog got there first.";

}  // namespace

TEST(CudaEngine, Stories260KMatchesCpu) {
  DASHLM_REQUIRE_CUDA();
  auto model = load_stories();
  if (!model) GTEST_SKIP() << "stories260K not found in " << stories_dir() << " (set DASHLM_TEST_MODELS)";
  const auto toks = model->tokenizer().encode(kStoriesText, true, false);
  // float32 weights rounded to bf16 on the device: a looser budget than the bf16-exact models.
  compare_engines(*model, toks, 5e-2);
}

TEST(CudaEngine, RandomLlamaMatchesCpu) {
  DASHLM_REQUIRE_CUDA();
  Shape s;
  s.arch = "llama";  // hd 64, GQA 2
  auto model = Model::load(write_random_model(s, 100));
  compare_engines(*model, random_tokens(150, s.vocab, 1), 2e-2);
}

// The same with cuDNN's attention switched off: our own kernel on every layer (the other tests
// use cuDNN for the dense layers when it is found, and our kernel for the rest).
TEST(CudaEngine, RandomLlamaMatchesCpuOwnAttention) {
  DASHLM_REQUIRE_CUDA();
  struct Restore {
    ~Restore() { cuda::set_dense_attention_enabled(true); }
  } restore;
  cuda::set_dense_attention_enabled(false);
  Shape s;
  s.arch = "llama";
  auto model = Model::load(write_random_model(s, 100));
  compare_engines(*model, random_tokens(150, s.vocab, 1), 2e-2);
}

TEST(CudaEngine, RandomQwen2MatchesCpu) {
  DASHLM_REQUIRE_CUDA();
  Shape s;
  s.arch = "qwen2";  // QKV bias, NeoX RoPE, hd 64, GQA 4
  s.heads = 4;
  s.heads_kv = 1;
  s.layers = 5;
  auto model = Model::load(write_random_model(s, 200));
  compare_engines(*model, random_tokens(203, s.vocab, 2), 2e-2);
}

TEST(CudaEngine, RandomGemma3MatchesCpu) {
  DASHLM_REQUIRE_CUDA();
  Shape s;
  s.arch = "gemma3";  // hd 128, sliding window 24 on 5 of 6 layers, QK-norm, sandwich norms, GeGLU, tied
  s.heads = 2;
  s.heads_kv = 1;
  s.layers = 7;
  s.window = 24;
  s.tied = true;
  auto model = Model::load(write_random_model(s, 300));
  compare_engines(*model, random_tokens(130, s.vocab, 3), 2e-2);
}

TEST(CudaEngine, RandomWeightsOnDeviceRun) {
  DASHLM_REQUIRE_CUDA();
  HParams hp = small_hparams(Arch::Qwen2, 1000, 512, 3, 8, 1024);
  hp.rope_base = 1e6f;
  hp.rope_neox = true;
  CudaEngine e(hp, 600, 7);
  const auto toks = random_tokens(500, hp.n_vocab, 4);
  HaltingConfig hc = topk(KVMode::Drop);
  HaltingTrace tr;
  PrefillOptions po;
  po.halting = &hc;
  po.trace = &tr;
  ForwardStats st;
  const auto logits = e.prefill(toks, po, &st);
  ASSERT_EQ(static_cast<int64_t>(logits.size()), hp.n_vocab);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LT(tr.active_per_layer.back(), 500);
  EXPECT_GT(st.total_ms, 0);
  const auto next = e.decode(5);
  for (float x : next) ASSERT_TRUE(std::isfinite(x));
  EXPECT_EQ(e.n_past(), 501);
  e.reset();
  EXPECT_EQ(e.n_past(), 0);
}

// A cache larger than the device's free memory is refused before allocating, with the sizes.
// A NaN in a query or key projection blanks attention rows instead of spreading (the softmax
// skips NaN scores on the GPU), so the engine refuses non-finite weights while it converts them.
TEST(CudaEngine, NonFiniteWeightsRefusedAtLoad) {
  DASHLM_REQUIRE_CUDA();
  for (const std::string& t : {std::string("blk.1.attn_q.weight"), std::string("blk.2.attn_k.weight"),
                               std::string("blk.0.ffn_down.weight")}) {
    Shape s;
    s.arch = "llama";
    s.poisoned = t;
    auto model = Model::load(write_random_model(s, 400));
    try {
      CudaEngine e(*model, 64);
      FAIL() << "loaded a model with a NaN in " << t;
    } catch (const Error& err) {
      const std::string blk = t.substr(0, t.find('.', 4) + 1);
      EXPECT_NE(std::string(err.what()).find("tensors " + blk), std::string::npos) << err.what();
      EXPECT_NE(std::string(err.what()).find("1 values are NaN or Inf"), std::string::npos) << err.what();
    }
  }
}

TEST(CudaEngine, CacheLargerThanDeviceMemoryRefused) {
  DASHLM_REQUIRE_CUDA();
  const HParams hp = small_hparams(Arch::Llama, 700, 256, 4, 4, 512);
  try {
    CudaEngine e(hp, int64_t{1} << 30, 11);  // 4 layers x 2^30 slots x 128 x 2 x 2 bytes = 2 TiB
    FAIL() << "a 2 TiB cache was allocated";
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("MiB of device memory"), std::string::npos) << err.what();
  }
}

// The decode graph replays exactly what plain launches compute, after a full prefill and after a
// drop-mode prefill (cache holes), and across a reset; DASH's device topk decides the same with
// and without a trace (a trace computes every layer's deltas, which keeps the attention output
// GEMM from adding into the residual stream itself, so the logits round differently).
class CudaEngineCache : public ::testing::TestWithParam<CacheType> {};

TEST_P(CudaEngineCache, DecodeGraphEqualsPlainLaunches) {
  DASHLM_REQUIRE_CUDA();
  const HParams hp = small_hparams(Arch::Llama, 700, 256, 4, 4, 512);
  CudaEngine graphs(hp, 400, 11, GetParam()), plain(hp, 400, 11, GetParam());
  EXPECT_EQ(graphs.cache_type(), GetParam());
  plain.set_cuda_graphs(false);
  EXPECT_NE(graphs.kernels().find("CUDA graphs for decode"), std::string::npos) << graphs.kernels();
  const auto toks = random_tokens(300, hp.n_vocab, 12);
  for (int round = 0; round < 2; ++round) {
    SCOPED_TRACE(round == 0 ? "full prefill" : "drop-mode prefill");
    const HaltingConfig hc = topk(KVMode::Drop);
    PrefillOptions po;
    if (round == 1) po.halting = &hc;
    graphs.reset();
    plain.reset();
    EXPECT_EQ(graphs.prefill(toks, po), plain.prefill(toks, po));
    for (int i = 0; i < 12; ++i) {
      const int32_t t = toks[static_cast<size_t>(i)];
      ASSERT_EQ(graphs.decode(t), plain.decode(t)) << "decode step " << i;
    }
    EXPECT_EQ(graphs.n_past(), 312);
  }
  for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
    const HaltingConfig hc = topk(kv);
    HaltingTrace tr;
    PrefillOptions traced, untraced;
    traced.halting = untraced.halting = &hc;
    traced.trace = &tr;
    std::vector<uint8_t> valid_traced, valid_untraced;
    graphs.reset();
    const auto a = graphs.prefill(toks, traced);
    graphs.read_cache(hp.n_layer - 1, nullptr, nullptr, &valid_traced);
    graphs.reset();
    EXPECT_LT(norm_err(graphs.prefill(toks, untraced), a), 1e-2) << kv_mode_name(kv);
    graphs.read_cache(hp.n_layer - 1, nullptr, nullptr, &valid_untraced);
    EXPECT_EQ(valid_untraced, valid_traced) << kv_mode_name(kv);  // drop mode: the same slots dropped
    EXPECT_EQ(tr.active_per_layer.back(), 1 + 4 + halting_keep_count(1.0 / 3.0, 300 - 5)) << kv_mode_name(kv);
  }
}

namespace dashlm {
// The parameter's name in gtest's messages.
void PrintTo(CacheType t, std::ostream* os) { *os << (t == CacheType::FP8 ? "fp8" : t == CacheType::BF16 ? "bf16" : "other"); }
}  // namespace dashlm

INSTANTIATE_TEST_SUITE_P(Caches, CudaEngineCache, ::testing::Values(CacheType::BF16, CacheType::FP8),
                         [](const ::testing::TestParamInfo<CacheType>& i) { return i.param == CacheType::FP8 ? "fp8" : "bf16"; });

namespace {

// Top-1 agreement and the largest KL divergence (nats) of two rows of logits.
struct Agreement {
  int steps = 0, same_top1 = 0;
  double max_kl = 0, sum_kl = 0;
  void add(const std::vector<float>& want, const std::vector<float>& got) {
    ++steps;
    same_top1 += std::max_element(want.begin(), want.end()) - want.begin() == std::max_element(got.begin(), got.end()) - got.begin();
    const auto lse = [](const std::vector<float>& x) {
      const double m = *std::max_element(x.begin(), x.end());
      double s = 0;
      for (float v : x) s += std::exp(v - m);
      return m + std::log(s);
    };
    const double lw = lse(want), lg = lse(got);
    double kl = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      const double pw = std::exp(want[i] - lw);
      kl += pw * ((want[i] - lw) - (got[i] - lg));
    }
    max_kl = std::max(max_kl, kl);
    sum_kl += kl;
  }
};

// The fp8 cache against the bf16 one on the same model: the prefill (its attention reads the
// rows it writes in bf16) gives the same logits; decoding reads the fp8 cache, teacher-forced over
// the text's remaining tokens; a second prefill reads the first one's slots from the fp8 cache;
// the cache itself is within e4m3's rounding of the bf16 one.
void fp8_against_bf16(const Model& model, const std::vector<int32_t>& toks, int64_t n_prompt, double max_kl) {
  const auto n = static_cast<int64_t>(toks.size());
  CudaEngine b16(model, n + 8, CacheType::BF16), f8(model, n + 8, CacheType::FP8);
  EXPECT_NE(f8.kernels().find("fp8 KV cache"), std::string::npos) << f8.kernels();
  const std::vector<int32_t> prompt(toks.begin(), toks.begin() + n_prompt);
  EXPECT_EQ(f8.prefill(prompt), b16.prefill(prompt)) << "prefill (bf16 rows in its own attention)";
  Agreement a;
  for (int64_t i = n_prompt; i < n; ++i) a.add(b16.decode(toks[static_cast<size_t>(i)]), f8.decode(toks[static_cast<size_t>(i)]));
  std::printf("[ fp8 cache ] %d decode steps: top-1 agrees on %d, KL mean %.2e, max %.2e nats\n", a.steps, a.same_top1,
              a.sum_kl / a.steps, a.max_kl);
  EXPECT_GE(a.same_top1, a.steps * 9 / 10);
  EXPECT_LT(a.max_kl, max_kl);
  // A chunk prefilled after the decoded tokens attends to the fp8 slots of everything before it.
  const std::vector<int32_t> more(toks.begin(), toks.begin() + 5);
  Agreement p;
  p.add(b16.prefill(more), f8.prefill(more));
  EXPECT_EQ(p.same_top1, 1);
  EXPECT_LT(p.max_kl, max_kl);
  for (int il : {0, model.hp().n_layer - 1}) {
    std::vector<float> kb, vb, k8, v8;
    b16.read_cache(il, &kb, &vb, nullptr);
    f8.read_cache(il, &k8, &v8, nullptr);
    // The prompt's slots (the decoded tokens' hidden states differ between the engines, and so
    // do their keys and values). e4m3 rounds each value by at most 2^-4 of it (about 2^-5.6 rms
    // for uniform mantissas).
    const size_t used = static_cast<size_t>(n_prompt * model.hp().kv_dim());
    kb.resize(used), vb.resize(used), k8.resize(used), v8.resize(used);
    EXPECT_LT(norm_err(k8, kb), 0.04) << "K, layer " << il;
    EXPECT_LT(norm_err(v8, vb), 0.04) << "V, layer " << il;
  }
}

}  // namespace

TEST(CudaEngine, Fp8CacheRandomModels) {
  DASHLM_REQUIRE_CUDA();
  Shape llama;
  llama.arch = "llama";  // hd 64: the split decode attention reads fp8
  Shape gemma;
  gemma.arch = "gemma3";  // hd 128, sliding window, QK-norm
  gemma.heads = 2;
  gemma.heads_kv = 1;
  gemma.layers = 7;
  gemma.window = 24;
  gemma.tied = true;
  int seed = 500;
  for (const Shape& s : {llama, gemma}) {
    SCOPED_TRACE(s.arch);
    auto model = Model::load(write_random_model(s, static_cast<uint32_t>(seed++)));
    fp8_against_bf16(*model, random_tokens(200, s.vocab, static_cast<uint32_t>(seed)), 120, 0.05);
  }
}

// stories260K (head dim 8: the decode attention is the plain kernel on the layer's slots
// dequantized into bf16) on its own text.
TEST(CudaEngine, Fp8CacheStories260K) {
  DASHLM_REQUIRE_CUDA();
  auto model = load_stories();
  if (!model) GTEST_SKIP() << "stories260K not found in " << stories_dir() << " (set DASHLM_TEST_MODELS)";
  const std::string text =
      std::string(kStoriesText) + " Lily was sad, but the dog brought the ball back to her and they played together all day long.";
  const auto toks = model->tokenizer().encode(text, true, false);
  fp8_against_bf16(*model, toks, 20, 0.05);
}

// A real model's text (a measurement more than a test, skipped unless DASHLM_FP8_MODEL names a GGUF
// file; DASHLM_FP8_TEXT a text file, DASHLM_FP8_PROMPT the prompt's tokens, default 1024, the
// rest of up to 2048 tokens decoded teacher-forced).
TEST(CudaEngine, Fp8CacheRealModel) {
  DASHLM_REQUIRE_CUDA();
  const char* path = std::getenv("DASHLM_FP8_MODEL");
  const char* text_path = std::getenv("DASHLM_FP8_TEXT");
  if (!path || !text_path) GTEST_SKIP() << "set DASHLM_FP8_MODEL (a GGUF file) and DASHLM_FP8_TEXT (a text file)";
  auto model = Model::load(path);
  std::ifstream f(text_path);
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto toks = model->tokenizer().encode(text, true, false);
  if (toks.size() > 2048) toks.resize(2048);
  const char* np = std::getenv("DASHLM_FP8_PROMPT");
  const int64_t n_prompt = std::min<int64_t>(np ? std::atoll(np) : 1024, static_cast<int64_t>(toks.size()) / 2);
  std::printf("[ fp8 cache ] %s: %lld prompt tokens, %lld decoded\n", path, static_cast<long long>(n_prompt),
              static_cast<long long>(toks.size()) - static_cast<long long>(n_prompt));
  fp8_against_bf16(*model, toks, n_prompt, 0.5);
}

// The fp8 decode after a drop-mode prefill reads around the dropped slots, like the bf16 one.
TEST(CudaEngine, Fp8CacheAfterDropModePrefill) {
  DASHLM_REQUIRE_CUDA();
  const HParams hp = small_hparams(Arch::Llama, 700, 256, 4, 4, 512);
  CudaEngine b16(hp, 400, 13, CacheType::BF16), f8(hp, 400, 13, CacheType::FP8);
  const auto toks = random_tokens(300, hp.n_vocab, 14);
  const HaltingConfig hc = topk(KVMode::Drop);
  PrefillOptions po;
  po.halting = &hc;
  EXPECT_EQ(f8.prefill(toks, po), b16.prefill(toks, po));
  std::vector<uint8_t> vb, v8;
  b16.read_cache(hp.n_layer - 1, nullptr, nullptr, &vb);
  f8.read_cache(hp.n_layer - 1, nullptr, nullptr, &v8);
  EXPECT_EQ(v8, vb);
  EXPECT_NE(std::count(v8.begin(), v8.begin() + 300, 0), 0) << "no slot was dropped";
  Agreement a;
  for (int i = 0; i < 16; ++i) a.add(b16.decode(toks[static_cast<size_t>(i)]), f8.decode(toks[static_cast<size_t>(i)]));
  EXPECT_GE(a.same_top1, 14);
  EXPECT_LT(a.max_kl, 0.05);
}

TEST(CudaEngine, Fp8CacheRefusesCpuTypes) {
  DASHLM_REQUIRE_CUDA();
  const HParams hp = small_hparams(Arch::Llama, 700, 256, 4, 4, 512);
  EXPECT_THROW(CudaEngine(hp, 64, 1, CacheType::F16), Error);
  EXPECT_THROW(CudaEngine(hp, 64, 1, CacheType::F32), Error);
}
