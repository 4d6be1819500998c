// Prefill benchmark of the CUDA engine on random-weight bf16 models with the shapes of
// Llama-3.1-8B and Qwen2.5-7B: full prefill time and TFLOP/s, DASH topk(keep 1/3, halt 0.4L) in
// retain and drop modes with their speedups, the attention kernel alone (causal and the DASH
// subset case), and a large cuBLAS bf16 GEMM as the reference rate. Prints a markdown table and
// writes JSON.
//
//   dashlm_cuda_bench [--models llama8b,qwen7b] [--lengths 4096,8192,...] [--reps 3] [--json FILE]
//                     [--no-dash] [--no-kernels] [--own-attention] [--stages T]
//                     [--dash-spec SPEC]... [--dash-at T1,T2,...] [--query-rows N] [--fp8-cache]
//
// --dash-spec adds a table of halting settings (the spec grammar of `dashlm run --halting`, e.g.
// query:0.4:0.1:drop) against full prefill at the --dash-at lengths, alternating, with each
// setting's FLOP-model speedup; a policy that reads the query ranks by the last --query-rows
// tokens of the random prompt (default 64), which never halt.
//
// The models' dense attention runs through cuDNN when it is found (cu::attention_dense), else,
// or with --own-attention, through dashlm's own kernel; the kernel table times both.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/cuda/cuda_ops.h"
#include "common/stats.h"
#include "runtime/dash/policy.h"
#include "runtime/engine_cuda.h"
#if DASHLM_HAVE_CUPTI
#include "kernel_trace.h"
#endif

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

std::string fmt_num(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f", v);
  return b;
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

// One layer's stages timed alone at T tokens (full prefill, the engine's own calls and buffer
// shapes), each against its floor: FLOPs at the measured GEMM rate, bytes at the H200's HBM
// bandwidth (4.8 TB/s). The sum times n_layer is what a full prefill costs without launch gaps.
json stage_breakdown(const HParams& hp, int64_t T, double gemm_tflops) {
  const int64_t d = hp.n_embd, qd = hp.q_dim(), kvd = hp.kv_dim(), ff = hp.n_ff, qkvw = qd + 2 * kvd;
  const int64_t chunk = std::min<int64_t>(T, 8192);
  const auto sz = [](int64_t a, int64_t b) { return static_cast<size_t>(a * b); };
  cu::DeviceBuffer<float> x(sz(T, d)), qkv(sz(T, qkvw)), norm(static_cast<size_t>(d));
  cu::DeviceBuffer<cu::bf16> xn(sz(T, d)), q(sz(T, qd)), kc(sz(T, kvd)), vc(sz(T, kvd)), attn(sz(T, qd)),
      gu(sz(chunk, 2 * ff)), h(sz(chunk, ff)), w_qkv(sz(qkvw, d)), wo(sz(d, qd)), w_gu(sz(2 * ff, d)), w_down(sz(d, ff));
  cu::DeviceBuffer<int32_t> pos(static_cast<size_t>(T));
  std::vector<int32_t> ph(static_cast<size_t>(T));
  std::iota(ph.begin(), ph.end(), 0);
  pos.upload(ph.data(), ph.size());
  cu::fill_random_f32(x.get(), T * d, 0, 1, 11);
  cu::fill_random_f32(norm.get(), d, 1, 0.1f, 12);
  for (auto* w : {&w_qkv, &wo, &w_gu, &w_down}) cu::fill_random_bf16(w->get(), static_cast<int64_t>(w->size()), 0, 0.02f, 13);
  // Realistic values for the later stages: the normed input, then its projections.
  cu::rmsnorm(x.get(), norm.get(), xn.get(), T, d, hp.norm_eps);
  cu::gemm(xn.get(), w_qkv.get(), T, qkvw, d, qkv.get());
  cu::RopeParams rp;
  rp.head_dim = hp.head_dim;
  rp.n_rot = hp.n_rot;
  rp.freq_base = hp.rope_base;
  rp.neox = hp.rope_neox;
  cu::RopeParams none;
  none.head_dim = hp.head_dim;
  cu::AttentionParams ap;
  ap.n_head = hp.n_head;
  ap.n_head_kv = hp.n_head_kv;
  ap.head_dim = hp.head_dim;
  ap.scale = hp.attn_scale;
  const double bw = 4.8e12;
  json rows = json::array();
  double total = 0, total_floor = 0;
  std::printf("| stage (one layer, T = %ld) | ms | rate | floor ms | x floor |\n|---|---|---|---|---|\n", static_cast<long>(T));
  auto stage = [&](const char* name, double flops, double bytes, auto&& fn) {
    const double ms = time_ms(5, true, fn);
    const double floor = flops > 0 ? flops / (gemm_tflops * 1e12) * 1e3 : bytes / bw * 1e3;
    const std::string rate = flops > 0 ? fmt_num(flops / (ms * 1e-3) / 1e12) + " TFLOP/s" : fmt_num(bytes / (ms * 1e-3) / 1e9) + " GB/s";
    std::printf("| %s | %.3f | %s | %.3f | %.2f |\n", name, ms, rate.c_str(), floor, ms / floor);
    rows.push_back({{"stage", name}, {"ms", ms}, {"floor_ms", floor}, {"flops", flops}, {"bytes", bytes}});
    total += ms;
    total_floor += floor;
  };
  const double Td = static_cast<double>(T);
  stage("attention norm", 0, Td * d * 6, [&] { cu::rmsnorm(x.get(), norm.get(), xn.get(), T, d, hp.norm_eps); });
  stage("QKV GEMM (f32 out)", 2 * Td * d * qkvw, 0, [&] { cu::gemm(xn.get(), w_qkv.get(), T, qkvw, d, qkv.get()); });
  stage("heads: RoPE, bf16, K/V into the cache", 0, Td * qkvw * 6, [&] {
    cu::prep_heads(qkv.get(), qkvw, T, hp.n_head, nullptr, nullptr, hp.norm_eps, rp, pos.get(), q.get(), qd, nullptr);
    cu::prep_heads(qkv.get() + qd, qkvw, T, hp.n_head_kv, nullptr, nullptr, hp.norm_eps, rp, pos.get(), kc.get(), kvd, pos.get());
    cu::prep_heads(qkv.get() + qd + kvd, qkvw, T, hp.n_head_kv, nullptr, nullptr, hp.norm_eps, none, nullptr, vc.get(), kvd, pos.get());
  });
  stage(cu::dense_attention_available(nullptr) ? "attention (cuDNN, causal)" : "attention (dashlm kernel, causal)", 2 * Td * (Td + 1) * hp.head_dim * hp.n_head, 0, [&] {
    if (!cu::attention_dense(q.get(), T, kc.get(), vc.get(), T, ap, attn.get()))
      cu::attention(q.get(), pos.get(), T, kc.get(), vc.get(), T, nullptr, ap, attn.get());
  });
  stage("output GEMM, adds into x", 2 * Td * qd * d, 0, [&] { cu::gemm_accumulate(attn.get(), wo.get(), T, d, qd, x.get()); });
  stage("MLP norm", 0, Td * d * 6, [&] { cu::rmsnorm(x.get(), norm.get(), xn.get(), T, d, hp.norm_eps); });
  stage("gate/up GEMM (bf16 out)", 2 * Td * d * 2 * ff, 0, [&] {
    for (int64_t r0 = 0; r0 < T; r0 += chunk) cu::gemm(xn.get() + r0 * d, w_gu.get(), std::min(chunk, T - r0), 2 * ff, d, gu.get());
  });
  stage("SwiGLU", 0, Td * ff * 6, [&] {
    for (int64_t r0 = 0; r0 < T; r0 += chunk) cu::swiglu(gu.get(), h.get(), std::min(chunk, T - r0), ff);
  });
  stage("down GEMM, adds into x", 2 * Td * ff * d, 0, [&] {
    for (int64_t r0 = 0; r0 < T; r0 += chunk) cu::gemm_accumulate(h.get(), w_down.get(), std::min(chunk, T - r0), d, ff, x.get() + r0 * d);
  });
  std::printf("| **layer** | %.3f | | %.3f | %.2f |\n", total, total_floor, total / total_floor);
  std::printf("| **x %d layers** | %.1f | | %.1f | |\n\n", hp.n_layer, total * hp.n_layer, total_floor * hp.n_layer);
  return {{"T", T}, {"stages", rows}, {"layer_ms", total}, {"layer_floor_ms", total_floor}};
}

// T random token ids below vocab, repeatable from the seed (speed does not depend on them).
std::vector<int32_t> random_prompt(int64_t T, int64_t vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> toks(static_cast<size_t>(T));
  for (auto& t : toks) t = static_cast<int32_t>(rng() % static_cast<uint32_t>(vocab));
  return toks;
}

// The DASH setting: topk, decision at 0.4 L, a third of the tokens kept.
HaltingConfig dash_topk(KVMode kv) {
  HaltingConfig hc;
  hc.policy = "topk";
  hc.halt_layer = 0.4;
  hc.keep = 1.0 / 3.0;
  hc.kv = kv;
  return hc;
}

// Halting settings given as specs against full prefill at one length: per pass full prefill then
// each setting (alternating), medians of `reps` passes; the FLOP-model speedup from one traced run
// of each setting.
json dash_settings(CudaEngine& e, const HParams& hp, int64_t T, const std::vector<HaltingConfig>& specs, int64_t query_rows,
                   int reps) {
  const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, static_cast<uint32_t>(T));
  auto options = [&](const HaltingConfig& hc) {
    PrefillOptions po;
    po.halting = &hc;
    const PolicyInfo* info = find_halting_policy(hc.policy);
    po.query_rows = info && info->reads_query ? std::min(query_rows, T - 1) : 0;
    return po;
  };
  std::vector<double> flop(specs.size());
  for (size_t s = 0; s < specs.size(); ++s) {
    HaltingTrace tr;
    PrefillOptions po = options(specs[s]);
    po.trace = &tr;
    po.trace_deltas = false;
    e.reset();
    e.prefill(toks, po);  // also the first call of the setting (plans, buffers)
    flop[s] = tr.flops_full / tr.flops_done;
  }
  e.reset();
  e.prefill(toks);
  std::vector<double> full;
  std::vector<std::vector<double>> ms(specs.size());
  for (int pass = 0; pass < reps; ++pass) {
    full.push_back(time_ms(1, false, [&] {
      e.reset();
      e.prefill(toks);
    }));
    for (size_t s = 0; s < specs.size(); ++s) {
      const PrefillOptions po = options(specs[s]);
      ms[s].push_back(time_ms(1, false, [&] {
        e.reset();
        e.prefill(toks, po);
      }));
    }
  }
  const double full_ms = median(full);
  json rows = json::array();
  for (size_t s = 0; s < specs.size(); ++s) {
    const double m = median(ms[s]);
    std::printf("| %ld | %s | %.1f | %.1f | %.2fx | %.2fx | %.0f%% |\n", static_cast<long>(T), specs[s].spec().c_str(), full_ms, m,
                full_ms / m, flop[s], 100.0 * (full_ms / m) / flop[s]);
    rows.push_back({{"T", T}, {"spec", specs[s].spec()}, {"full_ms", full_ms}, {"ms", m}, {"speedup", full_ms / m},
                    {"flop_speedup", flop[s]}, {"query_rows", options(specs[s]).query_rows}});
  }
  std::fflush(stdout);
  return rows;
}

// Decoding after a prompt of T tokens: one prefill, then n steps replayed from the CUDA graph in
// five variants, alternating, three times each (the cache grows by a few hundred tokens over the
// passes): the engine's default (split-over-keys attention, our GEMV, programmatic dependent
// launches, Q/K/V prepared in one launch), the unsplit attention, cuBLAS for the M=1 products,
// plain launches, and Q/K/V prepared in three launches; medians. The bound: the bytes one step must read (every weight
// once, the K and V of every cached token once) at the copy rate measured in this run.
constexpr int kDecodeVariants = 5;

// The bytes of the weights one decode step reads (bf16: every layer's products and the logits').
double decode_weight_bytes(const HParams& hp) {
  return 2.0 * static_cast<double>(hp.n_layer) *
             static_cast<double>(hp.n_embd * (hp.q_dim() + 2 * hp.kv_dim()) + hp.n_embd * hp.q_dim() + 3 * hp.n_embd * hp.n_ff) +
         2.0 * static_cast<double>(hp.n_vocab * hp.n_embd);
}

// ms per token of n decode steps replayed from a graph recorded anew (the engine's switches as
// they are now): one step as it is, one recorded, then n timed.
double decode_ms_per_token(CudaEngine& e, int n) {
  e.set_cuda_graphs(true);  // drops the graph: recorded anew with the current kernels
  e.decode(1);
  e.decode(2);  // the graph is recorded here
  cu::synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) e.decode(static_cast<int32_t>(3 + i));
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / n;
}
constexpr int kDecodePasses = 3 * kDecodeVariants;  // three passes of each variant

json decode_speed(CudaEngine& e, const HParams& hp, int64_t T, int n, double copy_gbs) {
  const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, 7);
  const double weight_bytes = decode_weight_bytes(hp);
  const double kv_bytes = 2.0 * 2.0 * static_cast<double>(hp.n_layer) * static_cast<double>(T) * static_cast<double>(hp.kv_dim());
  const double bound_ms = (weight_bytes + kv_bytes) / (copy_gbs * 1e9) * 1e3;
  json j;
  j["T"] = T;
  j["steps"] = n;
  j["weight_bytes"] = weight_bytes;
  j["kv_bytes"] = kv_bytes;
  j["bound_ms"] = bound_ms;
  e.reset();
  e.prefill(toks);
  // default, unsplit attention, cuBLAS GEMMs, plain launches, three Q/K/V launches
  std::vector<double> per[kDecodeVariants];
  for (int pass = 0; pass < kDecodePasses; ++pass) {
    const int variant = pass % kDecodeVariants;
    cu::set_split_decode_enabled(variant != 1);
    cu::set_gemv_enabled(variant != 2);
    cu::set_pdl_enabled(variant != 3);
    cu::set_fused_qkv_enabled(variant != 4);
    per[variant].push_back(decode_ms_per_token(e, n));
  }
  cu::set_split_decode_enabled(true);
  cu::set_gemv_enabled(true);
  cu::set_pdl_enabled(true);
  cu::set_fused_qkv_enabled(true);
  for (auto& v : per) std::sort(v.begin(), v.end());
  const double ms = per[0][1], unsplit_ms = per[1][1], cublas_ms = per[2][1], plain_ms = per[3][1], qkv3_ms = per[4][1];
  std::printf("| %ld | %.3f | %.3f | %.2fx | %.3f | %.3f | %.3f | %.3f | %.0f |\n", static_cast<long>(T), bound_ms, ms,
              ms / bound_ms, unsplit_ms, cublas_ms, plain_ms, qkv3_ms, (weight_bytes + kv_bytes) / (ms * 1e-3) / 1e9);
  std::fflush(stdout);
  j["split_ms"] = ms;
  j["unsplit_ms"] = unsplit_ms;
  j["cublas_m1_ms"] = cublas_ms;
  j["plain_launch_ms"] = plain_ms;
  j["three_qkv_launches_ms"] = qkv3_ms;
  j["split_x_bound"] = ms / bound_ms;
  return j;
}

// The bf16 cache against the fp8 one (--fp8-cache): both engines (same random weights) prefill
// the same T-token prompt (timed once each, bf16 first), then decode n steps from the CUDA graph,
// alternating, 3 passes each; medians. Each bound counts the cache's own bytes (fp8: one byte per
// element and a 4-byte scale per head and slot).
json decode_cache_ab(CudaEngine& e16, CudaEngine& e8, const HParams& hp, int64_t T, int n, double copy_gbs) {
  const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, 7);
  const double weight_bytes = decode_weight_bytes(hp);
  const double slots = static_cast<double>(hp.n_layer) * static_cast<double>(T);
  const double kv16 = 2.0 * 2.0 * slots * static_cast<double>(hp.kv_dim());
  const double kv8 = 2.0 * slots * (static_cast<double>(hp.kv_dim()) + 4.0 * hp.n_head_kv);
  const double b16 = (weight_bytes + kv16) / (copy_gbs * 1e9) * 1e3, b8 = (weight_bytes + kv8) / (copy_gbs * 1e9) * 1e3;
  double prefill_ms[2];
  CudaEngine* es[2] = {&e16, &e8};
  for (int i = 0; i < 2; ++i) {
    es[i]->reset();
    cu::synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    es[i]->prefill(toks);
    cu::synchronize();
    prefill_ms[i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  }
  std::vector<double> per[2];
  for (int pass = 0; pass < 6; ++pass) {
    const int variant = pass % 2;
    per[variant].push_back(decode_ms_per_token(*es[variant], n));
  }
  for (auto& v : per) std::sort(v.begin(), v.end());
  const double m16 = per[0][1], m8 = per[1][1];
  std::printf("| %ld | %.3f | %.3f | %.2fx | %.3f | %.3f | %.2fx | %.3f | %.0f | %.0f |\n", static_cast<long>(T), b16, m16, m16 / b16,
              b8, m8, m8 / b8, m8 / m16, prefill_ms[0], prefill_ms[1]);
  std::fflush(stdout);
  json j;
  j["T"] = T;
  j["steps"] = n;
  j["bf16_bound_ms"] = b16;
  j["bf16_ms"] = m16;
  j["fp8_bound_ms"] = b8;
  j["fp8_ms"] = m8;
  j["fp8_over_bf16"] = m8 / m16;
  j["prefill_bf16_ms"] = prefill_ms[0];
  j["prefill_fp8_ms"] = prefill_ms[1];
  return j;
}

// Each projection of one decoding step alone (one row times the weight), our GEMV against cuBLAS,
// alternating, medians of 5 timings of 20 calls; the floor is the weight's bytes at the copy rate.
// The weights are 8 copies over 1 GiB or more, used in turn, so no call finds them in L2.
json projection_speed(const HParams& hp, double copy_gbs) {
  struct Proj {
    const char* name;
    int64_t n, k;
  };
  const Proj projs[] = {{"qkv", hp.q_dim() + 2 * hp.kv_dim(), hp.n_embd}, {"out", hp.n_embd, hp.q_dim()},
                        {"gate+up", 2 * hp.n_ff, hp.n_embd},               {"down", hp.n_embd, hp.n_ff},
                        {"logits", hp.n_vocab, hp.n_embd}};
  json out = json::array();
  std::printf("| projection | n x k | MB | floor us | GEMV us | cuBLAS us | GEMV / floor | cuBLAS / GEMV |\n|---|---|---|---|---|---|---|---|\n");
  for (const Proj& p : projs) {
    const size_t elems = static_cast<size_t>(p.n * p.k);
    const int copies = static_cast<int>(std::max<size_t>(2, std::min<size_t>(8, (size_t{1} << 30) / (2 * elems) + 1)));
    cu::DeviceBuffer<cu::bf16> w(elems * copies), x(static_cast<size_t>(p.k));
    cu::DeviceBuffer<float> y(static_cast<size_t>(p.n));
    cu::fill_random_bf16(w.get(), static_cast<int64_t>(elems * copies), 0, 0.02f, 11);
    cu::fill_random_bf16(x.get(), p.k, 0, 1, 12);
    std::vector<double> t[2];
    for (int pass = 0; pass < 10; ++pass) {
      const bool gemv = pass % 2 == 0;
      cu::set_gemv_enabled(gemv);
      int c = 0;
      t[gemv ? 0 : 1].push_back(time_ms(1, false, [&] {
        for (int i = 0; i < 20; ++i) cu::gemm(x.get(), w.get() + elems * (c++ % copies), 1, p.n, p.k, y.get());
      }) / 20);
    }
    cu::set_gemv_enabled(true);
    for (auto& v : t) std::sort(v.begin(), v.end());
    const double bytes = 2.0 * static_cast<double>(elems);
    const double floor_us = bytes / (copy_gbs * 1e9) * 1e6, gemv_us = t[0][2] * 1e3, cublas_us = t[1][2] * 1e3;
    std::printf("| %s | %ld x %ld | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", p.name, static_cast<long>(p.n),
                static_cast<long>(p.k), bytes / 1e6, floor_us, gemv_us, cublas_us, gemv_us / floor_us, cublas_us / gemv_us);
    out.push_back({{"projection", p.name}, {"n", p.n}, {"k", p.k}, {"floor_us", floor_us}, {"gemv_us", gemv_us}, {"cublas_us", cublas_us}});
  }
  std::printf("\n");
  std::fflush(stdout);
  return out;
}

// Device-to-device copy rate in GB/s, counting the bytes read and written (the bandwidth bound
// of the decode table), median of 10 copies of 2 GiB.
double copy_rate_gbs() {
  const size_t bytes = size_t{2} << 30;
  cu::DeviceBuffer<uint8_t> a(bytes), b(bytes);
  cu::fill_bytes(a.get(), 1, bytes);
  const double ms = time_ms(10, true, [&] { cu::copy_on_device(b.get(), a.get(), bytes); });
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
}

#if DASHLM_HAVE_CUPTI
// "void dashlm::cuda::(anonymous namespace)::k_rmsnorm<4>(float const*, ...)" -> "k_rmsnorm<4>".
std::string short_kernel_name(std::string s) {
  if (s.rfind("void ", 0) == 0) s = s.substr(5);
  for (const std::string anon = "(anonymous namespace)::"; s.find(anon) != std::string::npos;) s.erase(s.find(anon), anon.size());
  int depth = 0;
  size_t cut = s.size();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0 && i > 0) {
      cut = i;
      break;
    }
  }
  s = s.substr(0, cut);
  size_t last_ns = std::string::npos;
  depth = 0;
  for (size_t i = 0; i + 1 < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (depth == 0 && s[i] == ':' && s[i + 1] == ':') last_ns = i + 1;
  }
  if (last_ns != std::string::npos) s = s.substr(last_ns + 1);
  return s.size() > 90 ? s.substr(0, 87) + "..." : s;
}

// A traced piece of work on the GPU's timeline: its span, how much of it no kernel or copy ran
// (gaps between them), and the kernels that took the time, grouped by name; `per` divides the
// times (several decode steps traced: per step).
json summarize_timeline(bench::GpuTrace& tr, double wall, const std::string& title, int per) {
  std::sort(tr.items.begin(), tr.items.end(), [](const auto& a, const auto& b) { return a.start < b.start; });
  const uint64_t first = tr.items.front().start;
  uint64_t last = first, busy = 0, cur_s = first, cur_e = first, gaps_over_10us = 0, n_gaps_over_10us = 0, max_gap = 0;
  std::map<std::string, std::pair<int, double>> by_name;
  double kernel_sum = 0;
  for (const auto& it : tr.items) {
    last = std::max(last, it.end);
    auto& g = by_name[short_kernel_name(it.name)];
    g.first += 1;
    g.second += static_cast<double>(it.end - it.start) * 1e-6 / per;
    kernel_sum += static_cast<double>(it.end - it.start) * 1e-6 / per;
    if (it.start > cur_e) {
      busy += cur_e - cur_s;
      const uint64_t gap = it.start - cur_e;
      max_gap = std::max(max_gap, gap);
      if (gap > 10000) {
        gaps_over_10us += gap;
        ++n_gaps_over_10us;
      }
      cur_s = it.start;
    }
    cur_e = std::max(cur_e, it.end);
  }
  busy += cur_e - cur_s;
  const double span = static_cast<double>(last - first) * 1e-6 / per;
  const double idle = span - static_cast<double>(busy) * 1e-6 / per;
  std::printf("### %s\n\n", title.c_str());
  std::printf("host wall %.3f ms; GPU span %.3f ms (first to last activity); %zu kernels/copies summing to %.3f ms; "
              "idle %.3f ms (%.1f%% of the span): %lu gaps over 10 us summing to %.3f ms, largest %.3f ms%s\n\n",
              wall / per, span, tr.items.size() / static_cast<size_t>(per), kernel_sum, idle, 100.0 * idle / span,
              static_cast<unsigned long>(n_gaps_over_10us), static_cast<double>(gaps_over_10us) * 1e-6 / per,
              static_cast<double>(max_gap) * 1e-6, per > 1 ? " (times per step)" : "");
  std::vector<std::pair<std::string, std::pair<int, double>>> rows(by_name.begin(), by_name.end());
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.second > b.second.second; });
  std::printf("| kernel | calls | ms | us per call | share of span |\n|---|---|---|---|---|\n");
  json jk = json::array();
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& [name, v] = rows[i];
    const int calls = v.first / per;
    if (i < 25)
      std::printf("| %s | %d | %.3f | %.2f | %.1f%% |\n", name.c_str(), calls, v.second, 1e3 * v.second / std::max(calls, 1),
                  100.0 * v.second / span);
    jk.push_back({{"name", name}, {"calls", calls}, {"ms", v.second}});
  }
  std::printf("\n");
  return {{"case", title}, {"wall_ms", wall / per}, {"span_ms", span}, {"kernel_sum_ms", kernel_sum}, {"idle_ms", idle},
          {"gaps_over_10us_ms", static_cast<double>(gaps_over_10us) * 1e-6 / per}, {"kernels", jk}};
}

// work() on the GPU's timeline, timed on the host too; the summary per `per` repetitions.
json traced(const std::function<void()>& work, const std::string& title, int per) {
  bench::GpuTrace tr;
  std::string why;
  double wall = 0;
  const bool ok = bench::trace_gpu(
      [&] {
        const auto t0 = std::chrono::steady_clock::now();
        work();
        wall = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      },
      &tr, &why);
  if (!ok || tr.items.empty()) {
    std::printf("kernel trace unavailable: %s\n\n", ok ? "no activity recorded" : why.c_str());
    return {{"error", ok ? "no activity recorded" : why}};
  }
  return summarize_timeline(tr, wall, title, per);
}

// One prefill of T tokens on the GPU's timeline.
json kernel_timeline(CudaEngine& e, const HParams& hp, int64_t T, const HaltingConfig* hc, const char* label) {
  const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, static_cast<uint32_t>(T));
  PrefillOptions po;
  po.halting = hc;
  e.reset();
  e.prefill(toks, po);  // plans built outside the trace
  cu::synchronize();
  json j = traced(
      [&] {
        e.reset();
        e.prefill(toks, po);
      },
      std::string(label) + ", T " + std::to_string(T) + ": GPU timeline of one prefill", 1);
  j["T"] = T;
  return j;
}

// Decoding after T prompt tokens on the GPU's timeline: `steps` steps replayed from the CUDA
// graph (recorded before the trace), times per step.
json decode_timeline(CudaEngine& e, const HParams& hp, int64_t T, int steps, const std::string& label) {
  const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, 7);
  e.reset();
  e.prefill(toks);
  e.set_cuda_graphs(true);
  e.decode(1);
  e.decode(2);  // the graph is recorded here
  cu::synchronize();
  json j = traced(
      [&] {
        for (int i = 0; i < steps; ++i) e.decode(static_cast<int32_t>(3 + i));
        cu::synchronize();
      },
      label + ": GPU timeline of a decode step after " + std::to_string(T) + " tokens, " + std::to_string(steps) + " steps",
      steps);
  j["T"] = T;
  return j;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  std::string models = "llama8b,qwen7b", json_path = "cuda_bench.json";
  std::vector<int64_t> lengths = {4096, 8192, 16384, 32768, 65536, 131072};
  int reps = 3;
  bool dash = true, kernels = true, own_attention = false;
  int64_t stages_T = 32768;
  int decode_n = 32;
  std::vector<int64_t> decode_at;
  bool fp8_ab = false;  // --fp8-cache: the decode table of the bf16 cache against the fp8 one
  bool prefill_table = true;
  int64_t trace_T = 0, decode_trace_T = 0;
  std::vector<HaltingConfig> dash_specs;
  std::vector<int64_t> dash_at;
  int64_t query_rows = 64;
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
    else if (a == "--own-attention") own_attention = true;
    else if (a == "--stages") stages_T = std::stoll(next());
    else if (a == "--decode") decode_n = std::stoi(next());
    else if (a == "--decode-at") decode_at = parse_list(next());
    else if (a == "--fp8-cache") fp8_ab = true;
    else if (a == "--no-prefill") prefill_table = false;
    else if (a == "--kernel-trace") trace_T = std::stoll(next());
    else if (a == "--decode-trace") decode_trace_T = std::stoll(next());
    else if (a == "--dash-spec") {
      try {
        dash_specs.push_back(HaltingConfig::parse(next()));
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "error: --dash-spec: %s\n", ex.what());
        return 2;
      }
    } else if (a == "--dash-at") dash_at = parse_list(next());
    else if (a == "--query-rows") query_rows = std::stoll(next());
    else {
      std::fprintf(stderr, "usage: %s [--models llama8b,qwen7b] [--lengths 4096,...] [--reps N] [--json FILE] [--no-dash] [--no-kernels] [--own-attention] [--stages T (0: off)] [--decode N (0: off)] [--decode-at T1,T2,... (default: the first length)] [--fp8-cache] [--no-prefill] [--kernel-trace T] [--decode-trace T] [--dash-spec SPEC]... [--dash-at T1,...] [--query-rows N]\n", argv[0]);
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
  std::string no_cudnn;
  const bool cudnn = cu::dense_attention_available(&no_cudnn);
  std::printf("cuDNN attention: %s\n", cudnn ? "available" : no_cudnn.c_str());
  out["cudnn"] = cudnn;

  // --- reference rate: a large bf16 GEMM ---------------------------------------------------------
  double gemm_tflops = 0;
  {
    const int64_t N = 8192;
    cu::DeviceBuffer<cu::bf16> x(static_cast<size_t>(N * N)), w(static_cast<size_t>(N * N)), y(static_cast<size_t>(N * N));
    cu::fill_random_bf16(x.get(), N * N, 0, 1, 1);
    cu::fill_random_bf16(w.get(), N * N, 0, 1, 2);
    const double ms = time_ms(10, true, [&] { cu::gemm(x.get(), w.get(), N, N, N, y.get()); });
    gemm_tflops = 2.0 * N * N * N / (ms * 1e-3) / 1e12;
    // The same GEMM back to back for about a second, as long as a 32k prefill runs: the rate the
    // GPU holds under sustained load (clocks drop when it draws its full power), against the
    // burst rate above that the floors use.
    const int sustained_reps = std::max(1, static_cast<int>(1000.0 / ms));
    const double ms_sustained = time_ms(1, false, [&] {
      for (int i = 0; i < sustained_reps; ++i) cu::gemm(x.get(), w.get(), N, N, N, y.get());
    }) / sustained_reps;
    const double sustained_tflops = 2.0 * N * N * N / (ms_sustained * 1e-3) / 1e12;
    std::printf("cuBLASLt bf16 GEMM 8192^3: %.3f ms, %.1f TFLOP/s (median of 10 calls); %.1f TFLOP/s sustained over %d calls back to back (%.0f ms)\n\n",
                ms, gemm_tflops, sustained_tflops, sustained_reps, ms_sustained * sustained_reps);
    out["gemm_8192_tflops"] = gemm_tflops;
    out["gemm_8192_sustained_tflops"] = sustained_tflops;
  }

  // --- the attention kernel alone ------------------------------------------------------------------
  if (kernels) {
    std::printf("| attention (hd 128, 32 heads, 8 KV heads) | kernel | T | queries | ms | TFLOP/s |\n|---|---|---|---|---|---|\n");
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
        double keys = 0;
        for (int32_t p : pos) keys += p + 1;
        auto report = [&](const char* what, const char* kernel, int64_t n_q, double n_keys, double ms) {
          const double tf = 4.0 * HD * H * n_keys / (ms * 1e-3) / 1e12;
          std::printf("| %s | %s | %ld | %ld | %.3f | %.1f |\n", what, kernel, static_cast<long>(T), static_cast<long>(n_q), ms, tf);
          ja.push_back({{"T", T}, {"case", what}, {"kernel", kernel}, {"n_q", n_q}, {"ms", ms}, {"tflops", tf}});
        };
        const double ms = time_ms(5, true, [&] {
          cu::attention(q.get(), dpos.get(), nq, k.get(), v.get(), T, nullptr, ap, o.get());
        });
        report(subset ? "DASH retain: 1/3 of the queries, all keys" : "causal", "dashlm", nq, keys, ms);
        if (cudnn && subset) {
          // Retain through cuDNN (blocks of queries against the keys before them) + our split kernel.
          cu::attention_subset(q.get(), dpos.get(), pos.data(), nq, k.get(), v.get(), T, ap, o.get());  // plan build
          const double ms_s = time_ms(5, true, [&] {
            cu::attention_subset(q.get(), dpos.get(), pos.data(), nq, k.get(), v.get(), T, ap, o.get());
          });
          report("DASH retain: 1/3 of the queries, all keys", "cuDNN blocks + dashlm tail", nq, keys, ms_s);
        }
        if (cudnn) {
          // cuDNN: the full causal case, and drop mode's case (the active third, compacted).
          const int64_t n = subset ? nq : T;
          // The first call at a new shape builds cuDNN's execution plan: timed on its own.
          const double cold = time_ms(1, false, [&] { cu::attention_dense(q.get(), n, k.get(), v.get(), n, ap, o.get()); });
          std::printf("| (first call, plan build included) | cuDNN | %ld | %ld | %.3f | |\n", static_cast<long>(T),
                      static_cast<long>(n), cold);
          ja.push_back({{"T", T}, {"case", subset ? "drop first call" : "causal first call"}, {"kernel", "cuDNN"}, {"ms", cold}});
          const double ms_c = time_ms(5, true, [&] { cu::attention_dense(q.get(), n, k.get(), v.get(), n, ap, o.get()); });
          report(subset ? "DASH drop: the active third, compacted" : "causal", "cuDNN", n,
                 static_cast<double>(n) * static_cast<double>(n + 1) / 2, ms_c);
        }
      }
    }
    out["attention"] = ja;
    std::printf("\n%s\n\n", cu::dense_attention_stats().c_str());
  }

  if (own_attention) cu::set_dense_attention_enabled(false);
  std::printf("models' dense attention: %s\n\n", cudnn && !own_attention ? "cuDNN" : "dashlm's kernel");
  out["model_attention"] = cudnn && !own_attention ? "cudnn" : "dashlm";

  double copy_gbs = 0;
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
    if (decode_n > 0 && decode_at.empty()) decode_at = {lengths.front()};
    int64_t max_len = prefill_table ? *std::max_element(lengths.begin(), lengths.end()) : 0;
    if (decode_n > 0) max_len = std::max(max_len, *std::max_element(decode_at.begin(), decode_at.end()) + kDecodePasses * (decode_n + 2));
    if (!dash_specs.empty() && dash_at.empty()) dash_at = {lengths.back()};
    if (!dash_specs.empty()) max_len = std::max(max_len, *std::max_element(dash_at.begin(), dash_at.end()));
    if (decode_trace_T > 0) max_len = std::max(max_len, decode_trace_T + 16);
    if (stages_T > 0) {
      std::printf("## %s shape: one layer's stages alone\n\n", name.c_str());
      out["stages_" + name] = stage_breakdown(hp, stages_T, gemm_tflops);
    }
    CudaEngine e(hp, max_len + decode_n + 8, 42);
    std::printf("## %s shape (%d layers, d %ld, %d/%d heads, ff %ld, vocab %ld), random bf16 weights\n\n", name.c_str(),
                hp.n_layer, static_cast<long>(hp.n_embd), hp.n_head, hp.n_head_kv, static_cast<long>(hp.n_ff),
                static_cast<long>(hp.n_vocab));
    if (prefill_table) {
      std::printf("| T | full ms | full TFLOP/s | tok/s | DASH retain ms | speedup | DASH drop ms | speedup | FLOP-model speedup (drop) | first call full / retain / drop ms |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    }
    bool warmed = false;
    for (int64_t T : prefill_table ? lengths : std::vector<int64_t>{}) {
      const std::vector<int32_t> toks = random_prompt(T, hp.n_vocab, static_cast<uint32_t>(T));
      const int r = T >= 65536 ? 1 : reps;
      json row;
      row["T"] = T;
      double full_ms = 0, full_cold_ms = 0;
      try {
        // The first prefill at a length (new attention shapes: cuDNN plans are built) on its own,
        // then the median of warm runs.
        full_cold_ms = time_ms(1, false, [&] {
          e.reset();
          e.prefill(toks);
        });
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
      row["full_first_ms"] = full_cold_ms;
      row["full_tflops"] = fl / (full_ms * 1e-3) / 1e12;
      double ret_ms = 0, drop_ms = 0, model_speedup = 0;
      if (dash) {
        for (KVMode kv : {KVMode::Retain, KVMode::Drop}) {
          const HaltingConfig hc = dash_topk(kv);
          HaltingTrace tr;
          PrefillOptions po, traced;
          po.halting = traced.halting = &hc;
          traced.trace = &tr;
          const double cold = time_ms(1, false, [&] {
            e.reset();
            e.prefill(toks, po);
          });
          // The FLOP count from one traced run (a trace copies every layer's deltas to the host:
          // not part of the timed runs; it also keeps the output GEMM from adding into the
          // residual stream, so a near tie could decide differently: the count is the traced
          // run's, the same number of tokens halts).
          e.reset();
          e.prefill(toks, traced);
          const double ms = time_ms(r, false, [&] {
            e.reset();
            e.prefill(toks, po);
          });
          (kv == KVMode::Retain ? ret_ms : drop_ms) = ms;
          const std::string key = kv == KVMode::Retain ? "retain" : "drop";
          row[key + "_first_ms"] = cold;
          row[key + "_ms"] = ms;
          row[key + "_speedup"] = full_ms / ms;
          row[key + "_flop_speedup"] = tr.flops_full / tr.flops_done;
          row[key + "_tflops"] = tr.flops_done / (ms * 1e-3) / 1e12;
          if (kv == KVMode::Drop) model_speedup = tr.flops_full / tr.flops_done;
        }
      }
      std::printf("| %ld | %.1f | %.1f | %.0f | %.1f | %.2fx | %.1f | %.2fx | %.2fx | %.1f / %.1f / %.1f |\n", static_cast<long>(T),
                  full_ms, fl / (full_ms * 1e-3) / 1e12, static_cast<double>(T) / (full_ms * 1e-3), ret_ms,
                  ret_ms > 0 ? full_ms / ret_ms : 0.0, drop_ms, drop_ms > 0 ? full_ms / drop_ms : 0.0, model_speedup,
                  full_cold_ms, row.value("retain_first_ms", 0.0), row.value("drop_first_ms", 0.0));
      std::fflush(stdout);
      jm.push_back({{"model", name}, {"row", row}});
    }
    if (!dash_specs.empty()) {
      for (const HaltingConfig& hc : dash_specs) hc.validate(hp.n_layer);
      std::printf("DASH settings against full prefill, %s shape (medians of %d alternating passes; query rows %ld)\n\n", name.c_str(),
                  reps, static_cast<long>(query_rows));
      std::printf("| T | setting | full ms | DASH ms | speedup | FLOP-model speedup | measured / model |\n|---|---|---|---|---|---|---|\n");
      json jd = json::array();
      for (int64_t T : dash_at)
        for (auto& row : dash_settings(e, hp, T, dash_specs, query_rows, reps)) jd.push_back(row);
      out["dash_settings_" + name] = jd;
      std::printf("\n");
    }
    std::printf("\n%s\n\n", cu::dense_attention_stats().c_str());
    if (decode_n > 0) {
      if (copy_gbs <= 0) copy_gbs = copy_rate_gbs();
      std::printf("Decode, %s shape, %d steps from the CUDA graph (medians of 3 passes); bound: weights + KV read once at the measured copy rate %.0f GB/s\n\n",
                  name.c_str(), decode_n, copy_gbs);
      std::printf("| after T tokens | bound ms | ms/token | / bound | unsplit attention ms/token | cuBLAS M=1 ms/token | plain launches ms/token | 3 Q/K/V launches ms/token | GB/s |\n|---|---|---|---|---|---|---|---|---|\n");
      json jd = json::array();
      for (int64_t T : decode_at) jd.push_back(decode_speed(e, hp, T, decode_n, copy_gbs));
      std::printf("\nThe decoding step's projections, one row, %s shape:\n\n", name.c_str());
      out["projections_" + name] = projection_speed(hp, copy_gbs);
      out["decode_" + name] = jd;
      out["copy_gbs"] = copy_gbs;
      if (fp8_ab) {
        CudaEngine e8(hp, max_len + decode_n + 8, 42, CacheType::FP8);
        std::printf("\nDecode with the bf16 and the fp8 KV cache, %s shape, %d steps from the CUDA graph, alternating (medians of 3 passes); prefill: one each\n\n",
                    name.c_str(), decode_n);
        std::printf("| after T tokens | bf16 bound ms | bf16 ms/token | / bound | fp8 bound ms | fp8 ms/token | / bound | fp8 / bf16 | prefill bf16 ms | prefill fp8 ms |\n|---|---|---|---|---|---|---|---|---|---|\n");
        json j8 = json::array();
        for (int64_t T : decode_at) j8.push_back(decode_cache_ab(e, e8, hp, T, decode_n, copy_gbs));
        out["decode_fp8_" + name] = j8;
      }
    }
    if (trace_T > 0 && trace_T <= max_len) {
#if DASHLM_HAVE_CUPTI
      const HaltingConfig drop = dash_topk(KVMode::Drop), retain = dash_topk(KVMode::Retain);
      json jt = json::array();
      jt.push_back(kernel_timeline(e, hp, trace_T, nullptr, (name + " full prefill").c_str()));
      jt.push_back(kernel_timeline(e, hp, trace_T, &drop, (name + " DASH topk drop").c_str()));
      jt.push_back(kernel_timeline(e, hp, trace_T, &retain, (name + " DASH topk retain").c_str()));
      out["timeline_" + name] = jt;
#else
      std::printf("--kernel-trace: built without CUPTI\n\n");
#endif
    }
    if (decode_trace_T > 0) {
#if DASHLM_HAVE_CUPTI
      out["decode_timeline_" + name] = decode_timeline(e, hp, decode_trace_T, 8, name);
#else
      std::printf("--decode-trace: built without CUPTI\n\n");
#endif
    }
  }
  out["models"] = jm;
  std::ofstream f(json_path);
  f << out.dump(2) << "\n";
  std::printf("JSON written to %s\n", json_path.c_str());
  return 0;
}
