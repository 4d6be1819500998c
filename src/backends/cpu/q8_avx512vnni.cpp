// Quantized dot products with AVX-512 VNNI (q8_dots_x86.inc): vpdpbusd multiplies the unsigned
// bytes of the weights by the signed bytes of the activations and sums each four into a 32-bit
// lane in one instruction, with no 16-bit intermediate to saturate. On 256-bit vectors (AVX512VL):
// one activation block of 32 per vector; the K types against activations per 256 use 512-bit
// vectors for decoding (q8_k256_avx512.inc). This file alone is compiled with the AVX-512 F, BW, VL
// and VNNI flags and F16C (see CMakeLists.txt); the driver calls into it only when the CPU
// reports all four (and AVX2, FMA, F16C) and the OS saves the AVX-512 state. AMX is never used.
#include "backends/cpu/q8_kernels.h"

#include <cstring>

#include "backends/dtype.h"

#if defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX512BW__) && defined(__FMA__)
// See gemm_avx512.cpp: GCC 12 warns about its own AVX-512 intrinsics (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

namespace dashlm::cpu::q8_detail {
namespace {

#include "backends/cpu/dequant_blocks.inc"

inline __m256i dot_u8s8(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }

// Whether the panels' products accumulate in 32 bits directly (dpbusd) rather than in 16 bits.
constexpr bool kDpbusd = true;
inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }

#include "backends/cpu/q8_dots_x86.inc"
#include "backends/cpu/q8_k256_avx512.inc"

constexpr Q8KernelSet kSet = {"avx512vnni", gemv_k256,    pack_panel_k256, panel_gemm_k256,
                              quantize_row, true, panel_bytes_k256, outlier_ratio};

}  // namespace

extern const Q8KernelSet* const q8_avx512vnni = &kSet;

}  // namespace dashlm::cpu::q8_detail

#else

namespace dashlm::cpu::q8_detail {
extern const Q8KernelSet* const q8_avx512vnni = nullptr;
}  // namespace dashlm::cpu::q8_detail

#endif
