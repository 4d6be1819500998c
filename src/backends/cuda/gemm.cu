// GEMMs through cuBLASLt: bf16 operands, fp32 accumulation, fp32 or bf16 results. A plan
// (descriptors and the heuristic's algorithm) is cached per shape, type and pointer alignment.
// When cuBLASLt has no algorithm for a shape (odd leading dimensions), cublasGemmEx runs it.
// Products of at most four rows (decoding) run a GEMV of our own instead: they are bound by
// reading the weights once, which cuBLASLt's M=1 kernels do at about two thirds of the copy rate.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstdlib>
#include <map>
#include <string>
#include <mutex>
#include <tuple>
#include <type_traits>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda {

namespace {

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) detail::raise_error(std::string("cuBLAS error ") + std::to_string(static_cast<int>(s)) + " in " + what);
}
#define DASHLM_BLAS_CHECK(call) check_blas((call), #call)

constexpr size_t kWorkspaceBytes = size_t{64} << 20;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool lt = false;  // false: cublasGemmEx
};

struct State {
  std::mutex mu;
  cublasLtHandle_t lt = nullptr;
  cublasHandle_t blas = nullptr;
  void* workspace = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int, int>, Plan> plans;

  void init() {
    if (lt) return;
    DASHLM_BLAS_CHECK(cublasLtCreate(&lt));
    DASHLM_BLAS_CHECK(cublasCreate(&blas));
    DASHLM_BLAS_CHECK(cublasSetStream(blas, detail::stream()));
    workspace = device_alloc(kWorkspaceBytes);
    // The fallback's workspace given, not allocated by cuBLAS: GEMMs can then be recorded in a
    // CUDA graph. Both handles run on one stream, so they can share it.
    DASHLM_BLAS_CHECK(cublasSetWorkspace(blas, workspace, kWorkspaceBytes));
  }
};

State& state() {
  static State s;  // never destroyed explicitly: the process exit releases the device
  return s;
}

int alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  int al = 256;
  while (al > 1 && (a % static_cast<uintptr_t>(al)) != 0) al >>= 1;
  return al;
}

Plan make_plan(State& st, int64_t m, int64_t n, int64_t k, int64_t ldy, cudaDataType_t ty, int align) {
  Plan p;
  DASHLM_BLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  DASHLM_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  DASHLM_BLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  // Column-major view: Y^T (n x m, ld ldy) = W (stored k x n, ld k, transposed) * X^T (k x m, ld k).
  DASHLM_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(n), k));
  DASHLM_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, static_cast<uint64_t>(k), static_cast<uint64_t>(m), k));
  DASHLM_BLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ty, static_cast<uint64_t>(n), static_cast<uint64_t>(m), ldy));

  cublasLtMatmulPreference_t pref = nullptr;
  DASHLM_BLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  DASHLM_BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t al = static_cast<uint32_t>(align);
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES}) {
    DASHLM_BLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, attr, &al, sizeof(al)));
  }
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(st.lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s == CUBLAS_STATUS_SUCCESS && found > 0 && res.state == CUBLAS_STATUS_SUCCESS) {
    p.algo = res.algo;
    p.lt = true;
  }
  return p;
}

// --- GEMV: y[m x n] (+)= x[m x k] * W^T for m <= 4 ------------------------------------------------
// One warp per output column (a row of W): each lane streams 16-byte vectors of the row, four in
// flight, against the same slice of every x row (x is small and stays in L1; read with coherent
// loads, not the read-only path, since the kernel starts before the one writing x has finished),
// and the warp sums its lanes at the end. Needs k % 8 == 0 and 16-byte aligned x and W; other calls go to cuBLAS.

constexpr int kGemvThreads = 128;
constexpr int64_t kGemvMaxRows = 4;

__device__ __forceinline__ float dot8_bf16(uint4 a, uint4 b) {
  const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    s = fmaf(__uint_as_float(av[i] << 16), __uint_as_float(bv[i] << 16), s);
    s = fmaf(__uint_as_float(av[i] & 0xffff0000u), __uint_as_float(bv[i] & 0xffff0000u), s);
  }
  return s;
}

__device__ __forceinline__ void store_out(float* y, float v, bool accumulate) { *y = accumulate ? *y + v : v; }
__device__ __forceinline__ void store_out(__nv_bfloat16* y, float v, bool) { *y = __float2bfloat16(v); }

// kSilu, kGelu: the fused gate/up product of the MLP. W is [gate; up] (2n rows): the warp of
// column c reads rows c and n + c and writes act(gate) * up in bf16. kQkv: the stacked Q/K/V
// product with prep_qkv's work as its epilogue (GemvQkv below).
constexpr int kNoAct = 0, kSilu = 1, kGelu = 2, kQkv = 3;
constexpr int kGemvWarps = kGemvThreads / 32;
static_assert(kGemvWarps % 2 == 0, "a rotated pair's two columns share a CTA");

// The RMS norm carried between two GEMVs (NormCarry in cuda_ops.h). in: this GEMV's x is
// x * w_norm without the 1 / rms scale; the scale comes from the producer's partial sums of
// squares (n_part per row) and multiplies the dot products. out: this GEMV adds into x (float),
// writes bf16(x * w_next) and its CTA's sum of the new x's squares per row.
struct GemvNorm {
  const float* part_in = nullptr;
  int n_part = 0;
  float inv_dim = 0.f, eps = 0.f;
  const float* w_next = nullptr;
  __nv_bfloat16* xw = nullptr;
  float* part_out = nullptr;
};

// The Q/K/V epilogue (QkvPrep in cuda_ops.h): each value gets its bias, the Q and K columns are
// rotated, and all go to bf16: Q into q, K and V into the cache slots pos[r]. The warps of a CTA
// take columns in rotation-pair order, so that a pair's two columns are the neighbouring warps
// w and w ^ 1 and meet in shared memory: (2i, 2i+1) as they are, or (i, i + n_rot/2) of each
// head for NeoX-style pairs.
struct GemvQkv {
  __nv_bfloat16 *q = nullptr, *k = nullptr, *v = nullptr;
  int64_t q_stride = 0, kv_stride = 0, qd = 0, kvd = 0;
  const float* bias = nullptr;
  const int32_t* pos = nullptr;
  RopeParams rope;
};

template <int M, int kAct, typename OutT>
__global__ void __launch_bounds__(kGemvThreads) k_gemv(const uint4* x, const uint4* __restrict__ w, int64_t n,
                                                        int64_t kv, OutT* __restrict__ y, int64_t ldy, bool accumulate,
                                                        GemvNorm nm, GemvQkv qk) {
  constexpr int P = kAct == kSilu || kAct == kGelu ? 2 : 1;  // rows of W per output column
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t slot = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;  // the warp's place in pair order
  int64_t col = slot;
  int pair = -1;  // kQkv: the rotated pair this column belongs to (-1: not rotated)
  if constexpr (kAct == kQkv) {
    if (slot < qk.qd + qk.kvd && qk.rope.n_rot > 0) {
      const int t = static_cast<int>(slot % qk.rope.head_dim);
      if (t < qk.rope.n_rot) {
        pair = t >> 1;
        if (qk.rope.neox) col = slot - t + pair + (t & 1) * (qk.rope.n_rot / 2);
      }
    }
  }
  const bool live = col < n;  // no early return: a carried norm joins the CTA's warps at the end
  const int64_t kl = live ? kv : 0;
  const uint4* wr[P];
#pragma unroll
  for (int p = 0; p < P; ++p) wr[p] = w + (live ? col + p * n : 0) * kv;
  float acc[P][M];
#pragma unroll
  for (int p = 0; p < P; ++p)
#pragma unroll
    for (int r = 0; r < M; ++r) acc[p][r] = 0.f;
  // The first vectors of W are loaded before waiting for the kernel before this one (they are
  // weights: nothing writes them), so the loads overlap its tail; x and y only after.
  int64_t i = lane;
  uint4 wv[P][4];
  bool more = i + 96 < kl;
  if (more)
#pragma unroll
    for (int p = 0; p < P; ++p)
#pragma unroll
      for (int u = 0; u < 4; ++u) wv[p][u] = __ldcs(wr[p] + i + 32 * u);  // read once: do not keep in cache
  // kQkv: the column's bias, and in lane r < M row r's position and, for a rotated column, its
  // cos and sin, worked out while the first weights are on their way and before waiting for the
  // kernel before this one, since none of it comes from a kernel (QkvPrep: pos neither).
  int32_t row_pos = 0;
  float rc = 1.f, rsn = 0.f, bias = 0.f;
  if constexpr (kAct == kQkv) {
    if (live && qk.bias) bias = qk.bias[col];
    if (lane < M) {
      row_pos = qk.pos[lane];
      if (pair >= 0) detail::rope_cos_sin(qk.rope, row_pos, pair, &rc, &rsn);
    }
  }
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  // A carried norm's partial sums (the CTA's threads share them out): the first kPartLoads per
  // thread loaded at once here, while the first weights are on their way, and added up only after
  // the products, so that no thread waits for them before its loop.
  constexpr int kPartLoads = 8;
  float pv[M][kPartLoads];
#pragma unroll
  for (int r = 0; r < M; ++r)
#pragma unroll
    for (int u = 0; u < kPartLoads; ++u) {
      const int t = threadIdx.x + u * kGemvThreads;
      pv[r][u] = nm.part_in && t < nm.n_part ? nm.part_in[r * nm.n_part + t] : 0.f;
    }
  while (more) {
#pragma unroll
    for (int u = 0; u < 4; ++u)
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const uint4 xv = __ldca(x + r * kv + i + 32 * u);
#pragma unroll
        for (int p = 0; p < P; ++p) acc[p][r] += dot8_bf16(wv[p][u], xv);
      }
    i += 128;
    more = i + 96 < kl;
    if (more)
#pragma unroll
      for (int p = 0; p < P; ++p)
#pragma unroll
        for (int u = 0; u < 4; ++u) wv[p][u] = __ldcs(wr[p] + i + 32 * u);
  }
  for (; i < kl; i += 32)
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const uint4 xv = __ldca(x + r * kv + i);
#pragma unroll
      for (int p = 0; p < P; ++p) acc[p][r] += dot8_bf16(__ldcs(wr[p] + i), xv);
    }
  __shared__ float s_ss[kGemvWarps][M];
  float rs[M];
  if (nm.part_in) {  // the scale 1 / rms of each row, the CTA's sums joined in a fixed order
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float ss = 0.f;
#pragma unroll
      for (int u = 0; u < kPartLoads; ++u) ss += pv[r][u];
      for (int t = threadIdx.x + kPartLoads * kGemvThreads; t < nm.n_part; t += kGemvThreads) ss += nm.part_in[r * nm.n_part + t];
      ss = detail::warp_sum(ss);
      if (lane == 0) s_ss[warp][r] = ss;
    }
    __syncthreads();
#pragma unroll
    for (int r = 0; r < M; ++r) {
      float t = 0.f;
#pragma unroll
      for (int q = 0; q < kGemvWarps; ++q) t += s_ss[q][r];
      rs[r] = rsqrtf(t * nm.inv_dim + nm.eps);
    }
    __syncthreads();  // s_ss is reused below
  } else {
#pragma unroll
    for (int r = 0; r < M; ++r) rs[r] = 1.f;
  }
  if constexpr (kAct == kQkv) {
    __shared__ float s_val[kGemvWarps][M];
    float val = 0.f;  // lane r: row r's value with its bias, as prep_qkv would read it
#pragma unroll
    for (int r = 0; r < M; ++r) {
      const float vr = __fadd_rn(detail::warp_sum(acc[0][r]) * rs[r], bias);  // never fused into one multiply-add
      if (lane == r) val = vr;
    }
    if (lane < M) s_val[warp][lane] = val;
    __syncthreads();
    if (live && lane < M) {
      if (pair >= 0) {
        const bool second = slot & 1;
        float x0 = second ? s_val[warp ^ 1][lane] : val, x1 = second ? val : s_val[warp ^ 1][lane];
        detail::rope_rotate(x0, x1, rc, rsn);
        val = second ? x1 : x0;
      }
      const __nv_bfloat16 o = __float2bfloat16_rn(val);
      if (col < qk.qd) qk.q[lane * qk.q_stride + col] = o;
      else if (col < qk.qd + qk.kvd) qk.k[row_pos * qk.kv_stride + col - qk.qd] = o;
      else qk.v[row_pos * qk.kv_stride + col - qk.qd - qk.kvd] = o;
    }
    return;
  }
  float sq = 0.f;  // lane r: the new x's square of row r (a carried norm out)
#pragma unroll
  for (int r = 0; r < M; ++r) {
    float v = detail::warp_sum(acc[0][r]) * rs[r];
    if constexpr (kAct != kNoAct) {
      v = (kAct == kGelu ? detail::gelu_tanh(v) : detail::silu(v)) * (detail::warp_sum(acc[P - 1][r]) * rs[r]);
    }
    if (live && lane == r) {
      if constexpr (std::is_same_v<OutT, float>) {
        if (nm.xw) {
          const float nx = (accumulate ? y[r * ldy + col] : 0.f) + v;
          y[r * ldy + col] = nx;
          nm.xw[r * n + col] = __float2bfloat16_rn(nx * nm.w_next[col]);
          sq = nx * nx;
          continue;
        }
      }
      store_out(y + r * ldy + col, v, accumulate);
    }
  }
  if (nm.xw) {
    if (lane < M) s_ss[warp][lane] = sq;  // 0 for a column past n
    __syncthreads();
    if (threadIdx.x < M) {
      float t = 0.f;
#pragma unroll
      for (int q = 0; q < kGemvWarps; ++q) t += s_ss[q][threadIdx.x];
      nm.part_out[threadIdx.x * gridDim.x + blockIdx.x] = t;
    }
  }
}

bool gemv_on = detail::env_switch("DASHLM_CUDA_GEMV");

bool gemv_fits(int64_t m, int64_t k, const void* x, const void* w) {
  return gemv_on && m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && alignment_of(x) >= 16 && alignment_of(w) >= 16;
}
unsigned gemv_blocks(int64_t n) { return detail::blocks_for(n, kGemvWarps, int64_t{1} << 31); }

template <int kAct, typename OutT>
bool try_gemv(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, OutT* y, int64_t ldy, bool accumulate,
              const GemvNorm& nm = {}, const GemvQkv& qk = {}) {
  if (!gemv_fits(m, k, x, w)) return false;
  const auto* xv = reinterpret_cast<const uint4*>(x);
  const auto* wv = reinterpret_cast<const uint4*>(w);
  const int64_t kv = k / 8;
  void (*kernel)(const uint4*, const uint4*, int64_t, int64_t, OutT*, int64_t, bool, GemvNorm, GemvQkv) =
      m == 1 ? k_gemv<1, kAct, OutT> : m == 2 ? k_gemv<2, kAct, OutT> : m == 3 ? k_gemv<3, kAct, OutT> : k_gemv<4, kAct, OutT>;
  detail::launch(kAct == kQkv ? "gemv_qkv" : "gemv", kernel, gemv_blocks(n), kGemvThreads, 0, xv, wv, n, kv, y, ldy,
                 accumulate, nm, qk);
  return true;
}

bool gemv_dispatch(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, void* y, int64_t ldy, cudaDataType_t ty,
                   float beta) {
  if (ty == CUDA_R_16BF) return beta == 0.f && try_gemv<kNoAct>(x, w, m, n, k, static_cast<__nv_bfloat16*>(y), ldy, false);
  return try_gemv<kNoAct>(x, w, m, n, k, static_cast<float*>(y), ldy, beta != 0.f);
}

void gemm_any(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, void* y, int64_t ldy, cudaDataType_t ty,
              float beta = 0.f) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) detail::raise_error("CUDA gemm: k must be positive");
  if (ldy == 0) ldy = n;
  if (ldy < n) detail::raise_error("CUDA gemm: ldy < n");
  if (gemv_dispatch(x, w, m, n, k, y, ldy, ty, beta)) return;
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  st.init();
  const int align = std::min(std::min(alignment_of(x), alignment_of(w)), alignment_of(y));
  const auto key = std::make_tuple(m, n, k, ldy, static_cast<int>(ty), align);
  auto it = st.plans.find(key);
  if (it == st.plans.end()) it = st.plans.emplace(key, make_plan(st, m, n, k, ldy, ty, align)).first;
  const Plan& p = it->second;
  const float alpha = 1.f;
  if (p.lt) {
    DASHLM_BLAS_CHECK(cublasLtMatmul(st.lt, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.c, y, p.c, &p.algo, st.workspace,
                                     kWorkspaceBytes, detail::stream()));
  } else {
    if (m > 0x7fffffffLL || n > 0x7fffffffLL || k > 0x7fffffffLL || ldy > 0x7fffffffLL) detail::raise_error("CUDA gemm: too large for the fallback");
    DASHLM_BLAS_CHECK(cublasGemmEx(st.blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                                   static_cast<int>(k), &alpha, w, CUDA_R_16BF, static_cast<int>(k), x, CUDA_R_16BF,
                                   static_cast<int>(k), &beta, y, ty, static_cast<int>(ldy), CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
  }
}

}  // namespace

void set_gemv_enabled(bool on) { gemv_on = on; }
bool gemv_glu(const bf16* x, const bf16* w_gate_up, int64_t m, int64_t n_ff, int64_t k, bool gelu, bf16* h) {
  if (m <= 0 || n_ff <= 0) return true;
  auto* out = reinterpret_cast<__nv_bfloat16*>(h);
  return gelu ? try_gemv<kGelu>(x, w_gate_up, m, n_ff, k, out, n_ff, false)
              : try_gemv<kSilu>(x, w_gate_up, m, n_ff, k, out, n_ff, false);
}
bool gemv_enabled() { return gemv_on; }

int64_t norm_carry_parts(int64_t dim) { return gemv_blocks(dim); }
bool norm_carry_fits(int64_t m, int64_t k, const bf16* w) { return gemv_fits(m, k, w, w); }

namespace {
GemvNorm carried_in(const NormCarry& c) {
  GemvNorm nm;
  nm.part_in = c.ss_part;
  nm.n_part = static_cast<int>(norm_carry_parts(c.dim));
  nm.inv_dim = 1.f / static_cast<float>(c.dim);
  nm.eps = c.eps;
  return nm;
}
// fits: the product runs our GEMV (and, for the producer, its output is the norm's width).
void check_carry(const NormCarry& c, bool fits, const char* what) {
  if (!fits || !c.w_norm || !c.xw || !c.ss_part || alignment_of(c.xw) < 16)
    detail::raise_error(std::string(what) + ": the carried norm does not fit this product (see norm_carry_fits)");
}
}  // namespace

void gemm_accumulate_carry(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y, const NormCarry& c) {
  if (m <= 0 || n <= 0) return;
  check_carry(c, c.dim == n && gemv_fits(m, k, x, w), "gemm_accumulate_carry");
  GemvNorm nm;
  nm.w_next = c.w_norm;
  nm.xw = reinterpret_cast<__nv_bfloat16*>(c.xw);
  nm.part_out = c.ss_part;
  try_gemv<kNoAct>(x, w, m, n, k, y, n, true, nm);
}
void gemm_normed(const NormCarry& c, const bf16* w, int64_t m, int64_t n, float* y) {
  if (m <= 0 || n <= 0) return;
  check_carry(c, norm_carry_fits(m, c.dim, w), "gemm_normed");
  try_gemv<kNoAct>(c.xw, w, m, n, c.dim, y, n, false, carried_in(c));
}
void gemv_glu_normed(const NormCarry& c, const bf16* w_gate_up, int64_t m, int64_t n_ff, bool gelu, bf16* h) {
  if (m <= 0 || n_ff <= 0) return;
  check_carry(c, norm_carry_fits(m, c.dim, w_gate_up), "gemv_glu_normed");
  auto* out = reinterpret_cast<__nv_bfloat16*>(h);
  if (gelu) try_gemv<kGelu>(c.xw, w_gate_up, m, n_ff, c.dim, out, n_ff, false, carried_in(c));
  else try_gemv<kSilu>(c.xw, w_gate_up, m, n_ff, c.dim, out, n_ff, false, carried_in(c));
}

namespace {
bool qkv_epilogue_on = detail::env_switch("DASHLM_CUDA_QKV_EPILOGUE");

// The kernel's arguments for p, checked; *n: the product's width (Q, K and V stacked).
GemvQkv qkv_args(const QkvPrep& p, int64_t* n) {
  const RopeParams& r = p.rope;
  if (p.n_head <= 0 || p.n_head_kv <= 0 || r.head_dim <= 0 || r.head_dim % 2 || r.n_rot < 0 || r.n_rot > r.head_dim ||
      r.n_rot % 2 || !p.pos || !p.q || !p.k || !p.v)
    detail::raise_error("gemv_qkv: bad heads, rotation or pointers");
  GemvQkv a;
  a.q = reinterpret_cast<__nv_bfloat16*>(p.q);
  a.k = reinterpret_cast<__nv_bfloat16*>(p.k);
  a.v = reinterpret_cast<__nv_bfloat16*>(p.v);
  a.qd = int64_t{p.n_head} * r.head_dim;
  a.kvd = int64_t{p.n_head_kv} * r.head_dim;
  a.q_stride = p.q_stride;
  a.kv_stride = p.kv_stride;
  a.bias = p.bias;
  a.pos = p.pos;
  a.rope = r;
  *n = a.qd + 2 * a.kvd;
  return a;
}
}  // namespace

void set_qkv_epilogue_enabled(bool on) { qkv_epilogue_on = on; }
bool qkv_epilogue_fits(int64_t m, int64_t k, const bf16* w) { return qkv_epilogue_on && gemv_fits(m, k, w, w); }
void gemv_qkv(const bf16* x, const bf16* w, int64_t m, int64_t k, const QkvPrep& p) {
  if (m <= 0) return;
  int64_t n = 0;
  const GemvQkv a = qkv_args(p, &n);
  if (!qkv_epilogue_fits(m, k, w) || !try_gemv<kQkv>(x, w, m, n, k, static_cast<float*>(nullptr), n, false, GemvNorm{}, a))
    detail::raise_error("gemv_qkv: not a product our GEMV runs (see qkv_epilogue_fits)");
}
void gemv_qkv_normed(const NormCarry& c, const bf16* w, int64_t m, const QkvPrep& p) {
  if (m <= 0) return;
  int64_t n = 0;
  const GemvQkv a = qkv_args(p, &n);
  check_carry(c, qkv_epilogue_fits(m, c.dim, w), "gemv_qkv_normed");
  try_gemv<kQkv>(c.xw, w, m, n, c.dim, static_cast<float*>(nullptr), n, false, carried_in(c), a);
}

void gemm(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y, int64_t ldy) {
  gemm_any(x, w, m, n, k, y, ldy, CUDA_R_32F);
}
void gemm(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, bf16* y, int64_t ldy) {
  gemm_any(x, w, m, n, k, y, ldy, CUDA_R_16BF);
}
void gemm_accumulate(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y) {
  gemm_any(x, w, m, n, k, y, 0, CUDA_R_32F, 1.f);
}

}  // namespace dashlm::cuda
