#include "backends/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/gemm.h"
#include "backends/cpu/q8.h"
#include "backends/cpu/quants.h"
#include "common/error.h"

namespace dashlm::cpu {

namespace {

int g_threads = 0;  // 0: not set yet, use the OpenMP default

// Bytes of one row of W.
size_t row_bytes(const WeightView& w) { return dtype_row_bytes(w.type, w.in_features); }

const uint8_t* row_ptr(const WeightView& w, int64_t r) {
  return static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * row_bytes(w);
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Rows per dequantized block for the GEMM path: about 256K floats (1 MB) of scratch at most, so
// that the block and the GEMM's packed panels of it stay small (the GEMM packs A once per block:
// m x in floats against 2 x m x in x rows of work, nothing to notice).
int64_t block_rows(int64_t out_features, int64_t in_features) {
  const int64_t max_elems = int64_t{1} << 18;
  const int64_t most = std::max<int64_t>(1, std::min<int64_t>(out_features, max_elems / std::max<int64_t>(1, in_features)));
  const int64_t blocks = (out_features + most - 1) / most;
  return (out_features + blocks - 1) / blocks;  // balanced: no thin last block, less scratch
}

// This thread's attention scratch: grows to the largest size asked for, never shrinks, so the
// attention allocates nothing once warm.
float* attention_scratch(size_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

}  // namespace

void set_num_threads(int n) {
  if (n <= 0) return;
  g_threads = n;
  omp_set_num_threads(n);
}

int num_threads() { return g_threads > 0 ? g_threads : omp_get_max_threads(); }

namespace {

// Most rows of x that go through the integer kernels in the q8 compute mode for a type without
// prefill kernels (more go through the float GEMM).
constexpr int64_t kQ8MaxRows = 3;

// The product of matmul / matmul_cols: input features k0 .. k1-1 of W against x (row stride ldx).
void matmul_part(const WeightView& w, int64_t k0, int64_t k1, const float* x, int64_t ldx, int64_t m, float* y,
                 bool accumulate) {
  const int64_t in = w.in_features, out = w.out_features, kw = k1 - k0;
  if (m <= 0 || out <= 0) return;
  const size_t col_offset = k0 > 0 ? dtype_row_bytes(w.type, k0) : 0;
  if (w.type == DType::F32) {
    // No conversion needed: one GEMM.
    gemm_nt(m, out, kw, x, ldx, static_cast<const float*>(w.data) + k0, in, y, out, accumulate);
  } else if (compute_mode() == Compute::q8 && q8_supports(w.type) &&
             (m <= kQ8MaxRows || q8_prefill_supports(w.type))) {
    // Quantized compute: x quantized to 8 bits per block of 32, integer dot products with the
    // quantized rows (decode) or with panels of them repacked for register tiles (prefill; see
    // cpu::q8_matmul).
    thread_local Q8Activations qx;
    qx.quantize(x, ldx, m, kw);
    q8_matmul(w.type, row_ptr(w, 0) + col_offset, row_bytes(w), out, qx, y, out, accumulate);
  } else if (m < 4) {
    // Decode-sized: stream the quantized rows once; each row is dequantized a piece at a time
    // into a buffer on the stack and dotted with each row of x, with the kernel level's vector
    // width for both (cpu::quant_row_dots).
    const DTypeTraits tr = dtype_traits(w.type);
    if (!tr.dequantizable) fail("cannot dequantize tensor type {}", tr.name);
    const auto type = static_cast<uint32_t>(w.type);
    const auto bb = static_cast<int64_t>(tr.block_bytes);
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t r = 0; r < out; ++r) {
      float acc[4] = {0.f, 0.f, 0.f, 0.f};
      (void)quant_row_dots(type, row_ptr(w, r) + col_offset, kw, tr.block_size, bb, x, ldx, m, acc);  // every dequantizable type
      for (int64_t i = 0; i < m; ++i) y[i * out + r] = accumulate ? y[i * out + r] + acc[i] : acc[i];
    }
  } else {
    // Prefill-sized: dequantize a block of rows to float32, then one GEMM per block.
    const int64_t br = block_rows(w.out_features, kw);
    thread_local std::vector<float> scratch;
    scratch.resize(static_cast<size_t>(br * kw));
    for (int64_t r0 = 0; r0 < out; r0 += br) {
      const int64_t nr = std::min(br, out - r0);
      float* s = scratch.data();
#pragma omp parallel for schedule(static) num_threads(num_threads())
      for (int64_t r = 0; r < nr; ++r) dequantize_row(w.type, row_ptr(w, r0 + r) + col_offset, s + r * kw, kw);
      gemm_nt(m, nr, kw, x, ldx, s, kw, y + r0, out, accumulate);
    }
  }
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t m, float* y, const float* bias) {
  const int64_t out = w.out_features;
  if (m <= 0 || out <= 0) return;
  matmul_part(w, 0, w.in_features, x, w.in_features, m, y, false);
  if (bias) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t i = 0; i < m; ++i) add_inplace(y + i * out, bias, out);
  }
}

void matmul_cols(const WeightView& w, int64_t k0, int64_t k1, const float* x, int64_t ldx, int64_t m, float* y,
                 bool accumulate) {
  const int64_t bs = dtype_traits(w.type).block_size;
  if (k0 < 0 || k1 > w.in_features || k0 > k1 || k0 % bs != 0 || (k1 % bs != 0 && k1 != w.in_features)) {
    fail("matmul_cols: features [{}, {}) of {} in blocks of {}", k0, k1, w.in_features, bs);
  }
  if (k1 == k0) {
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) std::fill(y + i * w.out_features, y + (i + 1) * w.out_features, 0.f);
    }
    return;
  }
  matmul_part(w, k0, k1, x, ldx, m, y, accumulate);
}

WeightView weight_rows(const WeightView& w, int64_t r0, int64_t n) {
  WeightView v = w;
  v.data = row_ptr(w, r0);
  v.out_features = n;
  return v;
}

void get_rows(const WeightView& w, const int32_t* rows, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] < 0 || rows[i] >= w.out_features) fail("token id {} is outside the vocabulary (0..{})", rows[i], w.out_features - 1);
  }
#pragma omp parallel for schedule(static) num_threads(num_threads())
  for (int64_t i = 0; i < n; ++i) dequantize_row(w.type, row_ptr(w, rows[i]), out + i * w.in_features, w.in_features);
}

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 64)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double ss = 0.0;  // sum of squares in double: rows of thousands of values
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(xr[i]) * xr[i];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(dim) + eps));
    if (w) {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv * w[i];
    } else {
      for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * inv;
    }
  }
}

void rope_frequencies(const RopeParams& p, double* out) {
  for (int i = 0; i < p.n_rot / 2; ++i) {
    double f = std::pow(static_cast<double>(p.freq_base), -2.0 * i / p.n_rot);
    if (p.freq_factors) f /= p.freq_factors[i];
    out[i] = f;
  }
}

void rope(float* x, int64_t n_tok, int n_heads, int64_t row_stride, const int32_t* pos, const RopeParams& p) {
  const int half = p.n_rot / 2;
  // Frequencies: precomputed by the caller, else once per call (on the stack when they fit).
  constexpr int kStackPairs = 512;
  double stack_freq[kStackPairs];
  std::vector<double> heap_freq;
  const double* inv_freq = p.inv_freq;
  if (!inv_freq) {
    double* f = stack_freq;
    if (half > kStackPairs) {
      heap_freq.resize(static_cast<size_t>(half));
      f = heap_freq.data();
    }
    rope_frequencies(p, f);
    inv_freq = f;
  }
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_tok > 16)
  for (int64_t t = 0; t < n_tok; ++t) {
    const double ppos = static_cast<double>(pos[t]) * p.freq_scale;
    for (int i = 0; i < half; ++i) {
      const double ang = ppos * inv_freq[i];
      const float c = static_cast<float>(std::cos(ang)), s = static_cast<float>(std::sin(ang));
      for (int h = 0; h < n_heads; ++h) {
        float* v = x + t * row_stride + static_cast<int64_t>(h) * p.head_dim;
        const int a = p.neox ? i : 2 * i;
        const int b = p.neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b];
        v[a] = x0 * c - x1 * s;
        v[b] = x0 * s + x1 * c;
      }
    }
  }
}

// Flash attention: per block of kBlock queries and head, the visible keys in tiles of kTile;
// per tile one GEMM for the scores (scaled), the mask where the tile crosses a query's causal
// or window edge or holds invalid slots, an online-softmax step (running maximum and sum per
// row; the output so far is rescaled when the maximum grows) and one GEMM adding P V to the
// output rows, which serve as the accumulator; at the end each row is divided by its sum.
// Scratch: kBlock x kTile scores per thread, whatever the number of keys.
void attention(const float* q, const int32_t* q_pos, int64_t n_q, const float* k, const float* v, int64_t n_kv,
               const uint8_t* kv_valid, const AttentionParams& p, float* out) {
  constexpr int64_t kBlock = 32;
  constexpr int64_t kTile = 256;
  const int64_t hd = p.head_dim;
  const int64_t q_stride = static_cast<int64_t>(p.n_head) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.n_head_kv) * hd;
  const int group = p.n_head / p.n_head_kv;
  const int64_t n_blocks = (n_q + kBlock - 1) / kBlock;
  const float neg_inf = -std::numeric_limits<float>::infinity();

#pragma omp parallel num_threads(num_threads())
  {
    float* s = attention_scratch(static_cast<size_t>(kBlock * kTile));
#pragma omp for schedule(dynamic, 1) collapse(2)
    for (int64_t b = 0; b < n_blocks; ++b) {
      for (int h = 0; h < p.n_head; ++h) {
        const int64_t i0 = b * kBlock, nb = std::min(kBlock, n_q - i0);
        const int64_t p_first = q_pos[i0], p_last = q_pos[i0 + nb - 1];
        // Keys this block can see: slots [lo, hi].
        const int64_t hi = std::min<int64_t>(p_last, n_kv - 1);
        const int64_t lo = p.window > 0 ? std::max<int64_t>(0, p_first - p.window + 1) : 0;
        float* o = out + i0 * q_stride + h * hd;
        const float* qb = q + i0 * q_stride + h * hd;
        const int kvh = h / group;
        float m[kBlock], l[kBlock], corr[kBlock];
        std::fill(m, m + nb, neg_inf);
        std::fill(l, l + nb, 0.f);
        bool first = true;
        for (int64_t j0 = lo; j0 <= hi; j0 += kTile) {
          const int64_t nt = std::min(kTile, hi - j0 + 1);
          gemm_nt(nb, nt, hd, qb, q_stride, k + j0 * kv_stride + kvh * hd, kv_stride, s, kTile, false, p.scale, 1);
          // The mask, where some key of the tile is hidden from some query of the block.
          bool holes = false;
          if (kv_valid) {
            for (int64_t j = 0; j < nt && !holes; ++j) holes = !kv_valid[j0 + j];
          }
          const bool causal_edge = j0 + nt - 1 > p_first;
          const bool window_edge = p.window > 0 && j0 < p_last - p.window + 1;
          if (holes || causal_edge || window_edge) {
            for (int64_t i = 0; i < nb; ++i) {
              float* row = s + i * kTile;
              const int64_t qp = q_pos[i0 + i];
              const int64_t j_lo = p.window > 0 ? qp - p.window + 1 - j0 : 0;  // first visible index
              const int64_t j_hi = qp - j0;                                     // last visible index
              for (int64_t j = 0; j < nt; ++j) {
                if (j < j_lo || j > j_hi || (holes && !kv_valid[j0 + j])) row[j] = neg_inf;
              }
            }
          }
          softmax_tile(nb, nt, s, kTile, m, l, corr);
          if (!first) {
            for (int64_t i = 0; i < nb; ++i) {
              if (corr[i] != 1.f) scale_inplace(o + i * q_stride, corr[i], hd);
            }
          }
          // O (+)= P V
          gemm_nn(nb, hd, nt, s, kTile, v + j0 * kv_stride + kvh * hd, kv_stride, o, q_stride, !first, 1.f, 1);
          first = false;
        }
        for (int64_t i = 0; i < nb; ++i) {
          float* orow = o + i * q_stride;
          if (first || !(l[i] > 0.f)) {  // no visible key: a zero output
            std::fill(orow, orow + hd, 0.f);
          } else {
            scale_inplace(orow, 1.f / l[i], hd);
          }
        }
      }
    }
  }
}

void silu_mul(float* g, const float* u, int64_t n) {
#pragma omp parallel for simd schedule(static) num_threads(num_threads()) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    g[i] = x / (1.f + std::exp(-x)) * u[i];
  }
}

void gelu_tanh_mul(float* g, const float* u, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  constexpr float kCoef = 0.044715f;
#pragma omp parallel for simd schedule(static) num_threads(num_threads()) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    g[i] = 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * x * (1.f + kCoef * x * x))) * u[i];
  }
}

void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(float* y, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

void row_l2_norms(const float* x, int64_t n, int64_t dim, float* out) {
  for (int64_t r = 0; r < n; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    out[r] = static_cast<float>(std::sqrt(ss));
  }
}

}  // namespace dashlm::cpu

namespace dashlm::cpu {

void attention_received(const float* q, const int32_t* q_pos, int64_t n_q, const float* k, int64_t n_kv,
                        const uint8_t* kv_valid, const AttentionParams& p, float* out) {
  const int64_t hd = p.head_dim, qs = int64_t{p.n_head} * hd, ks = int64_t{p.n_head_kv} * hd;
  const int group = p.n_head / p.n_head_kv;
  std::fill(out, out + n_kv, 0.f);
  // The (query row, head) pairs in blocks: each pair's softmax weights are computed in parallel
  // (the expensive part: a dot product and an exp per key), then added to out in the pairs' order,
  // so that the result does not depend on the number of threads.
  const int64_t pairs = n_q * p.n_head;
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(pairs, (int64_t{1} << 22) / std::max<int64_t>(1, n_kv)));
  std::vector<float> w(static_cast<size_t>(block * n_kv));
  std::vector<uint8_t> any(static_cast<size_t>(block));
  for (int64_t b0 = 0; b0 < pairs; b0 += block) {
    const int64_t nb = std::min(block, pairs - b0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(num_threads()) if (nb > 1 && n_kv >= 1024)
    for (int64_t pb = 0; pb < nb; ++pb) {
      const int64_t i = (b0 + pb) / p.n_head;
      const int h = static_cast<int>((b0 + pb) % p.n_head);
      const int kvh = h / group;
      float* wp = w.data() + pb * n_kv;
      const int64_t hi = std::min<int64_t>(q_pos[i], n_kv - 1);
      const int64_t lo = p.window > 0 ? std::max<int64_t>(0, q_pos[i] - p.window + 1) : 0;
      float mx = -std::numeric_limits<float>::infinity();
      for (int64_t j = lo; j <= hi; ++j) {
        if (kv_valid && !kv_valid[j]) continue;
        wp[j] = p.scale * dot(q + i * qs + h * hd, k + j * ks + kvh * hd, hd);
        mx = std::max(mx, wp[j]);
      }
      any[static_cast<size_t>(pb)] = mx != -std::numeric_limits<float>::infinity();
      if (!any[static_cast<size_t>(pb)]) continue;
      double sum = 0;
      for (int64_t j = lo; j <= hi; ++j) {
        if (kv_valid && !kv_valid[j]) continue;
        wp[j] = std::exp(wp[j] - mx);
        sum += wp[j];
      }
      for (int64_t j = lo; j <= hi; ++j) {
        if (kv_valid && !kv_valid[j]) continue;
        wp[j] = static_cast<float>(wp[j] / sum);
      }
    }
    for (int64_t pb = 0; pb < nb; ++pb) {
      if (!any[static_cast<size_t>(pb)]) continue;
      const int64_t i = (b0 + pb) / p.n_head;
      const float* wp = w.data() + pb * n_kv;
      const int64_t hi = std::min<int64_t>(q_pos[i], n_kv - 1);
      const int64_t lo = p.window > 0 ? std::max<int64_t>(0, q_pos[i] - p.window + 1) : 0;
      for (int64_t j = lo; j <= hi; ++j) {
        if (kv_valid && !kv_valid[j]) continue;
        out[j] += wp[j];
      }
    }
  }
}

void gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n * width > 65536)
  for (int64_t i = 0; i < n; ++i) std::copy_n(src + idx[i] * width, width, dst + i * width);
}

void scatter_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n * width > 65536)
  for (int64_t i = 0; i < n; ++i) std::copy_n(src + i * width, width, dst + idx[i] * width);
}

}  // namespace dashlm::cpu
