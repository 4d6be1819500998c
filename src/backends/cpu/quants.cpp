// Dequantization of GGUF block formats to float32: the checks around the block dequantizers of
// dequant_blocks.inc (which has the layouts and the numerics).
#include "backends/cpu/quants.h"

#include <bit>
#include <cstring>
#include <optional>

#include "common/error.h"

namespace dashlm::cpu {

namespace {

#include "backends/cpu/dequant_blocks.inc"

}  // namespace

void dequantize_row(DType type, const void* src_void, float* dst, int64_t n) {
  const std::optional<DTypeTraits> traits = dtype_traits(static_cast<uint32_t>(type));
  if (!traits) fail("cannot dequantize unknown tensor type {}", static_cast<uint32_t>(type));
  if (!traits->dequantizable) fail("cannot dequantize tensor type {}", traits->name);
  if (n < 0 || n % traits->block_size != 0) {
    fail("cannot dequantize {} elements of {}: not a whole number of {}-element blocks", n, traits->name,
         traits->block_size);
  }
  if (n == 0) return;
  const auto* src = static_cast<const uint8_t*>(src_void);
  const int64_t nb = n / traits->block_size;
  if (dequant_blocks(type, src, dst, n, nb)) return;
  // Reached only if the traits table says "dequantizable" for a type without a case above.
  fail("cannot dequantize tensor type {}", traits->name);
}

float fp16_to_fp32(uint16_t h) { return half_to_float(h); }

uint16_t fp32_to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) {
    // NaN: keep the top 10 payload bits and set the quiet bit, so it stays a NaN.
    return static_cast<uint16_t>(sign | 0x7e00u | ((ax >> 13) & 0x03ffu));
  }
  if (ax >= 0x477ff000u) {
    // |f| >= 65520, halfway between the largest half (65504) and 2^16: rounds to infinity
    // (ties go to the even neighbour, which is infinity here). Includes f = inf.
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (ax >= 0x38800000u) {
    // Normal half (|f| >= 2^-14): re-bias the exponent, round the 13 dropped bits to nearest
    // even. A carry out of the mantissa correctly bumps the exponent.
    uint32_t r = ax - ((127u - 15u) << 23);
    r += 0x0fffu + ((r >> 13) & 1u);
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  // Subnormal half or zero: the result is round(|f| * 2^24) in units of 2^-24. With
  // |f| = m * 2^(e - 150) (m with its implicit bit), that is m >> (126 - e), rounded to
  // nearest even. A result of 0x400 is the smallest normal half, which is the right bits.
  const uint32_t e = ax >> 23;
  const uint32_t shift = 126u - e;  // >= 14 here
  if (shift > 24) return sign;      // below 2^-25 (or exactly half of it at most): zero
  const uint32_t m = (ax & 0x007fffffu) | 0x00800000u;
  uint32_t q = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

float bf16_to_fp32(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

uint16_t fp32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) {
    // NaN: truncate and force the quiet bit so the result cannot become infinity.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  // Round to nearest even; overflow past the largest bf16 correctly yields infinity.
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

}  // namespace dashlm::cpu
