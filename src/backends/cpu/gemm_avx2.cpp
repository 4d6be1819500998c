// GEMM kernels for AVX2 + FMA. This file alone is compiled with -mavx2 -mfma (see
// CMakeLists.txt); the driver calls into it only after checking the CPU at run time. See
// gemm_kernels.h for the packed layouts and for why nothing here may have external linkage
// except kernels_avx2().
#include "backends/cpu/gemm_kernels.h"

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

// One register tile: C[H x 16] (+)= alpha * Ap[H x kc] * Bp[kc x 16]; only the first nr
// columns of C are touched.
template <int H>
void tile(int64_t kc, const float* __restrict ap, const float* __restrict bp, float* c, int64_t ldc, float alpha,
          bool load_c, int64_t nr) {
  __m256 acc0[H], acc1[H];
#pragma GCC unroll 8
  for (int r = 0; r < H; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < H; ++r) _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_load_ps(bp), b1 = _mm256_load_ps(bp + 8);
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) {
      const __m256 av = _mm256_broadcast_ss(ap + r);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
    ap += H;
    bp += kNr;
  }
  const __m256 va = _mm256_set1_ps(alpha);
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
    const __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
#pragma GCC unroll 8
    for (int r = 0; r < H; ++r) {
      float* cr = c + r * ldc;
      __m256 v0 = _mm256_mul_ps(acc0[r], va), v1 = _mm256_mul_ps(acc1[r], va);
      if (load_c) {
        v0 = _mm256_add_ps(v0, _mm256_maskload_ps(cr, m0));
        v1 = _mm256_add_ps(v1, _mm256_maskload_ps(cr + 8, m1));
      }
      _mm256_maskstore_ps(cr, m0, v0);
      _mm256_maskstore_ps(cr + 8, m1, v1);
    }
  }
}

using TileFn = void (*)(int64_t, const float*, const float*, float*, int64_t, float, bool, int64_t);
constexpr TileFn kTiles[kMr + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

void compute(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc, float alpha,
             bool load_c) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t j = 0; j < nc; j += kNr) {
    const float* at = ap;
    float* ct = c + j;
    for (int64_t t = 0; t < s.count; ++t) {
      const int64_t h = s.h + (t < s.taller ? 1 : 0);
      kTiles[h](kc, at, bp, ct, ldc, alpha, load_c, nc - j);
      at += h * kc;
      ct += h * ldc;
    }
    bp += kc * kNr;
  }
}

constexpr KernelSet kSet = {
    "avx2", kMr, kNr, /*kc=*/256, /*mc=*/kMr * 24, /*nc=*/2048, pack_a, pack_b_nt, pack_b_nn, compute,
};

}  // namespace

const KernelSet* kernels_avx2() { return &kSet; }

}  // namespace dashlm::cpu::gemm_detail

#else  // not compiled for AVX2

namespace dashlm::cpu::gemm_detail {
const KernelSet* kernels_avx2() { return nullptr; }
}  // namespace dashlm::cpu::gemm_detail

#endif
