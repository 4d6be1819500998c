// Dequantization of GGUF block formats to float32, block by block.
#pragma once
#include <cstdint>

#include "backends/dtype.h"

namespace dashlm::cpu {

// Converts n elements (a multiple of the type's block size) starting at src to float32.
// Throws dashlm::Error for types that cannot be dequantized.
void dequantize_row(DType type, const void* src, float* dst, int64_t n);

// fp16/bf16 scalar conversions (IEEE half, bfloat16).
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
float bf16_to_fp32(uint16_t h);
uint16_t fp32_to_bf16(float f);  // round to nearest even

}  // namespace dashlm::cpu
