// Quantized compute: the mode switch, the activations' quantization, the choice of kernels and
// the sharing of weight rows among threads. The kernels are in q8_scalar.cpp, q8_avx2.cpp and
// q8_avx512vnni.cpp (q8_kernels.h).
#include "backends/cpu/q8.h"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/q8_kernels.h"
#include "common/error.h"

namespace dashlm::cpu {

namespace {

using q8_detail::kBlock;
using q8_detail::kMaxRows;
using q8_detail::Q8KernelSet;
using q8_detail::Q8View;

Compute initial_compute() {
  Compute c = Compute::q8;
  if (const char* env = std::getenv("DASHLM_COMPUTE")) (void)parse_compute(env, &c);
  return c;
}

std::atomic<int>& compute_state() {
  static std::atomic<int> state{static_cast<int>(initial_compute())};
  return state;
}

bool cpu_has_vnni() {
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni && f.avx2 && f.fma && f.f16c;
}

const Q8KernelSet& kernels() {
  static const bool vnni = cpu_has_vnni() && q8_detail::q8_avx512vnni;
  const GemmLevel level = gemm_level();
  if (level >= GemmLevel::avx512 && vnni) return *q8_detail::q8_avx512vnni;
  // The AVX2 kernels convert the weights' fp16 scales with F16C (every AVX2 CPU made has it, but
  // the flag is checked all the same).
  if (level >= GemmLevel::avx2 && cpu_features().f16c && q8_detail::q8_avx2) return *q8_detail::q8_avx2;
  return *q8_detail::q8_scalar;
}

// Weight rows per piece of work: enough to hand each kernel call a good stretch of rows, few
// enough that a piece's rows stay in the L2 cache while every group of activation rows goes over
// them.
int64_t rows_per_piece(size_t row_bytes) {
  return std::clamp<int64_t>(static_cast<int64_t>((256u << 10) / std::max<size_t>(row_bytes, 1)), 8, 256);
}

// Many rows of x: the weights are repacked, a block of kBlockPanels panels at a time (each
// thread its own blocks, into its own buffer), and each block is multiplied by every row of x
// while it sits in the cache.
constexpr int64_t kBlockPanels = 8;
using q8_detail::kTileRows8;

// The kernels' view of rows [i, i + rows) of x, for activations per `group`.
Q8View view_of(const Q8Activations& x, int64_t i, int64_t rows, int64_t group) {
  const int64_t k = x.k();
  static_assert(Q8Activations::kTileRows == kTileRows8);
  const int64_t t = i / kTileRows8;
  const bool tiled = i % kTileRows8 == 0;
  return Q8View{x.q(i),
                x.d(i),
                x.sums(i),
                x.scaled_sums(i),
                x.block_sums(i),
                tiled ? x.tile_scales(t) : nullptr,
                tiled ? x.tile_scaled_sums(t) : nullptr,
                tiled ? x.tile_sums(t) : nullptr,
                k,
                k / kBlock,
                k / 16,
                rows,
                group};
}

void panel_matmul(const Q8KernelSet& ks, DType type, const uint8_t* w, size_t row_bytes, int64_t n,
                  const Q8Activations& x, float* y, int64_t ldy, bool accumulate, int threads) {
  const int64_t m = x.m(), k = x.k();
  const int64_t block_rows = kBlockPanels * q8_detail::kPanelRows;
  const int64_t items = (n + block_rows - 1) / block_rows;
  const auto type_u = static_cast<uint32_t>(type);
  // Runs of kTileRows8 rows of x that take the same panels: those for x's group where every row of
  // the tile has it, else those for activations per 32 (which every row's scales also fit).
  struct Run {
    int64_t i0, rows, group;
  };
  std::vector<Run> runs;
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows8) {
    const int64_t rows = std::min(kTileRows8, m - i0), group = x.coarse(i0, rows) ? x.group() : kBlock;
    if (!runs.empty() && runs.back().group == group) runs.back().rows += rows;
    else runs.push_back({i0, rows, group});
  }
  bool coarse = false, fine = false;  // which panels the runs need
  for (const Run& run : runs) (run.group == kBlock ? fine : coarse) = true;
  const size_t coarse_bytes = coarse ? static_cast<size_t>(ks.panel_bytes(type_u, k, x.group())) : 0;
  const size_t fine_bytes = fine ? static_cast<size_t>(ks.panel_bytes(type_u, k, kBlock)) : 0;
  auto run_item = [&](int64_t it) {
    thread_local std::vector<uint8_t> buf;
    const size_t need = (coarse_bytes + fine_bytes) * kBlockPanels;
    if (buf.size() < need) buf.resize(need);
    uint8_t* coarse_panels = buf.data();
    uint8_t* fine_panels = buf.data() + coarse_bytes * kBlockPanels;
    const int64_t r0 = it * block_rows, rows = std::min(block_rows, n - r0);
    for (int64_t p = 0; p * q8_detail::kPanelRows < rows; ++p) {
      const int64_t pr = p * q8_detail::kPanelRows;
      const uint8_t* wp = w + (r0 + pr) * static_cast<int64_t>(row_bytes);
      const int64_t pn = std::min(q8_detail::kPanelRows, rows - pr);
      if (coarse) (void)ks.pack_panel(type_u, wp, static_cast<int64_t>(row_bytes), pn, k, x.group(), coarse_panels + p * coarse_bytes);
      if (fine) (void)ks.pack_panel(type_u, wp, static_cast<int64_t>(row_bytes), pn, k, kBlock, fine_panels + p * fine_bytes);
    }
    for (const Run& run : runs) {
      const int64_t i = run.i0;
      const Q8View v = view_of(x, i, run.rows, run.group);
      ks.panel_gemm(type_u, run.group == kBlock ? fine_panels : coarse_panels, rows, k, v, y + i * ldy + r0, ldy, accumulate);
    }
  };
  const int t = work_threads(threads, 2.0 * static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(m), 1.0e6, items);
  if (t <= 1) {
    for (int64_t it = 0; it < items; ++it) run_item(it);
    return;
  }
  // Blocks claimed one at a time: a thread slowed down by a busy machine takes fewer.
#pragma omp parallel for schedule(dynamic, 1) num_threads(t)
  for (int64_t it = 0; it < items; ++it) run_item(it);
}

}  // namespace

Compute compute_mode() { return static_cast<Compute>(compute_state().load(std::memory_order_relaxed)); }

void set_compute_mode(Compute c) { compute_state().store(static_cast<int>(c), std::memory_order_relaxed); }

const char* compute_name(Compute c) { return c == Compute::f32 ? "f32" : c == Compute::q8 ? "q8" : "q8k"; }

bool parse_compute(const char* s, Compute* out) {
  if (!s) return false;
  for (Compute c : {Compute::f32, Compute::q8, Compute::q8k}) {
    if (std::strcmp(s, compute_name(c)) == 0) {
      *out = c;
      return true;
    }
  }
  return false;
}

bool q8_supports(DType type) {
  switch (type) {
    case DType::Q4_0:
    case DType::Q4_1:
    case DType::Q5_0:
    case DType::Q5_1:
    case DType::Q8_0:
    case DType::Q4_K:
    case DType::Q5_K:
    case DType::Q6_K: return true;
    default: return false;
  }
}

bool q8_prefill_supports(DType type) { return q8_detail::q8_panel_max_u(static_cast<uint32_t>(type)) > 0; }

const char* q8_kernel_name() { return kernels().name; }

Q8Activations::~Q8Activations() { std::free(data_); }

bool q8_super_blocks(DType type, int64_t k) {
  return compute_mode() == Compute::q8k && kernels().k_super_blocks && q8_detail::q8_is_k_type(static_cast<uint32_t>(type)) &&
         k % q8_detail::kSuperBlock == 0;
}

float q8_outlier_ratio(const float* x, int64_t k) { return kernels().outlier_ratio(x, k); }

void Q8Activations::quantize(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t group) {
  if (group != kBlock && group != q8_detail::kSuperBlock) fail("Q8Activations: a group of {} values (32 or 256)", group);
  if (m < 0 || k < 0 || k % group != 0) fail("Q8Activations: {} rows of {} values (a multiple of {} needed)", m, k, group);
  const int64_t nb = k / kBlock;
  // q, d, the scaled sums, the half sums, the block sums, the tiles' scales, scaled sums and sums
  // (each aligned to 64 bytes, one after the other).
  const int64_t tiles = (m + kTileRows - 1) / kTileRows;
  const auto aligned = [](int64_t count, size_t size) { return (static_cast<size_t>(count) * size + 63) / 64 * 64; };
  const size_t sizes[] = {aligned(m * k, 1),
                          aligned(m * nb, sizeof(float)),
                          aligned(m * nb * 2, sizeof(float)),
                          aligned(m * nb * 2, sizeof(int16_t)),
                          aligned(m * nb, sizeof(int16_t)),
                          aligned(tiles * nb * kTileRows, sizeof(float)),
                          aligned(tiles * nb * kTileRows, sizeof(float)),
                          aligned(tiles * nb * kTileRows, sizeof(int32_t)),
                          aligned(m, 1)};
  size_t need = 0;
  for (size_t n : sizes) need += n;
  if (need > capacity_) {
    std::free(data_);
    data_ = nullptr;
    capacity_ = 0;
    data_ = std::aligned_alloc(64, need);
    if (!data_) throw std::bad_alloc();
    capacity_ = need;
  }
  uint8_t* at = static_cast<uint8_t*>(data_);
  auto take = [&](auto*& ptr, size_t bytes) {
    ptr = reinterpret_cast<std::remove_reference_t<decltype(ptr)>>(at);
    at += bytes;
  };
  take(q_, sizes[0]);
  take(d_, sizes[1]);
  take(ds_, sizes[2]);
  take(s_, sizes[3]);
  take(s32_, sizes[4]);
  take(td_, sizes[5]);
  take(tds_, sizes[6]);
  take(ts_, sizes[7]);
  take(fine_, sizes[8]);
  m_ = m;
  k_ = k;
  group_ = group;
  auto one_row = [&](int64_t i) {
    fine_[i] = group == kBlock || !(q8_outlier_ratio(x + i * ldx, k) <= kQ8OutlierRatio) ? 1 : 0;
    kernels().quantize_row(x + i * ldx, k, fine_[i] ? kBlock : group, q_ + i * k, d_ + i * nb, s_ + i * 2 * nb,
                           ds_ + i * 2 * nb, group != kBlock ? s32_ + i * nb : nullptr);
  };
  // A tile's rows, then their entries side by side (read once the rows' own stores have retired:
  // reading them back at once stalled on store forwarding).
  auto one_tile = [&](int64_t t) {
    const int64_t i0 = t * kTileRows, rows = std::min(kTileRows, m - i0);
    for (int64_t i = i0; i < i0 + rows; ++i) one_row(i);
    float* td = td_ + t * nb * kTileRows;
    float* tds = tds_ + t * nb * kTileRows;
    int32_t* ts = ts_ + t * nb * kTileRows;
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        td[b * kTileRows + r] = d_[i * nb + b];
        tds[b * kTileRows + r] = ds_[i * 2 * nb + 2 * b] + ds_[i * 2 * nb + 2 * b + 1];
        std::memcpy(ts + b * kTileRows + r, s_ + i * 2 * nb + 2 * b, sizeof(int32_t));
      }
    }
  };
  if (m * k >= (int64_t{1} << 16) && !omp_in_parallel() && num_threads() > 1) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t t = 0; t < tiles; ++t) one_tile(t);
  } else {
    for (int64_t t = 0; t < tiles; ++t) one_tile(t);
  }
}

void q8_matmul(DType type, const uint8_t* w, size_t row_bytes, int64_t n, const Q8Activations& x, float* y,
               int64_t ldy, bool accumulate, int threads) {
  if (!q8_supports(type)) fail("no integer kernels for tensor type {}", dtype_name(type));
  const int64_t m = x.m(), k = x.k();
  if (n <= 0 || m <= 0) return;
  if (k % dtype_traits(type).block_size != 0) fail("q8_matmul: {} values are not whole blocks of {}", k, dtype_name(type));
  const Q8KernelSet& ks = kernels();
  if (m > kMaxRows && q8_prefill_supports(type)) return panel_matmul(ks, type, w, row_bytes, n, x, y, ldy, accumulate, threads);
  // About 2 flops per weight and row of x; below ~0.2 Mflop a thread (tens of microseconds), fork/join costs more.
  const int t = work_threads(threads, 2.0 * static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(m), 2.0e5, n);
  // The rows cut into pieces of about equal size, a multiple of t of them (equal shares).
  const int64_t max_piece = rows_per_piece(row_bytes);
  const int64_t pieces = t * ((n + t * max_piece - 1) / (t * max_piece));
  auto run_piece = [&](int64_t pc) {
    const int64_t r0 = n * pc / pieces, r1 = n * (pc + 1) / pieces;
    if (r1 <= r0) return;
    for (int64_t i = 0; i < m; i += kMaxRows) {
      const int64_t rows = std::min(kMaxRows, m - i);
      const Q8View v = view_of(x, i, rows, x.coarse(i, rows) ? x.group() : kBlock);
      (void)ks.gemv(static_cast<uint32_t>(type), w + r0 * static_cast<int64_t>(row_bytes), static_cast<int64_t>(row_bytes),
                    r1 - r0, k, v, y + i * ldy + r0, ldy, accumulate);
    }
  };
  if (t <= 1) {
    for (int64_t pc = 0; pc < pieces; ++pc) run_piece(pc);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(t)
  for (int64_t pc = 0; pc < pieces; ++pc) run_piece(pc);
}

}  // namespace dashlm::cpu
