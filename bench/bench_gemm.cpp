// GEMM throughput: our kernels at each instruction-set level against OpenBLAS's cblas_sgemm, on
// the shapes of the models' prefill (x W^T) and of the attention (Q K^T and P V per head).
//
// Names: <layout>/M<m>/N<n>/K<k>/<impl>/t<threads>, impl = scalar | avx2 | avx512 | blas, and for
// the attention's Q K^T also <level>-packed: B packed once beforehand (GemmPackedB, not timed).
// The GFLOPS counter is 2 m n k per second: per second of the thread's CPU time with one thread
// (steadier than wall time on a busy machine: it measures what a core does), per second of wall
// time with more threads. On a shared machine, compare rows of one run, interleaved:
//   --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
// OpenBLAS picks its kernel when it loads: run the binary once as is (on CPUs its build does not
// know, its generic kernel) and once with e.g. OPENBLAS_CORETYPE=SKYLAKEX; the label of the blas
// rows says which kernel ran. Extra flags of ours (before the Google Benchmark ones):
//   --threads=N    thread counts to run, comma-separated (default 1 and cpu::num_threads())
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_threads.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"

extern "C" char* openblas_get_corename(void);

using namespace dashlm::cpu;

namespace {

constexpr int kPacked = 10;  // impl codes: level, kPacked + level (B packed beforehand), -1 (the BLAS)

struct Shape {
  const char* layout;  // "nt": B is [n x k] (weights, Q K^T); "nn": B is [k x n] (P V)
  int64_t m, n, k;
  int64_t lda, ldb;  // 0: packed (the row length)
};

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

void run(benchmark::State& state, Shape s, int impl, int threads) {
  const bool nt = std::strcmp(s.layout, "nt") == 0;
  const int64_t lda = s.lda ? s.lda : s.k, ldb = s.ldb ? s.ldb : (nt ? s.k : s.n);
  const auto a = random_vector(static_cast<size_t>(s.m * lda), 1);
  const auto b = random_vector(static_cast<size_t>((nt ? s.n : s.k) * ldb), 2);
  std::vector<float> c(static_cast<size_t>(s.m * s.n));
  if (impl < 0) {  // OpenBLAS
    openblas_set_num_threads(threads);
    for (auto _ : state) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, nt ? CblasTrans : CblasNoTrans, static_cast<int>(s.m),
                  static_cast<int>(s.n), static_cast<int>(s.k), 1.f, a.data(), static_cast<int>(lda), b.data(),
                  static_cast<int>(ldb), 0.f, c.data(), static_cast<int>(s.n));
      benchmark::DoNotOptimize(c.data());
      benchmark::ClobberMemory();
    }
    state.SetLabel(std::string("openblas ") + openblas_get_corename());
  } else if (impl >= kPacked) {  // B packed once beforehand (GemmPackedB), as the attention can do
    const GemmLevel saved = gemm_level();
    gemm_set_level(static_cast<GemmLevel>(impl - kPacked));
    GemmPackedB packed;
    if (nt) {
      packed.pack_nt(s.n, s.k, b.data(), ldb, threads);
    } else {
      packed.pack_nn(s.n, s.k, b.data(), ldb, threads);
    }
    for (auto _ : state) {
      gemm_packed(s.m, a.data(), lda, packed, 0, s.n, c.data(), s.n, false, 1.f, threads);
      benchmark::DoNotOptimize(c.data());
      benchmark::ClobberMemory();
    }
    state.SetLabel(std::string(gemm_kernel_name()) + " packed B");
    gemm_set_level(saved);
  } else {
    const GemmLevel saved = gemm_level();
    gemm_set_level(static_cast<GemmLevel>(impl));
    for (auto _ : state) {
      if (nt) {
        gemm_nt(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, false, 1.f, threads);
      } else {
        gemm_nn(s.m, s.n, s.k, a.data(), lda, b.data(), ldb, c.data(), s.n, false, 1.f, threads);
      }
      benchmark::DoNotOptimize(c.data());
      benchmark::ClobberMemory();
    }
    state.SetLabel(gemm_kernel_name());
    gemm_set_level(saved);
  }
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * double(s.m) * double(s.n) * double(s.k) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

std::vector<Shape> shapes() {
  std::vector<Shape> out;
  // Prefill projections: (n, k) of SmolLM2-135M then of Gemma 3 270M, for a few prompt lengths.
  const int64_t nk[][2] = {{576, 576},  {192, 576},  {1536, 576}, {576, 1536}, {1024, 640},
                           {256, 640},  {2048, 640}, {640, 2048}, {640, 1024}};
  for (int64_t m : {512, 2048, 8192}) {
    for (const auto& p : nk) out.push_back({"nt", m, p[0], p[1], 0, 0});
  }
  // Decode-sized: a token or a few against a weight matrix (the dot-product path).
  for (int64_t m : {1, 4}) {
    out.push_back({"nt", m, 576, 576, 0, 0});
    out.push_back({"nt", m, 2048, 640, 0, 0});
  }
  // Attention per head, 32 or 64 queries: S = Q K^T (nt) and O = P V (nn). Rows of Q are strided
  // by all query heads, rows of K and V by all key/value heads: SmolLM2-135M has 9 + 3 heads of
  // 64, Gemma 3 270M 4 + 1 of 256; for 128, Qwen2.5-1.5B-like 12 + 2.
  struct Heads {
    int64_t hd, n_head, n_head_kv;
  };
  for (int64_t m : {32, 64}) {
    for (Heads h : {Heads{64, 9, 3}, Heads{128, 12, 2}, Heads{256, 4, 1}}) {
      for (int64_t keys : {512, 2048, 8192}) {
        out.push_back({"nt", m, keys, h.hd, h.n_head * h.hd, h.n_head_kv * h.hd});
        out.push_back({"nn", m, h.hd, keys, 0, h.n_head_kv * h.hd});
      }
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flag first, then Google Benchmark's.
  const std::vector<int> thread_counts = dashlm::bench::take_thread_counts(argc, argv);

  std::vector<int> impls;
  for (int l = 0; l <= static_cast<int>(gemm_max_level()); ++l) impls.push_back(l);
  impls.push_back(-1);  // the BLAS
  for (const Shape& s : shapes()) {
    for (int t : thread_counts) {
      std::vector<int> these = impls;
      if (s.m <= 64 && std::strcmp(s.layout, "nt") == 0) these.push_back(kPacked + static_cast<int>(gemm_max_level()));
      for (int impl : these) {
        std::string impl_name = impl < 0 ? "blas" : gemm_level_name(static_cast<GemmLevel>(impl % kPacked));
        if (impl >= kPacked) impl_name += "-packed";
        const std::string name = std::string(s.layout) + "/M" + std::to_string(s.m) + "/N" + std::to_string(s.n) + "/K" +
                                 std::to_string(s.k) + "/" + impl_name + "/t" + std::to_string(t);
        auto* b = benchmark::RegisterBenchmark(name.c_str(), run, s, impl, t)->Unit(benchmark::kMillisecond);
        if (t > 1) b->UseRealTime();
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
