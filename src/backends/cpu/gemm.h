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
// How: GotoBLAS/BLIS-style cache blocking, packed panels and register-tiled micro-kernels (see
// gemm_kernels.h); gemm_nt with at most 8 rows of A (decode) uses dot products instead, reading
// B once without packing it; gemm_nn with few rows of A (the attention's P V) reads B in place.
// The sum of each element runs over k in an order that does not depend on the thread count.
//
// Threads: `threads` = 0 uses cpu::num_threads() (or 1 when called from inside an OpenMP
// parallel region); 1 runs inline on the calling thread with no OpenMP region at all, so the
// attention code can call it per head from inside its own parallel loop; n > 1 opens a team of
// n. Packing buffers are thread-local and only grow: no allocation per call once warm.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dashlm::cpu {

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate = false, float alpha = 1.f, int threads = 0);

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate = false, float alpha = 1.f, int threads = 0);

// Decode-sized products with quantized weights, with the kernel level's vector width for both
// the dequantization and the dot products: acc[i] = x_i . w for m <= 4 rows of x (row stride
// ldx) and one weight row w of k elements of `type` (a DType value, whole blocks of block_size
// elements taking block_bytes bytes each). False for a type without a block dequantizer.
bool quant_row_dots(uint32_t type, const uint8_t* row, int64_t k, int64_t block_size, int64_t block_bytes, const float* x,
                    int64_t ldx, int64_t m, float* acc);

// B packed once for several products with different A: e.g. the keys of one attention head,
// multiplied by every block of queries (gemm_nt packs B on every call; for a short A, such as 32
// queries, that packing is a good part of the work). Packed in the layout of the kernel level in
// use at packing time; later products use that level's kernels. The storage only grows, so one
// object can be packed again and again without allocating.
class GemmPackedB {
 public:
  GemmPackedB() = default;
  GemmPackedB(GemmPackedB&& other) noexcept;
  GemmPackedB& operator=(GemmPackedB&& other) noexcept;
  GemmPackedB(const GemmPackedB&) = delete;
  GemmPackedB& operator=(const GemmPackedB&) = delete;
  ~GemmPackedB();

  // B stored [n x k] (as for gemm_nt) or [k x n] (as for gemm_nn), leading dimension ldb.
  // threads as for gemm_nt.
  void pack_nt(int64_t n, int64_t k, const float* b, int64_t ldb, int threads = 0);
  void pack_nn(int64_t n, int64_t k, const float* b, int64_t ldb, int threads = 0);

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  // Column ranges given to gemm_packed must start at a multiple of this (8, 16 or 32).
  int64_t col_align() const { return nr_; }

 private:
  friend void gemm_packed(int64_t m, const float* a, int64_t lda, const GemmPackedB& b, int64_t j0, int64_t j1,
                          float* c, int64_t ldc, bool accumulate, float alpha, int threads);
  void pack(bool nt, int64_t n, int64_t k, const float* b, int64_t ldb, int threads);

  const void* kernels_ = nullptr;  // the kernel set that packed it
  int64_t n_ = 0, k_ = 0, kc_ = 0, nr_ = 1, n_pad_ = 0;
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

// C[m x (j1 - j0)] (+)= alpha * A[m x k] * B(:, j0 .. j1-1) for a packed B: the product with
// columns j0 .. j1-1 of B (rows j0 .. j1-1 of a B packed by pack_nt), column j0 of B landing in
// column 0 of C. Needs 0 <= j0 <= j1 <= b.n() and j0 a multiple of b.col_align(); k = b.k().
void gemm_packed(int64_t m, const float* a, int64_t lda, const GemmPackedB& b, int64_t j0, int64_t j1, float* c,
                 int64_t ldc, bool accumulate = false, float alpha = 1.f, int threads = 0);

// One key tile of an online softmax, with the kernels of the level in use (see flash attention
// in ops.cpp). s: nb rows of nt scores (row stride lds), masked keys -inf; m, l: each row's
// running maximum and sum, -inf and 0 before the first tile. Each row's scores become
// exp(s - m'), m' = max(m, the row's scores); corr[i] = exp(m - m') is the factor the output
// accumulated so far must be multiplied by (1 for a row that still sees nothing, 0 when m was
// -inf); l = l * corr + the row's new sum; m = m'.
void softmax_tile(int64_t nb, int64_t nt, float* s, int64_t lds, float* m, float* l, float* corr);

// The flash attention's two products for a few rows against a key tile of an f16 cache, read in
// place with the kernels of the level in use (KernelSet::attn_scores_f16, attn_pv_f16): key j's
// row of K or V at k + (slots ? slots[j] : j) * ldk halves; s[r * lds + j] = scale * q_r . K_j, and
// out_r (+)= sum_j p[r * ldp + j] V_j. hd a multiple of 32.
void attn_scores_f16(int64_t rows, int64_t nt, int64_t hd, const float* q, int64_t ldq, const uint16_t* k, int64_t ldk,
                     const int32_t* slots, float* s, int64_t lds, float scale);
void attn_pv_f16(int64_t rows, int64_t nt, int64_t hd, const float* p, int64_t ldp, const uint16_t* v, int64_t ldv,
                 const int32_t* slots, float* out, int64_t ldo, bool accumulate);

// g[i] = act(g[i]) * u[i] for i < n (act 0: SiLU, 1: GELU with the tanh approximation), on the
// calling thread, vectorised at the kernel level in use (KernelSet::glu_mul).
void glu_mul(int act, float* g, const float* u, int64_t n);

// What this CPU (and its OS) can run, read once: every kernel family dispatches on these.
// __builtin_cpu_supports reports the AVX and AVX-512 features only when the OS saves their
// registers (XCR0). AMX is not among them: no kernel uses it.
struct CpuFeatures {
  bool avx = false, avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
};
const CpuFeatures& cpu_features();

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
