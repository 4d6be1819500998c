// Element types and dequantization, checked against the gguf Python package (the reference
// implementation shipped with llama.cpp): tests/data/quant_vectors.bin is written by
// scripts/gen-quant-vectors.py, whose header documents the file format.
//
// Every record must match bit for bit, K types included: dashlm computes each value with the
// same float32 operations in the same order as ggml/gguf, and all the products involved are
// exact in float32 (see src/backends/cpu/quants.cpp), so no tolerance is needed.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <set>
#include <string>
#include <vector>

#include "backends/cpu/gemm.h"
#include "backends/cpu/quants.h"
#include "backends/dtype.h"
#include "common/error.h"
#include "gemm_levels.h"

using namespace dashlm;
using cpu::bf16_to_fp32;
using cpu::dequantize_row;
using cpu::fp16_to_fp32;
using cpu::fp32_to_bf16;
using cpu::fp32_to_fp16;

namespace {

uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }
float float_of(uint32_t u) { return std::bit_cast<float>(u); }

// ---- the test-vector file -----------------------------------------------------------------

struct Record {
  uint32_t type = 0;
  uint32_t n = 0;
  std::string label;
  std::vector<uint8_t> data;
  std::vector<float> expected;
};

class Reader {
 public:
  explicit Reader(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  uint32_t u32() {
    const uint8_t* p = take(4);
    return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
  }
  const uint8_t* take(size_t n) {
    if (n > bytes_.size() - pos_) throw std::runtime_error("quant_vectors.bin is truncated");
    const uint8_t* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }
  bool done() const { return pos_ == bytes_.size(); }

 private:
  std::vector<uint8_t> bytes_;
  size_t pos_ = 0;
};

std::vector<Record> load_vectors() {
  const std::string path = std::string(DASHLM_TEST_DATA_DIR) + "/quant_vectors.bin";
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  Reader r(std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {}));
  if (std::memcmp(r.take(4), "DLQV", 4) != 0) throw std::runtime_error("bad magic in " + path);
  if (r.u32() != 1) throw std::runtime_error("unknown version of " + path);
  const uint32_t count = r.u32();
  std::vector<Record> records(count);
  for (Record& rec : records) {
    rec.type = r.u32();
    rec.n = r.u32();
    const uint32_t n_bytes = r.u32();
    const uint32_t label_len = r.u32();
    const uint8_t* label = r.take(label_len);
    rec.label.assign(label, label + label_len);
    const uint8_t* data = r.take(n_bytes);
    rec.data.assign(data, data + n_bytes);
    rec.expected.resize(rec.n);
    for (float& f : rec.expected) f = float_of(r.u32());
  }
  if (!r.done()) throw std::runtime_error("trailing bytes in " + path);
  return records;
}

// Compares bit patterns; reports the first few mismatches of a record.
void expect_bitwise(const Record& rec, const std::vector<float>& got) {
  int reported = 0;
  for (uint32_t i = 0; i < rec.n; ++i) {
    if (bits_of(got[i]) == bits_of(rec.expected[i])) continue;
    ADD_FAILURE() << rec.label << ": element " << i << " is " << got[i] << " (0x" << std::hex << bits_of(got[i])
                  << "), gguf says " << rec.expected[i] << " (0x" << bits_of(rec.expected[i]) << std::dec << ")";
    if (++reported == 5) return;
  }
}

}  // namespace

// ---- dequantization against gguf ----------------------------------------------------------

TEST(Quants, MatchesGgufReferenceBitForBit) {
  const std::vector<Record> records = load_vectors();
  ASSERT_FALSE(records.empty());
  std::set<uint32_t> covered;
  for (const Record& rec : records) {
    SCOPED_TRACE(rec.label);
    const auto traits = dtype_traits(rec.type);
    ASSERT_TRUE(traits.has_value());
    ASSERT_EQ(dtype_row_bytes(static_cast<DType>(rec.type), rec.n), rec.data.size());
    std::vector<float> got(rec.n, -12345.f);
    dequantize_row(static_cast<DType>(rec.type), rec.data.data(), got.data(), rec.n);
    expect_bitwise(rec, got);

    // Rows in a file need not be aligned: the same bytes at an odd address give the same floats.
    std::vector<uint8_t> shifted(rec.data.size() + 1);
    std::memcpy(shifted.data() + 1, rec.data.data(), rec.data.size());
    std::vector<float> got_unaligned(rec.n, -12345.f);
    dequantize_row(static_cast<DType>(rec.type), shifted.data() + 1, got_unaligned.data(), rec.n);
    expect_bitwise(rec, got_unaligned);
    covered.insert(rec.type);
  }
  // Every type dashlm claims to dequantize has vectors.
  for (uint32_t t = 0; t < 64; ++t) {
    const auto traits = dtype_traits(t);
    if (traits && traits->dequantizable) {
      EXPECT_TRUE(covered.count(t)) << "no test vectors for " << traits->name;
    }
  }
}

TEST(Quants, DequantizesBlockByBlock) {
  // A row converted in one call equals the same row converted one block at a time.
  for (const Record& rec : load_vectors()) {
    const auto& t = dtype_traits(static_cast<DType>(rec.type));
    std::vector<float> whole(rec.n), pieces(rec.n);
    dequantize_row(static_cast<DType>(rec.type), rec.data.data(), whole.data(), rec.n);
    for (uint32_t b = 0; b < rec.n / t.block_size; ++b) {
      dequantize_row(static_cast<DType>(rec.type), rec.data.data() + b * t.block_bytes,
                     pieces.data() + b * t.block_size, t.block_size);
    }
    EXPECT_EQ(std::memcmp(whole.data(), pieces.data(), rec.n * sizeof(float)), 0) << rec.label;
  }
}

// The decode path's dot products (dequantization and dot in the kernel level's vector width)
// against float64 dot products with gguf's dequantized values, at every level this CPU runs.
TEST(Quants, DecodeDotsMatchAtEveryLevel) {
  int checked = 0;
  for (const Record& rec : load_vectors()) {
    bool finite = true;
    for (float v : rec.expected) finite = finite && std::isfinite(v);
    if (!finite) continue;  // the fp16 specials records
    const auto& t = dtype_traits(static_cast<DType>(rec.type));
    const int64_t n = rec.n, m = 3;
    std::vector<float> x(static_cast<size_t>(m * n));
    for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i) + 1.0));
    for (const cpu::GemmLevel level : test::runnable_levels()) {
      test::LevelGuard guard(level);
      float acc[4] = {-1.f, -1.f, -1.f, -1.f};
      ASSERT_TRUE(cpu::quant_row_dots(rec.type, rec.data.data(), n, t.block_size, static_cast<int64_t>(t.block_bytes),
                                      x.data(), n, m, acc))
          << rec.label;
      for (int64_t i = 0; i < m; ++i) {
        double ref = 0, mag = 0;
        for (int64_t j = 0; j < n; ++j) {
          ref += static_cast<double>(rec.expected[static_cast<size_t>(j)]) * x[static_cast<size_t>(i * n + j)];
          mag += std::abs(static_cast<double>(rec.expected[static_cast<size_t>(j)]) * x[static_cast<size_t>(i * n + j)]);
        }
        EXPECT_NEAR(acc[i], ref, 1e-5 * mag + 1e-30) << rec.label << " row " << i << " at level "
                                                     << cpu::gemm_level_name(level);
      }
      ++checked;
    }
  }
  EXPECT_GT(checked, 10);
}

TEST(Quants, UnsupportedTypesThrow) {
  std::vector<uint8_t> block(1024);
  std::vector<float> out(256);
  for (DType t : {DType::Q8_1, DType::I64, static_cast<DType>(16), static_cast<DType>(999)}) {
    EXPECT_THROW(dequantize_row(t, block.data(), out.data(), 32), Error);
  }
  try {
    dequantize_row(DType::Q8_1, block.data(), out.data(), 32);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "cannot dequantize tensor type Q8_1");
  }
  try {
    dequantize_row(static_cast<DType>(20), block.data(), out.data(), 32);
    FAIL() << "no exception";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "cannot dequantize unknown tensor type 20");
  }
  // Partial blocks are refused too.
  EXPECT_THROW(dequantize_row(DType::Q4_0, block.data(), out.data(), 31), Error);
  EXPECT_THROW(dequantize_row(DType::Q4_K, block.data(), out.data(), 128), Error);
  EXPECT_THROW(dequantize_row(DType::F16, block.data(), out.data(), -1), Error);
  EXPECT_NO_THROW(dequantize_row(DType::F16, block.data(), out.data(), 0));
  EXPECT_NO_THROW(dequantize_row(DType::Q4_K, nullptr, nullptr, 0));
}

// ---- fp16 ---------------------------------------------------------------------------------

// The value of a half, computed independently of the code under test.
float reference_half(uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0) {
    v = std::ldexp(static_cast<float>(m), -24);
  } else if (e == 31) {
    // inf, or NaN with the payload moved to the top of the float32 mantissa
    return float_of((uint32_t(sign) << 31) | 0x7f800000u | (uint32_t(m) << 13));
  } else {
    v = std::ldexp(static_cast<float>(1024 + m), e - 25);
  }
  return sign ? -v : v;
}

bool half_is_nan(uint16_t h) { return (h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0; }

TEST(Fp16, ToFloatExhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    ASSERT_EQ(bits_of(fp16_to_fp32(uint16_t(h))), bits_of(reference_half(uint16_t(h)))) << "half 0x" << std::hex << h;
  }
  EXPECT_EQ(fp16_to_fp32(0x3c00), 1.f);
  EXPECT_EQ(fp16_to_fp32(0xc000), -2.f);
  EXPECT_EQ(fp16_to_fp32(0x7bff), 65504.f);
  EXPECT_EQ(fp16_to_fp32(0x0001), 0x1p-24f);  // smallest subnormal
  EXPECT_EQ(fp16_to_fp32(0x03ff), 0x3ffp-24f);  // largest subnormal
  EXPECT_EQ(fp16_to_fp32(0x0400), 0x1p-14f);  // smallest normal
  EXPECT_EQ(bits_of(fp16_to_fp32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(fp16_to_fp32(0x7c00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(fp16_to_fp32(0xfc00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7e00)));
  EXPECT_TRUE(std::isnan(fp16_to_fp32(0x7c01)));  // signalling NaN stays NaN
}

TEST(Fp16, RoundTripsEveryHalf) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint16_t back = fp32_to_fp16(fp16_to_fp32(uint16_t(h)));
    if (half_is_nan(uint16_t(h))) {
      // NaNs stay NaNs of the same sign; quiet ones keep their payload.
      EXPECT_TRUE(half_is_nan(back)) << std::hex << h;
      EXPECT_EQ(back & 0x8000, h & 0x8000) << std::hex << h;
      if (h & 0x200) {
        EXPECT_EQ(back, h) << std::hex << h;
      }
    } else {
      ASSERT_EQ(back, h) << "half 0x" << std::hex << h;
    }
  }
}

TEST(Fp16, RoundsToNearestEven) {
  // Between every pair of neighbouring finite halves (subnormals included), the exact midpoint
  // goes to the one with an even mantissa, and anything off the midpoint to the nearer one.
  for (uint32_t h = 0; h < 0x7bff; ++h) {
    const float lo = fp16_to_fp32(uint16_t(h)), hi = fp16_to_fp32(uint16_t(h + 1));
    const float mid = (lo + hi) / 2;  // exact: needs one more bit than a half has
    ASSERT_EQ(mid - lo, hi - mid);
    const uint16_t even = (h & 1) ? uint16_t(h + 1) : uint16_t(h);
    ASSERT_EQ(fp32_to_fp16(mid), even) << std::hex << h;
    ASSERT_EQ(fp32_to_fp16(-mid), even | 0x8000) << std::hex << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, 0.f)), h) << std::hex << h;
    ASSERT_EQ(fp32_to_fp16(std::nextafter(mid, 1e9f)), h + 1) << std::hex << h;
  }
}

TEST(Fp16, OverflowUnderflowAndSpecials) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(fp32_to_fp16(65504.f), 0x7bff);
  EXPECT_EQ(fp32_to_fp16(std::nextafter(65520.f, 0.f)), 0x7bff);  // just below the midpoint
  EXPECT_EQ(fp32_to_fp16(65520.f), 0x7c00);  // the midpoint rounds to "even": infinity
  EXPECT_EQ(fp32_to_fp16(1e10f), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::max()), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(inf), 0x7c00);
  EXPECT_EQ(fp32_to_fp16(-inf), 0xfc00);
  EXPECT_EQ(fp32_to_fp16(0.f), 0x0000);
  EXPECT_EQ(fp32_to_fp16(-0.f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(0x1p-25f), 0x0000);  // half of the smallest subnormal: ties to even (0)
  EXPECT_EQ(fp32_to_fp16(std::nextafter(0x1p-25f, 1.f)), 0x0001);
  EXPECT_EQ(fp32_to_fp16(0x1.8p-24f), 0x0002);  // 1.5 units: ties to even (2)
  EXPECT_EQ(fp32_to_fp16(-0x1p-30f), 0x8000);
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(fp32_to_fp16(std::nextafter(0x1p-14f, 0.f)), 0x0400);  // rounds up into the normals
  EXPECT_EQ(fp32_to_fp16(1.f / 3.f), 0x3555);
  // NaNs: quiet, sign kept, and a payload that lives only in the dropped bits still gives a NaN.
  EXPECT_EQ(fp32_to_fp16(std::numeric_limits<float>::quiet_NaN()), 0x7e00);
  EXPECT_EQ(fp32_to_fp16(float_of(0xffc00000u)), 0xfe00);
  EXPECT_TRUE(half_is_nan(fp32_to_fp16(float_of(0x7f800001u))));
  EXPECT_EQ(fp32_to_fp16(float_of(0x7fcaa000u)), 0x7e55);
}

// ---- bf16 ---------------------------------------------------------------------------------

TEST(Bf16, ToFloatAndRoundTripExhaustive) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = bf16_to_fp32(uint16_t(h));
    ASSERT_EQ(bits_of(f), h << 16);
    const uint16_t back = fp32_to_bf16(f);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_fp32(back)));
      EXPECT_EQ(back & 0x8000, h & 0x8000);
    } else {
      ASSERT_EQ(back, h) << std::hex << h;
    }
  }
}

TEST(Bf16, RoundsToNearestEven) {
  for (uint32_t h = 0; h < 0x7f80; ++h) {  // every finite non-negative bf16
    const uint32_t mid = (h << 16) | 0x8000u;
    const uint16_t even = (h & 1) ? uint16_t(h + 1) : uint16_t(h);  // 0x7f7f + 1 is infinity
    ASSERT_EQ(fp32_to_bf16(float_of(mid)), even) << std::hex << h;
    ASSERT_EQ(fp32_to_bf16(float_of(mid | 0x80000000u)), even | 0x8000) << std::hex << h;
    ASSERT_EQ(fp32_to_bf16(float_of(mid - 1)), h) << std::hex << h;
    ASSERT_EQ(fp32_to_bf16(float_of(mid + 1)), h + 1) << std::hex << h;
  }
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to infinity
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(fp32_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(fp32_to_bf16(float_of(0x7f800001u)), 0x7fc0);  // NaN forced quiet, not infinity
  EXPECT_EQ(fp32_to_bf16(float_of(0xffc00000u)), 0xffc0);
}

// ---- type traits --------------------------------------------------------------------------

TEST(DTypes, TraitsMatchGgml) {
  struct Expect {
    DType type;
    const char* name;
    int64_t block_size;
    size_t block_bytes;
    bool dequantizable;
  };
  // Sizes of ggml's block structs (ggml-common.h).
  const Expect table[] = {
      {DType::F32, "F32", 1, 4, true},       {DType::F16, "F16", 1, 2, true},
      {DType::Q4_0, "Q4_0", 32, 18, true},   {DType::Q4_1, "Q4_1", 32, 20, true},
      {DType::Q5_0, "Q5_0", 32, 22, true},   {DType::Q5_1, "Q5_1", 32, 24, true},
      {DType::Q8_0, "Q8_0", 32, 34, true},   {DType::Q8_1, "Q8_1", 32, 36, false},
      {DType::Q2_K, "Q2_K", 256, 84, true},  {DType::Q3_K, "Q3_K", 256, 110, true},
      {DType::Q4_K, "Q4_K", 256, 144, true}, {DType::Q5_K, "Q5_K", 256, 176, true},
      {DType::Q6_K, "Q6_K", 256, 210, true}, {DType::Q8_K, "Q8_K", 256, 292, true},
      {DType::I8, "I8", 1, 1, true},         {DType::I16, "I16", 1, 2, true},
      {DType::I32, "I32", 1, 4, true},       {DType::I64, "I64", 1, 8, false},
      {DType::F64, "F64", 1, 8, true},       {DType::BF16, "BF16", 1, 2, true},
  };
  int known = 0;
  for (const Expect& e : table) {
    const auto t = dtype_traits(static_cast<uint32_t>(e.type));
    ASSERT_TRUE(t.has_value()) << e.name;
    EXPECT_EQ(t->name, e.name);
    EXPECT_EQ(t->block_size, e.block_size) << e.name;
    EXPECT_EQ(t->block_bytes, e.block_bytes) << e.name;
    EXPECT_EQ(t->dequantizable, e.dequantizable) << e.name;
    EXPECT_EQ(dtype_name(e.type), e.name);
    EXPECT_EQ(dtype_name_u32(static_cast<uint32_t>(e.type)), e.name);
  }
  for (uint32_t t = 0; t < 256; ++t) known += dtype_traits(t).has_value();
  EXPECT_EQ(known, 20);
}

TEST(DTypes, UnknownNumbers) {
  for (uint32_t t : {4u, 5u, 16u, 23u, 29u, 31u, 34u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_FALSE(dtype_traits(t).has_value()) << t;
    EXPECT_EQ(dtype_name_u32(t), "type " + std::to_string(t));
    EXPECT_THROW(dtype_traits(static_cast<DType>(t)), Error);
    EXPECT_THROW(dtype_row_bytes(static_cast<DType>(t), 32), Error);
  }
}

TEST(DTypes, RowBytes) {
  EXPECT_EQ(dtype_row_bytes(DType::F32, 3), 12u);
  EXPECT_EQ(dtype_row_bytes(DType::F16, 7), 14u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_0, 64), 36u);
  EXPECT_EQ(dtype_row_bytes(DType::Q8_0, 4096), 128u * 34u);
  EXPECT_EQ(dtype_row_bytes(DType::Q4_K, 512), 288u);
  EXPECT_EQ(dtype_row_bytes(DType::Q6_K, 4096), 16u * 210u);
  EXPECT_EQ(dtype_row_bytes(DType::Q2_K, 0), 0u);
  // Not a whole number of blocks, or negative.
  EXPECT_THROW(dtype_row_bytes(DType::Q4_0, 33), Error);
  EXPECT_THROW(dtype_row_bytes(DType::Q4_0, 16), Error);
  EXPECT_THROW(dtype_row_bytes(DType::Q6_K, 255), Error);
  EXPECT_THROW(dtype_row_bytes(DType::Q4_K, 4096 + 32), Error);
  EXPECT_THROW(dtype_row_bytes(DType::F32, -1), Error);
  EXPECT_THROW(dtype_row_bytes(DType::Q8_0, -32), Error);
  // Overflow of size_t.
  constexpr int64_t max = std::numeric_limits<int64_t>::max();
  if constexpr (sizeof(size_t) == 8) {
    EXPECT_THROW(dtype_row_bytes(DType::F64, max), Error);
    EXPECT_THROW(dtype_row_bytes(DType::F32, max), Error);
    EXPECT_THROW(dtype_row_bytes(DType::I64, int64_t{1} << 61), Error);  // exactly 2^64 bytes
    EXPECT_EQ(dtype_row_bytes(DType::I64, (int64_t{1} << 61) - 1), std::numeric_limits<size_t>::max() - 7);
    EXPECT_EQ(dtype_row_bytes(DType::Q8_K, max / 256 * 256), size_t(max / 256) * 292u);
  } else {
    EXPECT_THROW(dtype_row_bytes(DType::F32, int64_t{1} << 31), Error);
  }
}
