// Device management and the element-wise / row kernels of cuda_ops.h.
#include <cmath>
#include <cstdlib>
#include <string>

#include "backends/cuda/common.cuh"
#include "backends/cuda/cuda_ops.h"

namespace dashlm::cuda {

using detail::blocks_for;
using detail::stream;
using nvbf16 = __nv_bfloat16;

namespace {
const nvbf16* as_nv(const bf16* p) { return reinterpret_cast<const nvbf16*>(p); }
nvbf16* as_nv(bf16* p) { return reinterpret_cast<nvbf16*>(p); }
}  // namespace

// --- device, memory --------------------------------------------------------------------------

namespace {
bool pdl_on = detail::env_switch("DASHLM_CUDA_PDL");
bool fused_qkv_on = detail::env_switch("DASHLM_CUDA_FUSED_QKV");
}  // namespace

bool detail::pdl_enabled() { return pdl_on; }
void set_pdl_enabled(bool on) { pdl_on = on; }
void set_fused_qkv_enabled(bool on) { fused_qkv_on = on; }
bool fused_qkv_enabled() { return fused_qkv_on; }

cudaStream_t detail::stream() {
  static const cudaStream_t s = [] {
    cudaStream_t t = nullptr;
    DASHLM_CUDA_CHECK(cudaStreamCreate(&t));
    return t;
  }();
  return s;
}

bool device_available(std::string* why) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    // Without a GPU there is usually no driver either, which the runtime calls "insufficient driver version".
    const bool none = e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver;
    if (why) *why = std::string(none ? "no CUDA device (cudaGetDeviceCount: " : "cudaGetDeviceCount: ") + cudaGetErrorString(e) + (none ? ")" : "");
    cudaGetLastError();  // clear the sticky-free error so later calls are not confused
    return false;
  }
  if (n == 0) {
    if (why) *why = "no CUDA device";
    return false;
  }
  cudaDeviceProp prop{};
  e = cudaGetDeviceProperties(&prop, 0);
  if (e != cudaSuccess) {
    if (why) *why = std::string("cudaGetDeviceProperties: ") + cudaGetErrorString(e);
    return false;
  }
  if (prop.major < 9) {
    if (why) *why = std::string("device ") + prop.name + " has compute capability " + std::to_string(prop.major) + "." +
                    std::to_string(prop.minor) + "; dashlm's kernels are built for sm_90";
    return false;
  }
  return true;
}

std::string device_name() {
  cudaDeviceProp prop{};
  DASHLM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  return prop.name;
}

int multiprocessor_count() {
  static const int n = [] {
    int v = 0;
    DASHLM_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, 0));
    return v > 0 ? v : 1;
  }();
  return n;
}

void* device_alloc(size_t bytes) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    detail::raise_error("CUDA: cannot allocate " + std::to_string(bytes >> 20) + " MiB on the device: " + cudaGetErrorString(e));
  }
  return p;
}

void device_free(void* p) noexcept {
  if (p) cudaFree(p);
}

void copy_to_device(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DASHLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream()));
  DASHLM_CUDA_CHECK(cudaStreamSynchronize(stream()));
}
void copy_to_host(void* dst, const void* src, size_t bytes) {
  if (!bytes) return;
  DASHLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
  DASHLM_CUDA_CHECK(cudaStreamSynchronize(stream()));
}
void copy_on_device(void* dst, const void* src, size_t bytes) {
  if (bytes) DASHLM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream()));
}
void* pinned_alloc(size_t bytes) {
  void* p = nullptr;
  if (!bytes) return nullptr;
  const cudaError_t e = cudaMallocHost(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    detail::raise_error("CUDA: cannot allocate " + std::to_string(bytes) + " bytes of page-locked host memory: " +
                        cudaGetErrorString(e));
  }
  return p;
}
void pinned_free(void* p) noexcept {
  if (p) cudaFreeHost(p);
}
void copy_to_device_queued(void* dst, const void* pinned_src, size_t bytes) {
  if (bytes) DASHLM_CUDA_CHECK(cudaMemcpyAsync(dst, pinned_src, bytes, cudaMemcpyHostToDevice, stream()));
}
void copy_to_host_queued(void* pinned_dst, const void* src, size_t bytes) {
  if (bytes) DASHLM_CUDA_CHECK(cudaMemcpyAsync(pinned_dst, src, bytes, cudaMemcpyDeviceToHost, stream()));
}
void fill_bytes(void* dst, uint8_t value, size_t bytes) {
  if (bytes) DASHLM_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, stream()));
}
void synchronize() { DASHLM_CUDA_CHECK(cudaDeviceSynchronize()); }
size_t device_free_memory() {
  size_t free_b = 0, total = 0;
  DASHLM_CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return free_b;
}

// --- CUDA graphs -------------------------------------------------------------------------------

void Graph::begin_capture() {
  reset();
  DASHLM_CUDA_CHECK(cudaStreamBeginCapture(stream(), cudaStreamCaptureModeThreadLocal));
}
void Graph::end_capture() {
  cudaGraph_t g = nullptr;
  DASHLM_CUDA_CHECK(cudaStreamEndCapture(stream(), &g));
  graph_ = g;
  cudaGraphExec_t e = nullptr;
  DASHLM_CUDA_CHECK(cudaGraphInstantiate(&e, g, 0));
  exec_ = e;
}
void Graph::abort_capture() noexcept {
  cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream(), &st) == cudaSuccess && st != cudaStreamCaptureStatusNone) {
    cudaGraph_t g = nullptr;
    if (cudaStreamEndCapture(stream(), &g) == cudaSuccess && g) cudaGraphDestroy(g);
  }
  cudaGetLastError();
  reset();
}
void Graph::launch() const {
  if (!exec_) detail::raise_error("CUDA graph: launched before it was recorded");
  DASHLM_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), stream()));
}
void Graph::reset() noexcept {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (graph_) cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  exec_ = graph_ = nullptr;
}

// --- conversions, random ---------------------------------------------------------------------

namespace {

__global__ void k_f32_to_bf16(const float* src, nvbf16* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __float2bfloat16_rn(src[i]);
}
__global__ void k_bf16_to_f32(const nvbf16* src, float* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = __bfloat162float(src[i]);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
__device__ __forceinline__ float hash_uniform(uint64_t seed, int64_t i) {  // in [-1, 1)
  const uint64_t h = splitmix64(seed * 0x632be59bd9b4e019ull + static_cast<uint64_t>(i));
  return static_cast<float>(h >> 40) * (2.f / 16777216.f) - 1.f;
}
template <typename T>
__global__ void k_fill_random(T* dst, int64_t n, float mean, float amp, uint64_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    dst[i] = detail::from_f32<T>(mean + amp * hash_uniform(seed, i));
}

}  // namespace

void f32_to_bf16(const float* src, bf16* dst, int64_t n) {
  if (n <= 0) return;
  k_f32_to_bf16<<<blocks_for(n, 256), 256, 0, stream()>>>(src, as_nv(dst), n);
  DASHLM_CUDA_LAUNCHED("f32_to_bf16");
}
void bf16_to_f32(const bf16* src, float* dst, int64_t n) {
  if (n <= 0) return;
  k_bf16_to_f32<<<blocks_for(n, 256), 256, 0, stream()>>>(as_nv(src), dst, n);
  DASHLM_CUDA_LAUNCHED("bf16_to_f32");
}
void fill_random_bf16(bf16* dst, int64_t n, float mean, float stddev, uint64_t seed) {
  if (n <= 0) return;
  k_fill_random<nvbf16><<<blocks_for(n, 256), 256, 0, stream()>>>(as_nv(dst), n, mean, stddev * 1.7320508f, seed);
  DASHLM_CUDA_LAUNCHED("fill_random_bf16");
}
void fill_random_f32(float* dst, int64_t n, float mean, float stddev, uint64_t seed) {
  if (n <= 0) return;
  k_fill_random<float><<<blocks_for(n, 256), 256, 0, stream()>>>(dst, n, mean, stddev * 1.7320508f, seed);
  DASHLM_CUDA_LAUNCHED("fill_random_f32");
}

// --- row kernels -------------------------------------------------------------------------------

namespace {

int row_threads(int64_t dim) {
  if (dim >= 2048) return 512;
  if (dim >= 512) return 256;
  return dim >= 128 ? 128 : 32;
}

// One block per row. y may alias x when OutT is float (each element is read before written by
// the same thread, after the reduction).
template <typename OutT>
__global__ void k_rmsnorm(const float* x, const float* w, OutT* y, int64_t dim, float eps) {
  __shared__ float red[32];
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  const float* xr = x + r * dim;
  OutT* yr = y + r * dim;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  ss = detail::block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = detail::from_f32<OutT>(xr[i] * inv * (w ? w[i] : 1.f));
}

// The same with float4 loads, the row kept in registers (one read of x): dim % 4 == 0 and
// dim <= 4 * kPer * blockDim.x.
__device__ __forceinline__ void store4(float* y, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(y) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(nvbf16* y, float a, float b, float c, float d) {
  __nv_bfloat162 v[2] = {__floats2bfloat162_rn(a, b), __floats2bfloat162_rn(c, d)};
  *reinterpret_cast<uint2*>(y) = *reinterpret_cast<const uint2*>(v);
}
template <typename OutT, int kPer>
__global__ void k_rmsnorm_vec(const float* x, const float* w, OutT* y, int64_t dim, float eps) {
  __shared__ float red[32];
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const int64_t r = blockIdx.x, d4 = dim / 4;
  const float4* xr = reinterpret_cast<const float4*>(x + r * dim);
  float4 v[kPer];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    v[j] = i < d4 ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += v[j].x * v[j].x + v[j].y * v[j].y + v[j].z * v[j].z + v[j].w * v[j].w;
  }
  ss = detail::block_sum(ss, red);
  const float inv = rsqrtf(ss / static_cast<float>(dim) + eps);
  const float4* w4 = reinterpret_cast<const float4*>(w);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int64_t i = threadIdx.x + static_cast<int64_t>(j) * blockDim.x;
    if (i < d4) {
      const float4 m = w ? w4[i] : make_float4(1.f, 1.f, 1.f, 1.f);
      store4(y + r * dim + 4 * i, v[j].x * inv * m.x, v[j].y * inv * m.y, v[j].z * inv * m.z, v[j].w * inv * m.w);
    }
  }
}

__global__ void k_add_residual(float* x, const float* u, int64_t dim, float* norm_u, float* norm_x, const float* w_next,
                               nvbf16* xn, float eps) {
  __shared__ float red[32];
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  const int64_t r = blockIdx.x;
  float* xr = x + r * dim;
  const float* ur = u + r * dim;
  float su = 0.f, sx = 0.f, sn = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float a = xr[i], b = ur[i], c = a + b;
    su += b * b;
    sx += a * a;
    sn += c * c;
    xr[i] = c;
  }
  if (norm_u) {
    const float t = detail::block_sum(su, red);
    if (threadIdx.x == 0) norm_u[r] = sqrtf(t);
  }
  if (norm_x) {
    const float t = detail::block_sum(sx, red);
    if (threadIdx.x == 0) norm_x[r] = sqrtf(t);
  }
  if (xn) {
    const float t = detail::block_sum(sn, red);
    const float inv = rsqrtf(t / static_cast<float>(dim) + eps);
    nvbf16* o = xn + r * dim;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) o[i] = __float2bfloat16_rn(xr[i] * inv * (w_next ? w_next[i] : 1.f));
  }
}

__global__ void k_block_delta(const float* a, const float* b, int64_t dim, float* out) {
  const int64_t r = blockIdx.x;
  // Double accumulation: 1 - cos is small for nearly parallel rows.
  double ab = 0, aa = 0, bb = 0;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const double x = a[r * dim + i], y = b[r * dim + i];
    ab += x * y;
    aa += x * x;
    bb += y * y;
  }
  // Reduce the three doubles through float pairs would lose precision: use a shared array.
  __shared__ double s[3][1024];
  s[0][threadIdx.x] = ab;
  s[1][threadIdx.x] = aa;
  s[2][threadIdx.x] = bb;
  __syncthreads();
  for (int st = blockDim.x / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) {
      for (int k = 0; k < 3; ++k) s[k][threadIdx.x] += s[k][threadIdx.x + st];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) out[r] = static_cast<float>(1.0 - s[0][0] / fmax(sqrt(s[1][0] * s[2][0]), 1e-30));
}

__global__ void k_row_l2(const float* x, int64_t dim, float* out) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += x[r * dim + i] * x[r * dim + i];
  ss = detail::block_sum(ss, red);
  if (threadIdx.x == 0) out[r] = sqrtf(ss);
}


template <bool kGelu>
__global__ void k_glu(const nvbf16* gu, nvbf16* h, int64_t n, int64_t ff) {
  const int64_t total = n * ff;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / ff, c = i - r * ff;
    const float g = __bfloat162float(gu[r * 2 * ff + c]), u = __bfloat162float(gu[r * 2 * ff + ff + c]);
    h[i] = __float2bfloat16_rn((kGelu ? detail::gelu_tanh(g) : detail::silu(g)) * u);
  }
}
// The same, 8 columns per thread in 16-byte loads and stores (n_ff % 8 == 0).
template <bool kGelu>
__global__ void k_glu_vec(const uint4* gu, uint4* h, int64_t n, int64_t ff8) {
  const int64_t total = n * ff8;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < total; i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / ff8, c = i - r * ff8;
    const uint4 g4 = gu[r * 2 * ff8 + c], u4 = gu[r * 2 * ff8 + ff8 + c];
    const auto* g2 = reinterpret_cast<const __nv_bfloat162*>(&g4);
    const auto* u2 = reinterpret_cast<const __nv_bfloat162*>(&u4);
    uint4 o4;
    auto* o2 = reinterpret_cast<__nv_bfloat162*>(&o4);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 g = __bfloat1622float2(g2[j]), u = __bfloat1622float2(u2[j]);
      o2[j] = __floats2bfloat162_rn((kGelu ? detail::gelu_tanh(g.x) : detail::silu(g.x)) * u.x, (kGelu ? detail::gelu_tanh(g.y) : detail::silu(g.y)) * u.y);
    }
    h[i] = o4;
  }
}
template <bool kGelu>
__global__ void k_glu_f32(float* g, const float* u, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x)
    g[i] = (kGelu ? detail::gelu_tanh(g[i]) : detail::silu(g[i])) * u[i];
}

__global__ void k_add(float* y, const float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) y[i] += x[i];
}
__global__ void k_scale(float* y, float s, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) y[i] *= s;
}

__global__ void k_embed(const nvbf16* table, int64_t n_rows_table, const int32_t* tokens, int64_t dim, float scale, float* x) {
  const int64_t r = blockIdx.x;
  const int32_t t = tokens[r];
  const bool ok = t >= 0 && t < n_rows_table;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
    x[r * dim + i] = ok ? __bfloat162float(table[static_cast<int64_t>(t) * dim + i]) * scale : 0.f;
}

template <typename T>
__global__ void k_gather(const T* src, const int32_t* idx, int64_t width, T* dst) {
  const int64_t r = blockIdx.x;
  const int64_t s = idx[r];
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[r * width + i] = src[s * width + i];
}
__global__ void k_scatter(const float* src, const int32_t* idx, int64_t width, float* dst) {
  const int64_t r = blockIdx.x;
  const int64_t s = idx[r];
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) dst[s * width + i] = src[r * width + i];
}
__global__ void k_set_bytes(uint8_t* dst, const int32_t* idx, int64_t n, uint8_t v) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) dst[idx[i]] = v;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Gated activation: 8 columns per thread where n_ff and the pointers allow, else one.
template <bool kGelu>
void launch_glu(const bf16* gate_up, bf16* h, int64_t n, int64_t n_ff) {
  if (n_ff % 8 == 0 && aligned16(gate_up) && aligned16(h)) {
    k_glu_vec<kGelu><<<blocks_for(n * n_ff / 8, 256), 256, 0, stream()>>>(reinterpret_cast<const uint4*>(gate_up),
                                                                          reinterpret_cast<uint4*>(h), n, n_ff / 8);
  } else {
    k_glu<kGelu><<<blocks_for(n * n_ff, 256), 256, 0, stream()>>>(as_nv(gate_up), as_nv(h), n, n_ff);
  }
}

// rmsnorm: the register-resident float4 kernel where the row fits (dim % 4 == 0, up to 8192
// values with 256 threads), else the plain one.
template <typename OutT>
void launch_rmsnorm(const float* x, const float* w, OutT* y, int64_t n, int64_t dim, float eps) {
  if (dim % 4 == 0 && dim <= 8192 && aligned16(x) && aligned16(y) && (!w || aligned16(w))) {
    if (dim <= 2048) {
      detail::launch("rmsnorm", k_rmsnorm_vec<OutT, 2>, static_cast<unsigned>(n), 256, 0, x, w, y, dim, eps);
    } else {
      detail::launch("rmsnorm", k_rmsnorm_vec<OutT, 8>, static_cast<unsigned>(n), 256, 0, x, w, y, dim, eps);
    }
  } else {
    detail::launch("rmsnorm", k_rmsnorm<OutT>, static_cast<unsigned>(n), row_threads(dim), 0, x, w, y, dim, eps);
  }
}

// Rows are launched one per block; grids have at most 2^31-1 blocks in x, far beyond any n here.
void check_rows(int64_t n) {
  if (n > 0x7fffffffLL) detail::raise_error("CUDA: too many rows for one launch");
}

template <typename T>
void gather_any(const T* src, const int32_t* idx, int64_t n, int64_t width, T* dst) {
  if (n <= 0) return;
  check_rows(n);
  k_gather<<<static_cast<unsigned>(n), row_threads(width), 0, stream()>>>(src, idx, width, dst);
  DASHLM_CUDA_LAUNCHED("gather_rows");
}

}  // namespace

void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int64_t dim, float eps) {
  if (n <= 0) return;
  check_rows(n);
  launch_rmsnorm(x, w, as_nv(y), n, dim, eps);
  DASHLM_CUDA_LAUNCHED("rmsnorm");
}
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
  if (n <= 0) return;
  check_rows(n);
  launch_rmsnorm(x, w, y, n, dim, eps);
  DASHLM_CUDA_LAUNCHED("rmsnorm");
}
void add_residual(float* x, const float* u, int64_t n, int64_t dim, float* norm_u, float* norm_x, const float* w_next,
                  bf16* xn, float eps) {
  if (n <= 0) return;
  check_rows(n);
  detail::launch("add_residual", k_add_residual, static_cast<unsigned>(n), row_threads(dim), 0, x, u, dim, norm_u, norm_x,
                 w_next, xn ? as_nv(xn) : nullptr, eps);
}
void block_delta(const float* a, const float* b, int64_t n, int64_t dim, float* out) {
  if (n <= 0) return;
  check_rows(n);
  k_block_delta<<<static_cast<unsigned>(n), 256, 0, stream()>>>(a, b, dim, out);
  DASHLM_CUDA_LAUNCHED("block_delta");
}
void row_l2_norms(const float* x, int64_t n, int64_t dim, float* out) {
  if (n <= 0) return;
  check_rows(n);
  k_row_l2<<<static_cast<unsigned>(n), row_threads(dim), 0, stream()>>>(x, dim, out);
  DASHLM_CUDA_LAUNCHED("row_l2_norms");
}
void swiglu(const bf16* gate_up, bf16* h, int64_t n, int64_t n_ff) {
  if (n <= 0) return;
  launch_glu<false>(gate_up, h, n, n_ff);
  DASHLM_CUDA_LAUNCHED("swiglu");
}
void geglu_tanh(const bf16* gate_up, bf16* h, int64_t n, int64_t n_ff) {
  if (n <= 0) return;
  launch_glu<true>(gate_up, h, n, n_ff);
  DASHLM_CUDA_LAUNCHED("geglu_tanh");
}
void silu_mul(float* g, const float* u, int64_t n) {
  if (n <= 0) return;
  k_glu_f32<false><<<blocks_for(n, 256), 256, 0, stream()>>>(g, u, n);
  DASHLM_CUDA_LAUNCHED("silu_mul");
}
void gelu_tanh_mul(float* g, const float* u, int64_t n) {
  if (n <= 0) return;
  k_glu_f32<true><<<blocks_for(n, 256), 256, 0, stream()>>>(g, u, n);
  DASHLM_CUDA_LAUNCHED("gelu_tanh_mul");
}
void add_inplace(float* y, const float* x, int64_t n) {
  if (n <= 0) return;
  k_add<<<blocks_for(n, 256), 256, 0, stream()>>>(y, x, n);
  DASHLM_CUDA_LAUNCHED("add_inplace");
}
void scale_inplace(float* y, float s, int64_t n) {
  if (n <= 0) return;
  k_scale<<<blocks_for(n, 256), 256, 0, stream()>>>(y, s, n);
  DASHLM_CUDA_LAUNCHED("scale_inplace");
}
void embed_rows(const bf16* table, int64_t n_rows_table, const int32_t* tokens, int64_t n, int64_t dim, float scale, float* x) {
  if (n <= 0) return;
  check_rows(n);
  k_embed<<<static_cast<unsigned>(n), row_threads(dim), 0, stream()>>>(as_nv(table), n_rows_table, tokens, dim, scale, x);
  DASHLM_CUDA_LAUNCHED("embed_rows");
}
void gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst) {
  gather_any(src, idx, n, width, dst);
}
void gather_rows(const bf16* src, const int32_t* idx, int64_t n, int64_t width, bf16* dst) {
  gather_any(src, idx, n, width, dst);
}
void scatter_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst) {
  if (n <= 0) return;
  check_rows(n);
  k_scatter<<<static_cast<unsigned>(n), row_threads(width), 0, stream()>>>(src, idx, width, dst);
  DASHLM_CUDA_LAUNCHED("scatter_rows");
}
void set_bytes_at(uint8_t* dst, const int32_t* idx, int64_t n, uint8_t v) {
  if (n <= 0) return;
  k_set_bytes<<<blocks_for(n, 256), 256, 0, stream()>>>(dst, idx, n, v);
  DASHLM_CUDA_LAUNCHED("set_bytes_at");
}

// --- heads ---------------------------------------------------------------------------------------

namespace {

// Up to three groups of heads that one launch prepares from the same input row: a group's heads
// start at column in_off of the row, have their own bias, norm and destination, and are rotated
// or not (Q, K and V of the decode step in one launch; a single group for prep_heads).
template <typename OutT>
struct PrepGroup {
  int64_t in_off;
  int n_heads;
  const float* bias;
  const float* norm_w;
  bool rope;
  OutT* out;
  int64_t out_stride;
  const int32_t* rows;
};
template <typename OutT>
struct PrepGroups {
  PrepGroup<OutT> g[3];
  int count;
  int total_heads;
};

// One block per token row and group of blockDim.x / 32 heads (gridDim.y groups: one for prefill,
// as many as the heads need while decoding, so that a decode row's heads are not done in turn by
// one CTA). First the rotation's cos/sin for this row's position (double-precision angles, like
// the CPU: positions reach 10^5 and more), then one warp per head: bias, RMSNorm, rotation,
// conversion, store.
template <typename OutT>
__global__ void k_prep_heads(const float* in, int64_t in_stride, PrepGroups<OutT> groups, float eps, RopeParams rp,
                             const int32_t* pos) {
  extern __shared__ float sh[];
  const int hd = rp.head_dim, half = rp.n_rot / 2;
  const int nw = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float* cs = sh;                    // half cos values
  float* sn = sh + half;             // half sin values
  float* buf = sh + 2 * half + warp * hd;
  const int64_t r = blockIdx.x;
  detail::pdl_wait();
  detail::pdl_launch_dependents();
  if (half > 0)
    for (int i = threadIdx.x; i < half; i += blockDim.x) detail::rope_cos_sin(rp, pos[r], i, &cs[i], &sn[i]);
  __syncthreads();
  for (int hh = blockIdx.y * nw + warp; hh < groups.total_heads; hh += nw * gridDim.y) {
    int gi = 0, h = hh;
    while (gi + 1 < groups.count && h >= groups.g[gi].n_heads) h -= groups.g[gi++].n_heads;
    const PrepGroup<OutT>& G = groups.g[gi];
    const float* bias = G.bias;
    const float* src = in + r * in_stride + G.in_off + static_cast<int64_t>(h) * hd;
    float ss = 0.f;
    for (int d = lane; d < hd; d += 32) {
      const float v = src[d] + (bias ? bias[h * hd + d] : 0.f);
      buf[d] = v;
      ss += v * v;
    }
    if (G.norm_w) {
      ss = detail::warp_sum(ss);
      const float inv = rsqrtf(ss / static_cast<float>(hd) + eps);
      for (int d = lane; d < hd; d += 32) buf[d] = buf[d] * inv * G.norm_w[d];
    }
    __syncwarp();
    if (G.rope) {
      for (int i = lane; i < half; i += 32) {
        const int a = rp.neox ? i : 2 * i, b = rp.neox ? i + half : 2 * i + 1;
        detail::rope_rotate(buf[a], buf[b], cs[i], sn[i]);
      }
    }
    __syncwarp();
    const int64_t dst = G.rows ? G.rows[r] : r;
    OutT* o = G.out + dst * G.out_stride + static_cast<int64_t>(h) * hd;
    for (int d = lane; d < hd; d += 32) o[d] = detail::from_f32<OutT>(buf[d]);
    __syncwarp();
  }
}

template <typename OutT>
void launch_prep(const float* in, int64_t in_stride, int64_t n, PrepGroups<OutT> groups, float eps, const RopeParams& rope,
                 const int32_t* pos) {
  if (n <= 0) return;
  check_rows(n);
  if (rope.head_dim <= 0 || rope.n_rot < 0 || rope.n_rot > rope.head_dim || rope.n_rot % 2)
    detail::raise_error("CUDA prep_heads: bad head_dim/n_rot");
  groups.total_heads = 0;
  bool rotates = false;
  for (int i = 0; i < groups.count; ++i) {
    groups.g[i].rope = groups.g[i].rope && rope.n_rot > 0;
    rotates = rotates || groups.g[i].rope;
    groups.total_heads += groups.g[i].n_heads;
  }
  if (rotates && !pos) detail::raise_error("CUDA prep_heads: RoPE needs positions");
  RopeParams r = rope;
  if (!rotates) r.n_rot = 0;  // no table to compute
  const int nw = groups.total_heads < 8 ? groups.total_heads : 8;
  const size_t smem = (static_cast<size_t>(r.n_rot) + static_cast<size_t>(nw) * r.head_dim) * sizeof(float);
  // A few rows (decoding): the heads spread over CTAs; many rows fill the GPU with one CTA each.
  const unsigned head_groups = n <= kDecodeMaxRows ? static_cast<unsigned>((groups.total_heads + nw - 1) / nw) : 1u;
  detail::launch("prep_heads", k_prep_heads<OutT>, dim3(static_cast<unsigned>(n), head_groups), nw * 32, smem, in, in_stride,
                 groups, eps, r, pos);
}

template <typename OutT>
PrepGroups<OutT> one_group(int n_heads, const float* bias, const float* norm_w, OutT* out, int64_t out_stride,
                           const int32_t* rows) {
  PrepGroups<OutT> g{};
  g.g[0] = PrepGroup<OutT>{0, n_heads, bias, norm_w, true, out, out_stride, rows};
  g.count = 1;
  return g;
}

}  // namespace

void prep_heads(const float* in, int64_t in_stride, int64_t n, int n_heads, const float* bias, const float* norm_w, float eps,
                const RopeParams& rope, const int32_t* pos, bf16* out, int64_t out_stride, const int32_t* rows) {
  launch_prep<nvbf16>(in, in_stride, n, one_group(n_heads, bias, norm_w, as_nv(out), out_stride, rows), eps, rope, pos);
}
void prep_heads_f32(float* x, int64_t stride, int64_t n, int n_heads, const float* bias, const float* norm_w, float eps,
                    const RopeParams& rope, const int32_t* pos) {
  launch_prep<float>(x, stride, n, one_group(n_heads, bias, norm_w, x, stride, static_cast<const int32_t*>(nullptr)), eps,
                     rope, pos);
}
void prep_qkv(const float* in, int64_t in_stride, int64_t n, const QkvPrep& p, const float* q_norm, const float* k_norm,
              float eps) {
  const int64_t qd = int64_t{p.n_head} * p.rope.head_dim, kvd = int64_t{p.n_head_kv} * p.rope.head_dim;
  const float* b = p.bias;
  PrepGroups<nvbf16> g{};
  g.g[0] = PrepGroup<nvbf16>{0, p.n_head, b, q_norm, true, as_nv(p.q), p.q_stride, nullptr};
  g.g[1] = PrepGroup<nvbf16>{qd, p.n_head_kv, b ? b + qd : nullptr, k_norm, true, as_nv(p.k), p.kv_stride, p.pos};
  g.g[2] = PrepGroup<nvbf16>{qd + kvd, p.n_head_kv, b ? b + qd + kvd : nullptr, nullptr, false, as_nv(p.v), p.kv_stride, p.pos};
  g.count = 3;
  launch_prep<nvbf16>(in, in_stride, n, g, eps, p.rope, p.pos);
}

}  // namespace dashlm::cuda
