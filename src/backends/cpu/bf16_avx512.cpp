// Products with bf16 weights by AVX512-BF16 (bf16.h): vdpbf16ps multiplies pairs of bf16 values
// and adds both products to a float32 lane. This file alone is compiled with the AVX-512 F, BW,
// VL and BF16 flags (see CMakeLists.txt); the driver calls into it only when the CPU reports all
// four and the kernel level is avx512.
#include "backends/cpu/bf16_kernels.h"

#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
// See gemm_avx512.cpp: GCC 12 warns about its own AVX-512 intrinsics (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace dashlm::cpu::bf16_detail {
namespace {

// The first n of 16 lanes (none for n <= 0).
inline __mmask16 first16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
}
inline __mmask32 first32(int64_t n) {
  return n >= 32 ? ~static_cast<__mmask32>(0) : n <= 0 ? static_cast<__mmask32>(0) : static_cast<__mmask32>((1u << n) - 1);
}

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

void to_bf16(const float* x, int64_t k, int64_t kp, uint16_t* out) {
  for (int64_t j = 0; j < kp; j += kChunk) {
    const int64_t left = k - j;
    const __m512 lo = _mm512_maskz_loadu_ps(first16(left), x + j);
    const __m512 hi = _mm512_maskz_loadu_ps(first16(left - 16), x + j + 16);
    const __m512bh b = _mm512_cvtne2ps_pbh(hi, lo);  // lanes 0-15 from lo, 16-31 from hi
    _mm512_storeu_si512(out + j, reinterpret_cast<const __m512i&>(b));
  }
}

// r[j] becomes column j of the 16 x 16 matrix of 32-bit values whose row i was r[i].
inline void transpose16x16(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // u[4 g + c], 128-bit lane L: column 4 L + c of rows 4 g .. 4 g + 3.
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88), w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    r[c + 8] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
    r[c + 4] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    r[c + 12] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
  }
}

void pack_panel(const uint16_t* w, int64_t ldw, int64_t rows, int64_t k, int64_t kp, uint16_t* panel) {
  // Pair p of a row is one 32-bit word (value 2 p in its low half): sixteen rows of sixteen pairs
  // are loaded and transposed at a time.
  for (int64_t p0 = 0; p0 < kp / 2; p0 += 16) {
    const __mmask32 mk = first32(k - 2 * p0);
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_epi16(mk, w + i * ldw + 2 * p0) : _mm512_setzero_si512();
    transpose16x16(r);
    for (int j = 0; j < 16; ++j) _mm512_storeu_si512(panel + 2 * (p0 + j) * kPanelRows, r[j]);
  }
}

// Rows [0, M) of xb against NP consecutive panels (16 NP weight rows, `cols` of them real).
template <int M, int NP>
void tile(const uint16_t* panels, int64_t kp, const uint16_t* xb, float* y, int64_t ldy, int64_t cols, bool accumulate) {
  __m512 acc[M][NP];
#pragma GCC unroll 12
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NP; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  const int64_t pairs = kp / 2;
  const auto* x32 = reinterpret_cast<const int32_t*>(xb);
  const uint16_t* p0 = panels;
  const uint16_t* p1 = panels + kp * kPanelRows;
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = as_bh(_mm512_loadu_si512(p0 + 2 * p * kPanelRows));
    const __m512bh b1 = NP > 1 ? as_bh(_mm512_loadu_si512(p1 + 2 * p * kPanelRows)) : b0;
#pragma GCC unroll 12
    for (int i = 0; i < M; ++i) {
      const __m512bh a = as_bh(_mm512_set1_epi32(x32[i * pairs + p]));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], a, b0);
      if (NP > 1) acc[i][NP - 1] = _mm512_dpbf16_ps(acc[i][NP - 1], a, b1);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < NP; ++j) {
      const __mmask16 mk = first16(cols - 16 * j);
      float* yp = y + i * ldy + 16 * j;
      __m512 v = acc[i][j];
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, yp));
      _mm512_mask_storeu_ps(yp, mk, v);
    }
  }
}

constexpr int kTileRows = 12;  // 12 x 2 accumulators of the 32 registers

template <int NP>
void tile_rows(int64_t mt, const uint16_t* panels, int64_t kp, const uint16_t* xb, float* y, int64_t ldy, int64_t cols,
               bool accumulate) {
  switch (mt) {
    case 1: return tile<1, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 2: return tile<2, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 3: return tile<3, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 4: return tile<4, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 5: return tile<5, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 6: return tile<6, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 7: return tile<7, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 8: return tile<8, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 9: return tile<9, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 10: return tile<10, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    case 11: return tile<11, NP>(panels, kp, xb, y, ldy, cols, accumulate);
    default: return tile<12, NP>(panels, kp, xb, y, ldy, cols, accumulate);
  }
}

void panel_gemm(const uint16_t* panels, int64_t rows, int64_t kp, const uint16_t* xb, int64_t m, float* y, int64_t ldy,
                bool accumulate) {
  // Each tile of activation rows (kp values each, in the cache) goes over every panel.
  const int64_t tiles = (m + kTileRows - 1) / kTileRows;
  for (int64_t t = 0; t < tiles; ++t) {
    // Balanced heights: 13 rows become 7 + 6, not 12 + 1.
    const int64_t i0 = m * t / tiles, mt = m * (t + 1) / tiles - i0;
    for (int64_t c = 0; c < rows; c += 2 * kPanelRows) {
      const uint16_t* pp = panels + c * kp;
      float* yp = y + i0 * ldy + c;
      const uint16_t* xp = xb + i0 * kp;
      if (rows - c > kPanelRows) tile_rows<2>(mt, pp, kp, xp, yp, ldy, rows - c, accumulate);
      else tile_rows<1>(mt, pp, kp, xp, yp, ldy, rows - c, accumulate);
    }
  }
}

// Weight rows in place, one after the other (a single stream for the prefetchers), against M rows
// of xb; C independent sums per row of xb over consecutive chunks.
template <int M>
void gemv_m(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, const uint16_t* xb, int64_t kp, float* y, int64_t ldy,
            bool accumulate) {
  constexpr int C = M == 1 ? 4 : 2;
  for (int64_t r = 0; r < n; ++r) {
    const uint16_t* wr = w + r * ldw;
    __m512 acc[M][C];
    for (int i = 0; i < M; ++i) {
      for (int c = 0; c < C; ++c) acc[i][c] = _mm512_setzero_ps();
    }
    int64_t c0 = 0;
    for (; c0 + C * kChunk <= k; c0 += C * kChunk) {
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) {
        const __m512bh wv = as_bh(_mm512_loadu_si512(wr + c0 + c * kChunk));
#pragma GCC unroll 4
        for (int i = 0; i < M; ++i) {
          acc[i][c] = _mm512_dpbf16_ps(acc[i][c], as_bh(_mm512_loadu_si512(xb + i * kp + c0 + c * kChunk)), wv);
        }
      }
    }
    for (; c0 < k; c0 += kChunk) {
      const __m512bh wv = as_bh(_mm512_maskz_loadu_epi16(first32(k - c0), wr + c0));
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) acc[i][0] = _mm512_dpbf16_ps(acc[i][0], as_bh(_mm512_loadu_si512(xb + i * kp + c0)), wv);
    }
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) {
      __m512 sum = acc[i][0];
      for (int c = 1; c < C; ++c) sum = _mm512_add_ps(sum, acc[i][c]);
      const float v = _mm512_reduce_add_ps(sum);
      y[i * ldy + r] = accumulate ? y[i * ldy + r] + v : v;
    }
  }
}

void gemv(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, const uint16_t* xb, int64_t kp, int64_t m, float* y,
          int64_t ldy, bool accumulate) {
  switch (m) {
    case 1: return gemv_m<1>(w, ldw, n, k, xb, kp, y, ldy, accumulate);
    case 2: return gemv_m<2>(w, ldw, n, k, xb, kp, y, ldy, accumulate);
    case 3: return gemv_m<3>(w, ldw, n, k, xb, kp, y, ldy, accumulate);
    default: return gemv_m<4>(w, ldw, n, k, xb, kp, y, ldy, accumulate);
  }
}

constexpr Bf16KernelSet kSet = {"avx512bf16", to_bf16, pack_panel, panel_gemm, gemv};

}  // namespace

extern const Bf16KernelSet* const bf16_avx512 = &kSet;

}  // namespace dashlm::cpu::bf16_detail

#else

namespace dashlm::cpu::bf16_detail {
extern const Bf16KernelSet* const bf16_avx512 = nullptr;
}  // namespace dashlm::cpu::bf16_detail

#endif
