// Our GEMM (backends/cpu/gemm.h) against a double-precision reference, at every kernel level
// this CPU can run, on awkward sizes, strides, both layouts of B, with and without accumulation.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cfloat>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <utility>
#include <random>
#include <string>
#include <vector>

#include "backends/cpu/gemm.h"
#include "gemm_levels.h"

using namespace dashlm::cpu;
using dashlm::test::LevelGuard;
using dashlm::test::runnable_levels;

namespace {

struct Case {
  int64_t m, n, k;
  bool nt;          // B stored [n x k] (gemm_nt) or [k x n] (gemm_nn)
  bool accumulate;
  float alpha = 1.f;
  int threads = 1;
  int64_t pad_a = 3, pad_b = 5, pad_c = 7;  // leading dimension minus row length
};

std::string describe(const Case& c) {
  return "m=" + std::to_string(c.m) + " n=" + std::to_string(c.n) + " k=" + std::to_string(c.k) +
         (c.nt ? " nt" : " nn") + (c.accumulate ? " acc" : "") + " alpha=" + std::to_string(c.alpha) +
         " threads=" + std::to_string(c.threads) + " kernel=" + gemm_kernel_name();
}

// Runs one case and compares with a double-precision product. Returns false (after reporting the
// first mismatch) on failure, so callers can stop a sweep early.
bool check_case(const Case& cs, uint32_t seed) {
  const int64_t lda = cs.k + cs.pad_a, ldb = (cs.nt ? cs.k : cs.n) + cs.pad_b, ldc = cs.n + cs.pad_c;
  const int64_t b_rows = cs.nt ? cs.n : cs.k;
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(cs.m * lda)), b(static_cast<size_t>(b_rows * ldb));
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  // Padding of C must be left alone; without accumulate, C's old contents (NaN here) never read.
  const float sentinel = 12345.f;
  std::vector<float> c(static_cast<size_t>(cs.m * ldc), sentinel), c0;
  for (int64_t i = 0; i < cs.m; ++i) {
    for (int64_t j = 0; j < cs.n; ++j) {
      c[static_cast<size_t>(i * ldc + j)] = cs.accumulate ? d(rng) : std::numeric_limits<float>::quiet_NaN();
    }
  }
  c0 = c;

  auto bval = [&](int64_t p, int64_t j) { return cs.nt ? b[static_cast<size_t>(j * ldb + p)] : b[static_cast<size_t>(p * ldb + j)]; };
  if (cs.nt) {
    gemm_nt(cs.m, cs.n, cs.k, a.data(), lda, b.data(), ldb, c.data(), ldc, cs.accumulate, cs.alpha, cs.threads);
  } else {
    gemm_nn(cs.m, cs.n, cs.k, a.data(), lda, b.data(), ldb, c.data(), ldc, cs.accumulate, cs.alpha, cs.threads);
  }

  for (int64_t i = 0; i < cs.m; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const size_t at = static_cast<size_t>(i * ldc + j);
      if (j >= cs.n) {
        if (c[at] != sentinel) {
          ADD_FAILURE() << describe(cs) << ": padding of C written at row " << i << " column " << j;
          return false;
        }
        continue;
      }
      double ref = 0.0, mag = 0.0;
      for (int64_t p = 0; p < cs.k; ++p) {
        const double prod = double(a[static_cast<size_t>(i * lda + p)]) * bval(p, j);
        ref += prod;
        mag += std::fabs(prod);
      }
      ref *= cs.alpha;
      mag *= std::fabs(cs.alpha);
      if (cs.accumulate) {
        ref += c0[at];
        mag += std::fabs(c0[at]);
      }
      // Float summation of k terms: error below about k * eps * sum |terms| (a loose bound; the
      // blocked order usually does far better), plus one rounding of the result.
      const double tol = (static_cast<double>(cs.k) + 2.0) * FLT_EPSILON * mag + 1e-30;
      if (!(std::fabs(c[at] - ref) <= tol)) {
        ADD_FAILURE() << describe(cs) << ": C(" << i << ", " << j << ") = " << c[at] << ", expected " << ref
                      << " (tolerance " << tol << ")";
        return false;
      }
    }
  }
  return true;
}

}  // namespace

TEST(Gemm, KernelNameAndLevels) {
  EXPECT_LE(gemm_level(), gemm_max_level());
  for (GemmLevel l : runnable_levels()) {
    LevelGuard g(l);
    EXPECT_STREQ(gemm_kernel_name(), gemm_level_name(l));
  }
  // A level above what the CPU can run is clamped.
  LevelGuard g(gemm_max_level());
  EXPECT_EQ(gemm_set_level(GemmLevel::avx512), gemm_max_level());
}

// Every combination of small awkward sizes, both layouts, accumulate on and off.
TEST(Gemm, SmallSizesAllLevels) {
  const int64_t sizes[] = {1, 2, 7, 17, 31, 33, 64};
  for (GemmLevel l : runnable_levels()) {
    LevelGuard g(l);
    uint32_t seed = 1;
    for (int64_t m : sizes)
      for (int64_t n : sizes)
        for (int64_t k : sizes)
          for (bool nt : {true, false})
            for (bool acc : {false, true}) {
              if (!check_case({m, n, k, nt, acc}, seed++)) return;
            }
  }
}

// Sizes that cross the cache blocking: several panels of k, of n and blocks of m, plus alpha.
TEST(Gemm, LargerSizesAllLevels) {
  const Case cases[] = {
      {100, 257, 31, true, false},   {257, 100, 300, false, true},  {33, 600, 520, true, true},
      {31, 33, 1000, false, false},  {300, 2100, 40, true, false},  {300, 2100, 40, false, true},
      {257, 257, 257, true, false},  {400, 70, 600, true, true, 0.125f},
      {64, 1000, 128, true, false, 0.088f}, {64, 128, 1000, false, false},  // attention shapes
      {1, 1000, 700, true, false},   {1000, 1, 700, false, true},   {513, 48, 33, true, false, -2.f},
      {8, 100, 300, true, true, 0.5f}, {9, 100, 300, true, true},   {5, 7, 1, true, false},  // dot-product path
  };
  for (GemmLevel l : runnable_levels()) {
    LevelGuard g(l);
    uint32_t seed = 1000;
    for (const Case& c : cases) {
      if (!check_case(c, seed++)) return;
    }
  }
}

// Thread counts and team shapes: splits over rows, over columns, and odd team sizes.
TEST(Gemm, Threads) {
  for (GemmLevel l : runnable_levels()) {
    LevelGuard g(l);
    uint32_t seed = 2000;
    for (int threads : {0, 2, 3, 4}) {
      for (const Case& base : {Case{500, 300, 700, true, false}, Case{37, 2000, 300, false, true},
                               Case{40, 96, 5000, true, true}, Case{3000, 20, 64, false, false},
                               Case{3, 5000, 200, true, true}, Case{8, 3001, 100, true, false}}) {
        Case c = base;
        c.threads = threads;
        if (!check_case(c, seed++)) return;
      }
    }
  }
}

// Called per item from inside an OpenMP parallel loop (as the attention does per head), with
// threads = 1 and with threads = 0 (which must then also run inline).
TEST(Gemm, InsideParallelRegion) {
  const int64_t m = 37, n = 300, k = 70;
  const int items = 8;
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(items * m * k)), b(static_cast<size_t>(items * n * k));
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  for (int threads : {1, 0}) {
    std::vector<float> c(static_cast<size_t>(items * m * n), 0.f), ref(c.size(), 0.f);
    for (int it = 0; it < items; ++it) {
      gemm_nt(m, n, k, a.data() + it * m * k, k, b.data() + it * n * k, k, ref.data() + it * m * n, n, false, 1.f, 1);
    }
#pragma omp parallel for schedule(dynamic, 1) num_threads(4)
    for (int it = 0; it < items; ++it) {
      gemm_nt(m, n, k, a.data() + it * m * k, k, b.data() + it * n * k, k, c.data() + it * m * n, n, false, 1.f, threads);
    }
    // Same kernel, same blocking: the results are bitwise identical.
    for (size_t i = 0; i < c.size(); ++i) ASSERT_EQ(c[i], ref[i]) << "at " << i << " threads=" << threads;
  }
}

// The result does not depend on the thread count (each element is summed in the same order).
TEST(Gemm, DeterministicAcrossThreadCounts) {
  const int64_t m = 333, n = 555, k = 777;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k));
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  std::vector<float> c1(static_cast<size_t>(m * n)), c3(c1.size());
  gemm_nt(m, n, k, a.data(), k, b.data(), k, c1.data(), n, false, 1.f, 1);
  gemm_nt(m, n, k, a.data(), k, b.data(), k, c3.data(), n, false, 1.f, 3);
  for (size_t i = 0; i < c1.size(); ++i) ASSERT_EQ(c1[i], c3[i]) << "at " << i;
}

TEST(Gemm, EmptyShapes) {
  std::vector<float> c(6, 5.f);
  const float x = 1.f;
  gemm_nt(2, 3, 0, &x, 1, &x, 1, c.data(), 3, true);  // k = 0, accumulate: C unchanged
  for (float v : c) EXPECT_EQ(v, 5.f);
  gemm_nn(2, 3, 0, &x, 1, &x, 3, c.data(), 3, false);  // k = 0: C = 0
  for (float v : c) EXPECT_EQ(v, 0.f);
  gemm_nt(0, 3, 4, nullptr, 4, nullptr, 4, nullptr, 3);  // nothing to do, nothing touched
  gemm_nt(3, 0, 4, nullptr, 4, nullptr, 4, nullptr, 3);
}

// A packed B, multiplied column range by column range (as the attention does with the keys of one
// head and each block of queries), against the double-precision product.
TEST(Gemm, PackedB) {
  struct PackedCase {
    int64_t m, n, k;
    bool nt;
    int threads;
  };
  const PackedCase cases[] = {{32, 300, 64, true, 1},   {7, 33, 17, false, 1},  {64, 1000, 256, true, 2},
                              {33, 100, 1000, false, 1}, {1, 70, 5, true, 0},    {100, 129, 800, true, 3}};
  for (GemmLevel l : runnable_levels()) {
    LevelGuard g(l);
    uint32_t seed = 3000;
    for (const PackedCase& pc : cases) {
      std::mt19937 rng(seed++);
      std::uniform_real_distribution<float> d(-1.f, 1.f);
      const int64_t lda = pc.k + 1, ldb = (pc.nt ? pc.k : pc.n) + 2;
      std::vector<float> a(static_cast<size_t>(pc.m * lda)), b(static_cast<size_t>((pc.nt ? pc.n : pc.k) * ldb));
      for (auto& x : a) x = d(rng);
      for (auto& x : b) x = d(rng);
      GemmPackedB packed;
      if (pc.nt) {
        packed.pack_nt(pc.n, pc.k, b.data(), ldb, pc.threads);
      } else {
        packed.pack_nn(pc.n, pc.k, b.data(), ldb, pc.threads);
      }
      ASSERT_EQ(packed.n(), pc.n);
      ASSERT_EQ(packed.k(), pc.k);
      const int64_t align = packed.col_align();
      // Column ranges: all, a middle one, a tail, a one-column one.
      const int64_t mid = pc.n / 2 / align * align;
      const int64_t ranges[][2] = {{0, pc.n}, {mid, std::min(pc.n, mid + 2 * align + 3)}, {mid, pc.n}, {0, 1}};
      for (const auto& r : ranges) {
        const int64_t j0 = r[0], j1 = r[1], w = j1 - j0, ldc = w + 3;
        for (bool acc : {false, true}) {
          std::vector<float> c(static_cast<size_t>(pc.m * ldc), 0.5f), c0 = c;
          gemm_packed(pc.m, a.data(), lda, packed, j0, j1, c.data(), ldc, acc, 0.75f, pc.threads);
          for (int64_t i = 0; i < pc.m; ++i) {
            for (int64_t j = 0; j < ldc; ++j) {
              const size_t at = static_cast<size_t>(i * ldc + j);
              if (j >= w) {
                ASSERT_EQ(c[at], c0[at]) << "padding written";
                continue;
              }
              double ref = 0.0, mag = 0.0;
              for (int64_t p = 0; p < pc.k; ++p) {
                const double bv = pc.nt ? b[static_cast<size_t>((j0 + j) * ldb + p)] : b[static_cast<size_t>(p * ldb + j0 + j)];
                ref += double(a[static_cast<size_t>(i * lda + p)]) * bv;
                mag += std::fabs(double(a[static_cast<size_t>(i * lda + p)]) * bv);
              }
              ref = 0.75 * ref + (acc ? c0[at] : 0.0);
              const double tol = (pc.k + 2.0) * FLT_EPSILON * (mag + 1.0);
              ASSERT_NEAR(c[at], ref, tol) << "m=" << pc.m << " n=" << pc.n << " k=" << pc.k << " cols " << j0 << ".."
                                           << j1 << " at " << i << "," << j << " kernel " << gemm_kernel_name();
            }
          }
        }
      }
    }
  }
}

// Same numbers as gemm_nt, even when the level changes between packing and use (the packing
// remembers its kernels).
TEST(Gemm, PackedBMatchesUnpackedAndKeepsItsLevel) {
  const int64_t m = 45, n = 200, k = 96;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> a(static_cast<size_t>(m * k)), b(static_cast<size_t>(n * k));
  for (auto& x : a) x = d(rng);
  for (auto& x : b) x = d(rng);
  std::vector<float> c1(static_cast<size_t>(m * n)), c2(c1.size());
  GemmPackedB packed;
  {
    LevelGuard g(gemm_max_level());
    gemm_nt(m, n, k, a.data(), k, b.data(), k, c1.data(), n, false, 1.f, 1);
    packed.pack_nt(n, k, b.data(), k, 1);
  }
  LevelGuard g(GemmLevel::scalar);
  gemm_packed(m, a.data(), k, packed, 0, n, c2.data(), n, false, 1.f, 1);
  for (size_t i = 0; i < c1.size(); ++i) ASSERT_EQ(c1[i], c2[i]) << "at " << i;
  // A misaligned column range is refused.
  if (packed.col_align() > 1) EXPECT_ANY_THROW(gemm_packed(m, a.data(), k, packed, 1, n, c2.data(), n));
  // Moved-from and re-packed objects stay usable.
  GemmPackedB moved = std::move(packed);
  moved.pack_nt(n / 2, k, b.data(), k, 1);
  EXPECT_EQ(moved.n(), n / 2);
}

// DASHLM_CPU chooses the starting level. The level is read once per process, so the check runs
// this test binary again with the variable set, on the helper test below.
TEST(Gemm, EnvironmentVariableLowersLevel) {
  char self[4096];
  const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (len <= 0) GTEST_SKIP() << "no /proc/self/exe";
  self[len] = '\0';
  for (GemmLevel l : runnable_levels()) {
    const std::string cmd = std::string("DASHLM_CPU=") + gemm_level_name(l) + " DASHLM_GEMM_EXPECT=" + gemm_level_name(l) +
                            " '" + self + "' --gtest_filter=Gemm.ChildReportsLevel > /dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  // A level the CPU lacks falls back to the highest it has.
  if (gemm_max_level() < GemmLevel::avx512) {
    const std::string cmd = std::string("DASHLM_CPU=avx512 DASHLM_GEMM_EXPECT=") + gemm_level_name(gemm_max_level()) +
                            " '" + self + "' --gtest_filter=Gemm.ChildReportsLevel > /dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
}

TEST(Gemm, ChildReportsLevel) {
  const char* expect = std::getenv("DASHLM_GEMM_EXPECT");
  if (!expect) GTEST_SKIP() << "helper of EnvironmentVariableLowersLevel";
  EXPECT_STREQ(gemm_kernel_name(), expect);
  EXPECT_TRUE(check_case({65, 70, 80, true, true}, 5));
}
