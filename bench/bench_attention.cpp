// Decoding's attention on the CPU: a few query rows against an f16 (or f32) KV cache of n_kv
// keys, through cpu::attention as the engine calls it, at each kernel level this CPU runs. Shapes
// of the models' attention: query heads / KV heads / head dim of SmolLM2-135M (9/3/64),
// Qwen2.5-0.5B (14/2/64), Qwen2.5-1.5B (12/2/128) and Gemma 3 270M (4/1/256).
//
// Names: <model>/q<rows>/kv<n_kv>[/L<layers>]/<cache type>-<level>/t<threads>. GB/s: the cache
// bytes read (keys and values of every KV head) per second; GFLOPS: 4 n_kv head_dim per query
// head and row. With L<layers> an iteration runs the attention of that many layers, each over its
// own cache, as a decode step does: together larger than the CPU's caches, so that the keys and
// values come from memory (one layer's cache of a few MB stays in L3 between iterations).
// On a shared machine, compare rows of one run, interleaved:
//   bench_attention --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true
// Extra flag (before the Google Benchmark ones): --threads=N[,N...] (default 1 and all cores).
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "bench_threads.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/ops.h"

using namespace dashlm;
using namespace dashlm::cpu;

namespace {

struct Shape {
  const char* model;
  int n_head, n_head_kv, head_dim;
};

void run(benchmark::State& state, Shape s, int64_t n_q, int64_t n_kv, KvType type, GemmLevel level, int threads,
         int layers) {
  const int64_t kvd = int64_t{s.n_head_kv} * s.head_dim, qd = int64_t{s.n_head} * s.head_dim;
  const size_t per_layer = static_cast<size_t>(n_kv * kvd);
  std::mt19937 rng(5);
  std::normal_distribution<float> g;
  std::vector<float> kf(per_layer * static_cast<size_t>(layers)), vf(kf.size()), q(static_cast<size_t>(n_q * qd));
  for (auto* v : {&kf, &vf, &q})
    for (float& x : *v) x = g(rng);
  std::vector<uint16_t> kh, vh;
  if (type == KvType::F16) {
    kh.resize(kf.size());
    vh.resize(vf.size());
    f32_to_f16_row(kf.data(), kh.data(), static_cast<int64_t>(kf.size()));
    f32_to_f16_row(vf.data(), vh.data(), static_cast<int64_t>(vf.size()));
  }
  std::vector<KvRef> kv(static_cast<size_t>(layers));
  for (int l = 0; l < layers; ++l) {
    const size_t at = per_layer * static_cast<size_t>(l);
    kv[static_cast<size_t>(l)].type = type;
    kv[static_cast<size_t>(l)].k = type == KvType::F16 ? static_cast<const void*>(kh.data() + at) : kf.data() + at;
    kv[static_cast<size_t>(l)].v = type == KvType::F16 ? static_cast<const void*>(vh.data() + at) : vf.data() + at;
  }
  std::vector<int32_t> pos(static_cast<size_t>(n_q));
  for (int64_t i = 0; i < n_q; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(n_kv - n_q + i);
  AttentionParams p;
  p.n_head = s.n_head;
  p.n_head_kv = s.n_head_kv;
  p.head_dim = s.head_dim;
  p.scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
  std::vector<float> out(q.size());
  const GemmLevel saved_level = gemm_level();
  const int saved_threads = num_threads();
  gemm_set_level(level);
  set_num_threads(threads);
  for (auto _ : state) {
    for (const KvRef& layer : kv) attention(q.data(), pos.data(), n_q, layer, n_kv, nullptr, p, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_num_threads(saved_threads);
  gemm_set_level(saved_level);
  const double elem = type == KvType::F16 ? 2.0 : 4.0;
  state.counters["GB/s"] = benchmark::Counter(2.0 * double(n_kv) * double(kvd) * elem * layers * 1e-9,
                                              benchmark::Counter::kIsIterationInvariantRate);
  state.counters["GFLOPS"] = benchmark::Counter(4.0 * double(n_q) * double(s.n_head) * double(n_kv) * s.head_dim * layers * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<int> thread_counts = dashlm::bench::take_thread_counts(argc, argv);
  const Shape shapes[] = {{"smollm2", 9, 3, 64}, {"qwen05b", 14, 2, 64}, {"qwen15b", 12, 2, 128}, {"gemma3", 4, 1, 256}};
  for (const Shape& s : shapes)
    for (int64_t n_q : {1, 2})
      for (int64_t n_kv : {512, 4096, 8192})
        for (int layers : {1, 28})
          for (KvType type : {KvType::F16, KvType::F32})
            for (int t : thread_counts)
              for (int l = 0; l <= static_cast<int>(gemm_max_level()); ++l) {
                if (layers > 1 && n_kv < 4096) continue;
                const auto level = static_cast<GemmLevel>(l);
                const std::string name = std::string(s.model) + "/q" + std::to_string(n_q) + "/kv" + std::to_string(n_kv) +
                                         (layers > 1 ? "/L" + std::to_string(layers) : std::string()) + "/" +
                                         kv_type_name(type) + "-" + gemm_level_name(level) + "/t" + std::to_string(t);
                auto* b = benchmark::RegisterBenchmark(name.c_str(), run, s, n_q, n_kv, type, level, t, layers)
                              ->Unit(benchmark::kMicrosecond);
                if (t > 1) b->UseRealTime();
              }
  benchmark::Initialize(&argc, argv);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
