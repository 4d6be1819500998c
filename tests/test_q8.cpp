// Quantized compute (backends/cpu/q8.h): the activations' 8-bit quantization and the integer
// dot products of every supported weight type, at every kernel level this CPU runs, on awkward
// sizes (k not a multiple of 256 where the type allows it, odd row counts, 1 to 9 rows of x).
//
// Two bounds per output, both from float64 sums over the dequantized weights w (dequantize_row):
//  - against the quantized activations xq = d * q (what the kernels multiply): the integer sums
//    are exact, so only float32 rounding remains: |y - w . xq| <= 1e-5 * sum |w| |xq|;
//  - against the float activations x (the f32 path): quantization moves each value by at most
//    d / 2, so |y - w . x| <= sum_b d_b / 2 * sum_{j in b} |w_j| + 1e-5 * sum |w| |x|.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/q8.h"
#include "backends/cpu/quants.h"
#include "backends/dtype.h"
#include "common/error.h"
#include "gemm_levels.h"

using namespace dashlm;

namespace {

constexpr DType kTypes[] = {DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1,
                            DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K};

void put_half(uint8_t* p, float v) {
  const uint16_t h = cpu::fp32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// n rows of k elements of a type: random quants and sub-block scales, fp16 scales of realistic
// sizes (positive d, dmin).
std::vector<uint8_t> random_weights(DType type, int64_t n, int64_t k, std::mt19937& rng) {
  const auto& t = dtype_traits(type);
  const int64_t nb = k / t.block_size;
  std::vector<uint8_t> w(static_cast<size_t>(n * nb) * t.block_bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (auto& b : w) b = static_cast<uint8_t>(byte(rng));
  for (int64_t blk = 0; blk < n * nb; ++blk) {
    uint8_t* p = w.data() + static_cast<size_t>(blk) * t.block_bytes;
    switch (type) {
      case DType::Q4_1:
      case DType::Q5_1: put_half(p, scale(rng)); put_half(p + 2, -8.f * scale(rng)); break;
      case DType::Q4_K:
      case DType::Q5_K: put_half(p, scale(rng) / 16.f); put_half(p + 2, scale(rng) / 16.f); break;
      case DType::Q6_K: put_half(p + 208, scale(rng) / 64.f); break;
      default: put_half(p, scale(rng)); break;
    }
  }
  return w;
}

// Rows of normal values with an outlier of 100 in the first block of every row (outlier_row -1) or
// of that row only (none past m): a value that dominates its group of 256 (q8_outlier_ratio about
// 7), so that such rows are quantized per 32 where 256 is asked for (kQ8OutlierRatio).
std::vector<float> random_x(int64_t m, int64_t k, std::mt19937& rng, int64_t outlier_row = -1) {
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(m * k));
  for (auto& v : x) v = g(rng);
  // Outliers (as real activations have) and an all-zero block.
  for (int64_t i = 0; i < m; ++i) {
    if (outlier_row < 0 || i == outlier_row) x[static_cast<size_t>(i * k + (7 * i + 3) % 32)] = 100.f;
    if (k >= 64) std::fill_n(x.begin() + i * k + 32, 32, 0.f);
    if (k >= 768 && i % 2 == 1) std::fill_n(x.begin() + i * k + 512, 256, 0.f);  // an all-zero group of 256
  }
  return x;
}

struct Bounds {
  double ref_q, ref_x;    // w . xq and w . x
  double tol_q, tol_x;    // the two bounds
  double mag_x;           // sum |w| |x|
};

Bounds bounds_for(const float* w, const float* x, const cpu::Q8Activations& qx, int64_t i, int64_t k) {
  Bounds b{0, 0, 0, 0, 0};
  double mag_q = 0, mag_x = 0, quant = 0;
  const int8_t* q = qx.q(i);
  const float* d = qx.d(i);
  for (int64_t j = 0; j < k; ++j) {
    const double xq = static_cast<double>(d[j / 32]) * q[j];
    b.ref_q += w[j] * xq;
    b.ref_x += static_cast<double>(w[j]) * x[j];
    mag_q += std::abs(w[j] * xq);
    mag_x += std::abs(static_cast<double>(w[j]) * x[j]);
    quant += static_cast<double>(d[j / 32]) / 2 * std::abs(w[j]);
  }
  b.tol_q = 1e-5 * mag_q + 1e-30;
  b.tol_x = quant * (1 + 1e-6) + 1e-5 * mag_x + 1e-30;
  b.mag_x = mag_x;
  return b;
}

std::vector<int64_t> sizes_for(DType type) {
  if (dtype_traits(type).block_size == 256) return {256, 768, 2304};
  return {32, 64, 96, 544, 1056};
}

}  // namespace

TEST(Q8, QuantizesWithinHalfAStep) {
  std::mt19937 rng(1);
  const int64_t m = 3, k = 96;
  std::vector<float> x = random_x(m, k, rng);
  x[5] = 1e-30f;  // a tiny value in a block with larger ones
  cpu::Q8Activations qx;
  qx.quantize(x.data(), k, m, k);
  ASSERT_EQ(qx.m(), m);
  ASSERT_EQ(qx.k(), k);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t b = 0; b < k / 32; ++b) {
      float amax = 0;
      for (int j = 0; j < 32; ++j) amax = std::max(amax, std::abs(x[static_cast<size_t>(i * k + 32 * b + j)]));
      const float d = qx.d(i)[b];
      EXPECT_FLOAT_EQ(d, amax / 127.f);
      int s[2] = {0, 0};
      for (int j = 0; j < 32; ++j) {
        const int q = qx.q(i)[32 * b + j];
        EXPECT_LE(std::abs(q), 127);
        EXPECT_LE(std::abs(x[static_cast<size_t>(i * k + 32 * b + j)] - d * q), d / 2 * (1 + 1e-5) + 1e-30);
        s[j / 16] += q;
      }
      EXPECT_EQ(qx.sums(i)[2 * b], s[0]);
      EXPECT_EQ(qx.sums(i)[2 * b + 1], s[1]);
    }
  }
  // The all-zero block: scale 0, quants 0.
  EXPECT_EQ(qx.d(0)[1], 0.f);
  EXPECT_THROW(qx.quantize(x.data(), k, 1, 40), Error);
}

// Per group of 256 (the K types' activations): one scale per 256 values, repeated in each of the
// group's eight block scales; the half sums and the block sums are those of the quants.
TEST(Q8, QuantizesPerSuperBlock) {
  std::mt19937 rng(6);
  const int64_t m = 3, k = 768;
  std::vector<float> x = random_x(m, k, rng, 1);  // row 1 has a value that dominates its group
  std::fill_n(x.begin() + 256, 256, 0.f);  // row 0: an all-zero group
  cpu::Q8Activations qx;
  qx.quantize(x.data(), k, m, k, 256);
  ASSERT_EQ(qx.group(), 256);
  EXPECT_LE(cpu::q8_outlier_ratio(x.data(), k), 2.f);
  EXPECT_GT(cpu::q8_outlier_ratio(x.data() + k, k), cpu::kQ8OutlierRatio);
  EXPECT_EQ(qx.fine_rows(), 1);
  EXPECT_TRUE(qx.coarse(0, 1));
  EXPECT_FALSE(qx.coarse(0, 2));
  EXPECT_TRUE(qx.coarse(2, 1));
  for (int64_t i = 0; i < m; ++i) {
    const int64_t group = i == 1 ? 32 : 256;  // the fine row: per 32
    for (int64_t g = 0; g < k / group; ++g) {
      float amax = 0;
      for (int j = 0; j < group; ++j) amax = std::max(amax, std::abs(x[static_cast<size_t>(i * k + group * g + j)]));
      for (int64_t b = g * group / 32; b < (g + 1) * group / 32; ++b) {
        const float d = qx.d(i)[b];
        EXPECT_FLOAT_EQ(d, amax / 127.f);
        int s[2] = {0, 0};
        for (int j = 0; j < 32; ++j) {
          const int q = qx.q(i)[32 * b + j];
          EXPECT_LE(std::abs(x[static_cast<size_t>(i * k + 32 * b + j)] - d * q), d / 2 * (1 + 1e-5) + 1e-30);
          s[j / 16] += q;
        }
        EXPECT_EQ(qx.sums(i)[2 * b], s[0]);
        EXPECT_EQ(qx.sums(i)[2 * b + 1], s[1]);
        EXPECT_EQ(qx.block_sums(i)[b], s[0] + s[1]);
      }
    }
  }
  EXPECT_EQ(qx.d(0)[8], 0.f);
  // A value that is not finite makes the row fine (its block's scale NaN).
  x[5] = std::nanf("");
  qx.quantize(x.data(), k, 1, k, 256);
  EXPECT_EQ(qx.fine_rows(), 1);
  EXPECT_TRUE(std::isnan(qx.d(0)[0]));
  EXPECT_EQ(qx.d(0)[1], 0.f);  // the all-zero block of random_x
  EXPECT_THROW(qx.quantize(x.data(), k, 1, 384, 256), Error);
  EXPECT_THROW(qx.quantize(x.data(), k, 1, 768, 64), Error);
}

// Every kernel level quantizes bit for bit as the scalar set (the reference loop): random blocks, a block of zeros,
// one with a NaN and one with an infinity, values at the rounding ties.
TEST(Q8, QuantizationIsTheSameAtEveryLevel) {
  std::mt19937 rng(5);
  const int64_t m = 5, k = 32 * 9;
  std::vector<float> x = random_x(m, k, rng);
  for (int j = 0; j < 32; ++j) x[static_cast<size_t>(32 + j)] = 0.f;
  x[70] = std::nanf("");
  x[100] = -std::numeric_limits<float>::infinity();
  for (int j = 0; j < 32; ++j) x[static_cast<size_t>(k + 32 * 3 + j)] = 0.25f * static_cast<float>(2 * (j - 16) + 1);  // x 127 / 63.5: ties
  x[static_cast<size_t>(k + 32 * 3)] = 63.5f;
  for (int64_t group : {32, 256}) {
  const int64_t kg = k / group * group;  // 256: the first 256 values of each row
  std::vector<std::vector<uint8_t>> got;
  std::vector<std::string> names;
  for (const cpu::GemmLevel level : test::runnable_levels()) {
    test::LevelGuard guard(level);
    cpu::Q8Activations qx;
    qx.quantize(x.data(), k, m, kg, group);
    std::vector<uint8_t> bytes;
    auto put = [&](const void* p, size_t n) {
      const auto* b = static_cast<const uint8_t*>(p);
      bytes.insert(bytes.end(), b, b + n);
    };
    for (int64_t i = 0; i < m; ++i) {
      put(qx.q(i), static_cast<size_t>(kg));
      put(qx.d(i), static_cast<size_t>(kg / 32) * sizeof(float));
      put(qx.sums(i), static_cast<size_t>(kg / 16) * sizeof(int16_t));
      put(qx.scaled_sums(i), static_cast<size_t>(kg / 16) * sizeof(float));
      if (group != 32) put(qx.block_sums(i), static_cast<size_t>(kg / 32) * sizeof(int16_t));
    }
    EXPECT_TRUE(std::isnan(qx.d(0)[2])) << cpu::q8_kernel_name();
    EXPECT_TRUE(std::isnan(qx.d(0)[3])) << cpu::q8_kernel_name();
    if (group == 32) EXPECT_EQ(qx.d(0)[1], 0.f) << cpu::q8_kernel_name();
    got.push_back(bytes);
    names.emplace_back(cpu::q8_kernel_name());
  }
  for (size_t l = 1; l < got.size(); ++l) EXPECT_EQ(got[l], got[0]) << names[l] << " against " << names[0] << " group " << group;
  }
}

// q8_outlier_ratio at every level, bit for bit as the scalar set's: random groups, a dominated
// one, an all-zero one, a NaN and an infinity (both NaN), block maxima whose sum overflows (NaN), a
// row whose last values are no whole group.
TEST(Q8, OutlierRatioIsTheSameAtEveryLevel) {
  std::mt19937 rng(8);
  const int64_t k = 256 * 3;
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 4; ++i) rows.push_back(random_x(1, k, rng, i == 1 ? 0 : 1));  // row 1: a value of 100 in group 0
  std::fill_n(rows[2].begin() + 256, 256, 0.f);
  rows[3][300] = 100.f;  // one block dominating the second group
  rows.push_back(rows[0]);
  rows.back()[600] = std::nanf("");
  rows.push_back(rows[0]);
  rows.back()[7] = -std::numeric_limits<float>::infinity();
  rows.push_back(rows[0]);  // finite, but the sum of a group's block maxima overflows: NaN
  for (int64_t j = 256; j < 512; ++j) rows.back()[static_cast<size_t>(j)] = 1e38f;
  std::vector<std::vector<float>> got;
  for (const cpu::GemmLevel level : test::runnable_levels()) {
    test::LevelGuard guard(level);
    std::vector<float> r;
    for (const auto& x : rows) r.push_back(cpu::q8_outlier_ratio(x.data(), k));
    r.push_back(cpu::q8_outlier_ratio(rows[3].data(), k - 100));  // the dominated group is the last whole one
    r.push_back(cpu::q8_outlier_ratio(rows[3].data(), 200));      // no whole group: 0
    EXPECT_GT(r[3], cpu::kQ8OutlierRatio) << cpu::q8_kernel_name();
    EXPECT_LE(r[0], 3.f) << cpu::q8_kernel_name();
    EXPECT_TRUE(std::isnan(r[4])) << cpu::q8_kernel_name();
    EXPECT_TRUE(std::isnan(r[5])) << cpu::q8_kernel_name();
    EXPECT_TRUE(std::isnan(r[6])) << cpu::q8_kernel_name();
    EXPECT_EQ(r[7], r[3]) << cpu::q8_kernel_name();
    EXPECT_EQ(r[8], 0.f) << cpu::q8_kernel_name();
    got.push_back(r);
  }
  for (size_t l = 1; l < got.size(); ++l) {
    for (size_t i = 0; i < got[0].size(); ++i) {
      if (std::isnan(got[0][i])) EXPECT_TRUE(std::isnan(got[l][i])) << i;
      else EXPECT_EQ(got[l][i], got[0][i]) << "level " << l << " row " << i;
    }
  }
}

TEST(Q8, NonFiniteActivationsGiveNan) {
  const int64_t k = 64;
  std::vector<float> x(k, 0.5f);
  x[40] = std::numeric_limits<float>::infinity();
  cpu::Q8Activations qx;
  qx.quantize(x.data(), k, 1, k);
  EXPECT_TRUE(std::isnan(qx.d(0)[1]));
  std::mt19937 rng(2);
  const std::vector<uint8_t> w = random_weights(DType::Q4_0, 3, k, rng);
  float y[3];
  cpu::q8_matmul(DType::Q4_0, w.data(), dtype_row_bytes(DType::Q4_0, k), 3, qx, y, 3, false, 1);
  for (float v : y) EXPECT_TRUE(std::isnan(v));
}

// Every type, size, row count and activation group, at every level: both bounds, accumulate, 1
// and 2 threads. Up to
// 4 rows of x take the dot products (decode), more the packed panels (prefill; Q8_0's hold q + 128
// where the sums are 32 bits, the signed q with AVX2).
TEST(Q8, DotProductsWithinBoundsAtEveryLevel) {
  std::mt19937 rng(3);
  for (DType type : kTypes) {
    ASSERT_TRUE(cpu::q8_supports(type));
    for (int64_t k : sizes_for(type)) {
      // 37 weight rows end in a partial panel; 45 (the largest k) in a partial pair of panels (13
      // rows), which the VNNI tiles for the K types take in one pass with 512-bit vectors.
      const int64_t n = k == sizes_for(type).back() ? 45 : 37;
      const std::vector<uint8_t> w = random_weights(type, n, k, rng);
      const size_t rb = dtype_row_bytes(type, k);
      std::vector<float> wf(static_cast<size_t>(n * k));
      for (int64_t r = 0; r < n; ++r) cpu::dequantize_row(type, w.data() + r * rb, wf.data() + r * k, k);
      // Beyond 4 rows the panels' register tiles take 4, 6 (AVX2) or 8 rows (VNNI): 9 to 16 end in
      // every shorter tile of each.
      for (int64_t m : {1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16}) {
       // Activations per 32 and, where k allows, per 256 (the K types' super-block kernels; the
       // other kernels must take them too).
       // Outliers in every row (such rows are quantized per 32 whatever the group), in row 4 only
       // (with 256: tiles of 8 rows and chunks of 4 rows that mix both), in none.
       for (int64_t group : {32, 256})
       for (int64_t outlier_row : {int64_t{-1}, int64_t{4}, int64_t{1000}}) {
        if (k % group != 0 || (group == 32 && outlier_row >= 0)) continue;
        const std::vector<float> x = random_x(m, k, rng, outlier_row);
        cpu::Q8Activations qx;
        qx.quantize(x.data(), k, m, k, group);
        if (group == 256) {
          ASSERT_EQ(qx.fine_rows(), outlier_row < 0 ? m : outlier_row < m ? 1 : 0) << dtype_name(type) << " m=" << m;
        }
        for (const cpu::GemmLevel level : test::runnable_levels()) {
          test::LevelGuard guard(level);
          const std::string where = std::string(dtype_name(type)) + " k=" + std::to_string(k) + " m=" +
                                    std::to_string(m) + " group " + std::to_string(group) + " outlier row " +
                                    std::to_string(outlier_row) + " kernels " + cpu::q8_kernel_name();
          for (int threads : {1, 2}) {
            // Output rows of n + 3 floats: the extra columns must stay untouched.
            const int64_t ldy = n + 3;
            std::vector<float> y(static_cast<size_t>(m * ldy), 7.f);
            cpu::q8_matmul(type, w.data(), rb, n, qx, y.data(), ldy, false, threads);
            std::vector<float> y2(static_cast<size_t>(m * ldy), 1.f);
            cpu::q8_matmul(type, w.data(), rb, n, qx, y2.data(), ldy, true, threads);
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t r = 0; r < n; ++r) {
                const Bounds b = bounds_for(wf.data() + r * k, x.data() + i * k, qx, i, k);
                const float got = y[static_cast<size_t>(i * ldy + r)];
                ASSERT_NEAR(got, b.ref_q, b.tol_q) << where << " row " << r << " x row " << i;
                ASSERT_NEAR(got, b.ref_x, b.tol_x) << where << " row " << r << " x row " << i;
                ASSERT_EQ(y2[static_cast<size_t>(i * ldy + r)], 1.f + got) << where;
              }
              for (int64_t r = n; r < ldy; ++r) ASSERT_EQ(y[static_cast<size_t>(i * ldy + r)], 7.f) << where;
            }
          }
        }
       }
      }
    }
  }
}

// The thread count changes nothing (each output is one kernel's sum).
TEST(Q8, ThreadCountDoesNotChangeResults) {
  std::mt19937 rng(4);
  const int64_t n = 301, k = 768;
  for (DType type : kTypes) {
   // Decode's dot products; prefill's panels; with 256, tiles of both kinds (row 9).
   for (int64_t m : {2, 7, 12})
   for (int64_t group : {32, 256}) {
    const std::vector<uint8_t> w = random_weights(type, n, k, rng);
    const std::vector<float> x = random_x(m, k, rng, group == 32 ? -1 : 9);
    cpu::Q8Activations qx;
    qx.quantize(x.data(), k, m, k, group);
    std::vector<float> y1(static_cast<size_t>(m * n)), y3(static_cast<size_t>(m * n));
    const size_t rb = dtype_row_bytes(type, k);
    cpu::q8_matmul(type, w.data(), rb, n, qx, y1.data(), n, false, 1);
    cpu::q8_matmul(type, w.data(), rb, n, qx, y3.data(), n, false, 3);
    EXPECT_EQ(y1, y3) << dtype_name(type) << " m=" << m << " group " << group;
   }
  }
}

// The engine's entry point: cpu::matmul (and matmul_cols on a slice of features) in the q8 and
// q8k compute modes against the f32 mode, for decode-sized batches (row 1 with an outlier).
TEST(Q8, MatmulFollowsComputeMode) {
  std::mt19937 rng(5);
  const cpu::Compute saved = cpu::compute_mode();
  for (DType type : kTypes) {
    const int64_t n = 45, k = 768;
    const std::vector<uint8_t> w = random_weights(type, n, k, rng);
    const WeightView wv{type, w.data(), k, n};
    std::vector<float> wf(static_cast<size_t>(n * k));
    const size_t rb = dtype_row_bytes(type, k);
    for (int64_t r = 0; r < n; ++r) cpu::dequantize_row(type, w.data() + r * rb, wf.data() + r * k, k);
    for (cpu::Compute mode : {cpu::Compute::q8, cpu::Compute::q8k})
    for (int64_t m : {1, 2, 3}) {
      const std::vector<float> x = random_x(m, k, rng, 1);
      std::vector<float> yq(static_cast<size_t>(m * n)), yf(static_cast<size_t>(m * n));
      cpu::set_compute_mode(cpu::Compute::f32);
      cpu::matmul(wv, x.data(), m, yf.data());
      cpu::set_compute_mode(mode);
      cpu::matmul(wv, x.data(), m, yq.data());
      cpu::Q8Activations qx;
      qx.quantize(x.data(), k, m, k, cpu::q8_group(type, k));
      bool differs = false;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < n; ++r) {
          const Bounds b = bounds_for(wf.data() + r * k, x.data() + i * k, qx, i, k);
          const size_t at = static_cast<size_t>(i * n + r);
          ASSERT_NEAR(yf[at], b.ref_x, 1e-5 * b.mag_x + 1e-30) << dtype_name(type);
          ASSERT_NEAR(yq[at], b.ref_q, b.tol_q) << dtype_name(type);
          differs |= yq[at] != yf[at];
        }
      }
      EXPECT_TRUE(differs) << dtype_name(type) << ": the " << cpu::compute_name(mode) << " mode seems not to be used";
    }
    // A slice of input features [256, 768) with accumulate, as the MLP's down projection does.
    const std::vector<float> x = random_x(1, 512, rng);
    std::vector<float> yq(static_cast<size_t>(n), 2.f), yf(static_cast<size_t>(n), 2.f);
    cpu::set_compute_mode(cpu::Compute::q8);
    cpu::matmul_cols(wv, 256, 768, x.data(), 512, 1, yq.data(), true);
    cpu::set_compute_mode(cpu::Compute::f32);
    cpu::matmul_cols(wv, 256, 768, x.data(), 512, 1, yf.data(), true);
    for (int64_t r = 0; r < n; ++r) {
      double mag = 0;
      for (int64_t j = 0; j < 512; ++j) mag += std::abs(wf[static_cast<size_t>(r * k + 256 + j)]);
      // Each x value moves by at most max |x| / 254 (here max |x| = 100).
      EXPECT_NEAR(yq[static_cast<size_t>(r)], yf[static_cast<size_t>(r)], mag * 100.f / 254.f) << dtype_name(type);
    }
  }
  cpu::set_compute_mode(saved);
}

TEST(Q8, ComputeModeNamesAndUnsupportedTypes) {
  cpu::Compute c = cpu::Compute::f32;
  EXPECT_TRUE(cpu::parse_compute("q8", &c));
  EXPECT_EQ(c, cpu::Compute::q8);
  EXPECT_TRUE(cpu::parse_compute("f32", &c));
  EXPECT_EQ(c, cpu::Compute::f32);
  EXPECT_FALSE(cpu::parse_compute("int8", &c));
  EXPECT_FALSE(cpu::parse_compute(nullptr, &c));
  EXPECT_STREQ(cpu::compute_name(cpu::Compute::q8), "q8");
  EXPECT_TRUE(cpu::parse_compute("q8k", &c));
  EXPECT_EQ(c, cpu::Compute::q8k);
  EXPECT_STREQ(cpu::compute_name(cpu::Compute::q8k), "q8k");
  for (DType t : {DType::F32, DType::F16, DType::BF16, DType::Q2_K, DType::Q3_K, DType::Q8_K}) {
    EXPECT_FALSE(cpu::q8_supports(t)) << dtype_name(t);
  }
  cpu::Q8Activations qx;
  std::vector<float> x(32, 1.f);
  qx.quantize(x.data(), 32, 1, 32);
  float y = 0;
  std::vector<uint8_t> w(64);
  EXPECT_THROW(cpu::q8_matmul(DType::F16, w.data(), 64, 1, qx, &y, 1, false), Error);
}
