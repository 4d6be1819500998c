// GEMM driver: picks the kernel set for the CPU, cuts the problem into cache blocks, packs them
// and hands register tiles to the kernels, on one thread or an OpenMP team. The kernels and the
// packed layouts are described in gemm_kernels.h.
//
// Loop nest (GotoBLAS/BLIS): for each panel of nc columns of B (jc), for each panel of kc values
// of k (pc): the team packs the kc x nc panel of B together (each thread a share of its slivers)
// and meets at a barrier; then the threads claim work items, a block of about mc rows of A times
// the panel's slivers (or a chunk of them), pack that block of A (mc x kc, private to the thread)
// and run the micro-kernel over each sliver, each register tile of the block. Panels of B are
// double-buffered, so one barrier per panel is enough: a thread can only start overwriting buffer
// i % 2 with panel i after the barrier of panel i - 1, which every thread reaches only once it
// has finished computing with panel i - 2. The sum of each element of C runs over k in the same
// order whatever the number of threads, so results do not depend on it.
#include "backends/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>

#include "backends/cpu/gemm_kernels.h"
#include "backends/cpu/ops.h"

namespace dashlm::cpu {

namespace {

using gemm_detail::KernelSet;

// Floats a packing routine may write past the end of a packed block (see gemm_avx2.cpp).
constexpr size_t kSlack = 64;
// Below this many flops per thread, more threads cost more (fork/join) than they save.
constexpr double kMinFlopsPerThread = 4.0e6;

// 64-byte aligned float storage that only grows: after the first calls of a given size, a GEMM
// allocates nothing.
class PackBuffer {
 public:
  PackBuffer() = default;
  PackBuffer(const PackBuffer&) = delete;
  PackBuffer& operator=(const PackBuffer&) = delete;
  ~PackBuffer() { std::free(data_); }

  float* reserve(size_t n) {
    if (n > capacity_) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
      const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
      if (!data_) throw std::bad_alloc();
      capacity_ = bytes / sizeof(float);
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

thread_local PackBuffer t_a_block;   // this thread's packed block of A
thread_local PackBuffer t_b_panels;  // the packed panels of B of a GEMM this thread leads

// --- instruction-set levels --------------------------------------------------------------------

const KernelSet* kernels_for(GemmLevel level) {
  switch (level) {
    case GemmLevel::avx512: return gemm_detail::kernels_avx512();
    case GemmLevel::avx2: return gemm_detail::kernels_avx2();
    case GemmLevel::scalar: break;
  }
  return gemm_detail::kernels_scalar();
}

GemmLevel detect_max_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // __builtin_cpu_supports also checks that the OS saves the wider registers (XCR0).
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && gemm_detail::kernels_avx512()) return GemmLevel::avx512;
  if (avx2 && gemm_detail::kernels_avx2()) return GemmLevel::avx2;
#endif
  return GemmLevel::scalar;
}

GemmLevel max_level_cached() {
  static const GemmLevel level = detect_max_level();
  return level;
}

// DASHLM_CPU=scalar|avx2|avx512 lowers the starting level; anything else is ignored.
GemmLevel initial_level() {
  GemmLevel level = max_level_cached();
  if (const char* env = std::getenv("DASHLM_CPU")) {
    for (GemmLevel l : {GemmLevel::scalar, GemmLevel::avx2, GemmLevel::avx512}) {
      if (std::strcmp(env, gemm_level_name(l)) == 0 && l < level) level = l;
    }
  }
  return level;
}

std::atomic<int>& level_state() {
  static std::atomic<int> state{static_cast<int>(initial_level())};
  return state;
}

const KernelSet& current_kernels() {
  return *kernels_for(static_cast<GemmLevel>(level_state().load(std::memory_order_relaxed)));
}

// --- the blocked product -------------------------------------------------------------------------

struct Problem {
  const KernelSet* ks;
  bool nt;  // B stored [n x k] (else [k x n])
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;
  int64_t ldb;
  float* c;
  int64_t ldc;
  bool accumulate;
  float alpha;
  int64_t kc, nc;     // panel sizes actually used (nc a multiple of nr)
  int64_t row_blocks;  // blocks of about mc rows of A (see row_block_start)
  int64_t col_chunks;  // each panel's slivers are cut into this many chunks of work
  float* b_panel[2];   // shared packed panels of B, double-buffered
  // Work items of a panel are claimed from these counters (one per buffer, like the panels).
  std::atomic<int64_t> next_item[2];
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// First row of row block i (i = row_blocks gives m): the m rows are cut evenly into blocks of at
// most about mc rows, each starting on a multiple of mr, so that only the last block has a
// partial register tile.
int64_t row_block_start(const Problem& p, int64_t i) {
  if (i >= p.row_blocks) return p.m;
  const int64_t mr = p.ks->mr;
  return p.m * i / p.row_blocks / mr * mr;
}

// The part of the product done by thread `tid` of `nthreads` (all of it when nthreads is 1).
// With nthreads > 1 it must be called by every thread of the team: it contains barriers. No
// OpenMP construct is reached when nthreads is 1, so a GEMM can run inline inside someone
// else's parallel region.
//
// Each panel of B is packed by the team (a static share of its slivers each), then its work
// items (row block x chunk of slivers, row-block major) are claimed one at a time from a shared
// counter: a thread that is slowed down (a busy machine, a slower core) simply takes fewer. A
// thread keeps its packed block of A while it claims items of the same row block.
void run_part(Problem& p, int tid, int nthreads) {
  const KernelSet& ks = *p.ks;
  const int64_t nr = ks.nr;
  float* ap = t_a_block.reserve(static_cast<size_t>((ks.mc + ks.mr) * p.kc) + kSlack);

  int64_t panel = 0;
  for (int64_t jc = 0; jc < p.n; jc += p.nc) {
    const int64_t ncur = std::min(p.nc, p.n - jc);
    const int64_t slivers = ceil_div(ncur, nr);
    for (int64_t pc = 0; pc < p.k; pc += p.kc, ++panel) {
      const int64_t kcur = std::min(p.kc, p.k - pc);
      float* bp = p.b_panel[panel & 1];

      // This thread's share of the packing of the panel.
      const int64_t q0 = slivers * tid / nthreads, q1 = slivers * (tid + 1) / nthreads;
      if (q1 > q0) {
        const int64_t col = jc + q0 * nr, cols = std::min(jc + q1 * nr, jc + ncur) - col;
        if (p.nt) {
          ks.pack_b_nt(cols, kcur, p.b + col * p.ldb + pc, p.ldb, bp + q0 * kcur * nr);
        } else {
          ks.pack_b_nn(cols, kcur, p.b + pc * p.ldb + col, p.ldb, bp + q0 * kcur * nr);
        }
      }
      std::atomic<int64_t>& next = p.next_item[panel & 1];
      if (nthreads > 1) {
#pragma omp barrier
        // Every claim on the other counter (the previous panel's) was made before this barrier,
        // and the next claims on it come after the next one: reset it for the panel after this.
        if (tid == 0) p.next_item[(panel + 1) & 1].store(0, std::memory_order_relaxed);
      }

      const bool load_c = p.accumulate || pc > 0;
      const int64_t items = p.row_blocks * p.col_chunks;
      int64_t packed_block = -1;  // the row block whose A is in ap, for this panel
      for (int64_t mine = 0;; ++mine) {
        const int64_t item = nthreads > 1 ? next.fetch_add(1, std::memory_order_relaxed) : mine;
        if (item >= items) break;
        const int64_t rb = item / p.col_chunks, cc = item % p.col_chunks;
        const int64_t i0 = row_block_start(p, rb), i1 = row_block_start(p, rb + 1);
        const int64_t u0 = slivers * cc / p.col_chunks, u1 = slivers * (cc + 1) / p.col_chunks;
        if (i1 <= i0 || u1 <= u0) continue;
        if (packed_block != rb) {
          ks.pack_a(i1 - i0, kcur, p.a + i0 * p.lda + pc, p.lda, ap);
          packed_block = rb;
        }
        const int64_t col0 = jc + u0 * nr, col1 = std::min(jc + u1 * nr, jc + ncur);
        ks.compute(i1 - i0, col1 - col0, kcur, ap, bp + u0 * kcur * nr, p.c + i0 * p.ldc + col0, p.ldc, p.alpha,
                   load_c);
      }
    }
  }
}

void gemm(bool nt, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c, int64_t ldc, bool accumulate, float alpha, int threads) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {  // an empty sum
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
    }
    return;
  }
  Problem p;
  p.ks = &current_kernels();
  p.nt = nt;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a;
  p.lda = lda;
  p.b = b;
  p.ldb = ldb;
  p.c = c;
  p.ldc = ldc;
  p.accumulate = accumulate;
  p.alpha = alpha;
  p.next_item[0].store(0, std::memory_order_relaxed);
  p.next_item[1].store(0, std::memory_order_relaxed);

  // Panel sizes: evened out so that the last panel is not a thin remainder; kc a multiple of 16
  // (whole vectors when packing).
  const int64_t nr = p.ks->nr;
  const int64_t kc = ceil_div(k, ceil_div(k, p.ks->kc));
  p.kc = kc > 16 ? ceil_div(kc, 16) * 16 : kc;
  p.nc = ceil_div(ceil_div(n, ceil_div(n, p.ks->nc)), nr) * nr;
  p.row_blocks = ceil_div(m, p.ks->mc);
  const size_t panel_floats = (static_cast<size_t>(p.kc * p.nc) + kSlack + 15) / 16 * 16;
  const bool one_panel = p.kc >= k && p.nc >= n;
  float* panels = t_b_panels.reserve(one_panel ? panel_floats : 2 * panel_floats);
  p.b_panel[0] = panels;
  p.b_panel[1] = one_panel ? panels : panels + panel_floats;

  int t = threads > 0 ? threads : (omp_in_parallel() ? 1 : num_threads());
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  t = static_cast<int>(std::max<double>(1.0, std::min<double>(t, flops / kMinFlopsPerThread)));
  if (t <= 1) {
    p.col_chunks = 1;
    run_part(p, 0, 1);
    return;
  }
  // At least two items per thread; when there are too few row blocks for that, the slivers of
  // each panel are shared out too (each chunk then packs its block of A again: a small cost).
  const int64_t slivers = ceil_div(std::min(p.nc, n), nr);
  p.col_chunks = std::min(slivers, std::max<int64_t>(1, ceil_div(2 * t, p.row_blocks)));
#pragma omp parallel num_threads(t)
  run_part(p, omp_get_thread_num(), omp_get_num_threads());
}

}  // namespace

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate, float alpha, int threads) {
  gemm(true, m, n, k, a, lda, b, ldb, c, ldc, accumulate, alpha, threads);
}

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate, float alpha, int threads) {
  gemm(false, m, n, k, a, lda, b, ldb, c, ldc, accumulate, alpha, threads);
}

const char* gemm_level_name(GemmLevel level) {
  switch (level) {
    case GemmLevel::avx512: return "avx512";
    case GemmLevel::avx2: return "avx2";
    case GemmLevel::scalar: break;
  }
  return "scalar";
}

const char* gemm_kernel_name() { return current_kernels().name; }

GemmLevel gemm_max_level() { return max_level_cached(); }

GemmLevel gemm_level() { return static_cast<GemmLevel>(level_state().load(std::memory_order_relaxed)); }

GemmLevel gemm_set_level(GemmLevel level) {
  const GemmLevel l = std::min(level, max_level_cached());
  level_state().store(static_cast<int>(l), std::memory_order_relaxed);
  return l;
}

}  // namespace dashlm::cpu
