// Internal to the GEMM: what each instruction-set translation unit (gemm_scalar.cpp,
// gemm_avx2.cpp, gemm_avx512.cpp) hands to the driver in gemm.cpp.
//
// The blocking follows the GotoBLAS/BLIS scheme. For a panel of B (kc values of k by nc
// columns) and a block of A (mc rows by the same kc values):
//   - B is packed into slivers of NR columns: sliver s holds, for each p in [0, kc), the NR
//     values B(p, s*NR .. s*NR+NR-1) contiguously (zero-padded past the last column), so the
//     micro-kernel loads NR values of B per k step with whole vector loads. (A B stored [k x n]
//     already has that shape, with a row stride: it can also be read in place.)
//   - A is packed into tiles of h <= MR rows: for each p in [0, kc), the h values
//     A(r0 .. r0+h-1, p) contiguously; the micro-kernel broadcasts them one by one. The mc rows
//     are cut into ceil(mc / MR) tiles of balanced heights (e.g. 32 rows with MR = 14 become
//     11 + 11 + 10, not 14 + 14 + 4), so that small blocks still keep many accumulators busy.
//   - The micro-kernel keeps an h x NR tile of C in registers over all kc steps, then writes it
//     (C = alpha * acc, or C += alpha * acc).
//
// These translation units are compiled with different instruction-set flags, so they must not
// emit any inline function or template that another unit could also emit (the linker would keep
// one copy, maybe the AVX-512 one, for everyone): they include no standard-library templates and
// keep everything but their one exported pointer in an anonymous namespace.
#pragma once
#include <cstdint>

namespace dashlm::cpu::gemm_detail {

struct KernelSet {
  const char* name;
  int mr;  // most rows of a register tile
  int nr;  // columns of a register tile (and of a packed B sliver)
  // Cache blocking the driver uses (tuned per kernel).
  int kc;  // k values per panel
  int mc;  // rows of A per packed block (a multiple of mr)
  int nc;  // columns of B per packed panel (a multiple of nr)

  // Packs rows [0, mc) and k values [0, kc) of A (row-major, leading dimension lda) into tiles
  // of balanced heights, in the order compute() reads them. ap: mc * kc floats.
  void (*pack_a)(int64_t mc, int64_t kc, const float* a, int64_t lda, float* ap);
  // Packs columns [0, nc) and k values [0, kc) of B into ceil(nc / nr) slivers of kc * nr
  // floats. nt: B(p, j) is at b[j * ldb + p]  (B stored [n x k]).
  void (*pack_b_nt)(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp);
  // nn: B(p, j) is at b[p * ldb + j]  (B stored [k x n]).
  void (*pack_b_nn)(int64_t nc, int64_t kc, const float* b, int64_t ldb, float* bp);
  // C[mc x nc] = alpha * Ap * B, or C += alpha * Ap * B when load_c. ap as packed by pack_a for
  // the same mc and kc. B(p, j) is read at bp[p * b_row + (j / nr) * b_sliver + j % nr]:
  //   packed slivers (pack_b_*):  b_row = nr,  b_sliver = kc * nr;
  //   B used in place ([k x n] row-major, only when direct_nn):  b_row = ldb,  b_sliver = nr
  // (then columns past nc are never read).
  void (*compute)(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, int64_t b_row,
                  int64_t b_sliver, float* c, int64_t ldc, float alpha, bool load_c);
  // C[m x n] = alpha * A * B^T (C += ... when load_c) for m <= kSmallM rows and B stored
  // [n x k], by dot products along k: B is streamed once, nothing is packed (decode: one token
  // against a weight matrix, one query against the keys).
  void (*small_m_nt)(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                     float* c, int64_t ldc, float alpha, bool load_c);
  // One key tile of an online softmax (flash attention). s: nb rows of nt scores (row stride
  // lds), masked keys -inf; m, l: each row's running maximum and sum (start: -inf and 0). For
  // each row: m' = max(m, max_j s_j); s_j becomes exp(s_j - m') (0 where s_j = -inf);
  // corr = exp(m - m') (0 while m was -inf; 1 for a row that still sees nothing), the factor the
  // caller applies to its accumulated output; l = l * corr + sum_j s_j; m = m'.
  void (*softmax_tile)(int64_t nb, int64_t nt, float* s, int64_t lds, float* m, float* l, float* corr);
  // g[i] = act(g[i]) * u[i] for i < n: act 0 is SiLU, 1 GELU (tanh approximation); exp by
  // elementwise.inc's polynomial (1-2 ulp), vectorised.
  void (*glu_mul)(int act, float* g, const float* u, int64_t n);
  // Decode: acc[i] = x_i . w for m <= kSmallM rows of x (row stride ldx) and one row w of k
  // elements of a quantized type (a DType value; whole blocks of bs elements of bbytes bytes),
  // dequantized piece by piece on the stack (quant_dots.inc). False for a type it does not know.
  bool (*quant_row_dots)(uint32_t type, const uint8_t* row, int64_t k, int64_t bs, int64_t bbytes, const float* x,
                         int64_t ldx, int64_t m, float* acc);
  // The flash attention's products for a few rows against a key tile of an f16 cache, read in
  // place (decoding: converted in registers, no float tile written). Key j's row of K or V is at
  // k + (slots ? slots[j] : j) * ldk halves. attn_scores_f16: s[r * lds + j] = scale * q_r . K_j;
  // attn_pv_f16: out_r (+)= sum_j p[r * ldp + j] V_j (overwritten unless accumulate). hd a
  // multiple of 32.
  void (*attn_scores_f16)(int64_t rows, int64_t nt, int64_t hd, const float* q, int64_t ldq, const uint16_t* k,
                          int64_t ldk, const int32_t* slots, float* s, int64_t lds, float scale);
  void (*attn_pv_f16)(int64_t rows, int64_t nt, int64_t hd, const float* p, int64_t ldp, const uint16_t* v, int64_t ldv,
                      const int32_t* slots, float* out, int64_t ldo, bool accumulate);
  // Whether compute() can read a [k x n] B in place (the driver then skips packing B when it would
  // be used only once or twice, e.g. V in the attention's P V).
  bool direct_nn;
};

// Most rows of A for small_m_nt.
constexpr int64_t kSmallM = 4;

// Each is nullptr when the build has no such kernels (e.g. not an x86-64 compiler). Constant data
// rather than functions: no code compiled for an instruction set runs before the driver has
// checked that the CPU has it (and none runs at program start: no dynamic initialisation).
extern const KernelSet* const kernels_scalar;
extern const KernelSet* const kernels_avx2;
extern const KernelSet* const kernels_avx512;

// Balanced tiling of mc rows into ceil(mc / mr) tiles: the first `taller` tiles have h + 1 rows,
// the others h. Written out as a macro-free inline function of plain ints so that every unit
// computes the same split (it is trivially inlined; no template).
struct TileSplit {
  int64_t count;   // number of tiles
  int64_t h;       // height of the shorter tiles
  int64_t taller;  // number of tiles with h + 1 rows (they come first)
};
static inline TileSplit split_rows(int64_t mc, int64_t mr) {
  TileSplit s;
  s.count = (mc + mr - 1) / mr;
  s.h = mc / s.count;
  s.taller = mc - s.h * s.count;
  return s;
}

}  // namespace dashlm::cpu::gemm_detail
