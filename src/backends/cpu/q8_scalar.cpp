// Portable reference of the quantized dot products (q8_kernels.h): plain C++, integer sums per
// half block, used on CPUs without AVX2 and when DASHLM_CPU=scalar, and the model the vector
// kernels follow.
//
// Every supported weight type is seen, 32 elements at a time (one activation block), as
// unsigned integers u[j] with, per half h of 16 elements, a float scale sc[h], an integer zero
// point z and a float offset mn[h]: w[j] = sc[h] * (u[j] - z) + mn[h]. Against the activation
// block d * q[j]:
//   sum_j w[j] * d * q[j] = sum_h d * (sc[h] * (dot_h(u, q) - z * sum_h(q)) + mn[h] * sum_h(q)),
// where the dot products and sums are exact integers.
#include "backends/cpu/q8_kernels.h"

#include <cmath>
#include <cstring>

#include "backends/cpu/q8.h"
#include "backends/dtype.h"

namespace dashlm::cpu::q8_detail {
namespace {

#include "backends/cpu/dequant_blocks.inc"

struct Block32 {
  uint8_t u[32];
  float sc[2];
  float mn[2];
  int z;
};

// Weight block b (32 elements) of a row of `type`.
void decode32(DType type, const uint8_t* row, int64_t b, Block32& o) {
  o.mn[0] = o.mn[1] = 0.f;
  switch (type) {
    case DType::Q4_0: {
      const uint8_t* p = row + b * 18;
      o.sc[0] = o.sc[1] = load_half(p);
      o.z = 8;
      for (int j = 0; j < 16; ++j) {
        o.u[j] = p[2 + j] & 0x0F;
        o.u[j + 16] = p[2 + j] >> 4;
      }
      return;
    }
    case DType::Q4_1: {
      const uint8_t* p = row + b * 20;
      o.sc[0] = o.sc[1] = load_half(p);
      o.mn[0] = o.mn[1] = load_half(p + 2);
      o.z = 0;
      for (int j = 0; j < 16; ++j) {
        o.u[j] = p[4 + j] & 0x0F;
        o.u[j + 16] = p[4 + j] >> 4;
      }
      return;
    }
    case DType::Q5_0:
    case DType::Q5_1: {
      const bool has_min = type == DType::Q5_1;
      const uint8_t* p = row + b * (has_min ? 24 : 22);
      o.sc[0] = o.sc[1] = load_half(p);
      if (has_min) o.mn[0] = o.mn[1] = load_half(p + 2);
      o.z = has_min ? 0 : 16;
      const uint32_t qh = load_u32(p + (has_min ? 4 : 2));
      const uint8_t* qs = p + (has_min ? 8 : 6);
      for (int j = 0; j < 16; ++j) {
        o.u[j] = static_cast<uint8_t>((qs[j] & 0x0F) | (((qh >> j) & 1u) << 4));
        o.u[j + 16] = static_cast<uint8_t>((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
      }
      return;
    }
    case DType::Q8_0: {
      const uint8_t* p = row + b * 34;
      o.sc[0] = o.sc[1] = load_half(p);
      o.z = 128;
      for (int j = 0; j < 32; ++j) o.u[j] = static_cast<uint8_t>(p[2 + j] ^ 0x80u);  // q + 128
      return;
    }
    case DType::Q4_K:
    case DType::Q5_K: {
      const bool five = type == DType::Q5_K;
      const uint8_t* p = row + (b / 8) * (five ? 176 : 144);
      const int g = static_cast<int>(b % 8), c = g / 2;
      uint8_t scale[8], min[8];
      unpack_scale_min_k4(p + 4, scale, min);
      o.sc[0] = o.sc[1] = load_half(p) * static_cast<float>(scale[g]);
      o.mn[0] = o.mn[1] = -(load_half(p + 2) * static_cast<float>(min[g]));
      o.z = 0;
      const uint8_t* qs = p + (five ? 48 : 16) + 32 * c;
      for (int l = 0; l < 32; ++l) {
        int v = g % 2 == 0 ? (qs[l] & 0x0F) : (qs[l] >> 4);
        if (five) v |= ((p[16 + l] >> g) & 1) << 4;
        o.u[l] = static_cast<uint8_t>(v);
      }
      return;
    }
    case DType::Q6_K: {
      const uint8_t* p = row + (b / 8) * 210;
      const int t = static_cast<int>(b % 8), half = t / 4, s = t % 4;  // block 32 * s of half `half`
      const float d = load_half(p + 208);
      const auto* scales = reinterpret_cast<const int8_t*>(p + 192);
      o.sc[0] = d * static_cast<float>(scales[8 * half + 2 * s]);
      o.sc[1] = d * static_cast<float>(scales[8 * half + 2 * s + 1]);
      o.z = 32;
      const uint8_t* ql = p + 64 * half + 32 * (s & 1);
      const uint8_t* qh = p + 128 + 32 * half;
      for (int l = 0; l < 32; ++l) {
        const int lo = s < 2 ? (ql[l] & 0x0F) : (ql[l] >> 4);
        o.u[l] = static_cast<uint8_t>(lo | (((qh[l] >> (2 * s)) & 3) << 4));
      }
      return;
    }
    default: return;
  }
}

bool gemv(uint32_t type_u, const uint8_t* w, int64_t row_bytes, int64_t n, int64_t k, const Q8View& x, float* y,
          int64_t ldy, bool accumulate) {
  const auto type = static_cast<DType>(type_u);
  if (!q8_supports(type)) return false;
  const int64_t nb = k / kBlock;
  Block32 blk;
  for (int64_t r = 0; r < n; ++r) {
    const uint8_t* row = w + r * row_bytes;
    float acc[kMaxRows] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t b = 0; b < nb; ++b) {
      decode32(type, row, b, blk);
      for (int64_t i = 0; i < x.m; ++i) {
        const int8_t* q = x.q + i * x.ldq + b * kBlock;
        const int16_t* s16 = x.s16 + i * x.lds + 2 * b;
        float part = 0.f;
        for (int h = 0; h < 2; ++h) {
          int32_t dot = 0;
          for (int j = 16 * h; j < 16 * h + 16; ++j) dot += int32_t{blk.u[j]} * int32_t{q[j]};
          const int32_t sum = s16[h];
          part += blk.sc[h] * static_cast<float>(dot - blk.z * sum) + blk.mn[h] * static_cast<float>(sum);
        }
        acc[i] += x.d[i * x.ldd + b] * part;
      }
    }
    for (int64_t i = 0; i < x.m; ++i) {
      float* out = y + i * ldy + r;
      *out = accumulate ? *out + acc[i] : acc[i];
    }
  }
  return true;
}

void put_f32(uint8_t* p, float v) { std::memcpy(p, &v, sizeof v); }
float get_f32(const uint8_t* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

bool pack_panel(uint32_t type_u, const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t k, int64_t /*group*/,
                uint8_t* panel) {
  const auto type = static_cast<DType>(type_u);
  if (q8_panel_max_u(type_u) == 0) return false;
  const int64_t ng = k / 16;
  std::memset(panel, 0, static_cast<size_t>(ng * kGroupBytes));
  Block32 blk;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t b = 0; b < k / kBlock; ++b) {
      decode32(type, w + r * row_bytes, b, blk);
      for (int h = 0; h < 2; ++h) {
        uint8_t* g = panel + (2 * b + h) * kGroupBytes;
        for (int j = 0; j < 16; ++j) g[32 * (j / 4) + 4 * r + j % 4] = blk.u[16 * h + j];
        put_f32(g + 128 + 4 * r, blk.sc[h]);
        put_f32(g + 160 + 4 * r, blk.mn[h] - blk.sc[h] * static_cast<float>(blk.z));
      }
    }
  }
  return true;
}

void panel_gemm(uint32_t /*type*/, const uint8_t* panels, int64_t rows, int64_t k, const Q8View& x, float* y,
                int64_t ldy, bool accumulate) {
  const int64_t ng = k / 16;
  for (int64_t i = 0; i < x.m; ++i) {
    const int8_t* q = x.q + i * x.ldq;
    for (int64_t r0 = 0; r0 < rows; r0 += kPanelRows) {
      const uint8_t* panel = panels + (r0 / kPanelRows) * ng * kGroupBytes;
      const int64_t cols = rows - r0 < kPanelRows ? rows - r0 : kPanelRows;
      float acc[kPanelRows] = {};
      for (int64_t g = 0; g < ng; ++g) {
        const uint8_t* grp = panel + g * kGroupBytes;
        const float d = x.d[i * x.ldd + g / 2];
        const float ds = x.ds[i * x.lds + g];
        for (int64_t r = 0; r < cols; ++r) {
          int32_t dot = 0;
          for (int j = 0; j < 16; ++j) dot += int32_t{grp[32 * (j / 4) + 4 * r + j % 4]} * int32_t{q[16 * g + j]};
          acc[r] += get_f32(grp + 128 + 4 * r) * (d * static_cast<float>(dot)) + get_f32(grp + 160 + 4 * r) * ds;
        }
      }
      float* out = y + i * ldy + r0;
      for (int64_t r = 0; r < cols; ++r) out[r] = accumulate ? out[r] + acc[r] : acc[r];
    }
  }
}

// Round to nearest, ties to even, for |v| <= 2^22: the float addition does the rounding.
inline float round_even(float v) {
  constexpr float kMagic = 12582912.f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// The activations' quantization (the reference that the vector kernels match bit for bit).
void quantize_row(const float* x, int64_t k, int64_t group, int8_t* q, float* d, int16_t* s16, float* ds,
                  int16_t* s32) {
  for (int64_t g = 0; g < k / group; ++g) {
    const float* v = x + g * group;
    float amax = 0.f;
    bool finite = true;
    for (int64_t j = 0; j < group; ++j) {
      const float a = std::fabs(v[j]);
      amax = a > amax ? a : amax;
      finite &= std::isfinite(v[j]);
    }
    for (int64_t b = g * group / kBlock; b < (g + 1) * group / kBlock; ++b) {
      const float* vb = x + b * kBlock;
      float qf[kBlock];
      if (finite && amax >= kMinAmax) {
        const float id = 127.f / amax;
        for (int j = 0; j < kBlock; ++j) qf[j] = round_even(vb[j] * id);
        d[b] = amax / 127.f;
      } else {
        // All zeros (or below kMinAmax); or a value that is not finite, which the scale carries on (NaN) so that the
        // outputs it reaches are NaN as in float32.
        for (int j = 0; j < kBlock; ++j) qf[j] = 0.f;
        d[b] = finite ? 0.f : std::nanf("");
      }
      int32_t s0 = 0, s1 = 0;
      for (int j = 0; j < kBlock; ++j) {
        const auto qi = static_cast<int32_t>(qf[j]);
        q[b * kBlock + j] = static_cast<int8_t>(qi);
        (j < 16 ? s0 : s1) += qi;
      }
      s16[2 * b] = static_cast<int16_t>(s0);
      s16[2 * b + 1] = static_cast<int16_t>(s1);
      ds[2 * b] = d[b] * static_cast<float>(s0);
      ds[2 * b + 1] = d[b] * static_cast<float>(s1);
      if (s32) s32[b] = static_cast<int16_t>(s0 + s1);
    }
  }
}

// q8_outlier_ratio (the reference that the vector kernels match bit for bit).
float outlier_ratio(const float* x, int64_t k) {
  float worst = 0.f;
  for (int64_t g = 0; g + kSuperBlock <= k; g += kSuperBlock) {
    float sum = 0.f, top = 0.f;
    bool finite = true;
    for (int64_t b = g; b < g + kSuperBlock; b += kBlock) {
      float amax = 0.f;
      for (int64_t j = b; j < b + kBlock; ++j) {
        const float a = std::fabs(x[j]);
        amax = a > amax ? a : amax;
        finite &= std::isfinite(x[j]);
      }
      sum += amax;
      top = std::max(top, amax);
    }
    if (!finite) return std::nanf("");
    // top / mean of the eight block maxima; NaN where the maxima's sum overflows (an outlier too).
    const float r = sum > 0.f ? top * 8.f / sum : 0.f;
    if (r != r) return r;
    worst = std::max(worst, r);
  }
  return worst;
}

constexpr Q8KernelSet kSet = {"scalar",           gemv, pack_panel, panel_gemm, quantize_row, false, generic_panel_bytes,
                              outlier_ratio};

}  // namespace

extern const Q8KernelSet* const q8_scalar = &kSet;

}  // namespace dashlm::cpu::q8_detail
