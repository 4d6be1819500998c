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
#include <utility>

#include "backends/cpu/gemm_kernels.h"
#include "backends/cpu/ops.h"
#include "common/error.h"

namespace dashlm::cpu {

namespace {

using gemm_detail::KernelSet;

// Floats a packing routine may write past the end of a packed block (see gemm_avx2.cpp).
constexpr size_t kSlack = 64;
// Below this many flops per thread, more threads cost more (fork/join) than they save.
constexpr double kMinFlopsPerThread = 4.0e6;
// A [k x n] B is used in place rather than packed when A has at most this many row blocks.
constexpr int64_t kDirectMaxRowBlocks = 1;
// Up to this many rows of A, A x B^T is done by dot products (small_m_nt), reading B once per
// group of kSmallM rows: for fewer rows than about a register tile, that beats packing B.
constexpr int64_t kSmallMRows = 8;

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
    case GemmLevel::avx512: return gemm_detail::kernels_avx512;
    case GemmLevel::avx2: return gemm_detail::kernels_avx2;
    case GemmLevel::scalar: break;
  }
  return gemm_detail::kernels_scalar;
}

CpuFeatures detect_features() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx = __builtin_cpu_supports("avx");
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = __builtin_cpu_supports("f16c");
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
#endif
  return f;
}

GemmLevel detect_max_level() {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;  // the kernel units are compiled with F16C too
  if (avx2 && f.avx512f && gemm_detail::kernels_avx512) return GemmLevel::avx512;
  if (avx2 && gemm_detail::kernels_avx2) return GemmLevel::avx2;
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

// Where the micro-kernel finds B.
enum class BSource {
  pack_nt,    // packed per panel from B stored [n x k]
  pack_nn,    // packed per panel from B stored [k x n]
  direct_nn,  // B stored [k x n] read in place (few rows of A: packing would not pay)
  prepacked,  // a GemmPackedB
};

struct Problem {
  const KernelSet* ks;
  BSource source;
  int64_t m, n, k;
  const float* a;
  int64_t lda;
  const float* b;  // the matrix (or, prepacked, the packed data)
  int64_t ldb;     // its leading dimension (prepacked: the padded column count of the packing)
  int64_t b_col0;  // prepacked: the packed column that is column 0 here (a multiple of nr)
  float* c;
  int64_t ldc;
  bool accumulate;
  float alpha;
  int64_t kc, nc;      // panel sizes (nc a multiple of nr)
  int64_t row_blocks;  // blocks of about mc rows of A (see row_block_start)
  int64_t col_chunks;  // each panel's slivers are cut into this many chunks of work
  float* b_panel[2];   // packed panels of B shared by the team, double-buffered
  // Work items of a panel are claimed from these counters (one per buffer, like the panels).
  std::atomic<int64_t> next_item[2];
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Threads for a product of `flops` (0 asks for the default, see gemm.h).
int thread_count(int threads, double flops) {
  const int t = threads > 0 ? threads : (omp_in_parallel() ? 1 : num_threads());
  return static_cast<int>(std::max<double>(1.0, std::min<double>(t, flops / kMinFlopsPerThread)));
}

// k values per panel: at most the kernel's kc, evened out so that the last panel is not a thin
// remainder, and a multiple of 16 (whole vectors when packing).
int64_t panel_kc(const KernelSet& ks, int64_t k) {
  const int64_t kc = ceil_div(k, ceil_div(k, ks.kc));
  return kc > 16 ? ceil_div(kc, 16) * 16 : kc;
}

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
// thread keeps its packed block of A while it claims items of the same row block. The barrier
// after the packing also orders the panels of k, which add to the same elements of C.
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

      // The panel's slivers: sliver s holds B(pc + i, jc + s * nr + j) at bp[s * b_sliver + i * b_row + j].
      const float* bp = nullptr;
      int64_t b_row = nr, b_sliver = kcur * nr;
      if (p.source == BSource::pack_nt || p.source == BSource::pack_nn) {
        float* dst = p.b_panel[panel & 1];
        bp = dst;
        const int64_t q0 = slivers * tid / nthreads, q1 = slivers * (tid + 1) / nthreads;  // this thread's share
        if (q1 > q0) {
          const int64_t col = jc + q0 * nr, cols = std::min(jc + q1 * nr, jc + ncur) - col;
          if (p.source == BSource::pack_nt) {
            ks.pack_b_nt(cols, kcur, p.b + col * p.ldb + pc, p.ldb, dst + q0 * kcur * nr);
          } else {
            ks.pack_b_nn(cols, kcur, p.b + pc * p.ldb + col, p.ldb, dst + q0 * kcur * nr);
          }
        }
      } else if (p.source == BSource::direct_nn) {
        bp = p.b + pc * p.ldb + jc;
        b_row = p.ldb;
        b_sliver = nr;
      } else {  // prepacked: panel pc holds kcur x ldb values, its slivers one after the other
        bp = p.b + pc * p.ldb + (p.b_col0 + jc) / nr * kcur * nr;
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
        ks.compute(i1 - i0, col1 - col0, kcur, ap, bp + u0 * b_sliver, b_row, b_sliver, p.c + i0 * p.ldc + col0,
                   p.ldc, p.alpha, load_c);
      }
    }
  }
}

// Fills in the blocking of p (whose ks, source, sizes and operands are set), then runs it on
// `threads` threads (0: the default, see gemm.h).
void run(Problem& p, int threads) {
  const KernelSet& ks = *p.ks;
  const int64_t nr = ks.nr;
  p.next_item[0].store(0, std::memory_order_relaxed);
  p.next_item[1].store(0, std::memory_order_relaxed);
  p.row_blocks = ceil_div(p.m, ks.mc);
  // Packing B pays off when its slivers are read by many blocks of A; for a few rows of A (the
  // attention's P V) a [k x n] B is read in place.
  if (p.source == BSource::pack_nn && ks.direct_nn && p.row_blocks <= kDirectMaxRowBlocks) p.source = BSource::direct_nn;
  if (p.source == BSource::prepacked) {
    p.nc = ceil_div(p.n, nr) * nr;  // all columns at once: nothing to keep in cache
  } else {
    p.kc = panel_kc(ks, p.k);
    p.nc = ceil_div(ceil_div(p.n, ceil_div(p.n, ks.nc)), nr) * nr;
  }
  p.b_panel[0] = p.b_panel[1] = nullptr;
  if (p.source == BSource::pack_nt || p.source == BSource::pack_nn) {
    const size_t panel_floats = (static_cast<size_t>(p.kc * p.nc) + kSlack + 15) / 16 * 16;
    const bool one_panel = p.kc >= p.k && p.nc >= p.n;
    float* panels = t_b_panels.reserve(one_panel ? panel_floats : 2 * panel_floats);
    p.b_panel[0] = panels;
    p.b_panel[1] = one_panel ? panels : panels + panel_floats;
  }

  const int t =
      thread_count(threads, 2.0 * static_cast<double>(p.m) * static_cast<double>(p.n) * static_cast<double>(p.k));
  if (t <= 1) {
    p.col_chunks = 1;
    run_part(p, 0, 1);
    return;
  }
  // At least two items per thread; when there are too few row blocks for that, the slivers of
  // each panel are shared out too (each chunk then packs its block of A again: a small cost).
  const int64_t slivers = ceil_div(std::min(p.nc, p.n), nr);
  p.col_chunks = std::min(slivers, std::max<int64_t>(1, ceil_div(2 * t, p.row_blocks)));
#pragma omp parallel num_threads(t)
  run_part(p, omp_get_thread_num(), omp_get_num_threads());
}

// C = 0 (or unchanged with accumulate): the product when k is 0.
void empty_product(int64_t m, int64_t n, float* c, int64_t ldc, bool accumulate) {
  if (accumulate) return;
  for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.f);
}

// A few rows of A against B stored [n x k]: dot products, each thread a range of columns.
void small_m_nt(const KernelSet& ks, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                int64_t ldb, float* c, int64_t ldc, bool accumulate, float alpha, int threads) {
  const int t = thread_count(threads, 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k));
  if (t <= 1) return ks.small_m_nt(m, n, k, a, lda, b, ldb, c, ldc, alpha, accumulate);
#pragma omp parallel for schedule(static) num_threads(t)
  for (int i = 0; i < t; ++i) {
    const int64_t j0 = n * i / t / 8 * 8, j1 = i + 1 == t ? n : n * (i + 1) / t / 8 * 8;
    if (j1 > j0) ks.small_m_nt(m, j1 - j0, k, a, lda, b + j0 * ldb, ldb, c + j0, ldc, alpha, accumulate);
  }
}

void gemm(bool nt, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c, int64_t ldc, bool accumulate, float alpha, int threads) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) return empty_product(m, n, c, ldc, accumulate);
  if (nt && m <= kSmallMRows) {
    return small_m_nt(current_kernels(), m, n, k, a, lda, b, ldb, c, ldc, accumulate, alpha, threads);
  }
  Problem p;
  p.ks = &current_kernels();
  p.source = nt ? BSource::pack_nt : BSource::pack_nn;
  p.m = m;
  p.n = n;
  p.k = k;
  p.a = a;
  p.lda = lda;
  p.b = b;
  p.ldb = ldb;
  p.b_col0 = 0;
  p.c = c;
  p.ldc = ldc;
  p.accumulate = accumulate;
  p.alpha = alpha;
  run(p, threads);
}

}  // namespace

void softmax_tile(int64_t nb, int64_t nt, float* s, int64_t lds, float* m, float* l, float* corr) {
  current_kernels().softmax_tile(nb, nt, s, lds, m, l, corr);
}

void glu_mul(int act, float* g, const float* u, int64_t n) { current_kernels().glu_mul(act, g, u, n); }

void attn_scores_f16(int64_t rows, int64_t nt, int64_t hd, const float* q, int64_t ldq, const uint16_t* k, int64_t ldk,
                     const int32_t* slots, float* s, int64_t lds, float scale) {
  current_kernels().attn_scores_f16(rows, nt, hd, q, ldq, k, ldk, slots, s, lds, scale);
}
void attn_pv_f16(int64_t rows, int64_t nt, int64_t hd, const float* p, int64_t ldp, const uint16_t* v, int64_t ldv,
                 const int32_t* slots, float* out, int64_t ldo, bool accumulate) {
  current_kernels().attn_pv_f16(rows, nt, hd, p, ldp, v, ldv, slots, out, ldo, accumulate);
}

void gemm_nt(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate, float alpha, int threads) {
  gemm(true, m, n, k, a, lda, b, ldb, c, ldc, accumulate, alpha, threads);
}

void gemm_nn(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
             int64_t ldc, bool accumulate, float alpha, int threads) {
  gemm(false, m, n, k, a, lda, b, ldb, c, ldc, accumulate, alpha, threads);
}

bool quant_row_dots(uint32_t type, const uint8_t* row, int64_t k, int64_t block_size, int64_t block_bytes, const float* x,
                    int64_t ldx, int64_t m, float* acc) {
  if (m < 0 || m > gemm_detail::kSmallM || block_size <= 0) return false;
  return current_kernels().quant_row_dots(type, row, k, block_size, block_bytes, x, ldx, m, acc);
}

// --- packed B --------------------------------------------------------------------------------------
//
// Layout: panel by panel of kc values of k (as the driver would cut them), each panel holding the
// slivers of all n_pad = ceil(n / nr) * nr columns one after the other, so panel pc starts at
// pc * n_pad and its sliver s at pc * n_pad + s * kcur * nr.

GemmPackedB::GemmPackedB(GemmPackedB&& other) noexcept { *this = std::move(other); }

GemmPackedB& GemmPackedB::operator=(GemmPackedB&& other) noexcept {
  if (this != &other) {
    std::free(data_);
    kernels_ = other.kernels_;
    n_ = other.n_;
    k_ = other.k_;
    kc_ = other.kc_;
    nr_ = other.nr_;
    n_pad_ = other.n_pad_;
    data_ = other.data_;
    capacity_ = other.capacity_;
    other.data_ = nullptr;
    other.capacity_ = 0;
    other.n_ = other.k_ = other.n_pad_ = 0;
  }
  return *this;
}

GemmPackedB::~GemmPackedB() { std::free(data_); }

void GemmPackedB::pack_nt(int64_t n, int64_t k, const float* b, int64_t ldb, int threads) {
  pack(true, n, k, b, ldb, threads);
}

void GemmPackedB::pack_nn(int64_t n, int64_t k, const float* b, int64_t ldb, int threads) {
  pack(false, n, k, b, ldb, threads);
}

void GemmPackedB::pack(bool nt, int64_t n, int64_t k, const float* b, int64_t ldb, int threads) {
  const KernelSet& ks = current_kernels();
  kernels_ = &ks;
  n_ = std::max<int64_t>(n, 0);
  k_ = std::max<int64_t>(k, 0);
  nr_ = ks.nr;
  n_pad_ = ceil_div(n_, nr_) * nr_;
  kc_ = k_ > 0 ? panel_kc(ks, k_) : 1;
  const size_t need = static_cast<size_t>(n_pad_ * k_) + kSlack;
  if (need > capacity_) {
    std::free(data_);
    data_ = nullptr;
    capacity_ = 0;
    const size_t bytes = (need * sizeof(float) + 63) / 64 * 64;
    data_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    if (!data_) throw std::bad_alloc();
    capacity_ = bytes / sizeof(float);
  }
  if (n_ == 0 || k_ == 0) return;

  // Work: (panel, group of slivers) pairs, shared out statically.
  const int64_t slivers = n_pad_ / nr_, group = 8;
  const int64_t groups = ceil_div(slivers, group), panels = ceil_div(k_, kc_);
  const int64_t items = panels * groups;
  auto pack_item = [&](int64_t item) {
    const int64_t pc = item / groups * kc_, s0 = item % groups * group;
    const int64_t kcur = std::min(kc_, k_ - pc);
    const int64_t col = s0 * nr_, cols = std::min(n_ - col, group * nr_);
    float* dst = data_ + pc * n_pad_ + s0 * kcur * nr_;
    if (nt) {
      ks.pack_b_nt(cols, kcur, b + col * ldb + pc, ldb, dst);
    } else {
      ks.pack_b_nn(cols, kcur, b + pc * ldb + col, ldb, dst);
    }
  };
  int t = threads > 0 ? threads : (omp_in_parallel() ? 1 : num_threads());
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n_ * k_ / (1 << 16))));  // ~64K floats each
  if (t <= 1) {
    for (int64_t i = 0; i < items; ++i) pack_item(i);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(t)
  for (int64_t i = 0; i < items; ++i) pack_item(i);
}

void gemm_packed(int64_t m, const float* a, int64_t lda, const GemmPackedB& b, int64_t j0, int64_t j1, float* c,
                 int64_t ldc, bool accumulate, float alpha, int threads) {
  if (j0 < 0 || j1 > b.n_ || j0 % b.nr_ != 0) {
    fail("gemm_packed: columns [{}, {}) of a packed matrix of {} (aligned to {})", j0, j1, b.n_, b.nr_);
  }
  const int64_t n = j1 - j0;
  if (m <= 0 || n <= 0) return;
  if (b.k_ <= 0) return empty_product(m, n, c, ldc, accumulate);
  Problem p;
  p.ks = static_cast<const KernelSet*>(b.kernels_);
  p.source = BSource::prepacked;
  p.m = m;
  p.n = n;
  p.k = b.k_;
  p.a = a;
  p.lda = lda;
  p.b = b.data_;
  p.ldb = b.n_pad_;
  p.b_col0 = j0;
  p.c = c;
  p.ldc = ldc;
  p.accumulate = accumulate;
  p.alpha = alpha;
  p.kc = b.kc_;
  run(p, threads);
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

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = detect_features();
  return f;
}

GemmLevel gemm_max_level() { return max_level_cached(); }

GemmLevel gemm_level() { return static_cast<GemmLevel>(level_state().load(std::memory_order_relaxed)); }

GemmLevel gemm_set_level(GemmLevel level) {
  const GemmLevel l = std::min(level, max_level_cached());
  level_state().store(static_cast<int>(l), std::memory_order_relaxed);
  return l;
}

}  // namespace dashlm::cpu
