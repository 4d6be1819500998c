// Element types of weight tensors: names and block geometry of every GGUF type dashlm knows.
#include "backends/dtype.h"

#include <array>
#include <limits>
#include <string>

#include "common/error.h"

namespace dashlm {

namespace {

// Elements per super-block of the "K" quantizations (ggml's QK_K).
constexpr int64_t k_super = 256;

struct Entry {
  uint32_t number;
  DTypeTraits traits;
};

// Block sizes and byte sizes follow ggml's block structs (ggml-common.h); a "half" is 2 bytes.
// The 32-element types: Q4_0 {half d; 16 nibble bytes}, Q4_1 {half d, m; 16}, Q5_0 {half d;
// u32 high bits; 16}, Q5_1 {half d, m; u32; 16}, Q8_0 {half d; 32 int8}, Q8_1 {half d, s; 32}.
// The 256-element K types are spelled out with their fields below.
constexpr std::array<Entry, 20> k_types = {{
    {0, {"F32", 1, 4, true}},
    {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 2 + 16, true}},
    {3, {"Q4_1", 32, 2 + 2 + 16, true}},
    {6, {"Q5_0", 32, 2 + 4 + 16, true}},
    {7, {"Q5_1", 32, 2 + 2 + 4 + 16, true}},
    {8, {"Q8_0", 32, 2 + 32, true}},
    // Q8_1 is ggml's activation format for dot products; ggml itself has no dequantizer for it.
    {9, {"Q8_1", 32, 2 + 2 + 32, false}},
    // scales[16], qs[64], half d, half dmin
    {10, {"Q2_K", k_super, k_super / 16 + k_super / 4 + 2 + 2, true}},
    // hmask[32], qs[64], scales[12], half d
    {11, {"Q3_K", k_super, k_super / 8 + k_super / 4 + 12 + 2, true}},
    // half d, half dmin, scales[12], qs[128]
    {12, {"Q4_K", k_super, 2 + 2 + 12 + k_super / 2, true}},
    // half d, half dmin, scales[12], qh[32], qs[128]
    {13, {"Q5_K", k_super, 2 + 2 + 12 + k_super / 8 + k_super / 2, true}},
    // ql[128], qh[64], int8 scales[16], half d
    {14, {"Q6_K", k_super, k_super / 2 + k_super / 4 + k_super / 16 + 2, true}},
    // float d, int8 qs[256], int16 bsums[16]
    {15, {"Q8_K", k_super, 4 + k_super + 2 * (k_super / 16), true}},
    {24, {"I8", 1, 1, true}},
    {25, {"I16", 1, 2, true}},
    {26, {"I32", 1, 4, true}},
    // int64 -> float32 would silently lose precision; nothing dashlm loads needs it.
    {27, {"I64", 1, 8, false}},
    {28, {"F64", 1, 8, true}},
    {30, {"BF16", 1, 2, true}},
}};

// The K-type sizes must match ggml's structs exactly, or every offset into a file is wrong.
static_assert(k_types[8].traits.block_bytes == 84);    // Q2_K
static_assert(k_types[9].traits.block_bytes == 110);   // Q3_K
static_assert(k_types[10].traits.block_bytes == 144);  // Q4_K
static_assert(k_types[11].traits.block_bytes == 176);  // Q5_K
static_assert(k_types[12].traits.block_bytes == 210);  // Q6_K
static_assert(k_types[13].traits.block_bytes == 292);  // Q8_K

const DTypeTraits* find_traits(uint32_t type) {
  for (const Entry& e : k_types) {
    if (e.number == type) return &e.traits;
  }
  return nullptr;
}

}  // namespace

std::optional<DTypeTraits> dtype_traits(uint32_t type) {
  if (const DTypeTraits* t = find_traits(type)) return *t;
  return std::nullopt;
}

const DTypeTraits& dtype_traits(DType type) {
  const DTypeTraits* t = find_traits(static_cast<uint32_t>(type));
  if (t == nullptr) fail("unknown tensor type {}", static_cast<uint32_t>(type));
  return *t;
}

std::string_view dtype_name(DType type) { return dtype_traits(type).name; }

std::string dtype_name_u32(uint32_t type) {
  if (const DTypeTraits* t = find_traits(type)) return std::string(t->name);
  return fmt::format("type {}", type);
}

size_t dtype_row_bytes(DType type, int64_t n) {
  const DTypeTraits& t = dtype_traits(type);
  if (n < 0) fail("negative element count {} for a {} row", n, t.name);
  if (n % t.block_size != 0) {
    fail("a {} row of {} elements is not a whole number of {}-element blocks", t.name, n,
         t.block_size);
  }
  const auto blocks = static_cast<uint64_t>(n / t.block_size);
  if (blocks > std::numeric_limits<size_t>::max() / t.block_bytes) {
    fail("a {} row of {} elements is too large to address", t.name, n);
  }
  return static_cast<size_t>(blocks) * t.block_bytes;
}

}  // namespace dashlm
