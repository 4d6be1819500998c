// Single-precision matrix multiplication on the CPU, our own, with run-time dispatch on the
// instruction set (AVX-512F, AVX2+FMA, or portable C++). Row-major throughout.
//
//   gemm_nt:  C[m x n] (+)= alpha * A[m x k] * B^T   with B stored [n x k]  (x W^T, Q K^T)
//   gemm_nn:  C[m x n] (+)= alpha * A[m x k] * B     with B stored [k x n]  (P V)
//
// Leading dimensions are in elements and must be at least the row length (lda >= k, ldc >= n,
// ldb >= k for gemm_nt, ldb >= n for gemm_nn). With `accumulate` the product is added to C,
// otherwise C is overwritten (its old contents are never read, NaNs included).
//
// Threads: `threads` = 0 uses cpu::num_threads() (or 1 when called from inside an OpenMP
// parallel region); 1 runs inline on the calling thread with no OpenMP region at all, so the
// attention code can call it per head from inside its own parallel loop; n > 1 opens a team of
// n. Packing buffers are thread-local and only grow: no allocation per call once warm.
#pragma once
#include <cstdint>

namespace dashlm::cpu {

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate = false, float alpha = 1.f, int threads = 0);

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate = false, float alpha = 1.f, int threads = 0);

// Instruction-set levels of the kernels, lowest first.
enum class GemmLevel : int { scalar = 0, avx2 = 1, avx512 = 2 };

// Name of the kernel in use: "scalar", "avx2" or "avx512".
const char* gemm_kernel_name();
const char* gemm_level_name(GemmLevel level);

// Highest level this CPU (and build) can run.
GemmLevel gemm_max_level();
// Level in use. At start it is the highest level, lowered by the environment variable
// DASHLM_CPU=scalar|avx2|avx512 (a level above gemm_max_level() is ignored).
GemmLevel gemm_level();
// Forces a level (clamped to gemm_max_level()) and returns the level now in use. For tests and
// benchmarks; not meant to be called while another thread is inside a gemm.
GemmLevel gemm_set_level(GemmLevel level);

}  // namespace dashlm::cpu
