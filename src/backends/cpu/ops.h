// CPU operations on plain float32 arrays. They know nothing of models: a caller passes
// pointers, sizes and strides. Row-major throughout: a matrix [rows x cols] has cols contiguous.
#pragma once
#include <cstddef>
#include <cstdint>

#include "backends/cpu/bf16.h"
#include "backends/cpu/q8.h"
#include "backends/dtype.h"

namespace dashlm::cpu {

using WeightView = dashlm::WeightView;  // backends/dtype.h

// Number of threads our own parallel loops and the BLAS use.
void set_num_threads(int n);
int num_threads();
// Threads for a parallel loop of `items` pieces of work worth `flops` in all: `threads` if > 0,
// else num_threads() (1 inside a parallel region), fewer so that each gets at least
// `min_flops` (below that, fork and join cost more than they save), at most `items`, at least 1.
int work_threads(int threads, double flops, double min_flops, int64_t items);

// y[m x out] = x[m x in] * W^T (+ bias[out] when bias is not null).
// Small m runs row by row on the quantized weights; larger m dequantizes W in row blocks and
// calls the BLAS.
void matmul(const WeightView& w, const float* x, int64_t m, float* y, const float* bias = nullptr);

// Rows that several products multiply (the normed rows under Q, K and V, or under every slice
// of gate and up): x [m x k], contiguous. In the q8 compute they are quantized once, on the
// first product that needs it, into `storage` (again only when a product with another type needs
// another scale group, cpu::q8_group); x must not change while the object is in use.
class SharedInput {
 public:
  SharedInput(const float* x, int64_t m, int64_t k, Q8Activations& q8_storage, Bf16Activations& bf16_storage)
      : x_(x), m_(m), k_(k), q8_(q8_storage), bf16_(bf16_storage) {}
  const float* x() const { return x_; }
  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  // The rows quantized for products with weights of `type` (quantized on the first call).
  const Q8Activations& q8(DType type);
  // The rows rounded to bf16 for products with bf16 weights (converted on the first call).
  const Bf16Activations& bf16();

 private:
  const float* x_;
  int64_t m_, k_;
  Q8Activations& q8_;
  Bf16Activations& bf16_;
  bool quantized_ = false, converted_ = false;
};

// matmul on shared rows (in.k() must be w.in_features).
void matmul(const WeightView& w, SharedInput& in, float* y, const float* bias = nullptr);

// y[m x out] (+)= x[m x (k1 - k0)] * W[:, k0 .. k1-1]^T: the product with input features k0 .. k1-1
// of W only (x has row stride ldx); with `accumulate` it is added to y. k0 and k1 must be
// multiples of the type's block size (k1 may be in_features). Lets a caller split a long inner
// dimension (the MLP's n_ff) into slices whose partial products add up.
void matmul_cols(const WeightView& w, int64_t k0, int64_t k1, const float* x, int64_t ldx, int64_t m, float* y,
                 bool accumulate);

// Rows r0 .. r0+n-1 of W (output features) as a weight of their own.
WeightView weight_rows(const WeightView& w, int64_t r0, int64_t n);

// Rows `rows[i]` of W (e.g. token embeddings) as float32 into out[i * in_features].
void get_rows(const WeightView& w, const int32_t* rows, int64_t n, float* out);

// y = x / rms(x) * w for each of n rows of dim elements (w may be null: no scale).
// x and y may alias. Row stride is dim.
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps);
// Same, per head: rows of head_dim elements, n_rows = tokens * heads.
inline void rmsnorm_heads(float* x, const float* w, int64_t n_rows, int64_t head_dim, float eps) {
  rmsnorm(x, w, x, n_rows, head_dim, eps);
}

struct RopeParams {
  int head_dim = 0;
  int n_rot = 0;              // rotated dimensions (<= head_dim)
  float freq_base = 10000.f;
  float freq_scale = 1.f;     // positions are multiplied by this (linear scaling: 1/factor)
  bool neox = false;          // pairs (i, i + n_rot/2) instead of (2i, 2i+1)
  const float* freq_factors = nullptr;  // optional per-pair divisor of the frequency (n_rot/2)
  // Optional: the n_rot/2 frequencies rope_frequencies() computes for these parameters, so that
  // rope() does not compute them on every call.
  const double* inv_freq = nullptr;
};
// The frequencies of p (n_rot/2 values): theta_i = base^(-2i/n_rot), divided by freq_factors[i].
void rope_frequencies(const RopeParams& p, double* out);
// Rotates n_tok rows of n_heads * head_dim values (row stride = row_stride floats) in place,
// row t at position pos[t].
void rope(float* x, int64_t n_tok, int n_heads, int64_t row_stride, const int32_t* pos, const RopeParams& p);
// The rotation's cosines and sines of n_tok rows at positions pos: per row n_rot/2 cosines, then
// n_rot/2 sines (n_tok * n_rot floats), for rope() below, which rotates by them. Rows at the same
// positions (every layer's queries and keys of a chunk) can share them.
void rope_angles(const int32_t* pos, int64_t n_tok, const RopeParams& p, float* cs);
void rope(float* x, int64_t n_tok, int n_heads, int64_t row_stride, const float* cs, const RopeParams& p);

struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.f;
  int window = 0;             // sliding window (0 = none): key j visible to query i if i - j < window
};
// Element type of a KV cache: float32, or IEEE half (converted to float32 as the attention loads
// each key tile; stored with round-to-nearest-even).
enum class KvType : uint8_t { F32 = 0, F16 = 1 };
const char* kv_type_name(KvType t);  // "f32", "f16"
size_t kv_type_bytes(KvType t);      // bytes per element

// Keys and values of a cache, rows of n_head_kv*head_dim elements of `type`.
struct KvRef {
  const void* k = nullptr;
  const void* v = nullptr;
  KvType type = KvType::F32;
};

// Causal attention by position. q: n_q rows of n_head*head_dim at positions q_pos (ascending).
// kv: the cache, slot s holds the token at position s (n_kv slots, row stride
// n_head_kv*head_dim). kv_valid (optional, n_kv bytes) marks slots that hold a key; the others
// are left out of the key tiles altogether (the tiles hold valid keys only, so dropped keys cost
// nothing). out: n_q rows of n_head*head_dim. The query heads that share a KV head are computed
// together, so each key tile is loaded (and converted from f16) once for all of them.
void attention(const float* q, const int32_t* q_pos, int64_t n_q, const KvRef& kv, int64_t n_kv,
               const uint8_t* kv_valid, const AttentionParams& p, float* out);
inline void attention(const float* q, const int32_t* q_pos, int64_t n_q, const float* k, const float* v,
                      int64_t n_kv, const uint8_t* kv_valid, const AttentionParams& p, float* out) {
  attention(q, q_pos, n_q, KvRef{k, v, KvType::F32}, n_kv, kv_valid, p, out);
}

// n halves (IEEE binary16) to float32 and back (round to nearest even), with F16C or AVX-512
// conversions where the CPU has them, else portable code; the same results either way.
void f16_to_f32_row(const uint16_t* src, float* dst, int64_t n);
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n);
// The conversion route in use: "avx512", "f16c" or "portable".
const char* f16_conversion_name();

// Activations of gated MLPs: g[i] = act(g[i]) * u[i].
void silu_mul(float* g, const float* u, int64_t n);
void gelu_tanh_mul(float* g, const float* u, int64_t n);

void add_inplace(float* y, const float* x, int64_t n);
void scale_inplace(float* y, float s, int64_t n);
// L2 norm of each of n rows of dim elements.
void row_l2_norms(const float* x, int64_t n, int64_t dim, float* out);

}  // namespace dashlm::cpu

namespace dashlm::cpu {

// For each key slot, the attention it receives from the n_q query rows, summed over queries and
// heads (softmax probabilities, same masking as attention()). out has n_kv values. Used by the
// attention-score pruning baseline for a handful of query rows only. k: the keys of a cache of
// `type` elements.
void attention_received(const float* q, const int32_t* q_pos, int64_t n_q, const void* k, KvType type, int64_t n_kv,
                        const uint8_t* kv_valid, const AttentionParams& p, float* out);
inline void attention_received(const float* q, const int32_t* q_pos, int64_t n_q, const float* k, int64_t n_kv,
                               const uint8_t* kv_valid, const AttentionParams& p, float* out) {
  attention_received(q, q_pos, n_q, k, KvType::F32, n_kv, kv_valid, p, out);
}

// Rows: dst[i] = src[idx[i]] and dst[idx[i]] = src[i], rows of `width` floats.
void gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst);
void scatter_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst);

}  // namespace dashlm::cpu
