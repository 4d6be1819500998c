// GEMM driver: picks the kernel set for the CPU, cuts the problem into cache blocks, packs them
// and hands register tiles to the kernels, on one thread or an OpenMP team. The kernels and the
// packed layouts are described in gemm_kernels.h.
//
// Loop nest (GotoBLAS/BLIS): for each panel of nc columns of B (jc), for each panel of kc values
// of k (pc): the team packs the kc x nc panel of B together (each thread a share of its slivers),
// meets at a barrier, then each thread walks its own rectangle of C: for each block of about mc
// rows of A it packs the block (mc x kc, private) and runs the micro-kernel over every sliver of
// the panel. Panels of B are double-buffered, so one barrier per panel is enough: a thread can
// only start overwriting buffer i % 2 with panel i after the barrier of panel i - 1, which every
// thread reaches only once it has finished computing with panel i - 2.
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
  int64_t kc, nc;            // panel sizes actually used (nc a multiple of nr)
  float* b_panel[2];         // shared packed panels of B, double-buffered
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits `threads` into a grid of tm (over rows) x tn (over columns of C), minimising the work of
// the busiest thread: its rows times its slivers, plus a per-tile overhead of about two rows.
void choose_grid(const Problem& p, int threads, int& tm, int& tn) {
  const int64_t mr = p.ks->mr, slivers = ceil_div(p.n, p.ks->nr);
  int64_t best = -1;
  tm = threads;
  tn = 1;
  for (int a = threads; a >= 1; --a) {  // prefer splitting rows on ties: B is then shared
    if (threads % a != 0) continue;
    const int b = threads / a;
    const int64_t rows = ceil_div(p.m, a), cols = ceil_div(slivers, b);
    const int64_t cost = (rows + 2 * ceil_div(rows, mr)) * cols;
    if (best < 0 || cost < best) {
      best = cost;
      tm = a;
      tn = b;
    }
  }
}

// The part of the product done by thread `tid` of `nthreads` (all of it when nthreads is 1).
// With nthreads > 1 it must be called by every thread of the team: it contains barriers.
void run_part(const Problem& p, int tid, int nthreads) {
  const KernelSet& ks = *p.ks;
  const int64_t nr = ks.nr;
  int tm = 1, tn = 1;
  if (nthreads > 1) choose_grid(p, nthreads, tm, tn);
  // This thread's rectangle of C: rows [r0, r1), slivers [s0, s1) of nr columns.
  const int ti = tid / tn, tj = tid % tn;
  const int64_t r0 = p.m * ti / tm, r1 = p.m * (ti + 1) / tm;
  const int64_t slivers = ceil_div(p.n, nr);
  const int64_t s0 = slivers * tj / tn, s1 = slivers * (tj + 1) / tn;
  float* ap = t_a_block.reserve(static_cast<size_t>(ks.mc * p.kc) + kSlack);

  int64_t panel = 0;
  for (int64_t jc = 0; jc < p.n; jc += p.nc) {
    const int64_t ncur = std::min(p.nc, p.n - jc);
    const int64_t ps0 = jc / nr, ps1 = ps0 + ceil_div(ncur, nr);  // the panel's slivers
    for (int64_t pc = 0; pc < p.k; pc += p.kc, ++panel) {
      const int64_t kcur = std::min(p.kc, p.k - pc);
      float* bp = p.b_panel[panel & 1];

      // This thread's share of the packing of the panel.
      const int64_t pn = ps1 - ps0;
      const int64_t q0 = pn * tid / nthreads, q1 = pn * (tid + 1) / nthreads;
      if (q1 > q0) {
        const int64_t col = jc + q0 * nr, cols = std::min(jc + q1 * nr, jc + ncur) - col;
        if (p.nt) {
          ks.pack_b_nt(cols, kcur, p.b + col * p.ldb + pc, p.ldb, bp + q0 * kcur * nr);
        } else {
          ks.pack_b_nn(cols, kcur, p.b + pc * p.ldb + col, p.ldb, bp + q0 * kcur * nr);
        }
      }
      if (nthreads > 1) {
#pragma omp barrier
      }

      // This thread's columns of the panel.
      const int64_t u0 = std::max(s0, ps0), u1 = std::min(s1, ps1);
      if (u0 >= u1 || r0 >= r1) continue;
      const int64_t col0 = u0 * nr, col1 = std::min(u1 * nr, p.n);
      const float* bsub = bp + (u0 - ps0) * kcur * nr;
      const bool load_c = p.accumulate || pc > 0;
      // Blocks of mc rows; the last two are evened out rather than leaving a sliver of a block.
      for (int64_t ic = r0; ic < r1;) {
        const int64_t left = r1 - ic;
        int64_t mcur = left;
        if (left > ks.mc) mcur = left >= 2 * ks.mc ? ks.mc : ceil_div(ceil_div(left, 2), ks.mr) * ks.mr;
        ks.pack_a(mcur, kcur, p.a + ic * p.lda + pc, p.lda, ap);
        ks.compute(mcur, col1 - col0, kcur, ap, bsub, p.c + ic * p.ldc + col0, p.ldc, p.alpha, load_c);
        ic += mcur;
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
  Problem p{};
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

  // Panel sizes: evened out so that the last panel is not a thin remainder; kc a multiple of 16
  // (whole vectors when packing).
  const int64_t nr = p.ks->nr;
  const int64_t kc = ceil_div(k, ceil_div(k, p.ks->kc));
  p.kc = kc > 16 ? ceil_div(kc, 16) * 16 : kc;
  p.nc = ceil_div(ceil_div(n, ceil_div(n, p.ks->nc)), nr) * nr;
  const size_t panel_floats = (static_cast<size_t>(p.kc * p.nc) + kSlack + 15) / 16 * 16;
  const bool one_panel = p.kc >= k && p.nc >= n;
  float* panels = t_b_panels.reserve(one_panel ? panel_floats : 2 * panel_floats);
  p.b_panel[0] = panels;
  p.b_panel[1] = one_panel ? panels : panels + panel_floats;

  int t = threads > 0 ? threads : (omp_in_parallel() ? 1 : num_threads());
  const double flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  t = static_cast<int>(std::max<double>(1.0, std::min<double>(t, flops / kMinFlopsPerThread)));
  if (t <= 1) {
    run_part(p, 0, 1);
    return;
  }
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
