// The fp8 KV cache's conversions (cuda_ops.h, Fp8Kv): bf16 rows quantized into e4m3 with one
// scale per (slot, KV head), and slots dequantized back into bf16 for the kernels that read a
// bf16 cache (the prefill's attention). The decode attention reads the fp8 cache itself
// (attention.cu).
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda {

using detail::stream;
using nvbf16 = __nv_bfloat16;

namespace {

// One warp per (row, KV head, K or V): the head's largest magnitude, its scale, the head's
// elements divided by the scale and rounded to the nearest e4m3 (saturating: the largest maps to
// 448 exactly, rounding cannot overflow). A head of zeros gets scale 0 and zeros.
__global__ void k_fp8_store(const nvbf16* k, const nvbf16* v, const int32_t* pos, int64_t n, int n_head_kv, int hd,
                            Fp8Kv dst) {
  detail::pdl_wait();  // k and v come from the kernel before
  const int64_t w = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t heads = n * n_head_kv;
  if (w < 2 * heads) {
    const bool is_v = w >= heads;
    const int64_t rh = is_v ? w - heads : w;
    const int64_t r = rh / n_head_kv;
    const int h = static_cast<int>(rh % n_head_kv);
    const int64_t kvd = static_cast<int64_t>(n_head_kv) * hd;
    const int64_t slot = pos[r];
    const nvbf16* src = (is_v ? v : k) + slot * kvd + static_cast<int64_t>(h) * hd;
    float amax = 0.f;
    for (int e = lane; e < hd; e += 32) amax = fmaxf(amax, fabsf(__bfloat162float(src[e])));
    amax = detail::warp_max(amax);
    const float inv = amax > 0.f ? kFp8Max / amax : 0.f;
    uint8_t* out = (is_v ? dst.v : dst.k) + slot * kvd + static_cast<int64_t>(h) * hd;
    for (int e = lane; e < hd; e += 32)
      out[e] = __nv_cvt_float_to_fp8(__bfloat162float(src[e]) * inv, __NV_SATFINITE, __NV_E4M3);
    if (lane == 0) (is_v ? dst.v_scale : dst.k_scale)[h * dst.scale_stride + slot] = amax / kFp8Max;
  }
  detail::pdl_launch_dependents();
}

__device__ __forceinline__ float fp8_to_f32(uint8_t b) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(b, __NV_E4M3);
  return __half2float(__half(h));
}

// One thread per element of slots [0, n), K and V.
__global__ void k_fp8_load(Fp8Kv src, int64_t n_el, int64_t kvd, int n_head_kv, int hd, nvbf16* k, nvbf16* v) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < 2 * n_el;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const bool is_v = i >= n_el;
    const int64_t e = is_v ? i - n_el : i;
    const int64_t sh = (e % kvd) / hd * src.scale_stride + e / kvd;  // (head, slot)
    const float x = fp8_to_f32((is_v ? src.v : src.k)[e]) * (is_v ? src.v_scale : src.k_scale)[sh];
    (is_v ? v : k)[e] = __float2bfloat16_rn(x);
  }
}

}  // namespace

void kv_fp8_store(const bf16* k, const bf16* v, const int32_t* pos, int64_t n, int n_head_kv, int head_dim, const Fp8Kv& dst) {
  if (n <= 0) return;
  const int64_t warps = 2 * n * n_head_kv;
  constexpr int kThreads = 256;
  detail::launch("kv_fp8_store", k_fp8_store, detail::blocks_for(warps * 32, kThreads, (1LL << 31) - 1), kThreads, 0,
                 reinterpret_cast<const nvbf16*>(k), reinterpret_cast<const nvbf16*>(v), pos, n, n_head_kv, head_dim, dst);
}

void kv_fp8_load(const Fp8Kv& src, int64_t n, int n_head_kv, int head_dim, bf16* k, bf16* v) {
  if (n <= 0) return;
  const int64_t kvd = static_cast<int64_t>(n_head_kv) * head_dim;
  const int64_t n_el = n * kvd;
  k_fp8_load<<<detail::blocks_for(2 * n_el, 256), 256, 0, stream()>>>(src, n_el, kvd, n_head_kv, head_dim,
                                                                      reinterpret_cast<nvbf16*>(k), reinterpret_cast<nvbf16*>(v));
  DASHLM_CUDA_LAUNCHED("kv_fp8_load");
}

}  // namespace dashlm::cuda
