// Dequantization of GGUF block formats to float32.
//
// The block layouts are those of ggml (ggml-common.h): every block starts at a multiple of its
// byte size from the start of the row, and multi-byte fields are little-endian. Nothing here
// assumes alignment: fields are read with memcpy, which compiles to plain loads.
//
// Numerics: each value is computed with the same float32 operations, in the same order, as
// ggml's reference dequantizers (and the gguf Python package), so results are bit-identical to
// theirs. In fact every intermediate product is exact in float32 (an fp16 scale has 11
// significant bits, a sub-block scale at most 8 and a quant at most 6: only the last operation
// of a formula can round), so each value is its exact formula rounded once. Neither the order of
// the multiplications nor a compiler fusing `d * q + m` into an FMA can change a result.
//
// Speed: the hot formats are written as fixed-length inner loops over a block copied to the
// stack (so the compiler knows the output does not alias the input) that GCC and Clang
// auto-vectorize at -O3 with baseline SSE2.
#include "backends/cpu/quants.h"

#include <array>
#include <bit>
#include <cstring>
#include <optional>

#include "backends/error.h"

namespace dashlm::cpu {

namespace {

constexpr int k_qk = 32;   // elements per block of Q4_0 .. Q8_1
constexpr int k_qkk = 256;  // elements per super-block of the K types

uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, sizeof v);
  if constexpr (std::endian::native == std::endian::big) v = static_cast<uint16_t>((v >> 8) | (v << 8));
  return v;
}

uint32_t load_u32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}

float load_f32(const uint8_t* p) { return std::bit_cast<float>(load_u32(p)); }

// Branch-free fp16 -> fp32, written with bit masks so that loops over it vectorize. Exact for
// every input: normals are re-biased, inf/NaN get the float32 all-ones exponent and keep their
// payload, and subnormals (m * 2^-24) are converted through an integer that float32 holds
// exactly (so no float32 subnormal is involved and flush-to-zero modes do not matter).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = (uint32_t{h} & 0x8000u) << 16;
  const uint32_t em = uint32_t{h} & 0x7fffu;  // exponent and mantissa
  // Re-bias the exponent by 127 - 15 = 112; for inf/NaN (exponent 31) add 112 once more,
  // which takes the exponent to 255.
  const uint32_t inf_nan_mask = 0u - static_cast<uint32_t>(em >= 0x7c00u);
  const uint32_t normal = (em << 13) + (112u << 23) + (inf_nan_mask & (112u << 23));
  const uint32_t subnormal = std::bit_cast<uint32_t>(static_cast<float>(static_cast<int32_t>(em)) * 0x1p-24f);
  const uint32_t sub_mask = 0u - static_cast<uint32_t>(em < 0x0400u);
  return std::bit_cast<float>(sign | (subnormal & sub_mask) | (normal & ~sub_mask));
}

inline float load_half(const uint8_t* p) { return half_to_float(load_u16(p)); }

// ---- plain element types ----------------------------------------------------------------

void convert_f32(const uint8_t* src, float* dst, int64_t n) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = load_f32(src + 4 * i);
  }
}

void convert_f16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(load_u16(src + 2 * i));
}

void convert_bf16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = std::bit_cast<float>(uint32_t{load_u16(src + 2 * i)} << 16);
}

void convert_i8(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int8_t>(src[i]));
}

void convert_i16(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int16_t>(load_u16(src + 2 * i)));
}

void convert_i32(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(static_cast<int32_t>(load_u32(src + 4 * i)));
}

void convert_f64(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t bits = uint64_t{load_u32(src + 8 * i)} | (uint64_t{load_u32(src + 8 * i + 4)} << 32);
    dst[i] = static_cast<float>(std::bit_cast<double>(bits));  // round to nearest, like numpy
  }
}

// ---- 32-element blocks --------------------------------------------------------------------
// In all of them, byte j of the 16 packed bytes holds element j in its low nibble and element
// j + 16 in its high nibble.

// Q4_0 {half d; u8 qs[16]}: x = d * (q - 8), q in 0..15.
void dequant_q4_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 18, dst += k_qk) {
    const float d = load_half(src);
    uint8_t qs[16];
    std::memcpy(qs, src + 2, sizeof qs);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
      dst[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
    }
  }
}

// Q4_1 {half d; half m; u8 qs[16]}: x = d * q + m.
void dequant_q4_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 20, dst += k_qk) {
    const float d = load_half(src);
    const float m = load_half(src + 2);
    uint8_t qs[16];
    std::memcpy(qs, src + 4, sizeof qs);
    for (int j = 0; j < 16; ++j) {
      dst[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
      dst[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
    }
  }
}

// The fifth bit of element i of a Q5 block is bit i of its 32-bit `qh`. Testing it against a
// constant mask per element (rather than shifting by the element index) vectorizes without
// per-lane shifts.
constexpr auto k_bit = [] {
  std::array<uint32_t, 32> bits{};
  for (int i = 0; i < 32; ++i) bits[i] = 1u << i;
  return bits;
}();

// Q5_0 {half d; u32 qh; u8 qs[16]}: x = d * (q - 16), q in 0..31.
void dequant_q5_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 22, dst += k_qk) {
    const float d = load_half(src);
    const uint32_t qh = load_u32(src + 2);
    uint8_t qs[16];
    std::memcpy(qs, src + 6, sizeof qs);
    for (int j = 0; j < 16; ++j) {
      const int h0 = (qh & k_bit[j]) ? 16 : 0;
      const int h1 = (qh & k_bit[j + 16]) ? 16 : 0;
      dst[j] = d * static_cast<float>(((qs[j] & 0x0F) | h0) - 16);
      dst[j + 16] = d * static_cast<float>(((qs[j] >> 4) | h1) - 16);
    }
  }
}

// Q5_1 {half d; half m; u32 qh; u8 qs[16]}: x = d * q + m.
void dequant_q5_1(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 24, dst += k_qk) {
    const float d = load_half(src);
    const float m = load_half(src + 2);
    const uint32_t qh = load_u32(src + 4);
    uint8_t qs[16];
    std::memcpy(qs, src + 8, sizeof qs);
    for (int j = 0; j < 16; ++j) {
      const int h0 = (qh & k_bit[j]) ? 16 : 0;
      const int h1 = (qh & k_bit[j + 16]) ? 16 : 0;
      dst[j] = d * static_cast<float>((qs[j] & 0x0F) | h0) + m;
      dst[j + 16] = d * static_cast<float>((qs[j] >> 4) | h1) + m;
    }
  }
}

// Q8_0 {half d; i8 qs[32]}: x = d * q.
void dequant_q8_0(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 34, dst += k_qk) {
    const float d = load_half(src);
    int8_t qs[32];
    std::memcpy(qs, src + 2, sizeof qs);
    for (int j = 0; j < 32; ++j) dst[j] = d * static_cast<float>(qs[j]);
  }
}

// ---- 256-element super-blocks (K types) ---------------------------------------------------

// Q2_K {u8 scales[16]; u8 qs[64]; half d; half dmin}: 16 groups of 16 elements; scales[g] holds
// the group's 4-bit scale (low nibble) and 4-bit min (high nibble). Each half of the block
// (128 elements) uses 32 bytes of qs; element 32*s + l of the half is bits 2s..2s+1 of byte l.
// x = (d * scale) * q - (dmin * min).
void dequant_q2_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 84, dst += k_qkk) {
    uint8_t scales[16], qs[64];
    std::memcpy(scales, src, sizeof scales);
    std::memcpy(qs, src + 16, sizeof qs);
    const float d = load_half(src + 80);
    const float dmin = load_half(src + 82);
    for (int g = 0; g < 16; ++g) {
      // Group g: half g / 8, bit pair (g % 8) / 2, bytes 16 * (g % 2) .. + 15 of that half.
      const uint8_t* q = qs + 32 * (g / 8) + 16 * (g % 2);
      const int shift = 2 * ((g % 8) / 2);
      const float dl = d * static_cast<float>(scales[g] & 0x0F);
      const float ml = dmin * static_cast<float>(scales[g] >> 4);
      float* y = dst + 16 * g;
      for (int l = 0; l < 16; ++l) y[l] = dl * static_cast<float>((q[l] >> shift) & 3) - ml;
    }
  }
}

// Q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d}: 16 groups of 16 with signed 6-bit
// scales (stored +32). The low two bits of each element are laid out as in Q2_K; the third bit
// of element 32*k + l is bit k of hmask[l], and a *clear* bit means "subtract 4", so
// q = low - (bit ? 0 : 4) in -4..3. x = (d * scale) * q.
void dequant_q3_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 110, dst += k_qkk) {
    uint8_t hmask[32], qs[64], sc[12];
    std::memcpy(hmask, src, sizeof hmask);
    std::memcpy(qs, src + 32, sizeof qs);
    std::memcpy(sc, src + 96, sizeof sc);
    const float d = load_half(src + 108);
    for (int g = 0; g < 16; ++g) {
      // Scale g: low 4 bits from nibble g / 8 of byte g % 8, high 2 bits from bits
      // 2 * (g / 4) of byte 8 + g % 4.
      const int lo = (sc[g % 8] >> (4 * (g / 8))) & 0x0F;
      const int hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 0x03;
      const float dl = d * static_cast<float>((lo | (hi << 4)) - 32);
      const int l0 = 16 * (g % 2);
      const uint8_t* q = qs + 32 * (g / 8) + l0;
      const uint8_t* h = hmask + l0;
      const int shift = 2 * ((g % 8) / 2), hbit = g / 2;
      float* y = dst + 16 * g;
      for (int l = 0; l < 16; ++l) {
        const int q3 = ((q[l] >> shift) & 3) - (((h[l] >> hbit) & 1) ? 0 : 4);
        y[l] = dl * static_cast<float>(q3);
      }
    }
  }
}

// The 12 scale bytes of Q4_K and Q5_K: 8 groups of 32, each with a 6-bit scale and a 6-bit min.
// Groups 0..3 keep them in the low 6 bits of bytes 0..3 (scale) and 4..7 (min); groups 4..7 keep
// their low 4 bits in byte 8..11 (scale: low nibble, min: high nibble) and their top 2 bits in
// the top bits of bytes 0..3 (scale) and 4..7 (min).
inline void unpack_scale_min_k4(const uint8_t s[12], uint8_t scale[8], uint8_t min[8]) {
  for (int j = 0; j < 4; ++j) {
    scale[j] = s[j] & 63;
    min[j] = s[j + 4] & 63;
    scale[j + 4] = static_cast<uint8_t>((s[j + 8] & 0x0F) | ((s[j] >> 6) << 4));
    min[j + 4] = static_cast<uint8_t>((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
  }
}

// Q4_K {half d; half dmin; u8 scales[12]; u8 qs[128]}: 8 groups of 32; groups 2c and 2c+1 are
// the low and high nibbles of qs[32c .. 32c+31]. x = (d * scale) * q - (dmin * min).
void dequant_q4_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 144, dst += k_qkk) {
    const float d = load_half(src);
    const float dmin = load_half(src + 2);
    uint8_t scale[8], min[8];
    unpack_scale_min_k4(src + 4, scale, min);
    uint8_t qs[128];
    std::memcpy(qs, src + 16, sizeof qs);
    for (int c = 0; c < 4; ++c) {
      const float d0 = d * static_cast<float>(scale[2 * c]), m0 = dmin * static_cast<float>(min[2 * c]);
      const float d1 = d * static_cast<float>(scale[2 * c + 1]), m1 = dmin * static_cast<float>(min[2 * c + 1]);
      const uint8_t* q = qs + 32 * c;
      float* y = dst + 64 * c;
      for (int l = 0; l < 32; ++l) {
        y[l] = d0 * static_cast<float>(q[l] & 0x0F) - m0;
        y[l + 32] = d1 * static_cast<float>(q[l] >> 4) - m1;
      }
    }
  }
}

// Q5_K {half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}: as Q4_K, plus a fifth bit:
// for element 32*g + l it is bit g of qh[l].
void dequant_q5_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 176, dst += k_qkk) {
    const float d = load_half(src);
    const float dmin = load_half(src + 2);
    uint8_t scale[8], min[8];
    unpack_scale_min_k4(src + 4, scale, min);
    uint8_t qh[32], qs[128];
    std::memcpy(qh, src + 16, sizeof qh);
    std::memcpy(qs, src + 48, sizeof qs);
    for (int c = 0; c < 4; ++c) {
      const int g0 = 2 * c, g1 = 2 * c + 1;
      const auto bit0 = static_cast<uint8_t>(1u << g0), bit1 = static_cast<uint8_t>(1u << g1);
      const float d0 = d * static_cast<float>(scale[g0]), m0 = dmin * static_cast<float>(min[g0]);
      const float d1 = d * static_cast<float>(scale[g1]), m1 = dmin * static_cast<float>(min[g1]);
      const uint8_t* q = qs + 32 * c;
      float* y = dst + 64 * c;
      for (int l = 0; l < 32; ++l) {
        const int q0 = (q[l] & 0x0F) | ((qh[l] & bit0) ? 16 : 0);
        const int q1 = (q[l] >> 4) | ((qh[l] & bit1) ? 16 : 0);
        y[l] = d0 * static_cast<float>(q0) - m0;
        y[l + 32] = d1 * static_cast<float>(q1) - m1;
      }
    }
  }
}

// Q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; half d}: 16 groups of 16, 6-bit quants q.
// Each half of the block (128 elements) uses 64 bytes of ql and 32 of qh: element 32*s + l
// (s = 0..3, l = 0..31) of the half takes its low 4 bits from ql[l + 32 * (s & 1)] (low nibble
// for s < 2, high nibble otherwise) and its high 2 bits from bits 2s..2s+1 of qh[l].
// x = (d * scale) * (q - 32).
void dequant_q6_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 210, dst += k_qkk) {
    uint8_t ql[128], qh[64];
    int8_t scales[16];
    std::memcpy(ql, src, sizeof ql);
    std::memcpy(qh, src + 128, sizeof qh);
    std::memcpy(scales, src + 192, sizeof scales);
    const float d = load_half(src + 208);
    // One pass over 16 bytes of qh (and the matching 2 x 16 of ql) yields 16 elements of each
    // quarter of a half; those four runs of 16 are groups g, g + 2, g + 4, g + 6.
    for (int half = 0; half < 2; ++half) {
      for (int l0 = 0; l0 < 32; l0 += 16) {
        const uint8_t* lo = ql + 64 * half + l0;
        const uint8_t* hi = qh + 32 * half + l0;
        const int g = 8 * half + l0 / 16;
        const float d0 = d * static_cast<float>(scales[g]), d1 = d * static_cast<float>(scales[g + 2]);
        const float d2 = d * static_cast<float>(scales[g + 4]), d3 = d * static_cast<float>(scales[g + 6]);
        float* y = dst + 128 * half + l0;
        for (int l = 0; l < 16; ++l) {
          const int q0 = ((lo[l] & 0x0F) | ((hi[l] & 0x03) << 4)) - 32;
          const int q1 = ((lo[l + 32] & 0x0F) | ((hi[l] & 0x0C) << 2)) - 32;
          const int q2 = ((lo[l] >> 4) | (hi[l] & 0x30)) - 32;
          const int q3 = ((lo[l + 32] >> 4) | ((hi[l] & 0xC0) >> 2)) - 32;
          y[l] = d0 * static_cast<float>(q0);
          y[l + 32] = d1 * static_cast<float>(q1);
          y[l + 64] = d2 * static_cast<float>(q2);
          y[l + 96] = d3 * static_cast<float>(q3);
        }
      }
    }
  }
}

// Q8_K {float d; i8 qs[256]; i16 bsums[16]}: x = d * q (bsums are sums of groups of 16, a cache
// for dot products).
void dequant_q8_k(const uint8_t* src, float* dst, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b, src += 292, dst += k_qkk) {
    const float d = load_f32(src);
    int8_t qs[256];
    std::memcpy(qs, src + 4, sizeof qs);
    for (int j = 0; j < k_qkk; ++j) dst[j] = d * static_cast<float>(qs[j]);
  }
}

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
  switch (type) {
    case DType::F32: return convert_f32(src, dst, n);
    case DType::F16: return convert_f16(src, dst, n);
    case DType::BF16: return convert_bf16(src, dst, n);
    case DType::I8: return convert_i8(src, dst, n);
    case DType::I16: return convert_i16(src, dst, n);
    case DType::I32: return convert_i32(src, dst, n);
    case DType::F64: return convert_f64(src, dst, n);
    case DType::Q4_0: return dequant_q4_0(src, dst, nb);
    case DType::Q4_1: return dequant_q4_1(src, dst, nb);
    case DType::Q5_0: return dequant_q5_0(src, dst, nb);
    case DType::Q5_1: return dequant_q5_1(src, dst, nb);
    case DType::Q8_0: return dequant_q8_0(src, dst, nb);
    case DType::Q2_K: return dequant_q2_k(src, dst, nb);
    case DType::Q3_K: return dequant_q3_k(src, dst, nb);
    case DType::Q4_K: return dequant_q4_k(src, dst, nb);
    case DType::Q5_K: return dequant_q5_k(src, dst, nb);
    case DType::Q6_K: return dequant_q6_k(src, dst, nb);
    case DType::Q8_K: return dequant_q8_k(src, dst, nb);
    default: break;
  }
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
