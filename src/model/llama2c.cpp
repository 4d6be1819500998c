// llama2.c legacy checkpoints (run.c's "version 0" .bin) and llama2.c tokenizer.bin files.
//
// Checkpoint: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len; a negative vocab_size means an untied classifier follows the weights), then float32
// arrays in a fixed order (see load_llama2c). The file has no magic number, so the exact file
// size implied by the header is what identifies it.
//
// The weights are exposed under GGUF names and shapes, pointing into the mapping. llama2.c's
// RoPE rotates adjacent pairs (x[2i], x[2i+1]), which is the layout GGUF's "llama" architecture
// expects, so q and k need no permutation.
#include <cstring>
#include <filesystem>
#include <limits>

#include "common/error.h"
#include "model/mmap_file.h"
#include "model/model_file.h"

namespace dashlm {

namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

std::string header_str(const Llama2cHeader& h) {
  return fmt::format("dim={}, hidden_dim={}, n_layers={}, n_heads={}, n_kv_heads={}, vocab_size={}, seq_len={}", h.dim,
                     h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len);
}

[[noreturn]] void bad_header(const std::string& path, const Llama2cHeader& h, const std::string& why) {
  fail("{}: not a GGUF or safetensors file, and not a llama2.c checkpoint either: header ({}) {}", path, header_str(h),
       why);
}

// Overflow-checked accumulation of float counts (every factor is a positive int32).
struct Counter {
  uint64_t total = 0;
  bool overflow = false;
  uint64_t add(uint64_t a, uint64_t b = 1, uint64_t c = 1) {
    uint64_t n = 0;
    if (__builtin_mul_overflow(a, b, &n) || __builtin_mul_overflow(n, c, &n) ||
        __builtin_add_overflow(total, n, &total)) {
      overflow = true;
    }
    return n;
  }
};

const std::string kSpaceMarker = "\xe2\x96\x81";  // U+2581, SentencePiece's visible space

bool is_byte_token(const std::string& s) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F') || (c >= 'a' && c <= 'f'); };
  return s.size() == 6 && s.compare(0, 3, "<0x") == 0 && hex(s[3]) && hex(s[4]) && s[5] == '>';
}

}  // namespace

size_t read_llama2c_tokenizer(const std::string& path, Metadata& meta) {
  auto map = MmapFile::open(path);
  const uint8_t* p = map->data();
  const size_t size = map->size();
  size_t pos = 0;
  auto read_i32 = [&](const char* what, size_t index) {
    if (size - pos < 4) fail("{}: truncated llama2.c tokenizer: {} of token {} is missing", path, what, index);
    int32_t v;
    std::memcpy(&v, p + pos, 4);
    pos += 4;
    return v;
  };
  const int32_t max_token_length = read_i32("max_token_length", 0);
  if (max_token_length <= 0) {
    fail("{}: not a llama2.c tokenizer (max_token_length {} is not positive)", path, max_token_length);
  }

  MetaArray tokens, scores, types;
  tokens.reserve((size - pos) / 8);
  for (size_t id = 0; pos < size; ++id) {
    float score;
    if (size - pos < 8) fail("{}: truncated llama2.c tokenizer: token {} is cut off", path, id);
    std::memcpy(&score, p + pos, 4);
    pos += 4;
    const int32_t len = read_i32("length", id);
    if (len < 0 || static_cast<size_t>(len) > size - pos) {
      fail("{}: corrupt llama2.c tokenizer: token {} has length {} but {} bytes are left", path, id, len, size - pos);
    }
    std::string text(reinterpret_cast<const char*>(p + pos), static_cast<size_t>(len));
    pos += static_cast<size_t>(len);

    // Ids 0..2 are <unk>, <s>, </s> in every llama2.c vocabulary (the exporter spells BOS and EOS
    // as "\n<s>\n" and "\n</s>\n"); GGUF uses the plain names.
    int32_t type = 1;  // NORMAL
    if (id == 0) {
      text = "<unk>";
      type = 2;  // UNKNOWN
    } else if (id == 1 || id == 2) {
      text = id == 1 ? "<s>" : "</s>";
      type = 3;  // CONTROL
    } else if (text.empty()) {
      type = 3;
    } else if (is_byte_token(text)) {
      type = 6;  // BYTE
    }
    // The exporter turned SentencePiece's U+2581 into spaces; GGUF vocabularies keep U+2581.
    std::string escaped;
    escaped.reserve(text.size());
    for (char c : text) {
      if (c == ' ') {
        escaped += kSpaceMarker;
      } else {
        escaped += c;
      }
    }
    tokens.push_back(MetaValue::of_string(std::move(escaped)));
    scores.push_back(MetaValue::of_float(score, MetaType::F32));
    types.push_back(MetaValue::of_int(type, MetaType::I32));
  }
  if (tokens.size() < 3)
    fail("{}: llama2.c tokenizer has only {} tokens (needs <unk>, <s>, </s>)", path, tokens.size());

  const size_t n = tokens.size();
  meta.erase_prefix("tokenizer.");
  meta.set("tokenizer.ggml.model", MetaValue::of_string("llama"));
  meta.set("tokenizer.ggml.pre", MetaValue::of_string("default"));
  meta.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, std::move(tokens)));
  meta.set("tokenizer.ggml.scores", MetaValue::of_array(MetaType::F32, std::move(scores)));
  meta.set("tokenizer.ggml.token_type", MetaValue::of_array(MetaType::I32, std::move(types)));
  meta.set("tokenizer.ggml.unknown_token_id", MetaValue::of_uint(0, MetaType::U32));
  meta.set("tokenizer.ggml.bos_token_id", MetaValue::of_uint(1, MetaType::U32));
  meta.set("tokenizer.ggml.eos_token_id", MetaValue::of_uint(2, MetaType::U32));
  meta.set("tokenizer.ggml.add_bos_token", MetaValue::of_bool(true));
  meta.set("tokenizer.ggml.add_eos_token", MetaValue::of_bool(false));
  meta.set("tokenizer.ggml.add_space_prefix", MetaValue::of_bool(true));
  return n;
}

std::unique_ptr<ModelFile> load_llama2c(const std::string& path, const std::string& tokenizer_path) {
  auto map = MmapFile::open(path);
  const size_t size = map->size();
  Llama2cHeader h{};
  if (size < sizeof(h)) {
    fail("{}: not a GGUF, safetensors or llama2.c file (only {} bytes, too short for a llama2.c header)", path, size);
  }
  static_assert(sizeof(Llama2cHeader) == 28);
  std::memcpy(&h, map->data(), sizeof(h));

  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 || h.seq_len <= 0 ||
      h.vocab_size == 0 || h.vocab_size == std::numeric_limits<int32_t>::min()) {
    bad_header(path, h, "has sizes that are not positive");
  }
  if (h.dim % h.n_heads != 0) bad_header(path, h, "has dim not divisible by n_heads");
  if (h.n_heads % h.n_kv_heads != 0) bad_header(path, h, "has n_heads not divisible by n_kv_heads");

  const bool shared = h.vocab_size > 0;  // a positive vocab_size means the classifier is the embedding
  const uint64_t vocab = shared ? static_cast<uint64_t>(h.vocab_size) : static_cast<uint64_t>(-int64_t{h.vocab_size});
  const uint64_t dim = static_cast<uint64_t>(h.dim), hidden = static_cast<uint64_t>(h.hidden_dim);
  const uint64_t L = static_cast<uint64_t>(h.n_layers), seq = static_cast<uint64_t>(h.seq_len);
  const uint64_t head_size = dim / static_cast<uint64_t>(h.n_heads);
  const uint64_t kv_dim = head_size * static_cast<uint64_t>(h.n_kv_heads);

  // Offsets (in floats, after the header) of each array, in file order.
  Counter c;
  const uint64_t o_tok = c.total;
  c.add(vocab, dim);
  const uint64_t o_rms_att = c.total;
  c.add(L, dim);
  const uint64_t o_wq = c.total;
  c.add(L, dim, dim);
  const uint64_t o_wk = c.total;
  c.add(L, kv_dim, dim);
  const uint64_t o_wv = c.total;
  c.add(L, kv_dim, dim);
  const uint64_t o_wo = c.total;
  c.add(L, dim, dim);
  const uint64_t o_rms_ffn = c.total;
  c.add(L, dim);
  const uint64_t o_w1 = c.total;
  c.add(L, hidden, dim);
  const uint64_t o_w2 = c.total;
  c.add(L, dim, hidden);
  const uint64_t o_w3 = c.total;
  c.add(L, hidden, dim);
  const uint64_t o_rms_final = c.total;
  c.add(dim);
  // Two legacy RoPE tables (freq_cis_real, freq_cis_imag) of seq_len * head_size / 2 floats each.
  c.add(2, seq * head_size / 2);
  const uint64_t o_wcls = c.total;
  if (!shared) c.add(vocab, dim);
  uint64_t expected = 0;
  if (c.overflow || __builtin_mul_overflow(c.total, uint64_t{4}, &expected) ||
      __builtin_add_overflow(expected, uint64_t{sizeof(h)}, &expected)) {
    bad_header(path, h, "describes an impossibly large model");
  }
  if (expected != size) {
    fail(
        "{}: not a GGUF or safetensors file, and not a llama2.c checkpoint either: its header ({}) implies "
        "{} bytes, but the file has {} bytes",
        path, header_str(h), expected, size);
  }

  auto f = std::make_unique<ModelFile>();
  f->path = path;
  f->format = "llama2c";
  const uint8_t* base = map->data() + sizeof(h);
  auto add = [&](const std::string& name, std::vector<int64_t> ne, uint64_t float_offset) {
    TensorInfo t;
    t.name = name;
    t.type = DType::F32;
    t.ne = std::move(ne);
    t.data = base + float_offset * 4;
    t.nbytes = static_cast<size_t>(t.n_elements()) * 4;
    f->add_tensor(std::move(t));
  };
  const auto i_dim = static_cast<int64_t>(dim), i_hidden = static_cast<int64_t>(hidden);
  const auto i_kv = static_cast<int64_t>(kv_dim), i_vocab = static_cast<int64_t>(vocab);
  add("token_embd.weight", {i_dim, i_vocab}, o_tok);
  for (uint64_t l = 0; l < L; ++l) {
    const std::string p = "blk." + std::to_string(l) + ".";
    add(p + "attn_norm.weight", {i_dim}, o_rms_att + l * dim);
    add(p + "attn_q.weight", {i_dim, i_dim}, o_wq + l * dim * dim);
    add(p + "attn_k.weight", {i_dim, i_kv}, o_wk + l * kv_dim * dim);
    add(p + "attn_v.weight", {i_dim, i_kv}, o_wv + l * kv_dim * dim);
    add(p + "attn_output.weight", {i_dim, i_dim}, o_wo + l * dim * dim);
    add(p + "ffn_norm.weight", {i_dim}, o_rms_ffn + l * dim);
    add(p + "ffn_gate.weight", {i_dim, i_hidden}, o_w1 + l * hidden * dim);
    add(p + "ffn_down.weight", {i_hidden, i_dim}, o_w2 + l * dim * hidden);
    add(p + "ffn_up.weight", {i_dim, i_hidden}, o_w3 + l * hidden * dim);
  }
  add("output_norm.weight", {i_dim}, o_rms_final);
  if (!shared) add("output.weight", {i_dim, i_vocab}, o_wcls);
  f->keep_alive(map);

  Metadata& m = f->meta;
  auto u32 = [](uint64_t v) { return MetaValue::of_uint(v, MetaType::U32); };
  m.set("general.architecture", MetaValue::of_string("llama"));
  m.set("general.name", MetaValue::of_string(std::filesystem::path(path).stem().string()));
  m.set("llama.context_length", u32(seq));
  m.set("llama.embedding_length", u32(dim));
  m.set("llama.block_count", u32(L));
  m.set("llama.feed_forward_length", u32(hidden));
  m.set("llama.attention.head_count", u32(static_cast<uint64_t>(h.n_heads)));
  m.set("llama.attention.head_count_kv", u32(static_cast<uint64_t>(h.n_kv_heads)));
  m.set("llama.rope.dimension_count", u32(head_size));
  m.set("llama.rope.freq_base", MetaValue::of_float(10000.0f, MetaType::F32));
  m.set("llama.attention.layer_norm_rms_epsilon", MetaValue::of_float(1e-5f, MetaType::F32));
  m.set("llama.vocab_size", u32(vocab));

  if (tokenizer_path.empty()) fail("{}: llama2.c checkpoint needs --tokenizer FILE (its tokenizer.bin)", path);
  apply_tokenizer_file(*f, tokenizer_path);
  const MetaValue* toks = m.find("tokenizer.ggml.tokens");
  if (!toks || !toks->is_array()) fail("tokenizer {} has no token list", tokenizer_path);
  const size_t n_tokens = toks->array().size();
  if (n_tokens != vocab) {
    fail("tokenizer {} has {} tokens but the llama2.c checkpoint {} has a vocabulary of {}", tokenizer_path, n_tokens,
         path, vocab);
  }
  return f;
}

}  // namespace dashlm
