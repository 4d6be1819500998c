// Products with bf16 weights by AVX512-BF16 (backends/cpu/bf16.h) on awkward sizes: odd k and k
// not a multiple of the kernels' chunk of 32, weight rows ending in a partial panel, 1 to 4 rows
// of x (decoding, rows read in place) and more (prefill, packed panels, tiles of balanced
// heights), row strides wider than the rows, accumulate, 1 and 2 threads.
//
// The bound, against float64 sums over the same bf16 weights and the float activations: the
// products of bf16 values are exact in float32, so what remains is the activations' rounding to
// bf16 (at most 2^-8 of each value: 8 significant bits) and float32 summation over k terms:
//   |y - w . x| <= (2^-8 + k * 2^-23) * sum_j |w_j x_j| + 1e-30.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "backends/cpu/bf16.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/q8.h"
#include "backends/cpu/quants.h"
#include "backends/dtype.h"

using namespace dashlm;

namespace {

using cpu::bf16_to_fp32;
using cpu::fp32_to_bf16;

struct Case {
  int64_t n, k, m;
};

// y (m x n, row stride ldy) against the bound above; w (n x k, row stride ldw), x (m x k, ldx).
void expect_within_bound(const std::vector<uint16_t>& w, int64_t ldw, const std::vector<float>& x, int64_t ldx,
                         const std::vector<float>& y, int64_t ldy, const Case& c, const std::vector<float>* before) {
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t r = 0; r < c.n; ++r) {
      double ref = before ? (*before)[static_cast<size_t>(i * ldy + r)] : 0.0, mag = 0.0;
      for (int64_t j = 0; j < c.k; ++j) {
        const double p = static_cast<double>(bf16_to_fp32(w[static_cast<size_t>(r * ldw + j)])) * x[static_cast<size_t>(i * ldx + j)];
        ref += p;
        mag += std::fabs(p);
      }
      const double tol = (std::ldexp(1.0, -8) + static_cast<double>(c.k) * std::ldexp(1.0, -23)) * mag + 1e-30 +
                         (before ? 1e-6 * std::fabs((*before)[static_cast<size_t>(i * ldy + r)]) : 0.0);
      ASSERT_LE(std::fabs(y[static_cast<size_t>(i * ldy + r)] - ref), tol)
          << "n " << c.n << " k " << c.k << " m " << c.m << " row " << i << " col " << r;
    }
  }
}

}  // namespace

TEST(Bf16Dots, ProductsWithinBound) {
  if (!cpu::bf16_dots_available()) GTEST_SKIP() << "this CPU has no AVX512-BF16 (the float32 path serves bf16 weights)";
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.f, 1.f);
  const Case cases[] = {{1, 1, 1},    {17, 31, 1},  {33, 33, 2},  {16, 64, 3},   {37, 577, 4},  {5, 96, 5},
                        {40, 100, 13}, {70, 257, 25}, {129, 1536, 12}, {64, 4100, 7}, {31, 8, 64}, {48, 8960, 9},
                        {300, 1536, 4}};  // the last: decoding on 2 threads (above the 2e5-flop threshold)
  for (const Case& c : cases) {
    for (int threads : {1, 2}) {
      cpu::set_num_threads(threads);
      const int64_t ldw = c.k + 3, ldx = c.k + 5, ldy = c.n + 2;
      std::vector<uint16_t> w(static_cast<size_t>(c.n * ldw));
      for (auto& v : w) v = fp32_to_bf16(0.05f * g(rng));
      std::vector<float> x(static_cast<size_t>(c.m * ldx));
      for (auto& v : x) v = g(rng);
      x[0] = 40.f;  // a large activation, as real prompts have
      std::vector<float> y(static_cast<size_t>(c.m * ldy), -7.f);
      cpu::bf16_matmul(w.data(), ldw, c.n, c.k, x.data(), ldx, c.m, y.data(), ldy, false);
      expect_within_bound(w, ldw, x, ldx, y, ldy, c, nullptr);
      for (int64_t i = 0; i < c.m; ++i) {  // the padding between rows untouched
        for (int64_t r = c.n; r < ldy; ++r) EXPECT_EQ(y[static_cast<size_t>(i * ldy + r)], -7.f);
      }
      const std::vector<float> before = y;
      cpu::bf16_matmul(w.data(), ldw, c.n, c.k, x.data(), ldx, c.m, y.data(), ldy, true);
      expect_within_bound(w, ldw, x, ldx, y, ldy, c, &before);
    }
  }
  cpu::set_num_threads(0);
}

TEST(Bf16Dots, NonFiniteActivationsGiveNan) {
  if (!cpu::bf16_dots_available()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  const int64_t n = 3, k = 40;
  for (int64_t m : {1, 6}) {
    std::vector<uint16_t> w(static_cast<size_t>(n * k), fp32_to_bf16(0.5f));
    std::vector<float> x(static_cast<size_t>(m * k), 1.f);
    x[static_cast<size_t>((m - 1) * k + 35)] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> y(static_cast<size_t>(m * n));
    cpu::bf16_matmul(w.data(), k, n, k, x.data(), k, m, y.data(), n, false);
    for (int64_t r = 0; r < n; ++r) {
      EXPECT_TRUE(std::isnan(y[static_cast<size_t>((m - 1) * n + r)]));
      if (m > 1) EXPECT_EQ(y[static_cast<size_t>(r)], 20.f);
    }
  }
}

// cpu::matmul on bf16 weights: the AVX512-BF16 kernels in the q8 compute mode (within their
// bound, and not the float32 result bit for bit), the exact float32 path with --compute f32.
TEST(Bf16Dots, MatmulTakesTheKernelsUnlessF32) {
  if (!cpu::bf16_dots_available()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  std::mt19937 rng(12);
  std::normal_distribution<float> g(0.f, 1.f);
  const cpu::Compute saved = cpu::compute_mode();
  for (int64_t m : {1, 3, 20}) {
    const Case c{50, 300, m};
    std::vector<uint16_t> w(static_cast<size_t>(c.n * c.k));
    for (auto& v : w) v = fp32_to_bf16(0.05f * g(rng));
    std::vector<float> x(static_cast<size_t>(c.m * c.k));
    for (auto& v : x) v = g(rng);
    const WeightView wv{DType::BF16, w.data(), c.k, c.n};
    std::vector<float> y_q(static_cast<size_t>(c.m * c.n)), y_f(y_q.size());
    cpu::set_compute_mode(cpu::Compute::q8);
    cpu::matmul(wv, x.data(), c.m, y_q.data());
    cpu::set_compute_mode(cpu::Compute::f32);
    cpu::matmul(wv, x.data(), c.m, y_f.data());
    expect_within_bound(w, c.k, x, c.k, y_q, c.n, c, nullptr);
    EXPECT_NE(y_q, y_f) << "m " << m << ": the q8 mode should round the activations to bf16";
    for (int64_t i = 0; i < c.m; ++i) {
      for (int64_t r = 0; r < c.n; ++r) {
        double ref = 0, mag = 0;
        for (int64_t j = 0; j < c.k; ++j) {
          const double p = static_cast<double>(bf16_to_fp32(w[static_cast<size_t>(r * c.k + j)])) * x[static_cast<size_t>(i * c.k + j)];
          ref += p;
          mag += std::fabs(p);
        }
        EXPECT_LE(std::fabs(y_f[static_cast<size_t>(i * c.n + r)] - ref), 1e-5 * mag);
      }
    }
  }
  cpu::set_compute_mode(saved);
}

// The engine's other entry points on bf16 weights: matmul_cols on a slice of input features
// (k0 > 0: the weight rows read from feature k0 on) and matmul on a SharedInput (converted once,
// for several products), each against the same bound.
TEST(Bf16Dots, ColumnSlicesAndSharedInputs) {
  if (!cpu::bf16_dots_available()) GTEST_SKIP() << "this CPU has no AVX512-BF16";
  std::mt19937 rng(13);
  std::normal_distribution<float> g(0.f, 1.f);
  const cpu::Compute saved = cpu::compute_mode();
  cpu::set_compute_mode(cpu::Compute::q8);
  const int64_t n = 40, k = 768, k0 = 256, k1 = 768;
  std::vector<uint16_t> w(static_cast<size_t>(n * k));
  for (auto& v : w) v = fp32_to_bf16(0.05f * g(rng));
  const WeightView wv{DType::BF16, w.data(), k, n};
  for (int64_t m : {1, 9}) {
    std::vector<float> x(static_cast<size_t>(m * k));
    for (auto& v : x) v = g(rng);
    // Features k0 .. k1 of W against rows of k1 - k0 values (row stride k), added to y.
    std::vector<float> y(static_cast<size_t>(m * n), 0.f);
    cpu::matmul_cols(wv, k0, k1, x.data(), k, m, y.data(), true);
    std::vector<uint16_t> w_slice(static_cast<size_t>(n * (k1 - k0)));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t j = k0; j < k1; ++j) w_slice[static_cast<size_t>(r * (k1 - k0) + j - k0)] = w[static_cast<size_t>(r * k + j)];
    }
    expect_within_bound(w_slice, k1 - k0, x, k, y, n, Case{n, k1 - k0, m}, nullptr);
    // Two products on one shared input: the same results as two plain matmuls.
    cpu::Q8Activations q8;
    cpu::Bf16Activations b16;
    cpu::SharedInput in(x.data(), m, k, q8, b16);
    std::vector<float> y1(static_cast<size_t>(m * n)), y2(y1.size()), ref(y1.size());
    cpu::matmul(wv, in, y1.data());
    cpu::matmul(wv, in, y2.data());
    cpu::matmul(wv, x.data(), m, ref.data());
    EXPECT_EQ(y1, ref) << "m " << m;
    EXPECT_EQ(y2, ref) << "m " << m;
    EXPECT_EQ(b16.m(), m);
  }
  cpu::set_compute_mode(saved);
}

