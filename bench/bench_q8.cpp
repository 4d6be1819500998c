// Products with quantized weights: the q8 compute (activations quantized per block of 32, the
// quantization timed too, then cpu::q8_matmul's integer dot products, for any number of rows,
// although the engine uses it for few rows only) against the engine's f32 mode (cpu::matmul) (weights dequantized: dot products for fewer than 4 rows, the float32 GEMM
// on dequantized row blocks for more), at each kernel level this CPU runs. bf16 weights go through
// cpu::matmul in both modes: in q8, AVX512-BF16 dot products where the CPU has them (bf16.h).
//
// Names: <type>/M<m>/N<n>/K<k>/<mode>-<level>/t<threads>. GFLOPS: 2 m n k per second (CPU time of
// the thread with one thread, wall time with more); GB/s: the weight bytes read per second. On a
// shared machine, compare rows of one run, interleaved:
//   bench_q8 --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
// Extra flag (before the Google Benchmark ones): --threads=N[,N...] (default 1 and all cores).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench_threads.h"
#include "backends/cpu/bf16.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"
#include "backends/cpu/q8.h"
#include "backends/cpu/quants.h"
#include "backends/dtype.h"

using namespace dashlm;
using namespace dashlm::cpu;

namespace {

struct Shape {
  DType type;
  int64_t m, n, k;
};

// Random quants with fp16 scales of realistic sizes (the speed does not depend on the values);
// bf16 weights from a normal distribution (no denormals, which can be slow).
std::vector<uint8_t> random_weights(DType type, int64_t n, int64_t k) {
  const auto& t = dtype_traits(type);
  if (type == DType::BF16) {
    std::vector<uint8_t> w(static_cast<size_t>(n * k) * 2);
    std::mt19937 rng(7);
    std::normal_distribution<float> g(0.f, 0.05f);
    for (size_t i = 0; i < w.size(); i += 2) {
      const float f = g(rng);
      uint32_t u;
      std::memcpy(&u, &f, 4);
      const auto h = static_cast<uint16_t>(u >> 16);
      std::memcpy(w.data() + i, &h, 2);
    }
    return w;
  }
  const int64_t blocks = n * (k / t.block_size);
  std::vector<uint8_t> w(static_cast<size_t>(blocks) * t.block_bytes);
  std::mt19937 rng(7);
  for (auto& b : w) b = static_cast<uint8_t>(rng());
  const uint16_t small = fp32_to_fp16(0.01f);
  for (int64_t b = 0; b < blocks; ++b) {
    uint8_t* p = w.data() + static_cast<size_t>(b) * t.block_bytes;
    const size_t at = type == DType::Q6_K ? 208 : 0;
    std::memcpy(p + at, &small, 2);
    if (type == DType::Q4_1 || type == DType::Q5_1 || type == DType::Q4_K || type == DType::Q5_K) {
      std::memcpy(p + 2, &small, 2);
    }
  }
  return w;
}

void run(benchmark::State& state, Shape s, Compute mode, GemmLevel level, int threads) {
  const std::vector<uint8_t> w = random_weights(s.type, s.n, s.k);
  std::vector<float> x(static_cast<size_t>(s.m * s.k));
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  for (auto& v : x) v = g(rng);
  std::vector<float> y(static_cast<size_t>(s.m * s.n));
  const WeightView wv{s.type, w.data(), s.k, s.n};
  const GemmLevel saved_level = gemm_level();
  const Compute saved_mode = compute_mode();
  const int saved_threads = num_threads();
  gemm_set_level(level);
  set_compute_mode(mode);
  set_num_threads(threads);
  Q8Activations qx;
  const size_t row_bytes = dtype_row_bytes(s.type, s.k);
  for (auto _ : state) {
    if (mode != Compute::f32 && s.type != DType::BF16) {  // what matmul does in the q8 modes, for any number of rows
      qx.quantize(x.data(), s.k, s.m, s.k, q8_group(s.type, s.k));
      q8_matmul(s.type, w.data(), row_bytes, s.n, qx, y.data(), s.n, false, threads);
    } else {
      matmul(wv, x.data(), s.m, y.data());
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const bool bf16 = s.type == DType::BF16 && bf16_dots_available();  // at this level
  state.SetLabel(mode == Compute::f32 || (s.type == DType::BF16 && !bf16) ? std::string("f32 ") + gemm_kernel_name()
                 : bf16 ? std::string("bf16 avx512bf16")
                        : std::string(compute_name(mode)) + " " + q8_kernel_name());
  set_num_threads(saved_threads);
  set_compute_mode(saved_mode);
  gemm_set_level(saved_level);
  state.counters["GFLOPS"] = benchmark::Counter(2.0 * double(s.m) * double(s.n) * double(s.k) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GB/s"] = benchmark::Counter(double(w.size()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

std::vector<Shape> shapes() {
  std::vector<Shape> out;
  // (type, n, k) of the models' matrices: SmolLM2-135M (Q4_1: 576 x 576 attention, 1536 x 576 MLP
  // up, 576 x 1536 down), Gemma 3 270M and Qwen2.5-0.5B (K types only where k is a multiple of
  // 256: the down projections; Q5_0 and Q8_0 elsewhere), the remaining types on Qwen's shapes,
  // and Qwen2.5-1.5B's Q4_K_M MLP (8960 x 1536 gate/up, 1536 x 8960 down in Q4_K and Q6_K).
  const Shape base[] = {
      {DType::Q4_1, 0, 576, 576},   {DType::Q4_1, 0, 1536, 576}, {DType::Q4_1, 0, 576, 1536},
      {DType::Q5_0, 0, 2048, 640},  {DType::Q4_K, 0, 640, 2048}, {DType::Q6_K, 0, 640, 2048},
      {DType::Q5_0, 0, 4864, 896},  {DType::Q4_K, 0, 896, 4864}, {DType::Q6_K, 0, 896, 4864},
      {DType::Q8_0, 0, 896, 896},   {DType::Q4_0, 0, 4864, 896}, {DType::Q5_K, 0, 896, 4864},
      {DType::Q5_1, 0, 4864, 896},  {DType::Q4_K, 0, 8960, 1536}, {DType::Q4_K, 0, 1536, 8960},
      {DType::Q6_K, 0, 1536, 8960},
      // bf16 weights (matmul: AVX512-BF16 dot products in the q8 mode where the CPU has them):
      // SmolLM2-135M's and Qwen2.5-1.5B's MLP shapes.
      {DType::BF16, 0, 1536, 576},  {DType::BF16, 0, 576, 1536},  {DType::BF16, 0, 8960, 1536},
      {DType::BF16, 0, 1536, 8960},
  };
  for (int64_t m : {1, 2, 3, 4, 8, 16, 64, 512}) {
    for (Shape s : base) {
      s.m = m;
      out.push_back(s);
    }
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // Our own flag first, then Google Benchmark's.
  const std::vector<int> thread_counts = dashlm::bench::take_thread_counts(argc, argv);
  for (const Shape& s : shapes()) {
    for (int t : thread_counts) {
      for (int l = 0; l <= static_cast<int>(gemm_max_level()); ++l) {
        for (Compute mode : {Compute::f32, Compute::q8, Compute::q8k}) {
          if (s.type == DType::BF16 && mode == Compute::q8k) continue;  // the same as q8 for bf16
          const auto level = static_cast<GemmLevel>(l);
          const std::string name = std::string(dtype_name(s.type)) + "/M" + std::to_string(s.m) + "/N" +
                                   std::to_string(s.n) + "/K" + std::to_string(s.k) + "/" + compute_name(mode) + "-" +
                                   gemm_level_name(level) + "/t" + std::to_string(t);
          auto* b = benchmark::RegisterBenchmark(name.c_str(), run, s, mode, level, t)->Unit(benchmark::kMicrosecond);
          if (t > 1) b->UseRealTime();
        }
      }
    }
  }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
