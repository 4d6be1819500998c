// Portable GEMM kernels: plain C++ that the compiler auto-vectorises with whatever the baseline
// target offers (SSE2 on x86-64, NEON on AArch64). Used on CPUs without AVX2+FMA and when
// DASHLM_CPU=scalar. See gemm_kernels.h for the packed layouts.
#include "backends/cpu/gemm_kernels.h"

#include <cstring>

#include "backends/dtype.h"

namespace dashlm::cpu::gemm_detail {
namespace {

// Register tile: up to 6 rows x 8 columns (12 SSE registers of accumulators, of 16).
constexpr int kMr = 6;
constexpr int kNr = 8;

void pack_a(int64_t mc, int64_t kc, const float* a, int64_t lda, float* ap) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t t = 0; t < s.count; ++t) {
    const int64_t h = s.h + (t < s.taller ? 1 : 0);
    for (int64_t r = 0; r < h; ++r) {
      const float* src = a + r * lda;
      for (int64_t p = 0; p < kc; ++p) ap[p * h + r] = src[p];
    }
    a += h * lda;
    ap += h * kc;
  }
}

void pack_b_nt(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    for (int64_t j = 0; j < kNr; ++j) {
      if (j0 + j < nc) {
        const float* src = b + (j0 + j) * ldb;
        for (int64_t p = 0; p < kc; ++p) bp[p * kNr + j] = src[p];
      } else {
        for (int64_t p = 0; p < kc; ++p) bp[p * kNr + j] = 0.f;
      }
    }
    bp += kc * kNr;
  }
}

void pack_b_nn(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp) {
  for (int64_t j0 = 0; j0 < nc; j0 += kNr) {
    const int64_t w = nc - j0 < kNr ? nc - j0 : kNr;
    for (int64_t p = 0; p < kc; ++p) {
      const float* src = b + p * ldb + j0;
      float* dst = bp + p * kNr;
      for (int64_t j = 0; j < w; ++j) dst[j] = src[j];
      for (int64_t j = w; j < kNr; ++j) dst[j] = 0.f;
    }
    bp += kc * kNr;
  }
}

// One register tile: C[H x 8] (+)= alpha * Ap[H x kc] * B[kc x 8] (row p of B at bp + p * b_row,
// always a packed, zero-padded sliver here); only the first nr columns of C are written.
template <int H>
void tile(int64_t kc, const float* __restrict ap, const float* __restrict bp, int64_t b_row, float* c, int64_t ldc,
          float alpha, bool load_c, int64_t nr) {
  float acc[H][kNr] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int r = 0; r < H; ++r) {
      const float av = ap[r];
      for (int j = 0; j < kNr; ++j) acc[r][j] += av * bp[j];
    }
    ap += H;
    bp += b_row;
  }
  const int64_t w = nr < kNr ? nr : kNr;
  for (int r = 0; r < H; ++r) {
    float* cr = c + r * ldc;
    if (load_c) {
      for (int64_t j = 0; j < w; ++j) cr[j] += alpha * acc[r][j];
    } else {
      for (int64_t j = 0; j < w; ++j) cr[j] = alpha * acc[r][j];
    }
  }
}

using TileFn = void (*)(int64_t, const float*, const float*, int64_t, float*, int64_t, float, bool, int64_t);
constexpr TileFn kTiles[kMr + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>, tile<5>, tile<6>};

void compute(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, int64_t b_row, int64_t b_sliver,
             float* c, int64_t ldc, float alpha, bool load_c) {
  const TileSplit s = split_rows(mc, kMr);
  for (int64_t j = 0; j < nc; j += kNr) {
    const float* at = ap;
    float* ct = c + j;
    for (int64_t t = 0; t < s.count; ++t) {
      const int64_t h = s.h + (t < s.taller ? 1 : 0);
      kTiles[h](kc, at, bp, b_row, ct, ldc, alpha, load_c, nc - j);
      at += h * kc;
      ct += h * ldc;
    }
    bp += b_sliver;
  }
}

// Dot products along k, one per element of C; `omp simd` lets the compiler vectorise the sums
// (reassociating them), as it may not do for a plain float loop.
void small_m_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                int64_t ldc, float alpha, bool load_c) {
  for (int64_t j = 0; j < n; ++j) {
    const float* bj = b + j * ldb;
    for (int64_t i = 0; i < m; ++i) {
      const float* ai = a + i * lda;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t p = 0; p < k; ++p) s += ai[p] * bj[p];
      float* out = c + i * ldc + j;
      *out = load_c ? *out + alpha * s : alpha * s;
    }
  }
}

#include "backends/cpu/elementwise.inc"
#include "backends/cpu/softmax_tile.inc"
#include "backends/cpu/dequant_blocks.inc"
#include "backends/cpu/quant_dots.inc"
#include "backends/cpu/attention_f16.inc"

constexpr KernelSet kSet = {
    "scalar", kMr, kNr, /*kc=*/512, /*mc=*/kMr * 16, /*nc=*/512, pack_a, pack_b_nt, pack_b_nn, compute, small_m_nt,
    softmax_tile, glu_mul,
    quant_row_dots,
    attn_scores_f16, attn_pv_f16,
    /*direct_nn=*/false,
};

}  // namespace

extern const KernelSet* const kernels_scalar = &kSet;

}  // namespace dashlm::cpu::gemm_detail
