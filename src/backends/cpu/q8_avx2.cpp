// Quantized dot products with AVX2 (q8_dots_x86.inc): 8-bit products by vpmaddubsw, pairs of
// 16-bit sums widened by vpmaddwd. This file alone is compiled with -mavx2 -mfma -mf16c (see
// CMakeLists.txt); the driver calls into it only after checking the CPU at run time.
#include "backends/cpu/q8_kernels.h"

#include <cstring>

#include "backends/dtype.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace dashlm::cpu::q8_detail {
namespace {

#include "backends/cpu/dequant_blocks.inc"

inline __m256i dot_u8s8(__m256i u, __m256i s) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Whether the panels' products accumulate in 32 bits directly (dpbusd) rather than in 16 bits.
constexpr bool kDpbusd = false;
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_add_epi32(acc, dot_u8s8(u, s)); }

#include "backends/cpu/q8_dots_x86.inc"

constexpr Q8KernelSet kSet = {"avx2", gemv, pack_panel, panel_gemm, quantize_row, false, generic_panel_bytes, outlier_ratio};

}  // namespace

extern const Q8KernelSet* const q8_avx2 = &kSet;

}  // namespace dashlm::cpu::q8_detail

#else

namespace dashlm::cpu::q8_detail {
extern const Q8KernelSet* const q8_avx2 = nullptr;
}  // namespace dashlm::cpu::q8_detail

#endif
