// DASH's topk decision on the device (cuda_ops.h: topk_halt_flags): a stable descending radix
// sort of the scores (CUB), ineligible rows keyed -inf so they sort last and never take a kept
// place, then one pass that flags the eligible rows ranked past n_keep.
#include <cub/device/device_radix_sort.cuh>

#include <cmath>
#include <mutex>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda {

using detail::blocks_for;
using detail::stream;

namespace {

__global__ void k_topk_keys(const float* score, const uint8_t* eligible, int64_t n, float* keys, int32_t* rows) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    keys[i] = !eligible || eligible[i] ? score[i] : -INFINITY;
    rows[i] = static_cast<int32_t>(i);
  }
}

__global__ void k_topk_flags(const int32_t* ranked, const uint8_t* eligible, int64_t n, int64_t n_keep, uint8_t* halt) {
  for (int64_t r = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; r < n; r += int64_t{gridDim.x} * blockDim.x) {
    const int32_t i = ranked[r];
    halt[i] = r >= n_keep && (!eligible || eligible[i]) ? 1 : 0;
  }
}

// Scratch kept between calls (one decision per prefill; grown, never shrunk).
struct Scratch {
  std::mutex mu;
  DeviceBuffer<float> keys, keys_sorted;
  DeviceBuffer<int32_t> rows, rows_sorted;
  DeviceBuffer<uint8_t> temp;
};

}  // namespace

void topk_halt_flags(const float* score, const uint8_t* eligible, int64_t n, int64_t n_keep, uint8_t* halt) {
  if (n <= 0) return;
  if (n > 0x7fffffffLL) detail::raise_error("topk on the device: too many rows");
  static Scratch s;
  std::lock_guard<std::mutex> lock(s.mu);
  const auto un = static_cast<size_t>(n);
  s.keys.reserve(un);
  s.keys_sorted.reserve(un);
  s.rows.reserve(un);
  s.rows_sorted.reserve(un);
  k_topk_keys<<<blocks_for(n, 256), 256, 0, stream()>>>(score, eligible, n, s.keys.get(), s.rows.get());
  DASHLM_CUDA_LAUNCHED("topk keys");
  size_t temp_bytes = 0;
  const int ni = static_cast<int>(n);
  DASHLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(nullptr, temp_bytes, s.keys.get(), s.keys_sorted.get(),
                                                              s.rows.get(), s.rows_sorted.get(), ni, 0, 32, stream()));
  s.temp.reserve(temp_bytes);
  DASHLM_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(s.temp.get(), temp_bytes, s.keys.get(), s.keys_sorted.get(),
                                                              s.rows.get(), s.rows_sorted.get(), ni, 0, 32, stream()));
  k_topk_flags<<<blocks_for(n, 256), 256, 0, stream()>>>(s.rows_sorted.get(), eligible, n, n_keep, halt);
  DASHLM_CUDA_LAUNCHED("topk flags");
}

}  // namespace dashlm::cuda
