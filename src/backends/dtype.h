// Element types of weight tensors, numbered as in GGUF (ggml_type).
#pragma once
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace dashlm {

enum class DType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// A weight matrix as stored in the model file: out_features rows of in_features elements,
// each row in `type` (GGUF ne = {in_features, out_features}).
struct WeightView {
  DType type = DType::F32;
  const void* data = nullptr;
  int64_t in_features = 0;
  int64_t out_features = 0;
};

struct DTypeTraits {
  std::string_view name;
  int64_t block_size;   // elements per block (1 for plain types)
  size_t block_bytes;   // bytes per block
  bool dequantizable;   // dashlm can turn it into float32
};

// Traits of a GGUF type number; nullopt for numbers dashlm does not know at all.
std::optional<DTypeTraits> dtype_traits(uint32_t type);
const DTypeTraits& dtype_traits(DType type);  // throws for unknown
std::string_view dtype_name(DType type);
std::string dtype_name_u32(uint32_t type);  // "Q4_K", or "type 123" for unknown numbers

// Bytes taken by n elements of a row (n must be a multiple of the block size).
size_t dtype_row_bytes(DType type, int64_t n);

}  // namespace dashlm
