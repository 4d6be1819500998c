// Attention on the device: a tensor-core flash-attention kernel for head dims 64/128/256, a
// simple warp-per-row kernel for any other head dim (and as a second opinion in tests), and the
// attention-received reduction of the attention-score pruning baseline.
//
// The flash kernel (one CTA = BM query rows of one head, BM = 16 x warps; each warp owns 16 rows):
//   for each tile of BN key slots (double-buffered in shared memory with cp.async):
//     S = Q K^T            mma.sync m16n8k16 bf16 -> fp32, Q fragments from ldmatrix, K via ldmatrix
//     mask by position     key j visible to a row at position p iff j <= p, p - j < window (if set),
//                          j < n_kv and valid[j] (if a mask is given); only on tiles that need it
//     online softmax       running max m and sum l per row, exp2 with the scale folded in
//     O += P V             P re-packed from the S accumulators as A fragments, V via ldmatrix.trans
//   O / l -> bf16.
// Shared-memory tiles are rows of HD bf16 in 16-byte chunks, chunk c of row r stored at chunk
// c ^ (r % 8): the 8 rows an ldmatrix phase reads fall in 8 distinct bank groups.
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda {

using detail::stream;
using nvbf16 = __nv_bfloat16;

namespace {

struct FlashArgs {
  const nvbf16* q;
  const int32_t* q_pos;
  int64_t n_q;
  const nvbf16* k;
  const nvbf16* v;
  int64_t n_kv;
  const uint8_t* valid;
  nvbf16* out;
  int n_head, group;
  float scale_log2;  // softmax scale * log2(e)
  int window;
  int64_t q_stride, kv_stride;
  // Split mode (attention_tail): keys below the position of the first row of the row's block of
  // `split` rows are left out, and each row's log-sum-exp (natural log, scaled scores) is written
  // to lse[row * n_head + head] (-inf for a row that saw no key).
  int split = 0;
  float* lse = nullptr;
};

__device__ __forceinline__ int64_t dmin(int64_t a, int64_t b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t dmax(int64_t a, int64_t b) { return a > b ? a : b; }

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool pred) {
  const int n = pred ? 16 : 0;  // 0 source bytes: the 16 destination bytes are zero-filled
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// D = A B + D, m16n8k16, A row-major bf16 (4 regs), B column-major bf16 (2 regs), D fp32 (4).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Element offset of (row, 16-byte chunk) in a swizzled tile with HD columns.
template <int HD>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * HD + ((chunk ^ (row & 7)) << 3);
}

// One online-softmax step over an m16 fragment's scores s (NB n-blocks of 8 keys, log2 domain,
// -inf where masked): rows lo (e = 0, 1) and hi (e = 2, 3), a quad of lanes sharing a row. Updates
// the running maxima m and this lane's partial sums l (the quad is summed at the end), turns s
// into the weights exp2(s - m), and returns in al the factors that rescale the output so far.
template <int NB>
__device__ __forceinline__ void online_softmax(float (&s)[NB][4], float& m_lo, float& m_hi, float& l_lo, float& l_hi,
                                               float& al_lo, float& al_hi) {
  float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    mx_lo = fmaxf(mx_lo, fmaxf(s[nb][0], s[nb][1]));
    mx_hi = fmaxf(mx_hi, fmaxf(s[nb][2], s[nb][3]));
  }
  mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
  mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
  mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
  mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
  const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
  // A row that has seen nothing yet keeps max -inf: subtract 0 so exp2(-inf) = 0, not NaN.
  const float base_lo = mn_lo == -INFINITY ? 0.f : mn_lo, base_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
  al_lo = exp2f(m_lo - base_lo);
  al_hi = exp2f(m_hi - base_hi);
  m_lo = mn_lo;
  m_hi = mn_hi;
  float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    s[nb][0] = exp2f(s[nb][0] - base_lo);
    s[nb][1] = exp2f(s[nb][1] - base_lo);
    s[nb][2] = exp2f(s[nb][2] - base_hi);
    s[nb][3] = exp2f(s[nb][3] - base_hi);
    sum_lo += s[nb][0] + s[nb][1];
    sum_hi += s[nb][2] + s[nb][3];
  }
  l_lo = l_lo * al_lo + sum_lo;
  l_hi = l_hi * al_hi + sum_hi;
}

template <int HD, int BN, int NW>
__global__ void __launch_bounds__(NW * 32) k_flash(FlashArgs a) {
  constexpr int BM = 16 * NW;
  constexpr int NT = NW * 32;
  constexpr int CH = HD / 8;            // 16-byte chunks per row
  constexpr int NB = BN / 8;            // n-blocks of 8 keys in S
  constexpr int ND = HD / 8;            // n-blocks of 8 dims in O
  constexpr bool kQRegs = HD <= 128;    // Q fragments live in registers (else re-read from smem)
  static_assert(HD % 64 == 0 && BN % 16 == 0, "tile shape");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  nvbf16* sq = reinterpret_cast<nvbf16*>(smem_raw);
  nvbf16* sk = sq + BM * HD;            // [2][BN][HD]
  nvbf16* sv = sk + 2 * BN * HD;        // [2][BN][HD]

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int64_t qb = static_cast<int64_t>(gridDim.x) - 1 - blockIdx.x;  // longest blocks first
  const int h = blockIdx.y, kvh = h / a.group;
  const int64_t row0 = qb * BM;
  const int rows_in = static_cast<int>(dmin(BM, a.n_q - row0));

  const int64_t pos_min = a.q_pos[row0], pos_max = a.q_pos[row0 + rows_in - 1];
  const int64_t kv_hi = dmin(pos_max, a.n_kv - 1);
  const int64_t kv_begin = a.split > 0 ? a.q_pos[(row0 / a.split) * a.split] : 0;  // split mode's first key
  const int64_t kv_lo = dmax(kv_begin, a.window > 0 ? dmax(0, pos_min - a.window + 1) : 0);

  // This thread's two rows (fragment rows g and g + 8 of its warp) and their positions.
  const int g = lane >> 2, c4 = lane & 3;
  const int r_lo = warp * 16 + g, r_hi = r_lo + 8;
  const int64_t p_lo = r_lo < rows_in ? a.q_pos[row0 + r_lo] : -1;  // -1: padding row, sees nothing
  const int64_t p_hi = r_hi < rows_in ? a.q_pos[row0 + r_hi] : -1;

  float o[ND][4];
#pragma unroll
  for (int i = 0; i < ND; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;

  if (kv_hi >= kv_lo) {
    // Q tile -> shared memory (zero rows past n_q).
    for (int c = tid; c < BM * CH; c += NT) {
      const int r = c / CH, ch = c % CH;
      const bool ok = r < rows_in;
      const nvbf16* src = ok ? a.q + (row0 + r) * a.q_stride + static_cast<int64_t>(h) * HD + ch * 8 : a.q;
      cp_async16(smem_addr(sq + swz<HD>(r, ch)), src, ok);
    }
    const int64_t t_first = kv_lo / BN, t_last = kv_hi / BN;
    auto load_kv = [&](int64_t t, int stage) {
      const int64_t key0 = t * BN;
      nvbf16* dk = sk + stage * BN * HD;
      nvbf16* dv = sv + stage * BN * HD;
      for (int c = tid; c < BN * CH; c += NT) {
        const int r = c / CH, ch = c % CH;
        const int64_t key = key0 + r;
        const bool ok = key < a.n_kv;
        const int64_t off = ok ? key * a.kv_stride + static_cast<int64_t>(kvh) * HD + ch * 8 : 0;
        cp_async16(smem_addr(dk + swz<HD>(r, ch)), a.k + off, ok);
        cp_async16(smem_addr(dv + swz<HD>(r, ch)), a.v + off, ok);
      }
    };
    load_kv(t_first, 0);
    cp_async_commit();

    uint32_t qf[kQRegs ? HD / 16 : 1][4];
    const int lm_mi = lane >> 3, lm_r = lane & 7;  // ldmatrix: which 8x8 matrix this lane addresses, which row

    for (int64_t t = t_first; t <= t_last; ++t) {
      const int stage = static_cast<int>((t - t_first) & 1);
      if (t < t_last) {
        load_kv(t + 1, stage ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();

      const nvbf16* ck = sk + stage * BN * HD;
      const nvbf16* cv = sv + stage * BN * HD;
      if constexpr (kQRegs) {
        if (t == t_first) {
#pragma unroll
          for (int ks = 0; ks < HD / 16; ++ks) {
            const int row = warp * 16 + lm_r + (lm_mi & 1) * 8, ch = ks * 2 + (lm_mi >> 1);
            ldmatrix_x4(qf[ks], smem_addr(sq + swz<HD>(row, ch)));
          }
        }
      }

      // S = Q K^T for this warp's 16 rows and BN keys.
      float s[NB][4];
#pragma unroll
      for (int i = 0; i < NB; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int k2 = 0; k2 < HD / 32; ++k2) {
        uint32_t qa[2][4];
        if constexpr (!kQRegs) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            const int ks = 2 * k2 + j;
            const int row = warp * 16 + lm_r + (lm_mi & 1) * 8, ch = ks * 2 + (lm_mi >> 1);
            ldmatrix_x4(qa[j], smem_addr(sq + swz<HD>(row, ch)));
          }
        }
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) {
          uint32_t b[4];
          ldmatrix_x4(b, smem_addr(ck + swz<HD>(nb * 8 + lm_r, k2 * 4 + lm_mi)));
          if constexpr (kQRegs) {
            mma_bf16(s[nb], qf[2 * k2], b[0], b[1]);
            mma_bf16(s[nb], qf[2 * k2 + 1], b[2], b[3]);
          } else {
            mma_bf16(s[nb], qa[0], b[0], b[1]);
            mma_bf16(s[nb], qa[1], b[2], b[3]);
          }
        }
      }

      // Scale (log2 domain) and mask.
      const int64_t key0 = t * BN;
      const bool full = key0 + BN - 1 <= pos_min && key0 + BN - 1 < a.n_kv && !a.valid &&
                        (a.window <= 0 || key0 > pos_max - a.window) && key0 >= kv_begin;
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          float x = s[nb][e] * a.scale_log2;
          if (!full) {
            const int64_t key = key0 + nb * 8 + c4 * 2 + (e & 1);
            const int64_t p = e < 2 ? p_lo : p_hi;
            const bool vis = key <= p && key >= kv_begin && key < a.n_kv && (a.window <= 0 || p - key < a.window) &&
                             (!a.valid || a.valid[key]);
            if (!vis) x = -INFINITY;
          }
          s[nb][e] = x;
        }
      }

      // Online softmax, rows lo (e = 0, 1) and hi (e = 2, 3); a quad of lanes shares a row.
      float al_lo, al_hi;
      online_softmax<NB>(s, m_lo, m_hi, l_lo, l_hi, al_lo, al_hi);
#pragma unroll
      for (int i = 0; i < ND; ++i) {
        o[i][0] *= al_lo;
        o[i][1] *= al_lo;
        o[i][2] *= al_hi;
        o[i][3] *= al_hi;
      }

      // O += P V.
#pragma unroll
      for (int ks = 0; ks < BN / 16; ++ks) {
        uint32_t pa[4];
        pa[0] = pack_bf16(s[2 * ks][0], s[2 * ks][1]);
        pa[1] = pack_bf16(s[2 * ks][2], s[2 * ks][3]);
        pa[2] = pack_bf16(s[2 * ks + 1][0], s[2 * ks + 1][1]);
        pa[3] = pack_bf16(s[2 * ks + 1][2], s[2 * ks + 1][3]);
#pragma unroll
        for (int d2 = 0; d2 < HD / 16; ++d2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, smem_addr(cv + swz<HD>(ks * 16 + (lm_mi & 1) * 8 + lm_r, d2 * 2 + (lm_mi >> 1))));
          mma_bf16(o[2 * d2], pa, b[0], b[1]);
          mma_bf16(o[2 * d2 + 1], pa, b[2], b[3]);
        }
      }
      __syncthreads();  // the next iteration's loads overwrite the other stage
    }
  }

  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
  if (a.lse && c4 == 0) {  // natural log of sum(exp(scaled score)) = (m + log2 l) ln 2
    constexpr float kLn2 = 0.6931471805599453f;
    if (r_lo < rows_in) a.lse[(row0 + r_lo) * a.n_head + h] = l_lo > 0.f ? (m_lo + __log2f(l_lo)) * kLn2 : -INFINITY;
    if (r_hi < rows_in) a.lse[(row0 + r_hi) * a.n_head + h] = l_hi > 0.f ? (m_hi + __log2f(l_hi)) * kLn2 : -INFINITY;
  }
  if (r_lo < rows_in) {
    nvbf16* dst = a.out + (row0 + r_lo) * a.q_stride + static_cast<int64_t>(h) * HD + c4 * 2;
#pragma unroll
    for (int i = 0; i < ND; ++i)
      *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) = __floats2bfloat162_rn(o[i][0] * inv_lo, o[i][1] * inv_lo);
  }
  if (r_hi < rows_in) {
    nvbf16* dst = a.out + (row0 + r_hi) * a.q_stride + static_cast<int64_t>(h) * HD + c4 * 2;
#pragma unroll
    for (int i = 0; i < ND; ++i)
      *reinterpret_cast<__nv_bfloat162*>(dst + i * 8) = __floats2bfloat162_rn(o[i][2] * inv_hi, o[i][3] * inv_hi);
  }
}

template <int HD, int BN, int NW>
void launch_flash(const FlashArgs& a) {
  constexpr int BM = 16 * NW;
  const size_t smem = static_cast<size_t>(BM + 4 * BN) * HD * sizeof(nvbf16);
  static bool configured = false;  // one attribute call per instantiation
  if (!configured) {
    DASHLM_CUDA_CHECK(cudaFuncSetAttribute(k_flash<HD, BN, NW>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    configured = true;
  }
  const int64_t n_blocks = (a.n_q + BM - 1) / BM;
  if (n_blocks > 0x7fffffffLL) detail::raise_error("CUDA attention: too many query rows");
  dim3 grid(static_cast<unsigned>(n_blocks), static_cast<unsigned>(a.n_head));
  k_flash<HD, BN, NW><<<grid, NW * 32, smem, stream()>>>(a);
  DASHLM_CUDA_LAUNCHED("flash attention");
}

// --- simple kernel: one warp per (query row, head), any head dim up to 256 -----------------------

constexpr int kSimpleMaxHd = 256;

__global__ void k_attn_simple(FlashArgs a, int hd) {
  __shared__ float sq[4][kSimpleMaxHd];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t gw = blockIdx.x * int64_t{4} + warp;  // (row, head) pair
  if (gw >= a.n_q * a.n_head) return;
  const int64_t i = gw / a.n_head;
  const int h = static_cast<int>(gw % a.n_head), kvh = h / a.group;
  const int64_t p = a.q_pos[i];
  const int64_t hi = dmin(p, a.n_kv - 1);
  const int64_t lo = a.window > 0 ? dmax(0, p - a.window + 1) : 0;
  const float scale = a.scale_log2 / 1.4426950408889634f;
  for (int d = lane; d < hd; d += 32) sq[warp][d] = __bfloat162float(a.q[i * a.q_stride + static_cast<int64_t>(h) * hd + d]) * scale;
  __syncwarp();
  constexpr int kPer = kSimpleMaxHd / 32;
  float o[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) o[j] = 0.f;
  float m = -INFINITY, l = 0.f;
  for (int64_t base = lo; base <= hi; base += 32) {
    const int64_t key = base + lane;
    float s = -INFINITY;
    if (key <= hi && (!a.valid || a.valid[key])) {
      const nvbf16* kr = a.k + key * a.kv_stride + static_cast<int64_t>(kvh) * hd;
      float acc = 0.f;
      for (int d = 0; d < hd; ++d) acc += sq[warp][d] * __bfloat162float(kr[d]);
      s = acc;
    }
    const float mx = detail::warp_max(s);
    if (mx == -INFINITY) continue;
    const float mn = fmaxf(m, mx);
    const float alpha = __expf(m - mn);  // m = -inf -> 0
    const float pk = s == -INFINITY ? 0.f : __expf(s - mn);
    l = l * alpha + detail::warp_sum(pk);
#pragma unroll
    for (int j = 0; j < kPer; ++j) o[j] *= alpha;
    m = mn;
    for (int kk = 0; kk < 32; ++kk) {
      const float pj = __shfl_sync(0xffffffffu, pk, kk);
      if (pj == 0.f) continue;  // uniform across the warp
      const nvbf16* vr = a.v + (base + kk) * a.kv_stride + static_cast<int64_t>(kvh) * hd;
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int d = lane + 32 * j;
        if (d < hd) o[j] += pj * __bfloat162float(vr[d]);
      }
    }
  }
  const float inv = l > 0.f ? 1.f / l : 0.f;
  nvbf16* dst = a.out + i * a.q_stride + static_cast<int64_t>(h) * hd;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int d = lane + 32 * j;
    if (d < hd) dst[d] = __float2bfloat16_rn(o[j] * inv);
  }
}

// --- attention received: one block per (query row, head) -----------------------------------------

// The attention each key slot receives from a few query rows, summed over rows and heads, in two
// passes. k_recv_lse: one CTA per (row, head); each warp takes every fourth visible key, its lanes
// split the head's dimensions, and the warps' running (max, sum) give the row's log-sum-exp
// (natural log, scaled scores; +inf for a row that sees no key, so that it adds nothing).
constexpr int kRecvWarps = 4;

__global__ void __launch_bounds__(kRecvWarps * 32) k_recv_lse(FlashArgs a, int hd, float* lse) {
  __shared__ float sq[kSimpleMaxHd];
  __shared__ float sm[kRecvWarps], ss[kRecvWarps];
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y, kvh = h / a.group;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t p = a.q_pos[i];
  const int64_t hi = dmin(p, a.n_kv - 1);
  const int64_t lo = a.window > 0 ? dmax(0, p - a.window + 1) : 0;
  const float scale = a.scale_log2 / 1.4426950408889634f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) sq[d] = __bfloat162float(a.q[i * a.q_stride + static_cast<int64_t>(h) * hd + d]) * scale;
  __syncthreads();
  float m = -INFINITY, sum = 0.f;
  for (int64_t j = lo + warp; j <= hi; j += kRecvWarps) {
    if (a.valid && !a.valid[j]) continue;  // the same j in every lane: the warp stays together
    const nvbf16* kr = a.k + j * a.kv_stride + static_cast<int64_t>(kvh) * hd;
    float t = 0.f;
    for (int d = lane; d < hd; d += 32) t = fmaf(sq[d], __bfloat162float(kr[d]), t);
    t = detail::warp_sum(t);
    if (t > m) {
      sum = sum * __expf(m - t) + 1.f;  // m = -inf: 0
      m = t;
    } else {
      sum += __expf(t - m);
    }
  }
  if (lane == 0) {
    sm[warp] = m;
    ss[warp] = sum;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float mx = -INFINITY;
    for (int w = 0; w < kRecvWarps; ++w) mx = fmaxf(mx, sm[w]);
    float tot = 0.f;
    if (mx != -INFINITY)
      for (int w = 0; w < kRecvWarps; ++w) tot += sm[w] == -INFINITY ? 0.f : ss[w] * __expf(sm[w] - mx);
    lse[i * a.n_head + h] = mx == -INFINITY ? INFINITY : mx + __logf(tot);
  }
}

// k_recv_add: one CTA per (tile of kRecvKeys keys, KV head). The tile's keys sit in shared memory
// (rows padded so that the lanes of a warp, one key each, read different banks); the query
// vectors of the KV head's group (row, head) come in batches of kRecvBatch, and each thread sums
// exp(score - lse) for its key over a quarter of them. The quarters are added up and each key gets
// one atomicAdd per KV head.
constexpr int kRecvKeys = 64, kRecvBatch = 8, kRecvThreads = 256, kRecvLanes = kRecvThreads / kRecvKeys;

__global__ void __launch_bounds__(kRecvThreads) k_recv_add(FlashArgs a, int hd, const float* lse, float* out) {
  __shared__ nvbf16 ks[kRecvKeys * (kSimpleMaxHd + 2)];
  __shared__ float qs[kRecvBatch][kSimpleMaxHd];
  __shared__ float part[kRecvLanes][kRecvKeys];
  const int stride = hd + 2;
  const int kvh = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kRecvKeys;
  const int kk = threadIdx.x % kRecvKeys, vs = threadIdx.x / kRecvKeys;
  const int64_t j = j0 + kk;
  for (int e = threadIdx.x; e < kRecvKeys * hd; e += kRecvThreads) {
    const int r = e / hd, d = e % hd;
    const int64_t jj = j0 + r;
    ks[r * stride + d] = jj < a.n_kv ? a.k[jj * a.kv_stride + static_cast<int64_t>(kvh) * hd + d] : __float2bfloat16_rn(0.f);
  }
  const float scale = a.scale_log2 / 1.4426950408889634f;
  const int n_vec = static_cast<int>(a.n_q) * a.group;
  const bool key_ok = j < a.n_kv && (!a.valid || a.valid[j]);
  float acc = 0.f;
  for (int v0 = 0; v0 < n_vec; v0 += kRecvBatch) {
    __syncthreads();  // ks is written (first batch), qs is free (later ones)
    for (int e = threadIdx.x; e < kRecvBatch * hd; e += kRecvThreads) {
      const int b = e / hd, d = e % hd, v = v0 + b;
      float x = 0.f;
      if (v < n_vec) {
        const int64_t r = v / a.group;
        const int h = kvh * a.group + v % a.group;
        x = __bfloat162float(a.q[r * a.q_stride + static_cast<int64_t>(h) * hd + d]) * scale;
      }
      qs[b][d] = x;
    }
    __syncthreads();
    if (!key_ok) continue;
    for (int b = vs; b < kRecvBatch; b += kRecvLanes) {
      const int v = v0 + b;
      if (v >= n_vec) break;
      const int64_t r = v / a.group;
      const int h = kvh * a.group + v % a.group;
      const int64_t p = a.q_pos[r];
      if (j > p || (a.window > 0 && p - j >= a.window)) continue;
      const nvbf16* kr = ks + kk * stride;
      float t = 0.f;
      for (int d = 0; d < hd; ++d) t = fmaf(qs[b][d], __bfloat162float(kr[d]), t);
      acc += __expf(t - lse[r * a.n_head + h]);  // lse = +inf: 0
    }
  }
  part[vs][kk] = acc;
  __syncthreads();
  if (vs == 0 && key_ok) {
    float tot = 0.f;
    for (int l = 0; l < kRecvLanes; ++l) tot += part[l][kk];
    if (tot > 0.f) atomicAdd(out + j, tot);
  }
}

// out = softmax-weighted merge of two partial attentions over disjoint key sets: out (with lse,
// [row][head]) and part (with lse_part, [block][head][row in block], as cuDNN writes its stats).
// Rows of a block whose first position is 0 have no part (its key set is empty).
__global__ void k_merge(nvbf16* out, const float* lse, const nvbf16* part, const float* lse_part, const int32_t* q_pos,
                        int64_t n_q, int n_head, int hd, int block) {
  const int64_t i = blockIdx.x;
  const int h = blockIdx.y;
  const int64_t b = i / block, r = i % block;
  const float la = lse[i * n_head + h];
  const float lb = q_pos[b * block] > 0 ? lse_part[(b * n_head + h) * block + r] : -INFINITY;
  const float m = fmaxf(la, lb);
  const float wa = la == -INFINITY ? 0.f : __expf(la - m), wb = lb == -INFINITY ? 0.f : __expf(lb - m);
  const float inv = wa + wb > 0.f ? 1.f / (wa + wb) : 0.f;
  nvbf16* o = out + (i * n_head + h) * hd;
  const nvbf16* p = part + (i * n_head + h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    const float x = wa > 0.f ? __bfloat162float(o[d]) * wa : 0.f;
    const float y = wb > 0.f ? __bfloat162float(p[d]) * wb : 0.f;
    o[d] = __float2bfloat16_rn((x + y) * inv);
  }
}

// --- decode: keys split over CTAs, merged by log-sum-exp ----------------------------------------
//
// For a few query rows (decoding), one CTA per (chunk of keys, KV head, group of up to QV query
// vectors), where a query vector is one (row, query head) of the KV head's group. The key range
// is read from the positions on the device and cut into gridDim.x chunks there, so a recorded
// CUDA graph replays it at any cache length. Each lane holds 8 dimensions of each query vector
// and of its partial output; LPK = HD / 8 lanes share a key (16-byte loads, a row of K or V read
// by consecutive lanes), a warp takes 32 / LPK keys at a time; the key's lanes join their partial
// scores by a reduce-scatter (15 shuffles for 16 scores where a butterfly on every lane takes 64),
// so each score is finished, masked and exponentiated in one lane. Invalid keys (dropped slots, keys
// past the position or outside the window) are neither loaded nor counted. Each CTA writes its
// normalised partial output and its log-sum-exp (log2 domain) for every query vector; k_decode_merge
// joins the chunks.

struct DecodeArgs {
  FlashArgs f;      // the attention's arguments (n_q at most kDecodeMaxRows)
  float* part_o;    // [split][n_q * n_head][HD]
  float* part_lse;  // [split][n_q * n_head], log2 domain, -inf: no key
  Fp8Kv kv8;        // the fp8 cache (k_decode_tc; f.k, f.v unused then)
};

constexpr int kDecodeWarps = 4;
constexpr int kDecodeStages = 3;  // batches of keys in shared memory: two in flight, one in use

__device__ __forceinline__ void bf16x8_to_f32(const uint4& u, float (&f)[8]) {
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}

// c ? a : b in a register (a select the compiler may not turn into an indexed load of an array).
__device__ __forceinline__ float select_f32(bool c, float a, float b) {
  float r;
  asm("{\n .reg .pred p;\n setp.ne.b32 p, %3, 0;\n selp.f32 %0, %1, %2, p;\n}" : "=f"(r) : "f"(a), "f"(b), "r"(static_cast<int>(c)));
  return r;
}

// Round r of the reduce-scatter of NV values over the LPK lanes of a key (lane index li): the
// values still held are halved, each lane keeping the half its li bit names and adding the
// partner's copy of it; once one value is left the rounds just add (the lanes hold the same sum).
template <int NV, int LPK, int r = 0>
__device__ __forceinline__ void reduce_scatter(float (&sv)[NV], int li) {
  constexpr int off = LPK >> (r + 1);
  if constexpr (off > 0) {
    constexpr int n = NV >> r;  // values still held before this round
    if constexpr (n >= 2) {
      const bool up = li & off;
#pragma unroll
      for (int i = 0; i < n / 2; ++i) {
        const float send = select_f32(up, sv[i], sv[i + n / 2]);
        const float keep = select_f32(up, sv[i + n / 2], sv[i]);
        sv[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
    } else {
      sv[0] += __shfl_xor_sync(0xffffffffu, sv[0], off);
    }
    reduce_scatter<NV, LPK, r + 1>(sv, li);
  }
}

// The key range [*c_lo, *c_hi] of chunk `split` of n_split for the query vectors j0 .. j0 + nv - 1
// (empty: *c_hi < *c_lo): from the first vector's row's window start (or 0) to the last one's
// position, cut into chunks of a multiple of 16 keys.
__device__ __forceinline__ void decode_chunk(const FlashArgs& a, int j0, int nv, int split, int n_split, int64_t* c_lo,
                                             int64_t* c_hi) {
  const int r_first = j0 / a.group, r_last = (j0 + nv - 1) / a.group;
  const int64_t p_first = a.q_pos[r_first], p_last = a.q_pos[r_last];
  const int64_t hi = dmin(p_last, a.n_kv - 1);
  const int64_t lo = a.window > 0 ? dmax(0, p_first - a.window + 1) : 0;
  const int64_t total = hi - lo + 1;
  *c_lo = 0;
  *c_hi = -1;
  if (total > 0) {
    int64_t chunk = (total + n_split - 1) / n_split;
    chunk = (chunk + 15) & ~int64_t{15};
    *c_lo = lo + split * chunk;
    *c_hi = dmin(hi, *c_lo + chunk - 1);
  }
}

// The CTA's partial results into the chunk's slots of the workspace: for each of its nv query
// vectors, the NW warps' unnormalised outputs s_o[w][j][HD] (log2-domain maxima s_m[w][j], sums
// s_l[w][j]; R vectors a warp) joined by log-sum-exp, normalised, with the log-sum-exp
// (-inf and zeros for a vector that saw no key). Every thread of the CTA takes part.
template <int HD, int NW, int R>
__device__ __forceinline__ void decode_write_parts(const DecodeArgs& da, const float* s_o, const float* s_m, const float* s_l,
                                                   int j0, int nv, int kvh, int split) {
  const FlashArgs& a = da.f;
  for (int e = threadIdx.x; e < nv * HD; e += NW * 32) {
    const int j = e / HD, d = e % HD;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < NW; ++w) mx = fmaxf(mx, s_m[w * R + j]);
    float lsum = 0.f, osum = 0.f;
    if (mx != -INFINITY) {
#pragma unroll
      for (int w = 0; w < NW; ++w) {
        const float sc = exp2f(s_m[w * R + j] - mx);
        lsum += s_l[w * R + j] * sc;
        osum += s_o[(w * R + j) * HD + d] * sc;
      }
    }
    const int vj = j0 + j, r = vj / a.group, h = kvh * a.group + vj % a.group;
    const int64_t qi = static_cast<int64_t>(r) * a.n_head + h;
    const int64_t slot = static_cast<int64_t>(split) * a.n_q * a.n_head + qi;
    da.part_o[slot * HD + d] = lsum > 0.f ? osum / lsum : 0.f;
    if (d == 0) da.part_lse[slot] = lsum > 0.f ? mx + __log2f(lsum) : -INFINITY;
  }
}

template <int HD, int QV>
__global__ void __launch_bounds__(kDecodeWarps * 32) k_decode(DecodeArgs da) {
  const FlashArgs& a = da.f;
  constexpr int U = 4;  // keys per lane group and iteration (registers: QV * U scores)
  constexpr int LPK = HD / 8;     // lanes per key
  constexpr int KPW = 32 / LPK;   // keys per warp step
  constexpr int STEP = KPW * kDecodeWarps * U;
  static_assert(HD == 64 || HD == 128 || HD == 256, "head dim");

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kg = lane / LPK, li = lane % LPK;
  // Until pdl_wait (common.cuh) only what the kernel before does not write is read: the positions,
  // the validity mask and the keys older than the rows' own (attention_decode in cuda_ops.h).
  const int kvh = blockIdx.y, split = blockIdx.x, n_split = gridDim.x;
  const int n_vec = static_cast<int>(a.n_q) * a.group;
  const int j0 = blockIdx.z * QV;
  const int nv = min(QV, n_vec - j0);

  // This CTA's key range.
  int64_t c_lo, c_hi;
  decode_chunk(a, j0, nv, split, n_split, &c_lo, &c_hi);

  // K and V reach shared memory by cp.async, kDecodeStages - 1 batches ahead of the batch in use,
  // so a CTA keeps that many batches of loads in flight while it computes (registers could not
  // hold them). Each lane copies, and later reads, only its own 16 bytes of each key: waiting for
  // its own copies is enough, no barrier. Slots of keys not loaded are zero-filled. The first
  // batches are asked for before waiting for the kernel before this one, all but the keys from
  // the first row's position on (that kernel writes the rows' own): those wait, then are read
  // with plain loads into their slots ("late").
  constexpr int S = kDecodeStages;
  constexpr int kKvBytes = S * kDecodeWarps * U * 2 * 32 * 16;
  constexpr int kJoinBytes = (kDecodeWarps * QV * HD + 2 * kDecodeWarps * QV) * 4;
  __shared__ __align__(16) unsigned char s_raw[kKvBytes > kJoinBytes ? kKvBytes : kJoinBytes];
  auto* s_kv = reinterpret_cast<uint4(*)[kDecodeWarps][U][2][32]>(s_raw);
  const int64_t kv_off = static_cast<int64_t>(kvh) * HD + li * 8;
  const int n_iter = c_hi >= c_lo ? static_cast<int>((c_hi - c_lo) / STEP) + 1 : 0;
  uint32_t okbits = 0;  // bit (stage * U + u): that slot holds a loaded key
  uint32_t late = 0;    // the same bits: the slot's key is loaded after the wait
  const int64_t fresh = a.q_pos[0];  // the rows' positions are ascending
  auto key_of = [&](int it, int u) { return c_lo + static_cast<int64_t>(it) * STEP + (u * kDecodeWarps + warp) * KPW + kg; };
  auto issue = [&](int it, bool before_wait) {
    if (it < n_iter) {
      const int s = it % S;
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t key = key_of(it, u);
        const bool ok = key <= c_hi && (!a.valid || a.valid[key]);
        const uint32_t bit = 1u << (s * U + u);
        okbits = ok ? okbits | bit : okbits & ~bit;
        if (before_wait && ok && key >= fresh) {
          late |= bit;
          continue;
        }
        const int64_t off = ok ? key * a.kv_stride + kv_off : 0;
        cp_async16(smem_addr(&s_kv[s][warp][u][0][lane]), a.k + off, ok);
        cp_async16(smem_addr(&s_kv[s][warp][u][1][lane]), a.v + off, ok);
      }
    }
    cp_async_commit();  // an empty group past the end keeps the count the wait below relies on
  };
#pragma unroll
  for (int it = 0; it < S - 1; ++it) issue(it, true);
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  if (late) {
#pragma unroll
    for (int it = 0; it < S - 1; ++it)
#pragma unroll
      for (int u = 0; u < U; ++u)
        if ((late >> (it * U + u)) & 1u) {
          const int64_t off = key_of(it, u) * a.kv_stride + kv_off;
          s_kv[it][warp][u][0][lane] = __ldcg(reinterpret_cast<const uint4*>(a.k + off));
          s_kv[it][warp][u][1][lane] = __ldcg(reinterpret_cast<const uint4*>(a.v + off));
        }
  }

  // Query vectors (8 dims each, pre-scaled into the log2 domain).
  float qf[QV][8];
#pragma unroll
  for (int j = 0; j < QV; ++j) {
    if (j < nv) {
      const int vj = j0 + j, r = vj / a.group, h = kvh * a.group + vj % a.group;
      const uint4 u = *reinterpret_cast<const uint4*>(a.q + r * a.q_stride + static_cast<int64_t>(h) * HD + li * 8);
      bf16x8_to_f32(u, qf[j]);
#pragma unroll
      for (int d = 0; d < 8; ++d) qf[j][d] *= a.scale_log2;
    } else {
#pragma unroll
      for (int d = 0; d < 8; ++d) qf[j][d] = 0.f;
    }
  }
  float m[QV], l[QV], o[QV][8];
#pragma unroll
  for (int j = 0; j < QV; ++j) {
    m[j] = -INFINITY;
    l[j] = 0.f;
#pragma unroll
    for (int d = 0; d < 8; ++d) o[j][d] = 0.f;
  }
  // The pairs (key u of a lane group's batch, query vector j), c = u * QV + j. A key's LPK lanes
  // reduce their partial scores by a reduce-scatter (each round sends half the values it still
  // holds), after which lane li holds the R whole scores c = li * R + t (NV >= LPK), or the one
  // score c = li / (LPK / NV) (NV < LPK: LPK / NV lanes hold each). The lanes holding a pair do
  // its masking and exponent; the weights are then shuffled to every lane of the key group for
  // the value products. Each lane's pairs, and so their positions, are fixed for the kernel.
  constexpr int NV = U * QV;
  constexpr int R = NV >= LPK ? NV / LPK : 1;
  static_assert((NV & (NV - 1)) == 0 && (U & (U - 1)) == 0 && R <= QV, "pair layout");
  auto src_of = [](int c) { return NV >= LPK ? c / R : c * (LPK / NV); };  // a lane holding pair c
  auto slot_of = [](int c) { return NV >= LPK ? c % R : 0; };              // and its slot there
  int my_u[R];
  int64_t my_qp[R];
  float my_m[R];  // the running maximum of the pair's query vector (m[j] of that vector)
#pragma unroll
  for (int t = 0; t < R; ++t) {
    const int c = NV >= LPK ? li * R + t : li / (LPK / NV);
    my_u[t] = c / QV;
    my_qp[t] = c % QV < nv ? a.q_pos[(j0 + c % QV) / a.group] : -1;  // -1: no vector, nothing visible
    my_m[t] = -INFINITY;
  }

  for (int it = 0; it < n_iter; ++it) {
    issue(it + S - 1, false);
    cp_async_wait<S - 1>();
    const int s = it % S;
    uint4 kr[U], vr[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      kr[u] = s_kv[s][warp][u][0][lane];
      vr[u] = s_kv[s][warp][u][1][lane];
    }
    // Partial scores of the U keys for every query vector over this lane's 8 dimensions.
    float sv[NV];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float kf[8];
      bf16x8_to_f32(kr[u], kf);
#pragma unroll
      for (int j = 0; j < QV; ++j) {
        float t = 0.f;
#pragma unroll
        for (int d = 0; d < 8; ++d) t = fmaf(qf[j][d], kf[d], t);
        sv[u * QV + j] = t;
      }
    }
    reduce_scatter<NV, LPK>(sv, li);
    // This lane's pairs: keys not visible get -inf; the batch's maximum per query vector is
    // reduced over the lanes of the other keys (the u bits of li).
    float sc[R], mx[R];
#pragma unroll
    for (int t = 0; t < R; ++t) {
      const int64_t key = key_of(it, my_u[t]);
      const bool ok = (okbits >> (s * U + my_u[t])) & 1u;
      const bool vis = ok && key <= my_qp[t] && (a.window <= 0 || my_qp[t] - key < a.window);
      sc[t] = vis ? sv[t] : -INFINITY;
      mx[t] = sc[t];
#pragma unroll
      for (int off = LPK / U; off < LPK; off <<= 1) mx[t] = fmaxf(mx[t], __shfl_xor_sync(0xffffffffu, mx[t], off));
    }
    // Online softmax: every lane rescales its running sums and outputs once per batch with the
    // new maximum of each query vector (nothing visible yet: factor 1, the sums are still 0).
#pragma unroll
    for (int j = 0; j < QV; ++j) {
      const float bj = __shfl_sync(0xffffffffu, mx[slot_of(j)], src_of(j), LPK);
      const float mn = fmaxf(m[j], bj);
      const float alpha = mn != -INFINITY ? exp2f(m[j] - mn) : 1.f;  // m = -inf: 0
      m[j] = mn;
      l[j] *= alpha;
#pragma unroll
      for (int d = 0; d < 8; ++d) o[j][d] *= alpha;
    }
    float pw[R];
#pragma unroll
    for (int t = 0; t < R; ++t) {
      my_m[t] = fmaxf(my_m[t], mx[t]);
      pw[t] = sc[t] == -INFINITY ? 0.f : exp2f(sc[t] - my_m[t]);
    }
    // The weights to every lane of the key group; each value vector converted once and added
    // into every query vector's output.
#pragma unroll
    for (int u = 0; u < U; ++u) {
      float w[QV];
#pragma unroll
      for (int j = 0; j < QV; ++j) {
        w[j] = __shfl_sync(0xffffffffu, pw[slot_of(u * QV + j)], src_of(u * QV + j), LPK);
        l[j] += w[j];
      }
      float vf[8];
      bf16x8_to_f32(vr[u], vf);
#pragma unroll
      for (int j = 0; j < QV; ++j)
#pragma unroll
        for (int d = 0; d < 8; ++d) o[j][d] = fmaf(w[j], vf[d], o[j][d]);
    }
  }

  // Join the key groups of the warp (lanes li, li + LPK, ...), then the warps through shared memory.
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with s_kv: the join reuses it
  auto* s_o = reinterpret_cast<float(*)[QV][HD]>(s_raw);
  auto* s_m = reinterpret_cast<float(*)[QV]>(s_raw + kDecodeWarps * QV * HD * 4);
  auto* s_l = reinterpret_cast<float(*)[QV]>(s_raw + (kDecodeWarps * QV * HD + kDecodeWarps * QV) * 4);
#pragma unroll
  for (int j = 0; j < QV; ++j) {
    float mx = m[j];
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    const float sc = mx == -INFINITY ? 0.f : exp2f(m[j] - mx);
    float lj = l[j] * sc;
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1) lj += __shfl_xor_sync(0xffffffffu, lj, off);
#pragma unroll
    for (int d = 0; d < 8; ++d) {
      float x = o[j][d] * sc;
#pragma unroll
      for (int off = LPK; off < 32; off <<= 1) x += __shfl_xor_sync(0xffffffffu, x, off);
      o[j][d] = x;
    }
    if (kg == 0) {
#pragma unroll
      for (int d = 0; d < 8; ++d) s_o[warp][j][li * 8 + d] = o[j][d];
      if (li == 0) {
        s_m[warp][j] = mx;
        s_l[warp][j] = lj;
      }
    }
  }
  __syncthreads();
  decode_write_parts<HD, kDecodeWarps, QV>(da, &s_o[0][0][0], &s_m[0][0], &s_l[0][0], j0, nv, kvh, split);
}

// The decode attention over an fp8 cache on the tensor cores. The CUDA-core kernel above spends
// about as many instructions per key whatever the cache type, and with fp8 (half the bytes) it is
// bound by them, not by memory. Here the query vectors of a CTA (up to 16: rows times the KV head's
// group) are the 16 rows of an m16n8k16 product. Each warp streams its own tiles of 16 keys (every
// kTcWarps-th tile of the CTA's chunk): the raw e4m3 bytes and the tile's scales reach shared memory
// by cp.async, kTcStages - 1 tiles ahead; the warp converts the tile to f16 (exact: e4m3 values
// are f16 values) and runs S = Q K^T and O += P V from ldmatrix fragments, like the prefill's flash
// kernel. The scales never touch the elements: a key's K scale multiplies its score, and its V
// scale its weight in P, taken relative to the largest V scale of the tile (so that P stays in
// [0, 1] in f16) with that factor carried in the running output. Q is converted to f16 pre-scaled
// into the log2 domain. The warps' partial results join through shared memory into the same
// per-chunk outputs as k_decode, which k_decode_merge joins.
constexpr int kTcWarps = 4;
constexpr int kTcRows = 16;  // query vectors per CTA
template <int HD>
constexpr int tc_stages() { return HD <= 128 ? 3 : 2; }
template <int HD>
constexpr size_t tc_smem_bytes() {
  // Q (f16), then per warp: the stages (K, V bytes and 16 + 16 scales), the converted K and V tiles.
  constexpr size_t per_warp = tc_stages<HD>() * (2 * 16 * HD + 2 * 16 * 4) + 2 * 16 * HD * 2;
  constexpr size_t tiles = kTcRows * HD * 2 + kTcWarps * per_warp;
  constexpr size_t join = kTcWarps * kTcRows * (HD + 2) * 4;
  return tiles > join ? tiles : join;
}

__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_f16(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
// 8 e4m3 bytes to 8 f16 (16 bytes), in order.
__device__ __forceinline__ uint4 fp8x8_to_f16x8(const uint2& u) {
  const auto* h = reinterpret_cast<const __nv_fp8x2_storage_t*>(&u);
  uint4 r;
  uint32_t* w = reinterpret_cast<uint32_t*>(&r);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __half2_raw t = __nv_cvt_fp8x2_to_halfraw2(h[i], __NV_E4M3);
    w[i] = static_cast<uint32_t>(t.x) | (static_cast<uint32_t>(t.y) << 16);
  }
  return r;
}

template <int HD>
__global__ void __launch_bounds__(kTcWarps * 32) k_decode_tc(DecodeArgs da) {
  const FlashArgs& a = da.f;
  const Fp8Kv& kv = da.kv8;
  constexpr int ST = tc_stages<HD>();
  constexpr int CH = HD / 8;        // 16-byte chunks of an f16 row (8 bytes of its e4m3 row)
  constexpr int ND = HD / 8;        // n-blocks of 8 dims in O
  constexpr bool kQRegs = HD <= 128;
  constexpr int kStageBytes = 2 * 16 * HD + 2 * 16 * 4;
  constexpr int kWarpBytes = ST * kStageBytes + 2 * 16 * HD * 2;
  static_assert(HD == 64 || HD == 128 || HD == 256, "head dim");

  extern __shared__ __align__(128) unsigned char smem_raw[];
  uint16_t* sq = reinterpret_cast<uint16_t*>(smem_raw);  // [16][HD] f16, swizzled
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  unsigned char* wbase = smem_raw + kTcRows * HD * 2 + warp * kWarpBytes;
  auto k8_of = [&](int st) { return wbase + st * kStageBytes; };                // [16][HD] bytes
  auto v8_of = [&](int st) { return wbase + st * kStageBytes + 16 * HD; };      // [16][HD] bytes
  auto ks_of = [&](int st) { return reinterpret_cast<float*>(wbase + st * kStageBytes + 2 * 16 * HD); };  // [16]
  auto vs_of = [&](int st) { return ks_of(st) + 16; };                          // [16]
  // The tile's K and V converted to f16. (One buffer for both, converted in turn, with a register
  // cap for three CTAs per multiprocessor instead of two, measured slower on the Llama-8B shape.)
  uint16_t* th = reinterpret_cast<uint16_t*>(wbase + ST * kStageBytes);        // [16][HD] f16, swizzled
  uint16_t* tv = th + 16 * HD;

  const int kvh = blockIdx.y, split = blockIdx.x, n_split = gridDim.x;
  const int n_vec = static_cast<int>(a.n_q) * a.group;
  const int j0 = blockIdx.z * kTcRows;
  const int nv = min(kTcRows, n_vec - j0);
  detail::pdl_wait();  // q and the rows' own keys come from the kernels before
  detail::pdl_launch_dependents();
  int64_t c_lo, c_hi;
  decode_chunk(a, j0, nv, split, n_split, &c_lo, &c_hi);

  // Q -> shared memory as f16, scaled into the log2 domain (zero rows past the vectors).
  for (int c = tid; c < kTcRows * CH; c += kTcWarps * 32) {
    const int j = c / CH, ch = c % CH;
    uint4 out = make_uint4(0, 0, 0, 0);
    if (j < nv) {
      const int vj = j0 + j, r = vj / a.group, h = kvh * a.group + vj % a.group;
      const uint4 u = *reinterpret_cast<const uint4*>(a.q + r * a.q_stride + static_cast<int64_t>(h) * HD + ch * 8);
      float f[8];
      bf16x8_to_f32(u, f);
      out = make_uint4(pack_f16(f[0] * a.scale_log2, f[1] * a.scale_log2), pack_f16(f[2] * a.scale_log2, f[3] * a.scale_log2),
                       pack_f16(f[4] * a.scale_log2, f[5] * a.scale_log2), pack_f16(f[6] * a.scale_log2, f[7] * a.scale_log2));
    }
    *reinterpret_cast<uint4*>(sq + swz<HD>(j, ch)) = out;
  }
  __syncthreads();

  const int g = lane >> 2, c4 = lane & 3;
  const int lm_mi = lane >> 3, lm_r = lane & 7;
  const int64_t p_lo = g < nv ? a.q_pos[(j0 + g) / a.group] : -1;  // -1: no vector, sees nothing
  const int64_t p_hi = g + 8 < nv ? a.q_pos[(j0 + g + 8) / a.group] : -1;
  uint32_t qf[kQRegs ? HD / 16 : 1][4];
  if constexpr (kQRegs) {
#pragma unroll
    for (int k = 0; k < HD / 16; ++k) ldmatrix_x4(qf[k], smem_addr(sq + swz<HD>(lm_r + (lm_mi & 1) * 8, k * 2 + (lm_mi >> 1))));
  }

  // This warp's tiles: t_first + warp, + kTcWarps, ... up to t_last.
  const int64_t t_first = c_hi >= c_lo ? c_lo / 16 : 0, t_last = c_hi >= c_lo ? c_hi / 16 : -1;
  const int n_my = t_last >= t_first + warp ? static_cast<int>((t_last - t_first - warp) / kTcWarps) + 1 : 0;
  const int64_t head_off = static_cast<int64_t>(kvh) * HD;
  auto issue = [&](int i) {
    if (i < n_my) {
      const int st = i % ST;
      const int64_t key0 = (t_first + warp + static_cast<int64_t>(i) * kTcWarps) * 16;
      // HD / 16 chunks of 16 bytes per row and K or V; keys outside [c_lo, c_hi] or invalid are zero-filled.
      constexpr int RC = HD / 16;
      for (int c = lane; c < 2 * 16 * RC; c += 32) {
        const int which = c / (16 * RC), r = c % (16 * RC) / RC, ch = c % RC;
        const int64_t key = key0 + r;
        const bool ok = key >= c_lo && key <= c_hi && (!a.valid || a.valid[key]);
        const uint8_t* src = (which ? kv.v : kv.k) + (ok ? key * a.kv_stride + head_off + ch * 16 : 0);
        cp_async16(smem_addr((which ? v8_of(st) : k8_of(st)) + r * HD + ch * 16), src, ok);
      }
      if (lane < 8) {  // 4 + 4 chunks of 4 scales; past the cache's slots zero-filled
        const int which = lane >> 2, q4 = lane & 3;
        const int64_t s0 = key0 + q4 * 4;
        const bool ok = s0 + 3 < kv.scale_stride;
        const float* src = (which ? kv.v_scale : kv.k_scale) + (ok ? kvh * kv.scale_stride + s0 : 0);
        cp_async16(smem_addr((which ? vs_of(st) : ks_of(st)) + q4 * 4), src, ok);
      }
    }
    cp_async_commit();
  };
#pragma unroll
  for (int i = 0; i < ST - 1; ++i) issue(i);

  float o[ND][4];
#pragma unroll
  for (int i = 0; i < ND; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.f, l_hi = 0.f;
  float vf = 1.f;  // the running output is o * vf

  for (int i = 0; i < n_my; ++i) {
    issue(i + ST - 1);
    cp_async_wait<ST - 1>();
    __syncwarp();  // every lane's copies of this tile are visible to the warp
    const int st = i % ST;
    const int64_t key0 = (t_first + warp + static_cast<int64_t>(i) * kTcWarps) * 16;
    const unsigned char* k8 = k8_of(st);
    const unsigned char* v8 = v8_of(st);
    auto convert = [&](const unsigned char* src, uint16_t* dst) {
#pragma unroll
      for (int c = lane; c < 16 * CH; c += 32) {
        const int r = c / CH, ch = c % CH;
        *reinterpret_cast<uint4*>(dst + swz<HD>(r, ch)) = fp8x8_to_f16x8(*reinterpret_cast<const uint2*>(src + r * HD + ch * 8));
      }
    };
    convert(k8, th);
    convert(v8, tv);
    // This lane's four keys (columns c4 * 2 + {0, 1} of the two n-blocks) and their scales.
    float ksc[4], vsc[4];
    bool kok[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int col = (e >> 1) * 8 + c4 * 2 + (e & 1);
      const int64_t key = key0 + col;
      kok[e] = key >= c_lo && key <= c_hi && (!a.valid || a.valid[key]);
      ksc[e] = ks_of(st)[col];
      vsc[e] = kok[e] ? vs_of(st)[col] : 0.f;
    }
    __syncwarp();  // the converted tiles are visible to the warp

    // S = Q K^T (16 vectors x 16 keys).
    float s[2][4];
#pragma unroll
    for (int nb = 0; nb < 2; ++nb) s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
    for (int k2 = 0; k2 < HD / 32; ++k2) {
      uint32_t qa[2][4];
      if constexpr (!kQRegs) {
#pragma unroll
        for (int j = 0; j < 2; ++j)
          ldmatrix_x4(qa[j], smem_addr(sq + swz<HD>(lm_r + (lm_mi & 1) * 8, (2 * k2 + j) * 2 + (lm_mi >> 1))));
      }
#pragma unroll
      for (int nb = 0; nb < 2; ++nb) {
        uint32_t b[4];
        ldmatrix_x4(b, smem_addr(th + swz<HD>(nb * 8 + lm_r, k2 * 4 + lm_mi)));
        if constexpr (kQRegs) {
          mma_f16(s[nb], qf[2 * k2], b[0], b[1]);
          mma_f16(s[nb], qf[2 * k2 + 1], b[2], b[3]);
        } else {
          mma_f16(s[nb], qa[0], b[0], b[1]);
          mma_f16(s[nb], qa[1], b[2], b[3]);
        }
      }
    }
    // Each key's K scale, then the mask: keys not loaded, past the vector's position, outside its window.
#pragma unroll
    for (int nb = 0; nb < 2; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int ki = nb * 2 + (e & 1);
        const int64_t key = key0 + nb * 8 + c4 * 2 + (e & 1);
        const int64_t p = e < 2 ? p_lo : p_hi;
        const bool vis = kok[ki] && key <= p && (a.window <= 0 || p - key < a.window);
        s[nb][e] = vis ? s[nb][e] * ksc[ki] : -INFINITY;
      }

    // Online softmax (rows lo: e = 0, 1; hi: e = 2, 3; a quad of lanes shares a row), and the
    // tile's largest V scale (the quad's lanes hold its 16 keys).
    float al_lo, al_hi;
    online_softmax<2>(s, m_lo, m_hi, l_lo, l_hi, al_lo, al_hi);
    float vmax = fmaxf(fmaxf(vsc[0], vsc[1]), fmaxf(vsc[2], vsc[3]));
    vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, 1));
    vmax = fmaxf(vmax, __shfl_xor_sync(0xffffffffu, vmax, 2));
    if (!(vmax > 0.f)) vmax = 1.f;  // no value in the tile: its weights are 0 anyway
    const float inv_vmax = 1.f / vmax;
    const float r_lo = al_lo * vf * inv_vmax, r_hi = al_hi * vf * inv_vmax;
    vf = vmax;
#pragma unroll
    for (int d = 0; d < ND; ++d) {
      o[d][0] *= r_lo;
      o[d][1] *= r_lo;
      o[d][2] *= r_hi;
      o[d][3] *= r_hi;
    }
    // O += P' V with P' = P * (V scale / vmax), in f16.
    float w[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) w[e] = vsc[e] * inv_vmax;
    uint32_t pa[4];
    pa[0] = pack_f16(s[0][0] * w[0], s[0][1] * w[1]);
    pa[1] = pack_f16(s[0][2] * w[0], s[0][3] * w[1]);
    pa[2] = pack_f16(s[1][0] * w[2], s[1][1] * w[3]);
    pa[3] = pack_f16(s[1][2] * w[2], s[1][3] * w[3]);
#pragma unroll
    for (int d2 = 0; d2 < HD / 16; ++d2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, smem_addr(tv + swz<HD>((lm_mi & 1) * 8 + lm_r, d2 * 2 + (lm_mi >> 1))));
      mma_f16(o[2 * d2], pa, b[0], b[1]);
      mma_f16(o[2 * d2 + 1], pa, b[2], b[3]);
    }
    __syncwarp();  // the next tile is converted over this one
  }
  cp_async_wait<0>();

  // The warps' partial results (o * vf, unnormalised; m; l) through shared memory.
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  __syncthreads();  // every warp is done with its tiles: the join reuses the memory
  float* s_o = reinterpret_cast<float*>(smem_raw);           // [warps][16][HD]
  float* s_m = s_o + kTcWarps * kTcRows * HD;                 // [warps][16]
  float* s_l = s_m + kTcWarps * kTcRows;                      // [warps][16]
#pragma unroll
  for (int d = 0; d < ND; ++d) {
    const int col = d * 8 + c4 * 2;
    s_o[(warp * kTcRows + g) * HD + col] = o[d][0] * vf;
    s_o[(warp * kTcRows + g) * HD + col + 1] = o[d][1] * vf;
    s_o[(warp * kTcRows + g + 8) * HD + col] = o[d][2] * vf;
    s_o[(warp * kTcRows + g + 8) * HD + col + 1] = o[d][3] * vf;
  }
  if (c4 == 0) {
    s_m[warp * kTcRows + g] = m_lo;
    s_m[warp * kTcRows + g + 8] = m_hi;
    s_l[warp * kTcRows + g] = l_lo;
    s_l[warp * kTcRows + g + 8] = l_hi;
  }
  __syncthreads();
  decode_write_parts<HD, kTcWarps, kTcRows>(da, s_o, s_m, s_l, j0, nv, kvh, split);
}

// out[row, head] = the chunks' partial outputs weighted by exp2(lse); zeros for a row that saw no key.
// One CTA per query vector; warp w joins the chunks [w * per, (w + 1) * per) with every load of
// its chunks issued before the first is used (lane l holds chunk w * per + l's lse and 4 of
// every 128 dimensions of each partial output), then the warps join through shared memory.
constexpr int kDecodeMaxSplits = 128;
constexpr int kMergeWarps = 4;

template <int HD>
__global__ void __launch_bounds__(kMergeWarps * 32) k_decode_merge(const float* part_o, const float* part_lse, int n_split,
                                                                   int64_t n_vec, nvbf16* out) {
  constexpr int D4 = HD / 128 > 0 ? HD / 128 : 1;  // float4s per lane (HD 64: lanes 16..31 idle)
  constexpr int kPer = kDecodeMaxSplits / kMergeWarps;
  static_assert(kPer <= 32, "a warp's chunks, one lse per lane");
  __shared__ float s_o[kMergeWarps][HD], s_m[kMergeWarps], s_l[kMergeWarps];
  const int64_t qi = blockIdx.x;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int per = (n_split + kMergeWarps - 1) / kMergeWarps;
  const int s0 = warp * per, s1 = min(n_split, s0 + per);
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const float x = s0 + lane < s1 ? part_lse[(s0 + lane) * n_vec + qi] : -INFINITY;
  float4 acc[D4];
#pragma unroll
  for (int t = 0; t < D4; ++t) acc[t] = make_float4(0.f, 0.f, 0.f, 0.f);
  const float mx = detail::warp_max(x);
  const float wl = mx == -INFINITY || x == -INFINITY ? 0.f : exp2f(x - mx);
  const float lsum = detail::warp_sum(wl);
  const bool dims = lane * 4 < HD;
  for (int b = 0; b < kPer; b += 8) {
    if (s0 + b >= s1) break;
    float4 v[8][D4];
#pragma unroll
    for (int u = 0; u < 8; ++u)
#pragma unroll
      for (int t = 0; t < D4; ++t)
        v[u][t] = s0 + b + u < s1 && dims
                      ? *reinterpret_cast<const float4*>(part_o + ((s0 + b + u) * n_vec + qi) * HD + (t * 32 + lane) * 4)
                      : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
    for (int u = 0; u < 8; ++u) {
      const float w = __shfl_sync(0xffffffffu, wl, b + u);
      if (w > 0.f) {
#pragma unroll
        for (int t = 0; t < D4; ++t) {
          acc[t].x = fmaf(w, v[u][t].x, acc[t].x);
          acc[t].y = fmaf(w, v[u][t].y, acc[t].y);
          acc[t].z = fmaf(w, v[u][t].z, acc[t].z);
          acc[t].w = fmaf(w, v[u][t].w, acc[t].w);
        }
      }
    }
  }
  if (dims)
#pragma unroll
    for (int t = 0; t < D4; ++t) *reinterpret_cast<float4*>(&s_o[warp][(t * 32 + lane) * 4]) = acc[t];
  if (lane == 0) {
    s_m[warp] = mx;
    s_l[warp] = lsum;
  }
  __syncthreads();
  for (int d = threadIdx.x; d < HD; d += kMergeWarps * 32) {
    float m = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMergeWarps; ++w) m = fmaxf(m, s_m[w]);
    float num = 0.f, den = 0.f;
    if (m != -INFINITY)
#pragma unroll
      for (int w = 0; w < kMergeWarps; ++w) {
        if (s_m[w] == -INFINITY) continue;
        const float sc = exp2f(s_m[w] - m);
        num = fmaf(sc, s_o[w][d], num);
        den = fmaf(sc, s_l[w], den);
      }
    out[qi * HD + d] = __float2bfloat16_rn(den > 0.f ? num / den : 0.f);
  }
}

FlashArgs make_args(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
                    const uint8_t* kv_valid, const AttentionParams& p, bf16* out) {
  if (p.n_head <= 0 || p.n_head_kv <= 0 || p.n_head % p.n_head_kv) detail::raise_error("CUDA attention: bad head counts");
  if (p.head_dim <= 0 || p.head_dim > kSimpleMaxHd) detail::raise_error("CUDA attention: head dim must be in 1..256");
  FlashArgs a{};
  a.q = reinterpret_cast<const nvbf16*>(q);
  a.q_pos = q_pos;
  a.n_q = n_q;
  a.k = reinterpret_cast<const nvbf16*>(k);
  a.v = reinterpret_cast<const nvbf16*>(v);
  a.n_kv = n_kv;
  a.valid = kv_valid;
  a.out = reinterpret_cast<nvbf16*>(out);
  a.n_head = p.n_head;
  a.group = p.n_head / p.n_head_kv;
  a.scale_log2 = p.scale * 1.4426950408889634f;
  a.window = p.window;
  a.q_stride = static_cast<int64_t>(p.n_head) * p.head_dim;
  a.kv_stride = static_cast<int64_t>(p.n_head_kv) * p.head_dim;
  return a;
}

}  // namespace

void attention(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
               const uint8_t* kv_valid, const AttentionParams& p, bf16* out, bool force_simple) {
  if (n_q <= 0) return;
  const FlashArgs a = make_args(q, q_pos, n_q, k, v, n_kv, kv_valid, p, out);
  if (!force_simple && p.head_dim == 64) return launch_flash<64, 64, 4>(a);
  if (!force_simple && p.head_dim == 128) return launch_flash<128, 64, 4>(a);
  if (!force_simple && p.head_dim == 256) return launch_flash<256, 32, 4>(a);
  const int64_t warps = n_q * p.n_head;
  const int64_t blocks = (warps + 3) / 4;
  if (blocks > 0x7fffffffLL) detail::raise_error("CUDA attention: too many query rows");
  k_attn_simple<<<static_cast<unsigned>(blocks), 128, 0, stream()>>>(a, p.head_dim);
  DASHLM_CUDA_LAUNCHED("attention (simple)");
}

void attention_tail(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
                    const AttentionParams& p, int block, bf16* out, float* lse) {
  if (n_q <= 0) return;
  if (p.head_dim != 64 && p.head_dim != 128 && p.head_dim != 256) detail::raise_error("attention_tail: head dim must be 64, 128 or 256");
  if (block <= 0 || block % 64 != 0) detail::raise_error("attention_tail: block must be a multiple of 64");
  FlashArgs a = make_args(q, q_pos, n_q, k, v, n_kv, nullptr, p, out);
  a.split = block;
  a.lse = lse;
  if (p.head_dim == 64) return launch_flash<64, 64, 4>(a);
  if (p.head_dim == 128) return launch_flash<128, 64, 4>(a);
  return launch_flash<256, 32, 4>(a);
}

void attention_merge(bf16* out, const float* lse, const bf16* part, const float* lse_part, const int32_t* q_pos, int64_t n_q,
                     int n_head, int head_dim, int block) {
  if (n_q <= 0) return;
  if (n_q > 0x7fffffffLL) detail::raise_error("attention_merge: too many rows");
  dim3 grid(static_cast<unsigned>(n_q), static_cast<unsigned>(n_head));
  k_merge<<<grid, 64, 0, stream()>>>(reinterpret_cast<nvbf16*>(out), lse, reinterpret_cast<const nvbf16*>(part), lse_part,
                                     q_pos, n_q, n_head, head_dim, block);
  DASHLM_CUDA_LAUNCHED("attention_merge");
}

size_t attention_received_workspace(const AttentionParams& p, int64_t n_q) {
  return static_cast<size_t>(std::max<int64_t>(n_q, 0)) * static_cast<size_t>(p.n_head);
}

void attention_received(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, int64_t n_kv,
                        const uint8_t* kv_valid, const AttentionParams& p, float* out, float* workspace, size_t workspace_floats) {
  fill_bytes(out, 0, static_cast<size_t>(n_kv) * sizeof(float));
  if (n_q <= 0 || n_kv <= 0) return;
  if (!workspace || workspace_floats < attention_received_workspace(p, n_q)) detail::raise_error("attention_received: workspace too small");
  const FlashArgs a = make_args(q, q_pos, n_q, k, k, n_kv, kv_valid, p, nullptr);
  if (n_q > 0x7fffffffLL || (n_kv + kRecvKeys - 1) / kRecvKeys > 0x7fffffffLL) detail::raise_error("attention_received: too many rows or keys");
  k_recv_lse<<<dim3(static_cast<unsigned>(n_q), static_cast<unsigned>(p.n_head)), kRecvWarps * 32, 0, stream()>>>(a, p.head_dim,
                                                                                                                   workspace);
  DASHLM_CUDA_LAUNCHED("attention_received (log-sum-exp)");
  const dim3 grid(static_cast<unsigned>((n_kv + kRecvKeys - 1) / kRecvKeys), static_cast<unsigned>(p.n_head_kv));
  k_recv_add<<<grid, kRecvThreads, 0, stream()>>>(a, p.head_dim, workspace, out);
  DASHLM_CUDA_LAUNCHED("attention_received");
}

namespace {
bool split_decode_on = detail::env_switch("DASHLM_CUDA_SPLIT_DECODE");
}  // namespace

void set_split_decode_enabled(bool on) { split_decode_on = on; }
bool split_decode_enabled() { return split_decode_on; }

namespace {
using DecodeKernel = void (*)(DecodeArgs);

// Query vectors of one KV head (rows times its group), and how many one CTA serves: four when
// there are no more, kDecodeMaxVectors otherwise.
int64_t decode_vectors_per_head(const AttentionParams& p, int64_t n_q) { return n_q * (p.n_head / std::max(1, p.n_head_kv)); }
int decode_vectors_per_cta(const AttentionParams& p, int64_t n_q) {
  return decode_vectors_per_head(p, n_q) <= 4 ? 4 : kDecodeMaxVectors;
}

// The decode attention's kernel (bf16 cache) for the head dim and the query vectors per CTA.
DecodeKernel decode_kernel(const AttentionParams& p, int64_t n_q) {
  const bool narrow = decode_vectors_per_cta(p, n_q) == 4;
  return p.head_dim == 64    ? (narrow ? k_decode<64, 4> : k_decode<64, kDecodeMaxVectors>)
         : p.head_dim == 128 ? (narrow ? k_decode<128, 4> : k_decode<128, kDecodeMaxVectors>)
                             : (narrow ? k_decode<256, 4> : k_decode<256, kDecodeMaxVectors>);
}

// The tensor-core kernel over an fp8 cache (k_decode_tc) and its dynamic shared memory, the
// attribute that allows it set once per kernel.
DecodeKernel decode_tc_kernel(const AttentionParams& p, size_t* smem) {
  static std::mutex mu;
  static bool configured[3] = {false, false, false};
  const int i = p.head_dim == 64 ? 0 : p.head_dim == 128 ? 1 : 2;
  const DecodeKernel k = i == 0 ? k_decode_tc<64> : i == 1 ? k_decode_tc<128> : k_decode_tc<256>;
  *smem = i == 0 ? tc_smem_bytes<64>() : i == 1 ? tc_smem_bytes<128>() : tc_smem_bytes<256>();
  std::lock_guard<std::mutex> lock(mu);
  if (!configured[i]) {
    DASHLM_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(*smem)));
    configured[i] = true;
  }
  return k;
}


// CTAs of the kernel one multiprocessor holds at once (registers and shared memory), asked once.
int decode_ctas_per_sm(DecodeKernel kernel, size_t smem = 0) {
  static std::mutex mu;
  static std::map<DecodeKernel, int> known;
  std::lock_guard<std::mutex> lock(mu);
  auto it = known.find(kernel);
  if (it == known.end()) {
    int n = 0;
    DASHLM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, kDecodeWarps * 32, smem));
    it = known.emplace(kernel, std::max(1, n)).first;
  }
  return it->second;
}
}  // namespace

int attention_decode_splits(const AttentionParams& p, int64_t n_q, bool fp8) {
  if (fp8) {
    size_t smem = 0;
    const DecodeKernel k = decode_tc_kernel(p, &smem);
    const int64_t z = (decode_vectors_per_head(p, n_q) + kTcRows - 1) / kTcRows;
    const int64_t ctas = static_cast<int64_t>(decode_ctas_per_sm(k, smem)) * multiprocessor_count();
    const int64_t want = (ctas + p.n_head_kv * z - 1) / (p.n_head_kv * z);
    return static_cast<int>(std::clamp<int64_t>(want, 1, kDecodeMaxSplits));
  }
  const int64_t per_cta = decode_vectors_per_cta(p, n_q);
  const int64_t z = (decode_vectors_per_head(p, n_q) + per_cta - 1) / per_cta;  // CTAs per chunk and KV head
  // One wave at the kernel's occupancy (by its registers: 3 CTAs per multiprocessor for four
  // query vectors, 2 for eight), at most kDecodeMaxSplits chunks. Measured on an H200 (Llama-8B
  // shape, four vectors): two per multiprocessor made the step 2% slower after 4k tokens and 4%
  // after 32k than three.
  const int64_t ctas = static_cast<int64_t>(decode_ctas_per_sm(decode_kernel(p, n_q))) * multiprocessor_count();
  const int64_t want = (ctas + p.n_head_kv * z - 1) / (p.n_head_kv * z);
  return static_cast<int>(std::clamp<int64_t>(want, 1, kDecodeMaxSplits));
}

bool attention_decode_supported(const AttentionParams& p, int64_t n_q) {
  return n_q >= 1 && n_q <= kDecodeMaxRows && (p.head_dim == 64 || p.head_dim == 128 || p.head_dim == 256);
}

size_t attention_decode_workspace(const AttentionParams& p, int64_t n_q, bool fp8) {
  return static_cast<size_t>(attention_decode_splits(p, n_q, fp8)) * static_cast<size_t>(n_q * p.n_head) *
         static_cast<size_t>(p.head_dim + 1);
}

namespace {
// attention_decode's launches for either cache (kv8: the fp8 one, or null).
void decode_launch(const FlashArgs& f, const Fp8Kv* kv8, const AttentionParams& p, bf16* out, float* workspace,
                   size_t workspace_floats) {
  const int64_t n_q = f.n_q;
  const bool fp8 = kv8 != nullptr;
  const int n_split = attention_decode_splits(p, n_q, fp8);
  const size_t need = attention_decode_workspace(p, n_q, fp8);
  if (!workspace || workspace_floats < need) detail::raise_error("attention_decode: workspace too small");
  const int64_t n_vec = n_q * p.n_head;
  DecodeArgs a{};
  a.f = f;
  a.part_o = workspace;
  a.part_lse = workspace + static_cast<size_t>(n_split) * static_cast<size_t>(n_vec) * static_cast<size_t>(p.head_dim);
  if (kv8) a.kv8 = *kv8;
  const bool tc = fp8;
  const int64_t per_cta = tc ? kTcRows : decode_vectors_per_cta(p, n_q);
  const unsigned zs = static_cast<unsigned>((decode_vectors_per_head(p, n_q) + per_cta - 1) / per_cta);
  dim3 grid(static_cast<unsigned>(n_split), static_cast<unsigned>(p.n_head_kv), zs);
  const unsigned threads = kDecodeWarps * 32;
  static_assert(kTcWarps == kDecodeWarps, "one block size");
  size_t smem = 0;
  const DecodeKernel kernel = tc ? decode_tc_kernel(p, &smem) : decode_kernel(p, n_q);
  // No shared-memory carveout preference is set: asking for the largest (for two 48 KB CTAs per
  // multiprocessor) made the decode step about 2% slower after 4k tokens; the driver picks the
  // split itself.
  detail::launch("decode attention", kernel, grid, threads, smem, a);
  void (*merge)(const float*, const float*, int, int64_t, nvbf16*) =
      p.head_dim == 64 ? k_decode_merge<64> : p.head_dim == 128 ? k_decode_merge<128> : k_decode_merge<256>;
  detail::launch("decode attention merge", merge, static_cast<unsigned>(n_vec), kMergeWarps * 32, 0, a.part_o, a.part_lse,
                 n_split, n_vec, reinterpret_cast<nvbf16*>(out));
}
void check_decode(const AttentionParams& p, int64_t n_q) {
  if (!attention_decode_supported(p, n_q)) detail::raise_error("attention_decode: needs 1..4 query rows and head dim 64, 128 or 256");
}
}  // namespace

void attention_decode(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
                      const uint8_t* kv_valid, const AttentionParams& p, bf16* out, float* workspace, size_t workspace_floats) {
  if (n_q <= 0) return;
  check_decode(p, n_q);
  decode_launch(make_args(q, q_pos, n_q, k, v, n_kv, kv_valid, p, out), nullptr, p, out, workspace, workspace_floats);
}

void attention_decode(const bf16* q, const int32_t* q_pos, int64_t n_q, const Fp8Kv& kv, int64_t n_kv,
                      const uint8_t* kv_valid, const AttentionParams& p, bf16* out, float* workspace, size_t workspace_floats) {
  if (n_q <= 0) return;
  check_decode(p, n_q);
  if (!kv.k || !kv.v || !kv.k_scale || !kv.v_scale || kv.scale_stride < n_kv || kv.scale_stride % 16)
    detail::raise_error("attention_decode: fp8 cache pointers or scale stride missing");
  decode_launch(make_args(q, q_pos, n_q, nullptr, nullptr, n_kv, kv_valid, p, out), &kv, p, out, workspace, workspace_floats);
}

}  // namespace dashlm::cuda
