// Writes the fuzzers' seed corpus: small valid GGUF files (every metadata type, several tensor
// types, v2 and v3, other alignments) and small safetensors files, so that fuzzing starts from
// inputs that reach deep into the parsers.
//   usage: fuzz_seeds OUT_DIR   (creates OUT_DIR/gguf and OUT_DIR/safetensors)
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
  return 0;
}
