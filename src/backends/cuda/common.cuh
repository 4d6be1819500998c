// Shared by the CUDA sources: error checks, the stream, small device helpers.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <string>
#include <utility>

#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda::detail {

// Throws dashlm::Error (defined in a host-compiled file, so nvcc never sees fmt).
[[noreturn]] void raise_error(const std::string& msg);

inline void check(cudaError_t e, const char* what, const char* file, int line) {
  if (e != cudaSuccess) {
    raise_error(std::string("CUDA error: ") + cudaGetErrorString(e) + " in " + what + " (" + file + ":" + std::to_string(line) + ")");
  }
}

// The stream every op is queued on: one per process, created on first use. It is a blocking
// stream (ordered with the legacy default stream too), and not the legacy stream itself because
// CUDA graphs can only be captured from a created stream (cuda_ops.cu).
cudaStream_t stream();

inline unsigned blocks_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > max_blocks) b = max_blocks;
  return static_cast<unsigned>(b);
}

// The MLP's gate activations (the CPU's in backends/cpu/ops.cpp).
__device__ __forceinline__ float silu(float x) { return x / (1.f + __expf(-x)); }
__device__ __forceinline__ float gelu_tanh(float x) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f, kCoef = 0.044715f;
  return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * x * (1.f + kCoef * x * x)));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `red` is shared scratch of at least 32 floats; the call synchronises the block twice.
__device__ __forceinline__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : 0.f;
  return warp_sum(t);
}
__device__ __forceinline__ float block_max(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nw ? red[lane] : -INFINITY;
  return warp_max(t);
}

// RoPE, shared by every kernel that rotates (prep_heads, the Q/K/V GEMV's epilogue), so that
// they agree bit for bit. The cos and sin of pair i's angle at position p, the angle computed in
// double precision like the CPU's (positions reach 10^5 and more).
__device__ inline void rope_cos_sin(const RopeParams& rp, int32_t p, int i, float* c, float* s) {
  const double a = static_cast<double>(p) * static_cast<double>(rp.freq_scale);
  double f = pow(static_cast<double>(rp.freq_base), -2.0 * i / rp.n_rot);
  if (rp.freq_factors) f /= static_cast<double>(rp.freq_factors[i]);
  double sd, cd;
  sincos(a * f, &sd, &cd);
  *c = static_cast<float>(cd);
  *s = static_cast<float>(sd);
}
// The pair (x0, x1) rotated by the angle of (c, s), each product rounded on its own (no fused
// multiply-add, so that every kernel rounds alike).
__device__ __forceinline__ void rope_rotate(float& x0, float& x1, float c, float s) {
  const float a = x0, b = x1;
  x0 = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
  x1 = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));
}

__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(float x) { return x; }
template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Programmatic dependent launch (Hopper): a kernel launched with launch() may start while the
// kernel before it on the stream is finishing, once that one's blocks have all called
// pdl_launch_dependents() (or exited). It must call pdl_wait() before it reads anything the kernels
// before it write, and before it writes anything they read; what it does before (reading weights,
// computing from its arguments) overlaps their tail. Without the launch attribute both calls do
// nothing, so the same kernel runs either way.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether launch() asks for programmatic dependent launch (DASHLM_CUDA_PDL=0: never).
bool pdl_enabled();

// The starting state of a switch that is on unless the environment variable `name` is "0".
inline bool env_switch(const char* name) {
  const char* e = std::getenv(name);
  return !(e && std::string(e) == "0");
}

// kernel<<<grid, block, smem, stream()>>>(args...), with programmatic dependent launch when on:
// only for kernels that call pdl_wait() as described above.
template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream();
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = pdl_enabled() ? 1 : 0;
  check(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...), name, __FILE__, __LINE__);
}

}  // namespace dashlm::cuda::detail

#define DASHLM_CUDA_CHECK(call) ::dashlm::cuda::detail::check((call), #call, __FILE__, __LINE__)
// After a kernel launch: launch errors at once (execution errors surface at the next sync).
#define DASHLM_CUDA_LAUNCHED(name) ::dashlm::cuda::detail::check(cudaGetLastError(), name, __FILE__, __LINE__)
