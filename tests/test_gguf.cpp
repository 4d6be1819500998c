// GGUF reader: round trips of every metadata type, tensor layout and alignment, and corrupt
// files that must fail with a one-line dashlm::Error (never crash, hang or allocate wildly).
#include <gtest/gtest.h>

#include "test_util.h"
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "common/error.h"
#include "gguf_writer.h"
#include "model/model_file.h"

namespace dashlm {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::TempDir;
using test::GgufWriter;

std::unique_ptr<ModelFile> parse(const std::vector<uint8_t>& b) { return parse_gguf(b.data(), b.size(), "test.gguf"); }

// Runs fn, which must throw dashlm::Error whose one-line message contains `part`.
template <typename T>
void patch(std::vector<uint8_t>& b, size_t pos, T v) {
  ASSERT_LE(pos + sizeof(T), b.size());
  std::memcpy(b.data() + pos, &v, sizeof(T));
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

// A small valid file: a few keys and three tensors, the last one ending the file.
GgufWriter small_writer() {
  GgufWriter w;
  w.set("general.architecture", MetaValue::of_string("llama"));
  w.set("llama.block_count", MetaValue::of_uint(1, MetaType::U32));
  w.set("tokenizer.ggml.tokens",
        MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("a"), MetaValue::of_string("bc")}));
  w.add_f32("token_embd.weight", {2, 2}, {1, 2, 3, 4});
  w.add_f32("output_norm.weight", {3}, {5, 6, 7});
  w.add_f32("blk.0.attn_q.weight", {2, 1}, {8, 9});
  return w;
}

// --- round trips ---------------------------------------------------------------------

class GgufVersionTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(GgufVersionTest, RoundTripsEveryMetadataType) {
  GgufWriter w;
  w.version = GetParam();
  w.set("u8", MetaValue::of_uint(255, MetaType::U8));
  w.set("i8", MetaValue::of_int(-128, MetaType::I8));
  w.set("u16", MetaValue::of_uint(65535, MetaType::U16));
  w.set("i16", MetaValue::of_int(-32768, MetaType::I16));
  w.set("u32", MetaValue::of_uint(4294967295u, MetaType::U32));
  w.set("i32", MetaValue::of_int(std::numeric_limits<int32_t>::min(), MetaType::I32));
  w.set("u64", MetaValue::of_uint(std::numeric_limits<uint64_t>::max(), MetaType::U64));
  w.set("i64", MetaValue::of_int(std::numeric_limits<int64_t>::min(), MetaType::I64));
  w.set("f32", MetaValue::of_float(3.5f, MetaType::F32));
  w.set("f64", MetaValue::of_float(1e300, MetaType::F64));
  w.set("bool.t", MetaValue::of_bool(true));
  w.set("bool.f", MetaValue::of_bool(false));
  w.set("str", MetaValue::of_string("hello\nw\xc3\xb6rld"));
  w.set("str.empty", MetaValue::of_string(""));
  w.set("str.nul", MetaValue::of_string(std::string("a\0b", 3)));
  w.set("arr.u8", MetaValue::of_array(MetaType::U8,
                                      {MetaValue::of_uint(0, MetaType::U8), MetaValue::of_uint(200, MetaType::U8)}));
  w.set("arr.i32", MetaValue::of_array(MetaType::I32,
                                       {MetaValue::of_int(-1, MetaType::I32), MetaValue::of_int(7, MetaType::I32)}));
  w.set("arr.f32", MetaValue::of_array(MetaType::F32, {MetaValue::of_float(0.25, MetaType::F32)}));
  w.set("arr.f64", MetaValue::of_array(MetaType::F64, {MetaValue::of_float(-2.5, MetaType::F64)}));
  w.set("arr.bool", MetaValue::of_array(MetaType::BOOL, {MetaValue::of_bool(true), MetaValue::of_bool(false)}));
  w.set("arr.u64", MetaValue::of_array(MetaType::U64, {MetaValue::of_uint(1ull << 63, MetaType::U64)}));
  w.set("arr.i64", MetaValue::of_array(MetaType::I64, {MetaValue::of_int(-5, MetaType::I64)}));
  w.set("arr.u16", MetaValue::of_array(MetaType::U16, {MetaValue::of_uint(9, MetaType::U16)}));
  w.set("arr.i8", MetaValue::of_array(MetaType::I8, {MetaValue::of_int(-9, MetaType::I8)}));
  w.set("arr.u32", MetaValue::of_array(MetaType::U32, {MetaValue::of_uint(10, MetaType::U32)}));
  w.set("arr.i16", MetaValue::of_array(MetaType::I16, {MetaValue::of_int(-10, MetaType::I16)}));
  w.set("arr.str", MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("x"), MetaValue::of_string("")}));
  w.set("arr.empty", MetaValue::of_array(MetaType::U32, {}));
  w.set("arr.nested", MetaValue::of_array(MetaType::ARRAY,
                                          {MetaValue::of_array(MetaType::I16, {MetaValue::of_int(1, MetaType::I16),
                                                                               MetaValue::of_int(-2, MetaType::I16)}),
                                           MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("deep")})}));

  const auto bytes = w.build();
  auto f = parse(bytes);
  EXPECT_EQ(f->format, "gguf");
  EXPECT_EQ(f->format_version, GetParam());
  EXPECT_TRUE(f->tensors.empty());
  const Metadata& m = f->meta;
  EXPECT_EQ(m.all().size(), 29u);

  auto type_of = [&](const char* k) { return m.find(k)->type; };
  EXPECT_EQ(type_of("u8"), MetaType::U8);
  EXPECT_EQ(type_of("i8"), MetaType::I8);
  EXPECT_EQ(type_of("u16"), MetaType::U16);
  EXPECT_EQ(type_of("i16"), MetaType::I16);
  EXPECT_EQ(type_of("u32"), MetaType::U32);
  EXPECT_EQ(type_of("i32"), MetaType::I32);
  EXPECT_EQ(type_of("u64"), MetaType::U64);
  EXPECT_EQ(type_of("i64"), MetaType::I64);
  EXPECT_EQ(type_of("f32"), MetaType::F32);
  EXPECT_EQ(type_of("f64"), MetaType::F64);
  EXPECT_EQ(type_of("bool.t"), MetaType::BOOL);
  EXPECT_EQ(type_of("str"), MetaType::STRING);

  EXPECT_EQ(m.get_int("u8"), 255);
  EXPECT_EQ(m.get_int("i8"), -128);
  EXPECT_EQ(m.get_int("u16"), 65535);
  EXPECT_EQ(m.get_int("i16"), -32768);
  EXPECT_EQ(m.get_int("u32"), 4294967295);
  EXPECT_EQ(m.get_int("i32"), std::numeric_limits<int32_t>::min());
  EXPECT_EQ(std::get<uint64_t>(m.find("u64")->v), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(m.get_int("i64"), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(m.get_float("f32"), 3.5);
  EXPECT_EQ(m.get_float("f64"), 1e300);
  EXPECT_EQ(m.get_float("u16"), 65535.0);  // ints convert to float
  EXPECT_EQ(m.get_bool("bool.t"), true);
  EXPECT_EQ(m.get_bool("bool.f"), false);
  EXPECT_EQ(m.get_string("str"), "hello\nw\xc3\xb6rld");
  EXPECT_EQ(m.get_string("str.empty"), "");
  EXPECT_EQ(m.get_string("str.nul"), std::string("a\0b", 3));

  EXPECT_EQ(m.get_int_array("arr.u8"), (std::vector<int64_t>{0, 200}));
  EXPECT_EQ(m.get_int_array("arr.i32"), (std::vector<int64_t>{-1, 7}));
  EXPECT_EQ(m.get_int_array("arr.u16"), (std::vector<int64_t>{9}));
  EXPECT_EQ(m.get_int_array("arr.i8"), (std::vector<int64_t>{-9}));
  EXPECT_EQ(m.get_int_array("arr.u32"), (std::vector<int64_t>{10}));
  EXPECT_EQ(m.get_int_array("arr.i16"), (std::vector<int64_t>{-10}));
  EXPECT_EQ(m.get_int_array("arr.i64"), (std::vector<int64_t>{-5}));
  EXPECT_EQ(m.get_int_array("arr.bool"), (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(m.get_float_array("arr.f32"), (std::vector<double>{0.25}));
  EXPECT_EQ(m.get_float_array("arr.f64"), (std::vector<double>{-2.5}));
  EXPECT_EQ(m.get_float_array("arr.i32"), (std::vector<double>{-1, 7}));
  EXPECT_EQ(m.get_string_array("arr.str"), (std::vector<std::string>{"x", ""}));
  EXPECT_EQ(m.get_int_array("arr.empty"), (std::vector<int64_t>{}));
  EXPECT_EQ(m.find("arr.empty")->elem_type, MetaType::U32);
  const MetaValue* u64a = m.find("arr.u64");
  ASSERT_TRUE(u64a && u64a->is_array());
  EXPECT_EQ(u64a->elem_type, MetaType::U64);
  EXPECT_EQ(std::get<uint64_t>(u64a->array()[0].v), 1ull << 63);

  const MetaValue* nested = m.find("arr.nested");
  ASSERT_TRUE(nested && nested->is_array());
  EXPECT_EQ(nested->elem_type, MetaType::ARRAY);
  ASSERT_EQ(nested->array().size(), 2u);
  EXPECT_EQ(nested->array()[0].elem_type, MetaType::I16);
  EXPECT_EQ(nested->array()[0].array()[1].as_int(), -2);
  EXPECT_EQ(*nested->array()[1].array()[0].as_string(), "deep");
  EXPECT_EQ(nested->to_display(), "[[1, -2], [\"deep\"]]");
  EXPECT_EQ(m.find("str")->to_display(), "hello\\nw\xc3\xb6rld");
  EXPECT_EQ(m.find("f32")->to_display(), "3.5");

  // Wrong types are errors naming the key; missing keys are empty / errors for need_*.
  expect_error([&] { m.get_int("str"); }, "str");
  expect_error([&] { m.get_string_array("arr.i32"); }, "arr.i32");
  expect_error([&] { m.need_int("no.such.key"); }, "no.such.key");
  EXPECT_FALSE(m.get_int("no.such.key").has_value());
  EXPECT_FALSE(m.get_string_array("no.such.key").has_value());
}

INSTANTIATE_TEST_SUITE_P(Versions, GgufVersionTest, ::testing::Values(2u, 3u));

TEST(GgufTest, TensorsPointIntoTheBufferAtAlignedOffsets) {
  for (uint32_t alignment : {32u, 64u, 1u, 256u}) {
    GgufWriter w;
    if (alignment != 32) w.set_alignment(alignment);
    w.add_f32("a.weight", {3, 2}, {1, 2, 3, 4, 5, 6});
    std::vector<uint8_t> f16(5 * 2);
    for (size_t i = 0; i < f16.size(); ++i) f16[i] = static_cast<uint8_t>(i);
    w.add_tensor("b.weight", 1, {5}, f16);
    std::vector<uint8_t> q8(2 * 34);  // Q8_0: blocks of 32 elements in 34 bytes
    for (size_t i = 0; i < q8.size(); ++i) q8[i] = static_cast<uint8_t>(i * 7);
    w.add_tensor("c.weight", 8, {32, 2}, q8);
    w.add_tensor("d.weight", 0, {0, 4}, {});  // empty tensors are allowed
    const auto bytes = w.build();
    auto f = parse(bytes);
    ASSERT_EQ(f->tensors.size(), 4u);

    const TensorInfo& a = f->need("a.weight");
    EXPECT_EQ(a.type, DType::F32);
    EXPECT_EQ(a.ne, (std::vector<int64_t>{3, 2}));
    EXPECT_EQ(a.nbytes, 24u);
    EXPECT_EQ(a.n_elements(), 6);
    EXPECT_EQ(a.rows(), 2);
    EXPECT_EQ(a.shape_str(), "[3, 2]");
    EXPECT_EQ(std::memcmp(a.data, f32_bytes({1, 2, 3, 4, 5, 6}).data(), 24), 0);
    const TensorInfo& b = f->need("b.weight");
    EXPECT_EQ(b.type, DType::F16);
    EXPECT_EQ(b.nbytes, 10u);
    EXPECT_EQ(std::memcmp(b.data, f16.data(), 10), 0);
    const TensorInfo& c = f->need("c.weight");
    EXPECT_EQ(c.type, DType::Q8_0);
    EXPECT_EQ(c.nbytes, 68u);
    EXPECT_EQ(std::memcmp(c.data, q8.data(), 68), 0);
    EXPECT_EQ(f->need("d.weight").nbytes, 0u);
    // Every tensor starts at a multiple of the alignment from the (aligned) data section.
    for (const TensorInfo& t : f->tensors) {
      EXPECT_EQ(static_cast<size_t>(t.data - bytes.data()) % alignment, 0u) << t.name << " alignment " << alignment;
    }
    EXPECT_EQ(f->find("nope"), nullptr);
    expect_error([&] { f->need("nope"); }, "nope");
  }
}

TEST(GgufTest, KnownTypesThatCannotBeDequantizedStillParse) {
  GgufWriter w;
  w.add_tensor("ids", 27, {2}, std::vector<uint8_t>(16, 1));  // I64
  auto f = parse(w.build());
  EXPECT_EQ(f->need("ids").type, DType::I64);
}

TEST(GgufTest, LoadsFromDiskAndDispatchesByContent) {
  TempDir dir("gguf_load");
  const std::string p = (dir.path / "m.gguf").string();
  small_writer().write(p);
  auto f = load_gguf(p);
  EXPECT_EQ(f->path, p);
  EXPECT_EQ(f->need("output_norm.weight").ne, (std::vector<int64_t>{3}));
  auto g = open_model_file(p);
  EXPECT_EQ(g->format, "gguf");
  EXPECT_EQ(g->meta.get_string("general.architecture"), "llama");
  // The name is irrelevant: content decides.
  const std::string q = (dir.path / "weights.bin").string();
  fs::copy_file(p, q);
  EXPECT_EQ(open_model_file(q)->format, "gguf");
}

TEST(GgufTest, TokenizerFromAnotherGgufReplacesTheModelsTokenizerKeys) {
  TempDir dir("gguf_tok");
  const std::string model = (dir.path / "m.gguf").string();
  GgufWriter w = small_writer();
  w.set("tokenizer.ggml.model", MetaValue::of_string("gpt2"));
  w.set("tokenizer.ggml.merges", MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("a b")}));
  w.write(model);
  GgufWriter t;
  t.set("tokenizer.ggml.model", MetaValue::of_string("llama"));
  t.set("tokenizer.ggml.tokens", MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("x")}));
  t.set("general.architecture", MetaValue::of_string("other"));
  const std::string tok = (dir.path / "tok.gguf").string();
  t.write(tok);
  auto f = open_model_file(model, tok);
  EXPECT_EQ(f->meta.get_string("tokenizer.ggml.model"), "llama");
  EXPECT_EQ(f->meta.get_string_array("tokenizer.ggml.tokens"), (std::vector<std::string>{"x"}));
  EXPECT_FALSE(f->meta.has("tokenizer.ggml.merges"));              // the model's old key is gone
  EXPECT_EQ(f->meta.get_string("general.architecture"), "llama");  // non-tokenizer keys untouched

  // A GGUF without a tokenizer cannot serve as one.
  GgufWriter none;
  none.set("general.architecture", MetaValue::of_string("llama"));
  const std::string none_path = (dir.path / "none.gguf").string();
  none.write(none_path);
  expect_error([&] { open_model_file(model, none_path); }, "has no tokenizer");
}

// --- corrupt files -----------------------------------------------------------------

TEST(GgufCorruptTest, BadMagicAndVersions) {
  auto b = small_writer().build();
  auto bad = b;
  bad[0] = 'X';
  expect_error([&] { parse(bad); }, "not a GGUF file");
  expect_error([&] { parse_gguf(nullptr, 0, "empty.gguf"); }, "empty.gguf");
  auto v1 = b;
  patch<uint32_t>(v1, 4, 1);
  expect_error([&] { parse(v1); }, "GGUF v1 is not supported");
  auto v4 = b;
  patch<uint32_t>(v4, 4, 4);
  expect_error([&] { parse(v4); }, "GGUF version 4 is not supported");
  auto be = b;
  patch<uint32_t>(be, 4, 0x03000000u);
  expect_error([&] { parse(be); }, "big-endian");
}

TEST(GgufCorruptTest, EveryTruncationFailsCleanly) {
  GgufWriter w = small_writer();
  w.set("nested", MetaValue::of_array(MetaType::ARRAY,
                                      {MetaValue::of_array(MetaType::U16, {MetaValue::of_uint(3, MetaType::U16)})}));
  w.set("pi", MetaValue::of_float(3.14, MetaType::F64));
  const auto b = w.build();
  ASSERT_NO_THROW(parse(b));
  for (size_t n = 0; n < b.size(); ++n) {
    // A fresh copy of exactly n bytes, so that AddressSanitizer catches any read past it.
    std::vector<uint8_t> prefix(b.begin(), b.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_THROW(parse_gguf(prefix.empty() ? nullptr : prefix.data(), n, "t.gguf"), Error) << "prefix " << n;
  }
}

TEST(GgufCorruptTest, HugeCountsAndLengthsFailFast) {
  const auto b = small_writer().build();
  auto t = b;
  patch<uint64_t>(t, 8, uint64_t{1} << 60);  // tensor count
  expect_error([&] { parse(t); }, "cannot fit");
  auto k = b;
  patch<uint64_t>(k, 16, uint64_t{1} << 60);  // metadata count
  expect_error([&] { parse(k); }, "cannot fit");
  auto s = b;
  patch<uint64_t>(s, 24, uint64_t{1} << 40);  // length of the first key
  expect_error([&] { parse(s); }, "only");

  // An array claiming 2^61 elements.
  GgufWriter w;
  w.set("arr", MetaValue::of_array(MetaType::U8, {MetaValue::of_uint(1, MetaType::U8)}));
  auto a = w.build();
  // header 24 + key (8 + 3) + type 4 + elem type 4 = 43: the array length follows.
  patch<uint64_t>(a, 43, uint64_t{1} << 61);
  expect_error([&] { parse(a); }, "claims an array");
  // A string array whose strings claim 2^40 bytes.
  GgufWriter ws;
  ws.set("s", MetaValue::of_array(MetaType::STRING, {MetaValue::of_string("abc")}));
  auto sa = ws.build();
  patch<uint64_t>(sa, 24 + 9 + 4 + 4 + 8, uint64_t{1} << 40);
  expect_error([&] { parse(sa); }, "value of s");
}

TEST(GgufCorruptTest, TensorDataMustLieInsideTheFile) {
  GgufWriter w = small_writer();
  w.add_f32("late", {2}, {1, 2}).offset = 1u << 20;
  expect_error([&] { parse(w.build()); }, "tensor late");
  GgufWriter o = small_writer();
  o.add_f32("wrap", {2}, {1, 2}).offset = std::numeric_limits<uint64_t>::max() - 31;  // aligned, wraps
  expect_error([&] { parse(o.build()); }, "tensor wrap");
  GgufWriter m = small_writer();
  m.add_f32("odd", {2}, {1, 2}).offset = 4;
  expect_error([&] { parse(m.build()); }, "not a multiple of the alignment");
  // A shape whose byte size overflows.
  GgufWriter big;
  big.add_tensor("huge", 0, {uint64_t{1} << 40, uint64_t{1} << 30}, {});
  expect_error([&] { parse(big.build()); }, "huge");
  GgufWriter big2;
  big2.add_tensor("huge2", 0, {0, uint64_t{1} << 40, uint64_t{1} << 40}, {});
  expect_error([&] { parse(big2.build()); }, "huge2");
  // Data that ends one byte past the end.
  auto b = small_writer().build();
  b.pop_back();
  expect_error([&] { parse(b); }, "blk.0.attn_q.weight");
}

TEST(GgufCorruptTest, BadTensorInfos) {
  GgufWriter u;
  u.add_tensor("blk.0.attn_q.weight", 99, {4}, std::vector<uint8_t>(16));
  expect_error([&] { parse(u.build()); }, "tensor blk.0.attn_q.weight has unknown type 99");
  GgufWriter d5;
  d5.add_tensor("five", 0, {1, 1, 1, 1, 1}, std::vector<uint8_t>(4));
  expect_error([&] { parse(d5.build()); }, "tensor five has 5 dimensions");
  GgufWriter d0;
  d0.add_tensor("zero", 0, {}, std::vector<uint8_t>(4));
  expect_error([&] { parse(d0.build()); }, "tensor zero has 0 dimensions");
  GgufWriter dup = small_writer();
  dup.add_f32("output_norm.weight", {1}, {1});
  expect_error([&] { parse(dup.build()); }, "duplicate tensor output_norm.weight");
  GgufWriter blk;
  blk.add_tensor("q", 8, {33}, std::vector<uint8_t>(34));  // Q8_0 rows must be multiples of 32
  expect_error([&] { parse(blk.build()); }, "block size");
  GgufWriter empty_name;
  empty_name.add_f32("", {1}, {1});
  expect_error([&] { parse(empty_name.build()); }, "empty name");
}

TEST(GgufCorruptTest, BadMetadata) {
  GgufWriter dup;
  dup.set("k", MetaValue::of_uint(1, MetaType::U32));
  dup.set("k", MetaValue::of_uint(2, MetaType::U32));
  expect_error([&] { parse(dup.build()); }, "duplicate metadata key k");

  for (uint32_t a : {0u, 3u, 48u}) {
    GgufWriter w = small_writer();
    w.set("general.alignment", MetaValue::of_uint(a, MetaType::U32));
    expect_error([&] { parse(w.build()); }, "general.alignment");
  }
  GgufWriter sa = small_writer();
  sa.set("general.alignment", MetaValue::of_string("32"));
  expect_error([&] { parse(sa.build()); }, "general.alignment");

  GgufWriter ut;
  ut.set("weird", MetaValue::of_uint(1, MetaType::U32));
  auto b = ut.build();
  patch<uint32_t>(b, 24 + 8 + 5, 13);  // the value type of "weird"
  expect_error([&] { parse(b); }, "unknown value type 13");

  GgufWriter ue;
  ue.set("arr", MetaValue::of_array(MetaType::U8, {}));
  auto c = ue.build();
  patch<uint32_t>(c, 24 + 8 + 3 + 4, 77);  // the element type
  expect_error([&] { parse(c); }, "unknown value type 77");

  // Arrays nested deeper than any real file.
  MetaValue deep = MetaValue::of_array(MetaType::U8, {});
  for (int i = 0; i < 20; ++i) deep = MetaValue::of_array(MetaType::ARRAY, {deep});
  GgufWriter dw;
  dw.set("deep", deep);
  expect_error([&] { parse(dw.build()); }, "nests arrays");
}

TEST(GgufCorruptTest, EmptyAndMissingFiles) {
  TempDir dir("gguf_empty");
  const std::string p = (dir.path / "empty.gguf").string();
  { std::ofstream(p, std::ios::binary); }
  expect_error([&] { load_gguf(p); }, "is empty");
  expect_error([&] { load_gguf((dir.path / "missing.gguf").string()); }, "missing.gguf");
  expect_error([&] { load_gguf(dir.path.string()); }, "directory");
  expect_error([&] { open_model_file((dir.path / "missing.gguf").string()); }, "does not exist");
}

}  // namespace
}  // namespace dashlm
