// GEMMs through cuBLASLt: bf16 operands, fp32 accumulation, fp32 or bf16 results. A plan
// (descriptors and the heuristic's algorithm) is cached per shape, type and pointer alignment.
// When cuBLASLt has no algorithm for a shape (odd leading dimensions), cublasGemmEx runs it.
#include <cublasLt.h>
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <tuple>

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

void gemm_any(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, void* y, int64_t ldy, cudaDataType_t ty,
              float beta = 0.f) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) detail::raise_error("CUDA gemm: k must be positive");
  if (ldy == 0) ldy = n;
  if (ldy < n) detail::raise_error("CUDA gemm: ldy < n");
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
