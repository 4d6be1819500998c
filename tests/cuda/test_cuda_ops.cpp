// GPU tests that need more than the op table (test_cuda_op_table.cpp, where every CUDA op is
// checked against its CPU twin): here, the device's topk decision against the host's halting
// policy (runtime/halting.h) on the same scores.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "runtime/dash/policy.h"
#include "cuda/cuda_test_util.h"

using namespace dashlm;
using namespace dashlm::test;
namespace cu = dashlm::cuda;

// DASH's topk decision on the device against the host policy on the same scores: many ties
// (scores from a few values), protected tokens, keep fractions that round.
TEST(CudaOps, TopkHaltFlagsMatchHostPolicy) {
  DASHLM_REQUIRE_CUDA();
  for (int64_t n : {1L, 7L, 300L, 4099L, 70000L}) {
    for (double keep : {1.0 / 3.0, 0.5, 1.0}) {
      SCOPED_TRACE("n " + std::to_string(n) + " keep " + std::to_string(keep));
      std::mt19937 rng(static_cast<uint32_t>(n * 7 + static_cast<int64_t>(keep * 100)));
      std::vector<float> score(static_cast<size_t>(n));
      for (float& s : score) s = static_cast<float>(rng() % 17) * 0.25f;
      HaltingConfig hc;
      hc.policy = "topk";
      hc.halt_layer = 1;
      hc.keep = keep;
      const std::vector<uint8_t> eligible = halting_eligibility(hc, n);
      auto policy = make_halting_policy(hc, 4);
      policy->begin(n, eligible);
      std::vector<int32_t> active(static_cast<size_t>(n));
      std::iota(active.begin(), active.end(), 0);
      const std::vector<int32_t> want = policy->observe(1, LayerSignals{active, score, {}});

      auto d_score = to_device(score);
      auto d_elig = to_device(eligible);
      auto d_halt = poisoned<uint8_t>(static_cast<size_t>(n));
      int64_t n_elig = 0;
      for (uint8_t e : eligible) n_elig += e;
      cu::topk_halt_flags(d_score.get(), d_elig.get(), n, halting_keep_count(keep, n_elig), d_halt.get());
      const auto halt = to_host(d_halt, static_cast<size_t>(n));
      std::vector<int32_t> got;
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_LE(halt[static_cast<size_t>(i)], 1);
        if (halt[static_cast<size_t>(i)]) got.push_back(static_cast<int32_t>(i));
      }
      EXPECT_EQ(got, want);
    }
  }
}

// The owning buffer behind DeviceBuffer and PinnedBuffer, with a counting host allocator (no
// device needed): reserve keeps a large enough buffer, resize frees before it allocates, moves
// hand the memory over, and every allocation is freed once.
namespace {
int g_allocs = 0, g_frees = 0;
void* counting_alloc(size_t bytes) {
  ++g_allocs;
  return ::operator new(bytes);
}
void counting_free(void* p) noexcept {
  if (!p) return;
  ++g_frees;
  ::operator delete(p);
}
}  // namespace

TEST(CudaOps, OwningBufferAllocatesFreesAndMoves) {
  using Buf = cu::OwningBuffer<int, counting_alloc, counting_free>;
  g_allocs = g_frees = 0;
  {
    Buf a;
    EXPECT_EQ(a.get(), nullptr);
    EXPECT_EQ(a.size(), 0u);
    a.reserve(8);
    EXPECT_EQ(a.size(), 8u);
    int* p = a.get();
    a.reserve(4);  // large enough: kept
    EXPECT_EQ(a.get(), p);
    EXPECT_EQ(g_allocs, 1);
    a.reserve(16);  // grown: the old one freed first
    EXPECT_EQ(a.size(), 16u);
    EXPECT_EQ(g_allocs, 2);
    EXPECT_EQ(g_frees, 1);
    a.resize(0);  // freed, nothing allocated
    EXPECT_EQ(a.get(), nullptr);
    EXPECT_EQ(g_frees, 2);
    Buf b(5);
    int* q = b.get();
    Buf c(std::move(b));
    EXPECT_EQ(c.get(), q);
    EXPECT_EQ(b.get(), nullptr);
    EXPECT_EQ(b.size(), 0u);
    a = std::move(c);
    EXPECT_EQ(a.get(), q);
    EXPECT_EQ(a.size(), 5u);
  }
  EXPECT_EQ(g_allocs, 3);
  EXPECT_EQ(g_frees, 3);
}
