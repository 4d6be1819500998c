// llama2.c checkpoints and tokenizers, on the real stories260K fixture and on small
// synthetic files.
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "common/error.h"
#include "gguf_writer.h"
#include "model/model_file.h"

namespace dashlm {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;

const std::string kModel = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/stories260K.bin";
const std::string kTok = std::string(DASHLM_SHARED_DIR) + "/models/stories260K/tok512.bin";

std::vector<uint8_t> read_all(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

void write_all(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A llama2.c tokenizer.bin with n tokens: <unk>, <s>, </s>, then "t3", "t4", ...
std::vector<uint8_t> make_tokenizer(int n) {
  std::vector<uint8_t> b;
  auto put = [&](const void* p, size_t k) { b.insert(b.end(), (const uint8_t*)p, (const uint8_t*)p + k); };
  int32_t max_len = 8;
  put(&max_len, 4);
  for (int i = 0; i < n; ++i) {
    std::string t = i == 0 ? "<unk>" : i == 1 ? "\n<s>\n" : i == 2 ? "\n</s>\n" : "t" + std::to_string(i);
    float score = -static_cast<float>(i);
    int32_t len = static_cast<int32_t>(t.size());
    put(&score, 4);
    put(&len, 4);
    put(t.data(), t.size());
  }
  return b;
}

// A synthetic checkpoint whose floats count up from 0, so every tensor's first value tells
// where it starts.
std::vector<uint8_t> make_checkpoint(int32_t dim, int32_t hidden, int32_t layers, int32_t heads, int32_t kv_heads,
                                     int32_t vocab, int32_t seq) {
  const int64_t v = vocab < 0 ? -vocab : vocab;
  const int64_t hs = dim / heads, kv = hs * kv_heads;
  const int64_t n = v * dim + layers * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim +
                    seq * hs / 2 * 2 + (vocab < 0 ? v * dim : 0);
  std::vector<uint8_t> b(28 + static_cast<size_t>(n) * 4);
  const int32_t h[7] = {dim, hidden, layers, heads, kv_heads, vocab, seq};
  std::memcpy(b.data(), h, 28);
  for (int64_t i = 0; i < n; ++i) {
    const float f = static_cast<float>(i);
    std::memcpy(b.data() + 28 + i * 4, &f, 4);
  }
  return b;
}

float first_float(const TensorInfo& t) {
  float f;
  std::memcpy(&f, t.data, 4);
  return f;
}

TEST(Llama2cTest, Stories260KHasTheDocumentedShapesAndMetadata) {
  auto f = load_llama2c(kModel, kTok);
  EXPECT_EQ(f->format, "llama2c");
  ASSERT_EQ(f->tensors.size(), 1u + 5u * 9u + 1u);  // embedding, 9 per layer, final norm; tied output
  auto shape = [&](const std::string& n) { return f->need(n).ne; };
  using V = std::vector<int64_t>;
  EXPECT_EQ(shape("token_embd.weight"), (V{64, 512}));
  for (int l = 0; l < 5; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(shape(p + "attn_norm.weight"), (V{64}));
    EXPECT_EQ(shape(p + "attn_q.weight"), (V{64, 64}));
    EXPECT_EQ(shape(p + "attn_k.weight"), (V{64, 32}));
    EXPECT_EQ(shape(p + "attn_v.weight"), (V{64, 32}));
    EXPECT_EQ(shape(p + "attn_output.weight"), (V{64, 64}));
    EXPECT_EQ(shape(p + "ffn_norm.weight"), (V{64}));
    EXPECT_EQ(shape(p + "ffn_gate.weight"), (V{64, 172}));
    EXPECT_EQ(shape(p + "ffn_down.weight"), (V{172, 64}));
    EXPECT_EQ(shape(p + "ffn_up.weight"), (V{64, 172}));
  }
  EXPECT_EQ(shape("output_norm.weight"), (V{64}));
  EXPECT_EQ(f->find("output.weight"), nullptr);
  EXPECT_EQ(f->find("blk.5.attn_q.weight"), nullptr);
  for (const TensorInfo& t : f->tensors) {
    EXPECT_EQ(t.type, DType::F32) << t.name;
    EXPECT_EQ(t.nbytes, static_cast<size_t>(t.n_elements()) * 4) << t.name;
  }

  // The tensors are views of the file at the llama2.c offsets.
  const auto bytes = read_all(kModel);
  auto at = [&](int64_t float_index) { return bytes.data() + 28 + float_index * 4; };
  const int64_t dim = 64, hidden = 172, L = 5, kv = 32, vocab = 512;
  auto same = [&](const std::string& name, int64_t float_index) {
    const TensorInfo& t = f->need(name);
    EXPECT_EQ(std::memcmp(t.data, at(float_index), t.nbytes), 0) << name;
  };
  same("token_embd.weight", 0);
  int64_t o = vocab * dim;
  same("blk.0.attn_norm.weight", o);
  same("blk.4.attn_norm.weight", o + 4 * dim);
  o += L * dim;
  same("blk.2.attn_q.weight", o + 2 * dim * dim);
  o += L * dim * dim;
  same("blk.1.attn_k.weight", o + 1 * kv * dim);
  o += L * kv * dim;
  same("blk.3.attn_v.weight", o + 3 * kv * dim);
  o += L * kv * dim;
  same("blk.4.attn_output.weight", o + 4 * dim * dim);
  o += L * dim * dim;
  same("blk.2.ffn_norm.weight", o + 2 * dim);
  o += L * dim;
  same("blk.1.ffn_gate.weight", o + hidden * dim);
  o += L * hidden * dim;
  same("blk.1.ffn_down.weight", o + dim * hidden);
  o += L * dim * hidden;
  same("blk.4.ffn_up.weight", o + 4 * hidden * dim);
  o += L * hidden * dim;
  same("output_norm.weight", o);
  // What follows the final norm is the two RoPE tables, ending the file.
  EXPECT_EQ(static_cast<size_t>(28 + (o + dim + 2 * 512 * 4) * 4), bytes.size());

  const Metadata& m = f->meta;
  EXPECT_EQ(m.get_string("general.architecture"), "llama");
  EXPECT_EQ(m.get_string("general.name"), "stories260K");
  EXPECT_EQ(m.get_int("llama.context_length"), 512);
  EXPECT_EQ(m.get_int("llama.embedding_length"), 64);
  EXPECT_EQ(m.get_int("llama.block_count"), 5);
  EXPECT_EQ(m.get_int("llama.feed_forward_length"), 172);
  EXPECT_EQ(m.get_int("llama.attention.head_count"), 8);
  EXPECT_EQ(m.get_int("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(m.get_int("llama.vocab_size"), 512);
  EXPECT_EQ(m.get_int("llama.rope.dimension_count"), 8);
  EXPECT_FLOAT_EQ(static_cast<float>(*m.get_float("llama.rope.freq_base")), 10000.f);
  EXPECT_FLOAT_EQ(static_cast<float>(*m.get_float("llama.attention.layer_norm_rms_epsilon")), 1e-5f);

  // Tokenizer keys.
  EXPECT_EQ(m.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(m.get_string("tokenizer.ggml.pre"), "default");
  const auto tokens = *m.get_string_array("tokenizer.ggml.tokens");
  const auto scores = *m.get_float_array("tokenizer.ggml.scores");
  const auto types = *m.get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(tokens.size(), 512u);
  ASSERT_EQ(scores.size(), 512u);
  ASSERT_EQ(types.size(), 512u);
  EXPECT_EQ(tokens[0], "<unk>");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[2], "</s>");
  EXPECT_EQ(types[0], 2);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[2], 3);
  EXPECT_EQ(tokens[3], "<0x00>");
  EXPECT_EQ(types[3], 6);
  EXPECT_EQ(tokens[258], "<0xFF>");
  EXPECT_EQ(types[258], 6);
  EXPECT_EQ(tokens[259], "\xe2\x96\x81t");  // " t" with SentencePiece's visible space
  EXPECT_EQ(types[259], 1);
  EXPECT_EQ(tokens[260], "he");
  EXPECT_EQ(scores[260], -1.0);
  EXPECT_EQ(scores[511], -252.0);
  EXPECT_EQ(m.get_int("tokenizer.ggml.bos_token_id"), 1);
  EXPECT_EQ(m.get_int("tokenizer.ggml.eos_token_id"), 2);
  EXPECT_EQ(m.get_int("tokenizer.ggml.unknown_token_id"), 0);
  EXPECT_EQ(m.get_bool("tokenizer.ggml.add_bos_token"), true);
  EXPECT_EQ(m.get_bool("tokenizer.ggml.add_space_prefix"), true);
}

TEST(Llama2cTest, OpenModelFileDispatchesAndNeedsTheTokenizer) {
  auto f = open_model_file(kModel, kTok);
  EXPECT_EQ(f->format, "llama2c");
  expect_error([&] { open_model_file(kModel); }, "llama2.c checkpoint needs --tokenizer FILE");
  expect_error([&] { open_model_file(kModel, "/nonexistent/tok.bin"); }, "tok.bin");
}

TEST(Llama2cTest, TokenizerCanComeFromAGguf) {
  TempDir dir("l2c_tokgguf");
  auto ref = load_llama2c(kModel, kTok);
  test::GgufWriter w;
  for (const auto& [k, v] : ref->meta.all()) {
    if (k.rfind("tokenizer.", 0) == 0) w.set(k, v);
  }
  const std::string tok = (dir.path / "tok.gguf").string();
  w.write(tok);
  auto f = open_model_file(kModel, tok);
  EXPECT_EQ(f->meta.get_string_array("tokenizer.ggml.tokens"), ref->meta.get_string_array("tokenizer.ggml.tokens"));
  EXPECT_EQ(f->meta.get_int_array("tokenizer.ggml.token_type"), ref->meta.get_int_array("tokenizer.ggml.token_type"));
}

TEST(Llama2cTest, TruncatedOrPaddedFilesStateExpectedAndActualSize) {
  TempDir dir("l2c_trunc");
  auto bytes = read_all(kModel);
  ASSERT_EQ(bytes.size(), 1056540u);
  auto cut = bytes;
  cut.resize(cut.size() - 4);
  write_all(dir.path / "cut.bin", cut);
  expect_error([&] { load_llama2c((dir.path / "cut.bin").string(), kTok); },
               "implies 1056540 bytes, but the file has 1056536");
  auto longer = bytes;
  longer.push_back(0);
  write_all(dir.path / "long.bin", longer);
  expect_error([&] { open_model_file((dir.path / "long.bin").string(), kTok); }, "the file has 1056541 bytes");
  cut.resize(20);
  write_all(dir.path / "tiny.bin", cut);
  expect_error([&] { open_model_file((dir.path / "tiny.bin").string(), kTok); }, "too short");
  write_all(dir.path / "text.txt", std::vector<uint8_t>(100, 'a'));
  expect_error([&] { open_model_file((dir.path / "text.txt").string(), kTok); }, "not a GGUF or safetensors file");
}

TEST(Llama2cTest, BadHeaders) {
  TempDir dir("l2c_hdr");
  auto check = [&](std::vector<uint8_t> b, const std::string& part) {
    write_all(dir.path / "m.bin", b);
    expect_error([&] { load_llama2c((dir.path / "m.bin").string(), kTok); }, part);
  };
  auto b = make_checkpoint(16, 32, 1, 4, 2, 8, 4);
  auto set = [](std::vector<uint8_t> x, int field, int32_t v) {
    std::memcpy(x.data() + 4 * field, &v, 4);
    return x;
  };
  check(set(b, 0, 0), "not positive");
  check(set(b, 2, -1), "not positive");
  check(set(b, 3, 3), "dim not divisible by n_heads");
  check(set(b, 4, 3), "n_heads not divisible by n_kv_heads");
  check(set(b, 5, std::numeric_limits<int32_t>::min()), "not positive");
  check(set(set(b, 0, 1 << 30), 1, 1 << 30), "header (dim=1073741824");
}

TEST(Llama2cTest, UntiedClassifierAndSyntheticLayout) {
  TempDir dir("l2c_untied");
  const auto b = make_checkpoint(16, 24, 2, 4, 2, -10, 6);
  write_all(dir.path / "m.bin", b);
  write_all(dir.path / "tok.bin", make_tokenizer(10));
  auto f = load_llama2c((dir.path / "m.bin").string(), (dir.path / "tok.bin").string());
  ASSERT_NE(f->find("output.weight"), nullptr);
  EXPECT_EQ(f->need("output.weight").ne, (std::vector<int64_t>{16, 10}));
  const int64_t dim = 16, hidden = 24, L = 2, kv = 8, vocab = 10, hs = 4, seq = 6;
  const int64_t wcls = vocab * dim + L * (2 * dim + 2 * dim * dim + 2 * kv * dim + 3 * hidden * dim) + dim + seq * hs;
  EXPECT_EQ(first_float(f->need("output.weight")), static_cast<float>(wcls));
  EXPECT_EQ(first_float(f->need("blk.1.attn_k.weight")),
            static_cast<float>(vocab * dim + L * dim + L * dim * dim + kv * dim));
  EXPECT_EQ(f->meta.get_int("llama.vocab_size"), 10);
  EXPECT_EQ(f->meta.get_int("llama.attention.head_count_kv"), 2);
  EXPECT_EQ(f->meta.get_string("general.name"), "m");
  const auto tokens = *f->meta.get_string_array("tokenizer.ggml.tokens");
  EXPECT_EQ(tokens[1], "<s>");
  EXPECT_EQ(tokens[9], "t9");
}

TEST(Llama2cTest, TokenizerProblems) {
  TempDir dir("l2c_tok");
  const std::string model = (dir.path / "m.bin").string();
  write_all(model, make_checkpoint(16, 24, 1, 4, 4, 10, 4));
  auto tok = [&](const std::vector<uint8_t>& b) {
    write_all(dir.path / "tok.bin", b);
    return (dir.path / "tok.bin").string();
  };
  expect_error([&] { load_llama2c(model, tok(make_tokenizer(9))); }, "9 tokens");
  expect_error([&] { load_llama2c(model, tok(make_tokenizer(11))); }, "11 tokens");
  auto t = make_tokenizer(10);
  t.pop_back();
  expect_error([&] { load_llama2c(model, tok(t)); }, "length");
  t.resize(t.size() - 6);
  expect_error([&] { load_llama2c(model, tok(t)); }, "tok.bin");
  auto neg = make_tokenizer(10);
  const int32_t bad_len = -5;
  std::memcpy(neg.data() + 8, &bad_len, 4);
  expect_error([&] { load_llama2c(model, tok(neg)); }, "length -5");
  std::vector<uint8_t> zero(4, 0);
  expect_error([&] { load_llama2c(model, tok(zero)); }, "max_token_length");
  // Every prefix of a tokenizer fails cleanly.
  const auto full = make_tokenizer(10);
  for (size_t n = 1; n < full.size(); ++n) {
    EXPECT_THROW(
        load_llama2c(model, tok(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<std::ptrdiff_t>(n)))),
        Error)
        << n;
  }
  EXPECT_NO_THROW(load_llama2c(model, tok(full)));
}

}  // namespace
}  // namespace dashlm
