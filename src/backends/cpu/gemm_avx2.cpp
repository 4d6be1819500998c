// GEMM kernels for AVX2 + FMA. This file alone is compiled with -mavx2 -mfma (see
// CMakeLists.txt); the driver calls into it only after checking the CPU at run time. See
// gemm_kernels.h for the packed layouts and for why nothing here may have external linkage
// except kernels_avx2.
#include "backends/cpu/gemm_kernels.h"

#include <cstring>

#include "backends/dtype.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace dashlm::cpu::gemm_detail {
namespace {

// Register tile: up to 6 rows x 16 columns = 12 ymm accumulators, plus 2 for the B values of
// one k step and 1 for the broadcast A value (15 of the 16 registers).
constexpr int kMr = 6;
constexpr int kNr = 16;

// Lanes [0, n) of an integer mask for maskload/maskstore (all 8 when n >= 8, none when n <= 0).
inline __m256i lane_mask(int64_t n) {
  const int v = n < 0 ? 0 : (n > 8 ? 8 : static_cast<int>(n));
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(v), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Transposes the 8 x 8 block in r[0..7] (r[i] lane j -> r[j] lane i).
inline void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {  // a0 b0 a1 b1 | a4 b4 a5 b5  and  a2 b2 a3 b3 | a6 b6 a7 b7
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {  // u[i + j]: column j (low half) and j + 4 (high half) of rows i..i+3
    u[i + 0] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// Loads `rows` rows (<= 8) of `cols` (<= 8) values at src (row stride ld), zero-filling the
// rest, and transposes: r[p] then holds column p of the block.
inline void load_transposed(const float* src, int64_t ld, int64_t rows, int64_t cols, __m256 r[8]) {
  if (cols >= 8) {
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_loadu_ps(src + i * ld) : _mm256_setzero_ps();
  } else {
    const __m256i m = lane_mask(cols);
    for (int i = 0; i < 8; ++i) r[i] = i < rows ? _mm256_maskload_ps(src + i * ld, m) : _mm256_setzero_ps();
  }
  transpose8(r);
}

// Packed A tiles are written with full 8-lane stores at offsets h apart, in increasing order, so
// each store's extra lanes are overwritten by the next one; the last one may write up to 8 floats
// past the block (the driver leaves that slack). This avoids maskstore, which is slow on some CPUs.
void pack_a(int64_t mc, int64_t kc, const float* a, int64_t lda, float* ap) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t t = 0; t < s.count; ++t) {
    const int64_t h = s.h + (t < s.taller ? 1 : 0);
    for (int64_t p0 = 0; p0 < kc; p0 += 8) {
      const int64_t kk = kc - p0 < 8 ? kc - p0 : 8;
      __m256 r[8];
      load_transposed(a + p0, lda, h, kk, r);
      for (int64_t i = 0; i < kk; ++i) _mm256_storeu_ps(ap + (p0 + i) * h, r[i]);
    }
    a += h * lda;
    ap += h * kc;
  }
}

void pack_b_nt(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t first = j0 + 8 * half;
      const int64_t rows = nc - first < 0 ? 0 : (nc - first < 8 ? nc - first : 8);
      float* dst = bp + 8 * half;
      if (rows == 0) {
        for (int64_t p = 0; p < kc; ++p) _mm256_store_ps(dst + p * kNr, _mm256_setzero_ps());
        continue;
      }
      for (int64_t p0 = 0; p0 < kc; p0 += 8) {
        const int64_t kk = kc - p0 < 8 ? kc - p0 : 8;
        __m256 r[8];
        load_transposed(b + first * ldb + p0, ldb, rows, kk, r);
        for (int64_t i = 0; i < kk; ++i) _mm256_store_ps(dst + (p0 + i) * kNr, r[i]);
      }
    }
    bp += kc * kNr;
  }
}

void pack_b_nn(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    const float* src = b + j0;
    if (nc - j0 >= kNr) {
      for (int64_t p = 0; p < kc; ++p) {
        _mm256_store_ps(bp + p * kNr, _mm256_loadu_ps(src + p * ldb));
        _mm256_store_ps(bp + p * kNr + 8, _mm256_loadu_ps(src + p * ldb + 8));
      }
    } else {
      const __m256i m0 = lane_mask(nc - j0), m1 = lane_mask(nc - j0 - 8);
      for (int64_t p = 0; p < kc; ++p) {
        _mm256_store_ps(bp + p * kNr, _mm256_maskload_ps(src + p * ldb, m0));
        _mm256_store_ps(bp + p * kNr + 8, _mm256_maskload_ps(src + p * ldb + 8, m1));
      }
    }
    bp += kc * kNr;
  }
}

// One register tile: C[H x 16] (+)= alpha * Ap[H x kc] * B[kc x 16]; row p of B is at
// bp + p * b_row. Only the first nr columns of C are touched; with `partial`, only the first nr
// columns of B are read too (for B used in place, whose last sliver may end with the matrix).
// alpha is passed by address so that it is only read after the k loop and does not hold a vector
// register during it (the loop needs 15 of the 16).
template <int H, bool partial>
void tile(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t b_row, float* c, int64_t ldc,
          const float* alpha, bool load_c, int64_t nr) {
  __m256 acc0[H], acc1[H];
#pragma GCC unroll 8
  for (int r = 0; r < H; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < H; ++r) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
  const __m256i bm0 = lane_mask(nr), bm1 = lane_mask(nr - 8);
  for (int64_t p = 0; p < kc; ++p) {
    __m256 b0, b1;
    if (partial) {
      b0 = _mm256_maskload_ps(bp, bm0);
      b1 = _mm256_maskload_ps(bp + 8, bm1);
    } else {
      b0 = _mm256_loadu_ps(bp);
      b1 = _mm256_loadu_ps(bp + 8);
    }
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) {
      const __m256 av = _mm256_broadcast_ss(ap + r);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
    ap += H;
    bp += b_row;
  }
  const __m256 va = _mm256_set1_ps(*alpha);
  if (nr >= kNr) {
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) {
      float* cr = c + r * ldc;
      __m256 v0 = _mm256_mul_ps(acc0[r], va), v1 = _mm256_mul_ps(acc1[r], va);
      if (load_c) {
        v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
        v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr + 8));
      }
      _mm256_storeu_ps(cr, v0);
      _mm256_storeu_ps(cr + 8, v1);
    }
  } else {
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) {
      float* cr = c + r * ldc;
      __m256 v0 = _mm256_mul_ps(acc0[r], va), v1 = _mm256_mul_ps(acc1[r], va);
      if (load_c) {
        v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cr, bm0));
        v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cr + 8, bm1));
      }
      _mm256_maskstore_ps(cr, bm0, v0);
      _mm256_maskstore_ps(cr + 8, bm1, v1);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, const float*, bool, int64_t);
constexpr TileFn kTiles[2][kMr + 1] = {
    {nullptr, tile<1, false>, tile<2, false>, tile<3, false>, tile<4, false>, tile<5, false>, tile<6, false>},
    {nullptr, tile<1, true>, tile<2, true>, tile<3, true>, tile<4, true>, tile<5, true>, tile<6, true>},
};

void compute(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, int64_t b_row, int64_t b_sliver,
             float* c, int64_t ldc, float alpha, bool load_c) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t j = 0; j < nc; j += kNr) {
    // Packed slivers are zero-padded: only B used in place needs the masked loads.
    const int partial = nc - j < kNr && b_row != kNr ? 1 : 0;
    const float* at = ap;
    float* ct = c + j;
    for (int64_t t = 0; t < s.count; ++t) {
      const int64_t h = s.h + (t < s.taller ? 1 : 0);
      kTiles[partial][h](kc, at, bp, b_row, ct, ldc, &alpha, load_c, nc - j);
      at += h * kc;
      ct += h * ldc;
    }
    bp += b_sliver;
  }
}

#include "backends/cpu/sum_lanes_x86.inc"

// Dot products of M (<= 4) rows of A with 2 rows of B at a time (2 M accumulators of 8 lanes
// along k, two independent chains per row even for M = 1), summed across lanes at the end.
template <int M>
void small_m_rows(int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                  int64_t ldc, float alpha, bool load_c) {
  const __m256i tail = lane_mask(k % 8);
  const int64_t k8 = k - k % 8;
  for (int64_t j = 0; j < n; j += 2) {
    const int64_t w = n - j < 2 ? n - j : 2;
    const float* b0 = b + j * ldb;
    const float* b1 = w > 1 ? b0 + ldb : b0;  // past the end: repeat a row
    __m256 acc[M][2];
#pragma GCC unroll 4
    for (int i = 0; i < M; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int64_t p = 0; p < k8; p += 8) {
      const __m256 v0 = _mm256_loadu_ps(b0 + p), v1 = _mm256_loadu_ps(b1 + p);
#pragma GCC unroll 4
      for (int i = 0; i < M; ++i) {
        const __m256 av = _mm256_loadu_ps(a + i * lda + p);
        acc[i][0] = _mm256_fmadd_ps(av, v0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(av, v1, acc[i][1]);
      }
    }
    if (k8 < k) {
      const __m256 v0 = _mm256_maskload_ps(b0 + k8, tail), v1 = _mm256_maskload_ps(b1 + k8, tail);
      for (int i = 0; i < M; ++i) {
        const __m256 av = _mm256_maskload_ps(a + i * lda + k8, tail);
        acc[i][0] = _mm256_fmadd_ps(av, v0, acc[i][0]);
        acc[i][1] = _mm256_fmadd_ps(av, v1, acc[i][1]);
      }
    }
    for (int i = 0; i < M; ++i) {
      for (int64_t q = 0; q < w; ++q) {
        const float v = alpha * sum_lanes(acc[i][q]);
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
#include "backends/cpu/attention_f16.inc"

constexpr KernelSet kSet = {
    "avx2", kMr, kNr, /*kc=*/768, /*mc=*/kMr * 12, /*nc=*/1024, pack_a, pack_b_nt, pack_b_nn, compute, small_m_nt,
    softmax_tile, glu_mul,
    quant_row_dots,
    attn_scores_f16, attn_pv_f16,
    /*direct_nn=*/true,
};

}  // namespace

extern const KernelSet* const kernels_avx2 = &kSet;

}  // namespace dashlm::cpu::gemm_detail

#else  // not compiled for AVX2

namespace dashlm::cpu::gemm_detail {
extern const KernelSet* const kernels_avx2 = nullptr;
}  // namespace dashlm::cpu::gemm_detail

#endif
