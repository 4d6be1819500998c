// GEMM kernels for AVX-512F. This file alone is compiled with -mavx512f (see CMakeLists.txt);
// the driver calls into it only after checking the CPU at run time. See gemm_kernels.h for the
// packed layouts and for why nothing here may have external linkage except kernels_avx512.
#include "backends/cpu/gemm_kernels.h"

#include <cstring>

#include "backends/dtype.h"

#if defined(__AVX512F__) && defined(__FMA__)
// GCC 12 warns about its own AVX-512 intrinsics (their "undefined" pass-through operands, GCC bug
// 105593); the warning points into the header, so it is silenced for it here.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace dashlm::cpu::gemm_detail {
namespace {

// Register tile: up to 14 rows x 32 columns = 28 zmm accumulators, plus 2 for the B values of
// one k step and 1 for the broadcast A value (31 of the 32 registers). Per k step: 2 loads of B,
// 14 broadcasts of A, 28 FMAs: the FMAs, not the loads, are the bottleneck, as they should be.
constexpr int kMr = 14;
constexpr int kNr = 32;

inline __mmask16 low_mask(int64_t n) {  // lanes [0, n) for 0 <= n, all 16 when n >= 16
  return n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << n) - 1u);
}

// Transposes the 16 x 16 block held in r[0..15] (r[i] lane j -> r[j] lane i).
// Three rounds of in-lane unpacks/shuffles then two of 128-bit lane shuffles: 64 shuffles.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {  // rows (a, b) -> a0 b0 a1 b1 | a2 b2 a3 b3 per 128-bit lane
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  __m512 u[16];
  for (int i = 0; i < 16; i += 4) {  // u[i + j]: column 4L + j of rows i..i+3, in lane L
    const __m512d t0 = _mm512_castps_pd(t[i]), t1 = _mm512_castps_pd(t[i + 1]);
    const __m512d t2 = _mm512_castps_pd(t[i + 2]), t3 = _mm512_castps_pd(t[i + 3]);
    u[i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
  for (int j = 0; j < 4; ++j) {  // gather lane L of u[j], u[4+j], u[8+j], u[12+j] -> row 4L + j
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x44);       // U0.0 U0.1 U1.0 U1.1
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xEE);       // U0.2 U0.3 U1.2 U1.3
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x44);  // U2.0 U2.1 U3.0 U3.1
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xEE);  // U2.2 U2.3 U3.2 U3.3
    r[0 + j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + j] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + j] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// Loads `rows` rows (<= 16) of `cols` (<= 16) values starting at src (row stride ld) into r,
// zero-filling the rest, and transposes: r[p] then holds column p of the block.
inline void load_transposed(const float* src, int64_t ld, int64_t rows, int64_t cols, __m512 r[16]) {
  const __mmask16 m = low_mask(cols);
  for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_maskz_loadu_ps(m, src + i * ld) : _mm512_setzero_ps();
  transpose16(r);
}

void pack_a(int64_t mc, int64_t kc, const float* a, int64_t lda, float* ap) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t t = 0; t < s.count; ++t) {
    const int64_t h = s.h + (t < s.taller ? 1 : 0);
    const __mmask16 hm = low_mask(h);
    for (int64_t p0 = 0; p0 < kc; p0 += 16) {
      const int64_t kk = kc - p0 < 16 ? kc - p0 : 16;
      __m512 r[16];
      load_transposed(a + p0, lda, h, kk, r);
      for (int64_t i = 0; i < kk; ++i) _mm512_mask_storeu_ps(ap + (p0 + i) * h, hm, r[i]);
    }
    a += h * lda;
    ap += h * kc;
  }
}

// Rows of B here are usually far apart (a weight row, or a key among all heads' keys): the first
// lines of the next 16 rows are requested ahead (the hardware prefetchers follow each row once it
// is under way).
void pack_b_nt(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t first = j0 + 16 * half;
      const int64_t rows = nc - first < 0 ? 0 : (nc - first < 16 ? nc - first : 16);
      float* dst = bp + 16 * half;
      const int64_t next_rows = nc - first - 16 < 0 ? 0 : (nc - first - 16 < 16 ? nc - first - 16 : 16);
      for (int64_t i = 0; i < next_rows; ++i) {
        const char* row = reinterpret_cast<const char*>(b + (first + 16 + i) * ldb);
        for (int64_t off = 0; off < kc * 4 && off < 256; off += 64) _mm_prefetch(row + off, _MM_HINT_T0);
      }
      if (rows == 0) {  // past the last column: zero padding
        for (int64_t p = 0; p < kc; ++p) _mm512_store_ps(dst + p * kNr, _mm512_setzero_ps());
        continue;
      }
      for (int64_t p0 = 0; p0 < kc; p0 += 16) {
        const int64_t kk = kc - p0 < 16 ? kc - p0 : 16;
        __m512 r[16];
        load_transposed(b + first * ldb + p0, ldb, rows, kk, r);
        for (int64_t i = 0; i < kk; ++i) _mm512_store_ps(dst + (p0 + i) * kNr, r[i]);
      }
    }
    bp += kc * kNr;
  }
}

void pack_b_nn(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    const __mmask16 m0 = low_mask(nc - j0), m1 = nc - j0 > 16 ? low_mask(nc - j0 - 16) : 0;
    const float* src = b + j0;
    for (int64_t p = 0; p < kc; ++p) {
      _mm512_store_ps(bp + p * kNr, _mm512_maskz_loadu_ps(m0, src + p * ldb));
      _mm512_store_ps(bp + p * kNr + 16, _mm512_maskz_loadu_ps(m1, src + p * ldb + 16));
    }
    bp += kc * kNr;
  }
}

// One register tile: C[H x 32] (+)= alpha * Ap[H x kc] * B[kc x 32]. Row p of B is at
// bp + p * b_row; columns beyond the masks m0 (columns 0..15) and m1 (16..31) are not written
// to C, nor read from B when masked_b.
//
// alpha is passed by address so that it is only read after the k loop: passed by value it would
// sit in a vector register during the loop, and the loop needs 31 of the 32 (GCC then spills a B
// vector to the stack, a quarter of the speed gone).
template <int H, bool masked_b>
void tile(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t b_row, float* c, int64_t ldc,
          const float* alpha, bool load_c, __mmask16 m0, __mmask16 m1) {
  __m512 acc0[H], acc1[H];
#pragma GCC unroll 16
  for (int r = 0; r < H; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  // The C tile is read (or written) at the end: ask for its lines now.
#pragma GCC unroll 16
  for (int r = 0; r < H; ++r) {
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + 16), _MM_HINT_T0);
  }
  for (int64_t p = 0; p < kc; ++p) {
    __m512 b0, b1;
    if (masked_b) {
      b0 = _mm512_maskz_loadu_ps(m0, bp);
      b1 = _mm512_maskz_loadu_ps(m1, bp + 16);
    } else {
      b0 = _mm512_loadu_ps(bp);
      b1 = _mm512_loadu_ps(bp + 16);
    }
#pragma GCC unroll 16
    for (int r = 0; r < H; ++r) {
      const __m512 av = _mm512_set1_ps(ap[r]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
    ap += H;
    bp += b_row;
  }
  const __m512 va = _mm512_set1_ps(*alpha);
#pragma GCC unroll 16
  for (int r = 0; r < H; ++r) {
    float* cr = c + r * ldc;
    __m512 v0 = _mm512_mul_ps(acc0[r], va), v1 = _mm512_mul_ps(acc1[r], va);
    if (load_c) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, cr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, cr + 16));
    }
    _mm512_mask_storeu_ps(cr, m0, v0);
    _mm512_mask_storeu_ps(cr + 16, m1, v1);
  }
}

using TileFn = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, const float*, bool, __mmask16,
                        __mmask16);
constexpr TileFn kTiles[2][kMr + 1] = {
    {nullptr, tile<1, false>, tile<2, false>, tile<3, false>, tile<4, false>, tile<5, false>, tile<6, false>,
     tile<7, false>, tile<8, false>, tile<9, false>, tile<10, false>, tile<11, false>, tile<12, false>, tile<13, false>,
     tile<14, false>},
    {nullptr, tile<1, true>, tile<2, true>, tile<3, true>, tile<4, true>, tile<5, true>, tile<6, true>, tile<7, true>,
     tile<8, true>, tile<9, true>, tile<10, true>, tile<11, true>, tile<12, true>, tile<13, true>, tile<14, true>},
};

void compute(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, int64_t b_row, int64_t b_sliver,
             float* c, int64_t ldc, float alpha, bool load_c) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t j = 0; j < nc; j += kNr) {
    const __mmask16 m0 = low_mask(nc - j), m1 = nc - j > 16 ? low_mask(nc - j - 16) : 0;
    // Packed slivers are zero-padded: only the last sliver of a B used in place needs masked
    // loads (which are not free: they take a shuffle port on some CPUs).
    const int masked = nc - j < kNr && b_row != kNr ? 1 : 0;
    const float* at = ap;
    float* ct = c + j;
    for (int64_t t = 0; t < s.count; ++t) {
      const int64_t h = s.h + (t < s.taller ? 1 : 0);
      kTiles[masked][h](kc, at, bp, b_row, ct, ldc, &alpha, load_c, m0, m1);
      at += h * kc;
      ct += h * ldc;
    }
    bp += b_sliver;
  }
}

// Dot products of M (<= 4) rows of A with 4 rows of B at a time: 4 M accumulators of 16 lanes
// along k, summed across lanes at the end.
template <int M>
void small_m_rows(int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc, float alpha, bool load_c) {
  const __mmask16 tail = low_mask(k % 16);
  const int64_t k16 = k - k % 16;
  for (int64_t j = 0; j < n; j += 4) {
    const int64_t w = n - j < 4 ? n - j : 4;
    const float* bj[4];
    for (int64_t q = 0; q < 4; ++q) bj[q] = b + (j + (q < w ? q : 0)) * ldb;  // past the end: repeat a row
    __m512 acc[M][4];
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i)
      for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_setzero_ps();
    for (int64_t p = 0; p <= k16; p += 16) {
      const __mmask16 m = p < k16 ? static_cast<__mmask16>(0xFFFF) : tail;
      if (m == 0) break;
      __m512 bv[4];
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) bv[q] = _mm512_maskz_loadu_ps(m, bj[q] + p);
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        const __m512 av = _mm512_maskz_loadu_ps(m, a + i * lda + p);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) acc[i][q] = _mm512_fmadd_ps(av, bv[q], acc[i][q]);
      }
    }
    for (int i = 0; i < M; ++i) {
      for (int64_t q = 0; q < w; ++q) {
        const float v = alpha * _mm512_reduce_add_ps(acc[i][q]);
        float* out = c + i * ldc + j + q;
        *out = load_c ? *out + v : v;
      }
    }
  }
}

void small_m_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                int64_t ldc, float alpha, bool load_c) {
  for (int64_t i = 0; i < m; i += kSmallM) {
    const int64_t rows = m - i < kSmallM ? m - i : kSmallM;
    const float* ai = a + i * lda;
    float* ci = c + i * ldc;
    switch (rows) {
      case 1: small_m_rows<1>(n, k, ai, lda, b, ldb, ci, ldc, alpha, load_c); break;
      case 2: small_m_rows<2>(n, k, ai, lda, b, ldb, ci, ldc, alpha, load_c); break;
      case 3: small_m_rows<3>(n, k, ai, lda, b, ldb, ci, ldc, alpha, load_c); break;
      default: small_m_rows<4>(n, k, ai, lda, b, ldb, ci, ldc, alpha, load_c); break;
    }
  }
}

#include "backends/cpu/elementwise.inc"
#include "backends/cpu/softmax_tile.inc"
#include "backends/cpu/dequant_blocks.inc"
#include "backends/cpu/quant_dots.inc"
#include "backends/cpu/sum_lanes_x86.inc"
#include "backends/cpu/attention_f16.inc"

constexpr KernelSet kSet = {
    "avx512", kMr, kNr, /*kc=*/768, /*mc=*/kMr * 6, /*nc=*/1024, pack_a, pack_b_nt, pack_b_nn, compute, small_m_nt,
    softmax_tile, glu_mul,
    quant_row_dots,
    attn_scores_f16, attn_pv_f16,
    /*direct_nn=*/true,
};

}  // namespace

extern const KernelSet* const kernels_avx512 = &kSet;

}  // namespace dashlm::cpu::gemm_detail

#else  // not compiled for AVX-512

namespace dashlm::cpu::gemm_detail {
extern const KernelSet* const kernels_avx512 = nullptr;
}  // namespace dashlm::cpu::gemm_detail

#endif
