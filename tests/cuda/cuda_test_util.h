// Helpers of the GPU tests: skipping without a device, random data, bf16 rounding, device
// round trips with poisoned outputs, normalised error.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/quants.h"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::test {

#define DASHLM_REQUIRE_CUDA()                                                          \
  do {                                                                                 \
    std::string why_;                                                                  \
    if (!::dashlm::cuda::device_available(&why_)) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

// For tests of the cuDNN routes: skip when cuDNN is not there (the CUDA build runs without it).
#define DASHLM_REQUIRE_CUDNN()                                                                          \
  do {                                                                                                  \
    DASHLM_REQUIRE_CUDA();                                                                              \
    std::string why_cudnn_;                                                                             \
    if (!::dashlm::cuda::dense_attention_available(&why_cudnn_)) GTEST_SKIP() << "cuDNN attention not available: " << why_cudnn_; \
  } while (0)

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.f, float hi = 1.f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// Rounds every value to the nearest bf16 (so CPU and GPU see the same inputs).
inline std::vector<float> round_bf16(std::vector<float> v) {
  for (float& x : v) x = cpu::bf16_to_fp32(cpu::fp32_to_bf16(x));
  return v;
}
inline std::vector<uint16_t> to_bf16_bits(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = cpu::fp32_to_bf16(v[i]);
  return b;
}
inline std::vector<float> from_bf16_bits(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = cpu::bf16_to_fp32(b[i]);
  return v;
}

template <typename T>
cuda::DeviceBuffer<T> to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer<T> b(std::max<size_t>(v.size(), 1));
  if (!v.empty()) b.upload(v.data(), v.size());
  return b;
}
// A device buffer of n elements filled with 0xFF bytes (NaN as float and as bf16).
template <typename T>
cuda::DeviceBuffer<T> poisoned(size_t n) {
  cuda::DeviceBuffer<T> b(std::max<size_t>(n, 1));
  cuda::fill_bytes(b.get(), 0xFF, b.size() * sizeof(T));
  return b;
}
template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer<T>& b, size_t n) {
  cuda::synchronize();
  std::vector<T> v(n);
  if (n) b.download(v.data(), n);
  return v;
}
inline std::vector<float> to_host_bf16(const cuda::DeviceBuffer<uint16_t>& b, size_t n) { return from_bf16_bits(to_host(b, n)); }

// ||a - b|| / ||b|| (NaN anywhere: infinity).
inline double norm_err(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return INFINITY;
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return INFINITY;
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

constexpr double kBf16Budget = 1e-2;

}  // namespace dashlm::test
