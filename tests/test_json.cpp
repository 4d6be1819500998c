// Bad JSON input in every file that dashlm reads (config.json, safetensors headers,
// tokenizer.json, dataset and calibration files): nesting deep enough to overflow a recursive
// walk, values of the wrong type, syntax errors. Each must end in one dashlm::Error that names
// the file (and line and key), never a crash or a raw "[json.exception...]" message.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/json.h"
#include "eval/eval.h"
#include "model/metadata.h"
#include "model/model_file.h"
#include "runtime/dash/calibration.h"
#include "test_util.h"

namespace dashlm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using test::TempDir;

constexpr size_t kDeep = 100000;

std::string nested(size_t depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A safetensors file with the given header text.
void write_safetensors(const fs::path& p, const std::string& header) {
  std::string b(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  write_text(p, b + header);
}

// fn must throw a dashlm::Error containing every part, on one line, without nlohmann's tag.
void expect_error(const std::function<void()>& fn, std::initializer_list<std::string> parts) {
  try {
    fn();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "'" << part << "' not in: " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    EXPECT_EQ(msg.find("json.exception"), std::string::npos) << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "not a dashlm::Error: " << e.what();
  }
}

const json kTinyConfig = {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 8},     {"num_hidden_layers", 1},
                          {"intermediate_size", 16},               {"num_attention_heads", 2}, {"vocab_size", 4}};

// --- the helper itself ----------------------------------------------------------------------------

TEST(Json, DepthIsBoundedAt64Levels) {
  EXPECT_EQ(parse_json(nested(kMaxJsonDepth), "x.json").dump().size(), 2 * kMaxJsonDepth + 1);
  expect_error([] { parse_json(nested(kMaxJsonDepth + 1), "x.json"); }, {"x.json: nested too deeply", "64"});
  expect_error([] { parse_json(nested(kDeep), "x.json"); }, {"x.json: nested too deeply"});
  // Objects count as well as arrays, and so does the depth of unclosed input.
  std::string objs;
  for (int i = 0; i <= kMaxJsonDepth; ++i) objs += "{\"a\":";
  expect_error([&] { parse_json(objs, "o.json"); }, {"o.json: nested too deeply"});
  expect_error([] { parse_json(std::string(kDeep, '['), "open.json"); }, {"open.json: nested too deeply"});
}

TEST(Json, SyntaxErrorsSayWhereWithoutTheLibrarysTag) {
  expect_error([] { parse_json("{\"a\": ", "f.json"); }, {"f.json: not valid JSON: column 7"});
  expect_error([] { parse_json("", "e.json"); }, {"e.json: not valid JSON"});
  expect_error([] { parse_json("{\"a\": 1}\n{", "two.json"); }, {"two.json: not valid JSON: line 2"});
  expect_error([] { parse_json("\"\xff\xfe\"", "u.json"); }, {"u.json: not valid JSON"});
}

TEST(Json, DescriptionsAreShortAndDoNotRecurse) {
  EXPECT_EQ(json_describe(json("abc")), "a string (\"abc\")");
  EXPECT_EQ(json_describe(json(3.5)), "a number (3.5)");
  EXPECT_EQ(json_describe(json(-7)), "a number (-7)");
  EXPECT_EQ(json_describe(json(true)), "true");
  EXPECT_EQ(json_describe(json(nullptr)), "null");
  EXPECT_EQ(json_describe(json::array({1, 2, 3})), "an array of 3 elements");
  EXPECT_EQ(json_describe(json{{"a", 1}}), "an object with 1 key");
  const std::string clipped = json_describe(json(std::string(100000, 'x')));
  EXPECT_LT(clipped.size(), 80u);
  EXPECT_NE(clipped.find("..."), std::string::npos);
  EXPECT_EQ(json_describe(json("a\nb")), "a string (\"a\\nb\")");
  // A value nested 100000 deep (nlohmann's own parser builds it without recursion): described
  // without walking it.
  const json deep = json::parse(nested(kDeep));
  EXPECT_EQ(json_describe(deep), "an array of 1 element");
}

TEST(Json, TypedAccessNamesWhereAndKey) {
  const json j = json::parse(R"({"s": "x", "i": 5, "f": 1.5, "b": true, "n": null, "big": 18446744073709551615})");
  const JsonObject o(j, "eval.jsonl line 17");
  EXPECT_EQ(o.string("s"), "x");
  EXPECT_EQ(o.integer("i"), 5);
  EXPECT_EQ(o.number("i"), 5.0);
  EXPECT_EQ(o.number("f"), 1.5);
  EXPECT_TRUE(o.boolean("b"));
  EXPECT_EQ(o.string_or("n", "dflt"), "dflt");  // null counts as absent
  EXPECT_EQ(o.integer_or("missing", 9), 9);
  expect_error([&] { o.number("s"); }, {"eval.jsonl line 17: key 's' is a string (\"x\"), expected a number"});
  expect_error([&] { o.string("i"); }, {"eval.jsonl line 17: key 'i' is a number (5), expected a string"});
  expect_error([&] { o.integer("f"); }, {"key 'f' is a number (1.5), expected an integer"});
  expect_error([&] { o.integer("big"); }, {"key 'big' is a number (18446744073709551615), out of range"});
  expect_error([&] { o.string("nope"); }, {"eval.jsonl line 17: key 'nope' is missing"});
  expect_error([&] { o.object("s"); }, {"key 's' is a string (\"x\"), expected an object"});
  expect_error([&] { o.number_or("b", 0); }, {"key 'b' is true, expected a number"});
  expect_error([] { JsonObject(json::array({1}), "m.json"); }, {"m.json: expected an object, found an array of 1 element"});
}

// --- config.json, safetensors headers, tokenizer.json ---------------------------------------------

TEST(JsonFiles, DeepConfigJsonIsRejected) {
  TempDir d("json_cfg");
  write_safetensors(d.path / "model.safetensors", "{}");
  // Nested as the whole file, and as the value of a key that an error message would print.
  write_text(d.path / "config.json", nested(kDeep));
  expect_error([&] { load_safetensors(d.path.string()); }, {"config.json: nested too deeply"});
  write_text(d.path / "config.json", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": )" + nested(kDeep) + "}");
  expect_error([&] { load_safetensors(d.path.string()); }, {"config.json: nested too deeply"});
  // Just within the bound: the type error describes the value without printing it.
  write_text(d.path / "config.json", R"({"architectures": ["LlamaForCausalLM"], "hidden_size": )" + nested(60) + "}");
  expect_error([&] { load_safetensors(d.path.string()); }, {"hidden_size must be an integer, not an array of 1 element"});
  json cfg = kTinyConfig;
  cfg["rope_theta"] = {{"a", 1}};
  write_text(d.path / "config.json", cfg.dump());
  expect_error([&] { load_safetensors(d.path.string()); }, {"rope_theta must be a number, not an object with 1 key"});
  // The same code without the file (what the fuzzer calls).
  Metadata m;
  expect_error([&] { read_hf_config_text(nested(kDeep), "c/config.json", m); }, {"c/config.json: nested too deeply"});
  expect_error([&] { read_hf_config_text("[1]", "c/config.json", m); }, {"expected a JSON object, found an array"});
  read_hf_config_text(kTinyConfig.dump(), "c/config.json", m);
  EXPECT_EQ(m.get_int("llama.embedding_length"), 8);
}

TEST(JsonFiles, DeepSafetensorsHeaderIsRejected) {
  const std::string header =
      R"({"a": {"dtype": "F32", "shape": [)" + nested(kDeep) + R"(], "data_offsets": [0, 0]}})";
  std::vector<uint8_t> b(8 + header.size());
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  expect_error([&] { parse_safetensors(b.data(), b.size(), "x.safetensors"); },
               {"x.safetensors: safetensors header: nested too deeply"});
  // A shape entry that is an array is described, not printed.
  const std::string shallow = R"({"a": {"dtype": "F32", "shape": [[[[1]]]], "data_offsets": [0, 4]}})";
  std::vector<uint8_t> s(8 + shallow.size());
  const uint64_t sn = shallow.size();
  std::memcpy(s.data(), &sn, 8);
  std::memcpy(s.data() + 8, shallow.data(), shallow.size());
  expect_error([&] { parse_safetensors(s.data(), s.size(), "x.safetensors"); },
               {"tensor a has an invalid shape (an array of 1 element)"});
}

TEST(JsonFiles, DeepTokenizerFilesAreRejected) {
  TempDir d("json_tok");
  Metadata m;
  m.set("general.architecture", MetaValue::of_string("llama"));
  write_text(d.path / "tokenizer.json", nested(kDeep));
  expect_error([&] { read_hf_tokenizer(d.str("tokenizer.json"), m, 0); }, {"tokenizer.json: nested too deeply"});
  // Deep inside a part that is walked (the post-processor, added tokens).
  const json ok = {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}}}, {"merges", {"a b"}}}}};
  std::string text = ok.dump();
  text.insert(text.size() - 1, R"(, "added_tokens": [)" + nested(kDeep) + "]");
  write_text(d.path / "tokenizer.json", text);
  expect_error([&] { read_hf_tokenizer(d.str("tokenizer.json"), m, 0); }, {"tokenizer.json: nested too deeply"});
  // tokenizer_config.json and config.json beside it are read with the same bound.
  write_text(d.path / "tokenizer.json", ok.dump());
  write_text(d.path / "tokenizer_config.json", R"({"chat_template": )" + nested(kDeep) + "}");
  expect_error([&] { read_hf_tokenizer(d.str("tokenizer.json"), m, 0); }, {"tokenizer_config.json: nested too deeply"});
  fs::remove(d.path / "tokenizer_config.json");
  write_text(d.path / "config.json", R"({"eos_token_id": )" + nested(kDeep) + "}");
  expect_error([&] { read_hf_tokenizer(d.str("tokenizer.json"), m, 0); }, {"config.json: nested too deeply"});
  fs::remove(d.path / "config.json");
  read_hf_tokenizer(d.str("tokenizer.json"), m, 0);
  EXPECT_EQ(m.find("tokenizer.ggml.tokens")->array().size(), 2u);
  // From text (what the fuzzer calls).
  expect_error([&] { read_hf_tokenizer_text(nested(kDeep), "", "", "t/tokenizer.json", m, 0); },
               {"t/tokenizer.json: nested too deeply"});
  expect_error([&] { read_hf_tokenizer_text(ok.dump(), nested(kDeep), "", "t/tokenizer.json", m, 0); },
               {"t/tokenizer_config.json: nested too deeply"});
  // An id far beyond the model's vocabulary fails before anything is allocated for it.
  json far = ok;
  far["model"]["vocab"]["c"] = 4000000;
  expect_error([&] { read_hf_tokenizer_text(far.dump(), "", "", "t/tokenizer.json", m, 16); },
               {"has id 4000000: more than the model's vocabulary of 16"});
}

// --- datasets, calibration -------------------------------------------------------------------------

TEST(JsonFiles, DatasetFilesNameTheFileLineAndKey) {
  TempDir d("json_ds");
  fs::create_directories(d.path / "books");
  write_text(d.path / "books" / "b.txt", "Some text.\n");
  const std::string fact = R"({"table": "t", "key": "k", "statement": "S.", "question": "Q?", "answer": "A"})";
  write_text(d.path / "facts.jsonl", fact + "\n");
  write_text(d.path / "manifest.json", nested(kDeep));
  expect_error([&] { eval::load_dataset(d.path.string()); }, {"manifest.json: nested too deeply", "scripts/build-datasets"});
  write_text(d.path / "manifest.json", R"({"books": [{"id": "b"}, {"id": 5}]})");
  expect_error([&] { eval::load_dataset(d.path.string()); },
               {"manifest.json: books[1]: key 'id' is a number (5), expected a string"});
  write_text(d.path / "manifest.json", R"({"books": {"id": "b"}})");
  expect_error([&] { eval::load_dataset(d.path.string()); }, {"key 'books' is an object with 1 key, expected an array"});
  write_text(d.path / "manifest.json", R"({"books": [{"id": "b"}]})");
  write_text(d.path / "facts.jsonl", fact + "\n\n" + R"({"key": "k", "statement": "S.", "question": "Q?", "answer": 7})" + "\n");
  expect_error([&] { eval::load_dataset(d.path.string()); },
               {"facts.jsonl line 3: key 'answer' is a number (7), expected a string"});
  write_text(d.path / "facts.jsonl", fact + "\n" + nested(kDeep) + "\n");
  expect_error([&] { eval::load_dataset(d.path.string()); }, {"facts.jsonl line 2: nested too deeply"});
  write_text(d.path / "facts.jsonl", fact + "\n");
  EXPECT_EQ(eval::load_dataset(d.path.string()).facts.size(), 1u);
}

TEST(JsonFiles, CalibrationFileNamesTheKey) {
  TempDir d("json_cal");
  const std::string model = d.str("m.gguf");
  write_text(calibration_path(model), nested(kDeep));
  expect_error([&] { load_calibration(model, 6); }, {"m.gguf.dash.json: nested too deeply", "run dashlm calibrate"});
  write_text(calibration_path(model), R"({"spec": 5})");
  expect_error([&] { load_calibration(model, 6); }, {"key 'spec' is a number (5), expected a string", "run dashlm calibrate"});
  write_text(calibration_path(model), R"({"spec": "none", "budget": "x"})");
  expect_error([&] { load_calibration(model, 6); }, {"key 'budget' is a string (\"x\"), expected a number"});
  write_text(calibration_path(model), R"({"spec": "none", "budget": 0.1})");
  EXPECT_EQ(load_calibration(model, 6).budget, 0.1);
}

}  // namespace
}  // namespace dashlm
