// Prefill benchmark of the CUDA engine on random-weight bf16 models with the shapes of
// Llama-3.1-8B and Qwen2.5-7B: full prefill time and TFLOP/s, DASH topk(keep 1/3, halt 0.4L) in
// retain and drop modes with their speedups, the attention kernel alone (causal and the DASH
// subset case), and a large cuBLAS bf16 GEMM as the reference rate. Prints a markdown table and
// writes JSON.
//
//   dashlm_cuda_bench [--models llama8b,qwen7b] [--lengths 4096,8192,...] [--reps 3] [--json FILE]
//                     [--no-dash] [--no-kernels]
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cuda/cuda_ops.h"
#include "runtime/engine_cuda.h"

using namespace dashlm;
namespace cu = dashlm::cuda;
using json = nlohmann::json;

namespace {

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, __LINE__); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)

HParams llama8b() {
  HParams hp;
  hp.arch = Arch::Llama;
  hp.arch_str = "llama";
  hp.n_vocab = 128256;
  hp.n_embd = 4096;
  hp.n_layer = 32;
  hp.n_head = 32;
  hp.n_head_kv = 8;
  hp.head_dim = 128;
  hp.n_ff = 14336;
  hp.rope_base = 500000.f;
  hp.n_rot = 128;
  hp.norm_eps = 1e-5f;
  hp.attn_scale = 1.f / std::sqrt(128.f);
  return hp;
}

HParams qwen7b() {
  HParams hp;
  hp.arch = Arch::Qwen2;
  hp.arch_str = "qwen2";
  hp.n_vocab = 152064;
  hp.n_embd = 3584;
  hp.n_layer = 28;
  hp.n_head = 28;
  hp.n_head_kv = 4;
  hp.head_dim = 128;
  hp.n_ff = 18944;
  hp.rope_base = 1000000.f;
  hp.rope_neox = true;
  hp.n_rot = 128;
  hp.norm_eps = 1e-6f;
  hp.attn_scale = 1.f / std::sqrt(128.f);
  return hp;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Milliseconds of fn() by CUDA events, median of reps (after one warm-up when warm).
template <typename F>
double time_ms(int reps, bool warm, F&& fn) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  if (warm) fn();
  std::vector<double> ts;
  for (int r = 0; r < reps; ++r) {
    CK(cudaEventRecord(a));
    fn();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    ts.push_back(ms);
  }
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return median(ts);
}

std::vector<int64_t> parse_list(const std::string& s) {
  std::vector<int64_t> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) v.push_back(std::stoll(item));
  return v;
}

double full_flops(const HParams& hp, int64_t n) {
  const double keys = static_cast<double>(n) * static_cast<double>(n + 1) / 2;
  return hp.n_layer * layer_flops(hp, n, keys, 0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = "llama8b,qwen7b", json_path = "cuda_bench.json";
  std::vector<int64_t> lengths = {4096, 8192, 16384, 32768, 65536, 131072};
  int reps = 3;
  bool dash = true, kernels = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "error: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--models") models = next();
    else if (a == "--lengths") lengths = parse_list(next());
    else if (a == "--reps") reps = std::stoi(next());
    else if (a == "--json") json_path = next();
    else if (a == "--no-dash") dash = false;
    else if (a == "--no-kernels") kernels = false;
    else {
      std::fprintf(stderr, "usage: %s [--models llama8b,qwen7b] [--lengths 4096,...] [--reps N] [--json FILE] [--no-dash] [--no-kernels]\n", argv[0]);
      return 2;
    }
  }
  std::string why;
  if (!cuda_available(&why)) {
    std::fprintf(stderr, "error: no CUDA device: %s\n", why.c_str());
    return 1;
  }
  json out;
  out["device"] = cu::device_name();
  std::printf("# dashlm CUDA prefill benchmark on %s\n\n", cu::device_name().c_str());

  // --- reference rate: a large bf16 GEMM ---------------------------------------------------------
  double gemm_tflops = 0;
  {
    const int64_t N = 8192;
    cu::DeviceBuffer<cu::bf16> x(static_cast<size_t>(N * N)), w(static_cast<size_t>(N * N)), y(static_cast<size_t>(N * N));
    cu::fill_random_bf16(x.get(), N * N, 0, 1, 1);
    cu::fill_random_bf16(w.get(), N * N, 0, 1, 2);
    const double ms = time_ms(10, true, [&] { cu::gemm(x.get(), w.get(), N, N, N, y.get()); });
    gemm_tflops = 2.0 * N * N * N / (ms * 1e-3) / 1e12;
    std::printf("cuBLASLt bf16 GEMM 8192^3: %.3f ms, %.1f TFLOP/s\n\n", ms, gemm_tflops);
    out["gemm_8192_tflops"] = gemm_tflops;
  }

  // --- the attention kernel alone ------------------------------------------------------------------
  if (kernels) {
    std::printf("| attention (hd 128, 32 heads, 8 KV heads) | T | queries | ms | TFLOP/s |\n|---|---|---|---|---|\n");
    json ja = json::array();
    for (int64_t T : {8192L, 16384L, 32768L}) {
      const int H = 32, HKV = 8, HD = 128;
      cu::DeviceBuffer<cu::bf16> q(static_cast<size_t>(T * H * HD)), k(static_cast<size_t>(T * HKV * HD)),
          v(static_cast<size_t>(T * HKV * HD)), o(static_cast<size_t>(T * H * HD));
      cu::fill_random_bf16(q.get(), T * H * HD, 0, 1, 3);
      cu::fill_random_bf16(k.get(), T * HKV * HD, 0, 1, 4);
      cu::fill_random_bf16(v.get(), T * HKV * HD, 0, 1, 5);
      cu::AttentionParams ap;
      ap.n_head = H;
      ap.n_head_kv = HKV;
      ap.head_dim = HD;
      ap.scale = 1.f / std::sqrt(128.f);
      for (bool subset : {false, true}) {
        std::vector<int32_t> pos;
        if (subset) {  // DASH: a third of the tokens, at their original positions
          std::mt19937 rng(6);
          for (int64_t t = 0; t < T - 1; ++t)
            if (rng() % 3 == 0) pos.push_back(static_cast<int32_t>(t));
          pos.push_back(static_cast<int32_t>(T - 1));
        } else {
          pos.resize(static_cast<size_t>(T));
          std::iota(pos.begin(), pos.end(), 0);
        }
        cu::DeviceBuffer<int32_t> dpos(pos.size());
        dpos.upload(pos.data(), pos.size());
        const auto nq = static_cast<int64_t>(pos.size());
        const double ms = time_ms(5, true, [&] {
          cu::attention(q.get(), dpos.get(), nq, k.get(), v.get(), T, nullptr, ap, o.get());
        });
        double keys = 0;
        for (int32_t p : pos) keys += p + 1;
        const double tf = 4.0 * HD * H * keys / (ms * 1e-3) / 1e12;
        std::printf("| %s | %ld | %ld | %.3f | %.1f |\n", subset ? "DASH subset (1/3)" : "causal", static_cast<long>(T),
                    static_cast<long>(nq), ms, tf);
        ja.push_back({{"T", T}, {"subset", subset}, {"n_q", nq}, {"ms", ms}, {"tflops", tf}});
      }
    }
    out["attention"] = ja;
    std::printf("\n");
  }

  // --- models ----------------------------------------------------------------------------------------
  json jm = json::array();
  std::stringstream ms_list(models);
  std::string name;
  while (std::getline(ms_list, name, ',')) {
    HParams hp;
    if (name == "llama8b") hp = llama8b();
    else if (name == "qwen7b") hp = qwen7b();
    else {
      std::fprintf(stderr, "error: unknown model %s (llama8b, qwen7b)\n", name.c_str());
      return 2;
    }
    const int64_t max_len = *std::max_element(lengths.begin(), lengths.end());
    CudaEngine e(hp, max_len, 42);
    std::printf("## %s shape (%d layers, d %ld, %d/%d heads, ff %ld, vocab %ld), random bf16 weights\n\n", name.c_str(),
                hp.n_layer, static_cast<long>(hp.n_embd), hp.n_head, hp.n_head_kv, static_cast<long>(hp.n_ff),
                static_cast<long>(hp.n_vocab));
    std::printf("| T | full ms | full TFLOP/s | tok/s | DASH retain ms | speedup | DASH drop ms | speedup | FLOP-model speedup (drop) |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|\n");
    bool warmed = false;
    for (int64_t T : lengths) {
      std::mt19937 rng(static_cast<uint32_t>(T));
      std::vector<int32_t> toks(static_cast<size_t>(T));
      for (auto& t : toks) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(hp.n_vocab));
      const int r = T >= 65536 ? 1 : reps;
      json row;
      row["T"] = T;
      double full_ms = 0;
      try {
        full_ms = time_ms(r, !warmed, [&] {
          e.reset();
          e.prefill(toks);
        });
      } catch (const std::exception& ex) {
        std::printf("| %ld | failed: %s |\n", static_cast<long>(T), ex.what());
        row["error"] = ex.what();
        jm.push_back({{"model", name}, {"row", row}});
        break;
      }
      warmed = true;
      const double fl = full_flops(hp, T);
      row["full_ms"] = full_ms;
      row["full_tflops"] = fl / (full_ms * 1e-3) / 1e12;
      double ret_ms = 0, drop_ms = 0, model_speedup = 0;
      if (dash) {
        for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
          HaltingConfig hc;
          hc.policy = "topk";
          hc.halt_layer = 0.4;
          hc.keep = 1.0 / 3.0;
          hc.kv = kv;
          HaltingTrace tr;
          PrefillOptions po;
          po.halting = &hc;
          po.trace = &tr;
          const double ms = time_ms(r, false, [&] {
            e.reset();
            e.prefill(toks, po);
          });
          (kv == KVMode::Retain ? ret_ms : drop_ms) = ms;
          const std::string key = kv == KVMode::Retain ? "retain" : "drop";
          row[key + "_ms"] = ms;
          row[key + "_speedup"] = full_ms / ms;
          row[key + "_flop_speedup"] = tr.flops_full / tr.flops_done;
          row[key + "_tflops"] = tr.flops_done / (ms * 1e-3) / 1e12;
          if (kv == KVMode::Drop) model_speedup = tr.flops_full / tr.flops_done;
        }
      }
      std::printf("| %ld | %.1f | %.1f | %.0f | %.1f | %.2fx | %.1f | %.2fx | %.2fx |\n", static_cast<long>(T), full_ms,
                  fl / (full_ms * 1e-3) / 1e12, static_cast<double>(T) / (full_ms * 1e-3), ret_ms,
                  ret_ms > 0 ? full_ms / ret_ms : 0.0, drop_ms, drop_ms > 0 ? full_ms / drop_ms : 0.0, model_speedup);
      std::fflush(stdout);
      jm.push_back({{"model", name}, {"row", row}});
    }
    std::printf("\n");
  }
  out["models"] = jm;
  std::ofstream f(json_path);
  f << out.dump(2) << "\n";
  std::printf("JSON written to %s\n", json_path.c_str());
  return 0;
}
