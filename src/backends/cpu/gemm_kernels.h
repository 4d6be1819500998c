// Internal to the GEMM: what each instruction-set translation unit (gemm_scalar.cpp,
// gemm_avx2.cpp, gemm_avx512.cpp) hands to the driver in gemm.cpp.
//
// The blocking follows the GotoBLAS/BLIS scheme. For a panel of B (kc values of k by nc
// columns) and a block of A (mc rows by the same kc values):
//   - B is packed into slivers of NR columns: sliver s holds, for each p in [0, kc), the NR
//     values B(p, s*NR .. s*NR+NR-1) contiguously (zero-padded past the last column), so the
//     micro-kernel loads NR values of B per k step with aligned vector loads.
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
// keep everything but their one exported function in an anonymous namespace.
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
  // C[mc x nc] = alpha * Ap * Bp, or C += alpha * Ap * Bp when load_c. ap as packed by pack_a
  // for the same mc and kc; bp: slivers as packed by pack_b_*.
  void (*compute)(int64_t mc, int64_t nc, int64_t kc, const float* ap, const float* bp, float* c, int64_t ldc,
                  float alpha, bool load_c);
};

// Each returns nullptr when the build has no such kernel (e.g. not an x86-64 compiler).
const KernelSet* kernels_scalar();
const KernelSet* kernels_avx2();
const KernelSet* kernels_avx512();

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
