// Writes the fuzzers' seed corpus: small valid GGUF files (every metadata type, several tensor
// types, v2 and v3, other alignments), small safetensors files, Hugging Face config.json and
// tokenizer.json files of every architecture and form the loader reads, and eval resume files,
// so that fuzzing starts from inputs that reach deep into the parsers.
//   usage: fuzz_seeds OUT_DIR   (creates OUT_DIR/gguf, safetensors, hf_config, hf_tokenizer, resume and server_request)
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "gguf_writer.h"

namespace fs = std::filesystem;
using dashlm::MetaType;
using dashlm::MetaValue;
using dashlm::test::GgufWriter;

namespace {

void write(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

using json = nlohmann::json;

json llama_config(const std::string& arch) {
  return {{"architectures", {arch}}, {"hidden_size", 64},          {"num_hidden_layers", 2},
          {"intermediate_size", 128}, {"num_attention_heads", 4},   {"num_key_value_heads", 2},
          {"max_position_embeddings", 512}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
          {"vocab_size", 512},        {"tie_word_embeddings", true}};
}

// A byte-level BPE tokenizer.json: a small vocabulary, both forms of merges, added tokens and a
// post-processor that adds BOS.
json bpe_tokenizer(bool pair_merges) {
  json vocab = json::object();
  const char* toks[] = {"a", "b", "c", "ab", "abc", "\u0120", "\u0120a", "<s>", "</s>"};
  for (int i = 0; i < 9; ++i) vocab[toks[i]] = i;
  json merges = pair_merges ? json::array({json::array({"a", "b"}), json::array({"ab", "c"})}) : json::array({"a b", "ab c"});
  return {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
          {"added_tokens", {{{"id", 7}, {"content", "<s>"}, {"special", true}},
                            {{"id", 9}, {"content", "<|im_start|>"}, {"special", true}}}},
          {"post_processor",
           {{"type", "Sequence"},
            {"processors", {{{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}}}}}}}}};
}

// One line of a resume file, as dashlm eval writes it.
json resume_record(const std::string& task, int sample, const std::string& config) {
  json r = {{"task", task},         {"length", 256},           {"sample", sample},        {"config", config},
            {"describe", config},   {"document_ms", 12.5},     {"full_document_ms", 20.0}, {"flops_full", 1e9},
            {"flops_done", 5e8},    {"flop_speedup", 2.0},     {"top1_last", 1.0},        {"kl_last", 0.001},
            {"settings", {{"model", "m"}, {"seed", 0}, {"samples", 2}, {"chat", false}}}};
  if (task == "continuation") {
    r["nll"] = 2.5;
  } else {
    r["score"] = 1.0;
    r["found"] = {true};
    r["answers"] = {"42"};
  }
  return r;
}

std::vector<uint8_t> bytes(size_t n, uint8_t start) {
  std::vector<uint8_t> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = static_cast<uint8_t>(start + i);
  return b;
}

GgufWriter all_types(uint32_t version) {
  GgufWriter w;
  w.version = version;
  w.set("general.architecture", MetaValue::of_string("llama"));
  w.set("u8", MetaValue::of_uint(1, MetaType::U8));
  w.set("i8", MetaValue::of_int(-1, MetaType::I8));
  w.set("u16", MetaValue::of_uint(2, MetaType::U16));
  w.set("i16", MetaValue::of_int(-2, MetaType::I16));
  w.set("u32", MetaValue::of_uint(3, MetaType::U32));
  w.set("i32", MetaValue::of_int(-3, MetaType::I32));
  w.set("u64", MetaValue::of_uint(4, MetaType::U64));
  w.set("i64", MetaValue::of_int(-4, MetaType::I64));
  w.set("f32", MetaValue::of_float(0.5, MetaType::F32));
  w.set("f64", MetaValue::of_float(0.25, MetaType::F64));
  w.set("b", MetaValue::of_bool(true));
  w.set("s", MetaValue::of_string("text"));
  w.set("tokenizer.ggml.tokens",
        MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("a"), MetaValue::of_string("b")}));
  w.set("tokenizer.ggml.scores", MetaValue::of_array(MetaType::F32, {MetaValue::of_float(0, MetaType::F32),
                                                                     MetaValue::of_float(-1, MetaType::F32)}));
  w.set("nested", MetaValue::of_array(MetaType::ARRAY,
                                      {MetaValue::of_array(MetaType::I32, {MetaValue::of_int(7, MetaType::I32)})}));
  w.add_f32("token_embd.weight", {2, 2}, {1, 2, 3, 4});
  return w;
}

std::vector<uint8_t> safetensors(const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>>>& ts) {
  nlohmann::json h = nlohmann::json::object();
  h["__metadata__"] = {{"format", "pt"}};
  uint64_t off = 0;
  for (const auto& [name, dtype, shape] : ts) {
    uint64_t n = dtype == "F32" ? 4 : 2;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);
    h[name] = {{"dtype", dtype}, {"shape", shape}, {"data_offsets", {off, off + n}}};
    off += n;
  }
  std::string hs = h.dump();
  while (hs.size() % 8) hs += ' ';
  std::vector<uint8_t> out(8);
  const uint64_t len = hs.size();
  std::memcpy(out.data(), &len, 8);
  out.insert(out.end(), hs.begin(), hs.end());
  const auto data = bytes(off, 1);
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out(argv[1]);
  fs::create_directories(out / "gguf");
  fs::create_directories(out / "safetensors");
  fs::create_directories(out / "hf_config");
  fs::create_directories(out / "hf_tokenizer");
  fs::create_directories(out / "resume");

  write(out / "gguf" / "all_types_v3.gguf", all_types(3).build());
  write(out / "gguf" / "all_types_v2.gguf", all_types(2).build());
  {
    GgufWriter w;
    w.set_alignment(64);
    w.add_tensor("q8", 8, {32, 2}, bytes(68, 3));    // Q8_0
    w.add_tensor("f16", 1, {3}, bytes(6, 9));        // F16
    w.add_tensor("q4k", 12, {256}, bytes(144, 11));  // Q4_K
    w.add_tensor("bf16", 30, {2, 1, 1, 2}, bytes(8, 5));
    write(out / "gguf" / "types_align64.gguf", w.build());
  }
  {
    GgufWriter w;
    w.set("general.alignment", MetaValue::of_uint(8, MetaType::U32));
    w.alignment = 8;
    w.add_f32("a", {1}, {1});
    w.add_f32("b", {2}, {2, 3});
    write(out / "gguf" / "align8.gguf", w.build());
  }
  {
    GgufWriter w;  // metadata only
    w.set("general.name", MetaValue::of_string("empty"));
    write(out / "gguf" / "meta_only.gguf", w.build());
  }

  write(out / "safetensors" / "f32.safetensors",
        safetensors({{"model.embed_tokens.weight", "F32", {4, 2}}, {"model.norm.weight", "F32", {2}}}));
  write(out / "safetensors" / "mixed.safetensors",
        safetensors({{"a", "F16", {2, 3}}, {"b", "BF16", {1}}, {"c", "F32", {}}, {"d", "F32", {0, 5}}}));
  write(out / "safetensors" / "empty.safetensors", safetensors({}));

  // config.json: each architecture and form the loader accepts.
  write_text(out / "hf_config" / "llama.json", llama_config("LlamaForCausalLM").dump(2));
  json qwen = llama_config("Qwen2ForCausalLM");
  qwen["tie_word_embeddings"] = false;
  write_text(out / "hf_config" / "qwen2.json", qwen.dump());
  json mistral = llama_config("x");
  mistral.erase("architectures");
  mistral["model_type"] = "mistral";
  mistral["head_dim"] = 16;
  write_text(out / "hf_config" / "mistral.json", mistral.dump());
  json rope = llama_config("LlamaForCausalLM");
  rope["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  write_text(out / "hf_config" / "llama3_rope.json", rope.dump());
  json gemma = {{"architectures", {"Gemma3ForCausalLM"}}, {"hidden_size", 64}, {"num_hidden_layers", 2},
                {"intermediate_size", 128}, {"num_attention_heads", 4}, {"num_key_value_heads", 1}, {"head_dim", 16},
                {"sliding_window", 512}, {"sliding_window_pattern", 6}, {"rope_local_base_freq", 10000.0},
                {"final_logit_softcapping", nullptr}, {"query_pre_attn_scalar", 16}};
  write_text(out / "hf_config" / "gemma3.json", gemma.dump());
  json gemma_mm = {{"architectures", {"Gemma3ForConditionalGeneration"}},
                   {"text_config", {{"hidden_size", 64}, {"num_hidden_layers", 2}}},
                   {"tie_word_embeddings", true}};
  write_text(out / "hf_config" / "gemma3_mm.json", gemma_mm.dump());
  // Nested deeper than the parser allows (64 levels): the rejection path.
  const std::string deep = std::string(80, '[') + std::string(80, ']');
  write_text(out / "hf_config" / "deep.json", "{\"architectures\": " + deep + "}");

  // tokenizer.json, then (after NUL bytes) tokenizer_config.json and config.json.
  const std::string nul(1, '\0');
  const json tc = {{"bos_token", "<s>"}, {"eos_token", {{"content", "</s>"}}}, {"add_bos_token", true},
                   {"chat_template", "{{ messages }}"}};
  const json tc_list = {{"chat_template", {{{"name", "default"}, {"template", "{{ x }}"}}, {{"name", "tool_use"}, {"template", "y"}}}}};
  const json cfg_ids = {{"bos_token_id", 7}, {"eos_token_id", {8, 9}}};
  write_text(out / "hf_tokenizer" / "alone.json", bpe_tokenizer(false).dump());
  write_text(out / "hf_tokenizer" / "pairs.json", bpe_tokenizer(true).dump());
  write_text(out / "hf_tokenizer" / "with_config.json", bpe_tokenizer(false).dump() + nul + tc.dump());
  write_text(out / "hf_tokenizer" / "with_both.json", bpe_tokenizer(true).dump() + nul + tc_list.dump() + nul + cfg_ids.dump());
  write_text(out / "hf_tokenizer" / "config_only.json", bpe_tokenizer(false).dump() + nul + nul + cfg_ids.dump());

  // Resume files: whole records, a record cut off, a garbage line, a null metric.
  const std::string a = resume_record("needle", 0, "full").dump(), b = resume_record("needle", 0, "topk:0.4:0.33:retain").dump();
  const std::string c = resume_record("continuation", 1, "full").dump();
  json nan = resume_record("fidelity", 0, "full");
  nan["kl_last"] = nullptr;
  write_text(out / "resume" / "whole.jsonl", a + "\n" + b + "\n" + c + "\n");
  write_text(out / "resume" / "cut.jsonl", a + "\n" + b.substr(0, b.size() / 2));
  write_text(out / "resume" / "garbage.jsonl", a + "\n{\"task\": \n\r\n" + c + "\r\n" + nan.dump() + "\n");
  write_text(out / "resume" / "one.jsonl", c);
  write_text(out / "resume" / "deep.jsonl", a + "\n" + deep + "\n" + c + "\n");

  // Server requests: the first byte picks the endpoint (even: chat, odd: completions).
  fs::create_directories(out / "server_request");
  write_text(out / "server_request" / "chat.json",
             "0" + json({{"model", "m"}, {"messages", {{{"role", "system"}, {"content", "be brief"}}, {{"role", "user"}, {"content", "hi"}}}},
                         {"max_tokens", 8}, {"temperature", 0}, {"stream", true}, {"stop", {"END"}},
                         {"dash", {{"policy", "query"}, {"keep", 0.2}, {"kv", "drop"}}}}).dump());
  write_text(out / "server_request" / "chat_parts.json",
             "0" + json({{"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "a"}}}}}}}, {"dash", "topk:0.4:0.33:drop"}}).dump());
  write_text(out / "server_request" / "completion.json",
             "1" + json({{"prompt", "Once upon a time"}, {"max_completion_tokens", 4}, {"seed", -1}, {"top_p", 0.9},
                         {"dash", {{"policy", "topk"}, {"halt_layer", 0.25}, {"keep", 0.5}, {"then", "0.5@0.2"}}}}).dump());
  return 0;
}
