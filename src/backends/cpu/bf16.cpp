#include "backends/cpu/bf16.h"

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <vector>

#include "backends/cpu/bf16_kernels.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"
#include "common/error.h"

namespace dashlm::cpu {
namespace {

using bf16_detail::kChunk;
using bf16_detail::kPanelRows;

const bf16_detail::Bf16KernelSet* kernels() {
  static const bool cpu = [] {
    const CpuFeatures& f = cpu_features();
    return f.avx512f && f.avx512bw && f.avx512vl && f.avx512bf16;
  }();
  if (cpu && gemm_level() >= GemmLevel::avx512) return bf16_detail::bf16_avx512;
  return nullptr;
}

const bf16_detail::Bf16KernelSet& checked_kernels() {
  const bf16_detail::Bf16KernelSet* ks = kernels();
  if (!ks) fail("bf16 products: this CPU (or kernel level) has no AVX512-BF16 kernels");
  return *ks;
}

}  // namespace

bool bf16_dots_available() { return kernels() != nullptr; }

Bf16Activations::~Bf16Activations() { std::free(data_); }

void Bf16Activations::convert(const float* x, int64_t ldx, int64_t m, int64_t k) {
  const bf16_detail::Bf16KernelSet& ks = checked_kernels();
  if (m < 0 || k < 0) fail("Bf16Activations: {} rows of {} values", m, k);
  const int64_t kp = (std::max<int64_t>(k, 1) + kChunk - 1) / kChunk * kChunk;
  const auto need = static_cast<size_t>(m * kp);
  if (need > capacity_) {
    std::free(data_);
    const size_t bytes = (need * sizeof(uint16_t) + 63) / 64 * 64;
    data_ = static_cast<uint16_t*>(std::aligned_alloc(64, bytes));
    capacity_ = data_ ? bytes / sizeof(uint16_t) : 0;
    if (!data_) throw std::bad_alloc();
  }
  m_ = m;
  k_ = k;
  kp_ = kp;
  const int t = work_threads(0, static_cast<double>(m * k) * 4.0, 1.0e5, m);
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
  for (int64_t i = 0; i < m; ++i) ks.to_bf16(x + i * ldx, k, kp, data_ + i * kp);
}

void bf16_matmul(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, const float* x, int64_t ldx, int64_t m, float* y,
                 int64_t ldy, bool accumulate) {
  thread_local Bf16Activations xb;
  xb.convert(x, ldx, m, k);
  bf16_matmul(w, ldw, n, xb, y, ldy, accumulate);
}

void bf16_matmul(const uint16_t* w, int64_t ldw, int64_t n, const Bf16Activations& x, float* y, int64_t ldy,
                 bool accumulate) {
  const bf16_detail::Bf16KernelSet* ks = &checked_kernels();
  const int64_t m = x.m(), k = x.k(), kp = x.kp();
  if (m <= 0 || n <= 0) return;
  const uint16_t* xb = x.rows();
  const double flops = 2.0 * static_cast<double>(n) * static_cast<double>(k) * static_cast<double>(m);
  if (m <= bf16_detail::kMaxGemvRows) {
    // Decoding: the rows of W streamed once, in equal shares.
    const int t = work_threads(0, flops, 2.0e5, n);
#pragma omp parallel for schedule(static) num_threads(t) if (t > 1)
    for (int pc = 0; pc < t; ++pc) {
      const int64_t r0 = n * pc / t, r1 = n * (pc + 1) / t;
      if (r1 > r0) ks->gemv(w + r0 * ldw, ldw, r1 - r0, k, xb, kp, m, y + r0, ldy, accumulate);
    }
    return;
  }
  // Prefill: blocks of W's rows packed into panels (each thread its own blocks, into its own
  // buffer), each block multiplied by every row of x while it sits in the cache. Blocks of 64 rows,
  // 32 where their panels would outgrow a core's L2 cache.
  const int64_t block_rows = kp * 64 * 2 <= (int64_t{512} << 10) ? 64 : 32;
  const int64_t items = (n + block_rows - 1) / block_rows;
  const int t = work_threads(0, flops, 1.0e6, items);
  // Blocks claimed one at a time: a thread slowed down by a busy machine takes fewer.
#pragma omp parallel for schedule(dynamic, 1) num_threads(t) if (t > 1)
  for (int64_t it = 0; it < items; ++it) {
    thread_local std::vector<uint16_t> pbuf;  // with room to start at 64 bytes
    if (pbuf.size() < static_cast<size_t>(block_rows * kp + 32)) pbuf.resize(static_cast<size_t>(block_rows * kp + 32));
    auto* panels = reinterpret_cast<uint16_t*>((reinterpret_cast<uintptr_t>(pbuf.data()) + 63) & ~uintptr_t{63});
    const int64_t r0 = it * block_rows, rows = std::min(block_rows, n - r0);
    for (int64_t pr = 0; pr < rows; pr += kPanelRows) {
      ks->pack_panel(w + (r0 + pr) * ldw, ldw, std::min(kPanelRows, rows - pr), k, kp, panels + pr * kp);
    }
    ks->panel_gemm(panels, rows, kp, xb, m, y + r0, ldy, accumulate);
  }
}

}  // namespace dashlm::cpu
