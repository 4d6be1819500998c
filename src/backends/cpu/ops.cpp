#include "backends/cpu/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "backends/cpu/bf16.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/q8.h"
#include "backends/cpu/quants.h"
#include "common/error.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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

int work_threads(int threads, double flops, double min_flops, int64_t items) {
  const int t0 = threads > 0 ? threads : (omp_in_parallel() ? 1 : num_threads());
  return static_cast<int>(
      std::max<double>(1.0, std::min<double>({static_cast<double>(t0), flops / min_flops, static_cast<double>(items)})));
}

namespace {

// Most rows of x that go through the integer kernels in the q8 compute mode for a type without
// prefill kernels (more go through the float GEMM).
constexpr int64_t kQ8MaxRows = 3;

// The product of matmul / matmul_cols: input features k0 .. k1-1 of W against x (row stride ldx).
// shared: the same rows when they come from a SharedInput (then quantized at most once).
void matmul_part(const WeightView& w, int64_t k0, int64_t k1, const float* x, int64_t ldx, int64_t m, float* y,
                 bool accumulate, SharedInput* shared = nullptr) {
  const int64_t in = w.in_features, out = w.out_features, kw = k1 - k0;
  if (m <= 0 || out <= 0) return;
  const size_t col_offset = k0 > 0 ? dtype_row_bytes(w.type, k0) : 0;
  if (w.type == DType::F32) {
    // No conversion needed: one GEMM.
    gemm_nt(m, out, kw, x, ldx, static_cast<const float*>(w.data) + k0, in, y, out, accumulate);
  } else if (w.type == DType::BF16 && compute_mode() != Compute::f32 && bf16_dots_available()) {
    // bf16 weights against activations rounded to bf16, by AVX512-BF16 dot products (cpu::bf16_matmul).
    const auto* wb = static_cast<const uint16_t*>(w.data) + k0;
    if (shared) bf16_matmul(wb, in, out, shared->bf16(), y, out, accumulate);
    else bf16_matmul(wb, in, out, kw, x, ldx, m, y, out, accumulate);
  } else if (compute_mode() != Compute::f32 && q8_supports(w.type) &&
             (m <= kQ8MaxRows || q8_prefill_supports(w.type))) {
    // Quantized compute: x quantized to 8 bits per group of 32 or 256 (cpu::q8_group), integer dot products with the
    // quantized rows (decode) or with panels of them repacked for register tiles (prefill; see
    // cpu::q8_matmul).
    if (shared) {
      q8_matmul(w.type, row_ptr(w, 0) + col_offset, row_bytes(w), out, shared->q8(w.type), y, out, accumulate);
    } else {
      thread_local Q8Activations qx;
      qx.quantize(x, ldx, m, kw, q8_group(w.type, kw));
      q8_matmul(w.type, row_ptr(w, 0) + col_offset, row_bytes(w), out, qx, y, out, accumulate);
    }
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

namespace {

void matmul_rows(const WeightView& w, const float* x, int64_t m, float* y, const float* bias, SharedInput* shared) {
  const int64_t out = w.out_features;
  if (m <= 0 || out <= 0) return;
  matmul_part(w, 0, w.in_features, x, w.in_features, m, y, false, shared);
  if (bias) {
#pragma omp parallel for schedule(static) num_threads(num_threads())
    for (int64_t i = 0; i < m; ++i) add_inplace(y + i * out, bias, out);
  }
}

}  // namespace

void matmul(const WeightView& w, const float* x, int64_t m, float* y, const float* bias) {
  matmul_rows(w, x, m, y, bias, nullptr);
}

const Q8Activations& SharedInput::q8(DType type) {
  const int64_t group = q8_group(type, k_);
  if (!quantized_ || q8_.group() != group) {
    q8_.quantize(x_, k_, m_, k_, group);
    quantized_ = true;
  }
  return q8_;
}

const Bf16Activations& SharedInput::bf16() {
  if (!converted_) {
    bf16_.convert(x_, k_, m_, k_);
    converted_ = true;
  }
  return bf16_;
}

void matmul(const WeightView& w, SharedInput& in, float* y, const float* bias) {
  if (in.k() != w.in_features) fail("matmul: rows of {} values against a weight of {} inputs", in.k(), w.in_features);
  matmul_rows(w, in.x(), in.m(), y, bias, &in);
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

namespace {

// Sum of squares in double, in kLanes running sums side by side (added up in a fixed order, so
// the result does not depend on the machine). In one running sum each value waited for the
// previous addition: 3.6-5.4% of the small models' prefill went to their norms.
double sum_squares(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
  for (int j = 0; i < n; ++i, ++j) acc[j] += static_cast<double>(x[i]) * x[i];
  double s = 0.0;
  for (double a : acc) s += a;
  return s;
}

}  // namespace

void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 64)
  for (int64_t r = 0; r < n; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    // in double: rows of thousands of values
    const float inv = static_cast<float>(1.0 / std::sqrt(sum_squares(xr, dim) / static_cast<double>(dim) + eps));
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

void rope_angles(const int32_t* pos, int64_t n_tok, const RopeParams& p, float* cs) {
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
    float* c = cs + t * 2 * half;
    for (int i = 0; i < half; ++i) {
      const double ang = ppos * inv_freq[i];
      c[i] = static_cast<float>(std::cos(ang));
      c[half + i] = static_cast<float>(std::sin(ang));
    }
  }
}

void rope(float* x, int64_t n_tok, int n_heads, int64_t row_stride, const float* cs, const RopeParams& p) {
  const int half = p.n_rot / 2;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n_tok > 16)
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* c = cs + t * 2 * half;
    const float* s = c + half;
    for (int h = 0; h < n_heads; ++h) {
      float* v = x + t * row_stride + static_cast<int64_t>(h) * p.head_dim;
      if (p.neox) {
        for (int i = 0; i < half; ++i) {
          const float x0 = v[i], x1 = v[i + half];
          v[i] = x0 * c[i] - x1 * s[i];
          v[i + half] = x0 * s[i] + x1 * c[i];
        }
      } else {
        for (int i = 0; i < half; ++i) {
          const float x0 = v[2 * i], x1 = v[2 * i + 1];
          v[2 * i] = x0 * c[i] - x1 * s[i];
          v[2 * i + 1] = x0 * s[i] + x1 * c[i];
        }
      }
    }
  }
}

void rope(float* x, int64_t n_tok, int n_heads, int64_t row_stride, const int32_t* pos, const RopeParams& p) {
  std::vector<float> cs(static_cast<size_t>(n_tok * (p.n_rot / 2) * 2));
  rope_angles(pos, n_tok, p, cs.data());
  rope(x, n_tok, n_heads, row_stride, cs.data(), p);
}

const char* kv_type_name(KvType t) { return t == KvType::F16 ? "f16" : "f32"; }
size_t kv_type_bytes(KvType t) { return t == KvType::F16 ? 2 : 4; }

// Half <-> float conversions: vcvtph2ps / vcvtps2ph with F16C (8 at a time) or AVX-512F (16 at a
// time), compiled for those instruction sets function by function and picked at run time; the
// portable path is the scalar conversion of quants.h. All round to nearest even, so they agree
// bit for bit (NaN payloads aside).
namespace {

#if defined(__x86_64__) || defined(__i386__)
#define DASHLM_X86_F16 1
// GCC 12's AVX-512 conversion intrinsics pass an _mm*_undefined_* operand, which -Wmaybe-uninitialized
// reports as used uninitialized (a known false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f"))) void f16_to_f32_avx512(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
__attribute__((target("avx512f"))) void f32_to_f16_avx512(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
__attribute__((target("avx,f16c"))) void f16_to_f32_f16c(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
__attribute__((target("avx,f16c"))) void f32_to_f16_f16c(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  }
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}
#pragma GCC diagnostic pop
#endif

void f16_to_f32_portable(const uint16_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_fp32(src[i]);
}
void f32_to_f16_portable(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

struct F16Route {
  const char* name;
  void (*to_f32)(const uint16_t*, float*, int64_t);
  void (*to_f16)(const float*, uint16_t*, int64_t);
};

// The route follows the GEMM's kernel level in use (DASHLM_GEMM=scalar, or gemm_set_level as the
// tests use to reach the portable kernels, reaches the portable conversions too) and what the CPU
// has.
const F16Route& f16_route() {
  static const F16Route portable{"portable", f16_to_f32_portable, f32_to_f16_portable};
#ifdef DASHLM_X86_F16
  static const F16Route avx512{"avx512", f16_to_f32_avx512, f32_to_f16_avx512};
  static const F16Route f16c{"f16c", f16_to_f32_f16c, f32_to_f16_f16c};
  const bool has_avx512 = cpu_features().avx512f;
  const bool has_f16c = cpu_features().f16c && cpu_features().avx;
  const GemmLevel level = gemm_level();
  if (level == GemmLevel::avx512 && has_avx512) return avx512;
  if (level != GemmLevel::scalar && has_f16c) return f16c;
#endif
  return portable;
}

}  // namespace

void f16_to_f32_row(const uint16_t* src, float* dst, int64_t n) { f16_route().to_f32(src, dst, n); }
void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n) { f16_route().to_f16(src, dst, n); }
const char* f16_conversion_name() { return f16_route().name; }

// Flash attention. A task is a block of queries and one KV head with the query heads that share
// it (GQA), packed as rows (head g, query i) -> row g * nb + i, so that each key tile serves every
// head of the group; optionally only a share of the block's keys (a split: decoding has one
// query block, and its few tasks would leave threads idle; splits' partial results are merged at
// the end). Per key tile: one GEMM for the scores (scaled), the mask where the tile crosses a
// query's causal or window edge, an online-softmax step (running maximum and sum per row; the
// output so far is rescaled when the maximum grows) and one GEMM adding P V to the output rows.
// Key tiles are read in place (float32 cache, no dropped slots) or gathered into per-thread
// buffers: f16 rows converted to float, and with dropped slots (kv_valid) only the valid ones,
// so that the tiles are dense in valid keys and a dropped key costs nothing. A task of a few rows
// (decoding) against an f16 cache reads the tile in place instead, converting keys and values in
// registers as both products use them (attn_scores_f16, attn_pv_f16): the float tiles would cost
// more to write and read back than the products themselves.
void attention(const float* q, const int32_t* q_pos, int64_t n_q, const KvRef& kv, int64_t n_kv,
               const uint8_t* kv_valid, const AttentionParams& p, float* out) {
  constexpr int64_t kTile = 256;
  constexpr int64_t kRowsTarget = 64;  // rows (queries x heads of a group) per task
  constexpr int64_t kDirectRows = 8;   // at most this many rows: an f16 tile is read in place
  if (n_q <= 0) return;
  const int64_t hd = p.head_dim;
  const int64_t q_stride = static_cast<int64_t>(p.n_head) * hd;
  const int64_t kv_stride = static_cast<int64_t>(p.n_head_kv) * hd;
  const int group = p.n_head / p.n_head_kv;
  const int64_t qb = std::max<int64_t>(1, kRowsTarget / group);  // queries per block
  const int64_t rows_max = qb * group;
  const int64_t n_blocks = (n_q + qb - 1) / qb;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const bool f16 = kv.type == KvType::F16;
  const auto to_f32 = f16_route().to_f32;

  // With dropped slots: the positions of the valid ones, ascending (tiles are ranges of it).
  thread_local std::vector<int32_t> slot_list;
  const int32_t* slots = nullptr;
  int64_t n_slots = 0;
  if (kv_valid) {
    slot_list.clear();
    for (int64_t j = 0; j < n_kv; ++j) {
      if (kv_valid[j]) slot_list.push_back(static_cast<int32_t>(j));
    }
    slots = slot_list.data();
    n_slots = static_cast<int64_t>(slot_list.size());
  }
  const bool in_place = !f16 && !slots;
  // The key range of a block, as indices into the slot list (or slots themselves).
  auto key_range = [&](int64_t b, int64_t& a, int64_t& e) {
    const int64_t i0 = b * qb, nb = std::min(qb, n_q - i0);
    const int64_t hi = std::min<int64_t>(q_pos[i0 + nb - 1], n_kv - 1);
    const int64_t lo = p.window > 0 ? std::max<int64_t>(0, q_pos[i0] - p.window + 1) : 0;
    if (!slots) {
      a = lo;
      e = std::max(lo, hi + 1);
      return;
    }
    const int32_t* end = slots + n_slots;
    a = std::lower_bound(slots, end, static_cast<int32_t>(lo)) - slots;
    e = std::max(a, static_cast<int64_t>(std::upper_bound(slots, end, static_cast<int32_t>(hi)) - slots));
  };

  // Splits of the key range when the tasks are few and do not share evenly among the threads
  // (decoding, short chunks): 3 KV heads on 2 threads would leave one thread idle a third of
  // the time. The fewest splits that give every thread as many tasks, or enough tasks that
  // dynamic scheduling evens them out; each split at least two tiles of keys.
  const int threads = num_threads();
  const int64_t tasks0 = n_blocks * p.n_head_kv;
  int64_t splits = 1;
  if (threads > 1 && tasks0 % threads != 0 && tasks0 < 8 * threads) {
    int64_t a = 0, e = 0;
    key_range(n_blocks - 1, a, e);
    const int64_t most = (e - a) / (2 * kTile);
    for (int64_t sp = 2; sp <= most; ++sp) {
      splits = sp;
      if ((tasks0 * sp) % threads == 0 || tasks0 * sp >= 8 * threads) break;
    }
  }
  // Partial results of splits: per task, rows_max x hd outputs, then maxima and sums.
  std::vector<float> partial;
  if (splits > 1) partial.resize(static_cast<size_t>(tasks0 * splits * rows_max * (hd + 2)));
  const int64_t n_tasks = tasks0 * splits;

#pragma omp parallel num_threads(threads) if (n_tasks > 1)
  {
    // Scratch: scores, packed queries and outputs, gathered key and value tiles.
    float* scratch = attention_scratch(static_cast<size_t>(rows_max * kTile + 2 * rows_max * hd + 2 * kTile * hd));
    float* s = scratch;
    float* qs = s + rows_max * kTile;
    float* os = qs + rows_max * hd;
    float* kt_buf = os + rows_max * hd;
    float* vt_buf = kt_buf + kTile * hd;
    float m[256], l[256], corr[256];
    std::vector<float> m_heap, l_heap, corr_heap;
    float* mp = m;
    float* lp = l;
    float* cp = corr;
    if (rows_max > 256) {
      m_heap.resize(static_cast<size_t>(rows_max));
      l_heap.resize(static_cast<size_t>(rows_max));
      corr_heap.resize(static_cast<size_t>(rows_max));
      mp = m_heap.data();
      lp = l_heap.data();
      cp = corr_heap.data();
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n_tasks; ++task) {
      const int64_t sp = task % splits;
      const int64_t b = task / splits / p.n_head_kv;
      const int kvh = static_cast<int>(task / splits % p.n_head_kv);
      const int64_t i0 = b * qb, nb = std::min(qb, n_q - i0), rows = nb * group;
      const int64_t p_first = q_pos[i0], p_last = q_pos[i0 + nb - 1];
      int64_t a = 0, e = 0;
      key_range(b, a, e);
      if (splits > 1) {  // this split's share, in whole tiles
        const int64_t tiles = (e - a + kTile - 1) / kTile;
        const int64_t t0 = tiles * sp / splits, t1 = tiles * (sp + 1) / splits;
        e = std::min(e, a + t1 * kTile);
        a = a + t0 * kTile;
      }
      for (int g = 0; g < group; ++g) {
        const float* src = q + i0 * q_stride + (static_cast<int64_t>(kvh) * group + g) * hd;
        for (int64_t i = 0; i < nb; ++i) std::copy_n(src + i * q_stride, hd, qs + (g * nb + i) * hd);
      }
      std::fill(mp, mp + rows, neg_inf);
      std::fill(lp, lp + rows, 0.f);
      // A few rows (decoding) against an f16 cache: both products read the tile in place.
      const bool direct = f16 && rows <= kDirectRows && hd % 32 == 0;
      bool first = true;
      for (int64_t t0 = a; t0 < e; t0 += kTile) {
        const int64_t nt = std::min(kTile, e - t0);
        const float* kt = nullptr;
        const float* vt = nullptr;
        int64_t ld = hd;
        // The f16 tile in place: row j of K (V) at kh (vh) + (ts ? ts[j] : j) * kv_stride.
        const int32_t* ts = slots ? slots + t0 : nullptr;
        const int64_t off0 = (slots ? 0 : t0 * kv_stride) + kvh * hd;
        const uint16_t* kh = direct ? static_cast<const uint16_t*>(kv.k) + off0 : nullptr;
        const uint16_t* vh = direct ? static_cast<const uint16_t*>(kv.v) + off0 : nullptr;
        if (direct) {
          attn_scores_f16(rows, nt, hd, qs, hd, kh, kv_stride, ts, s, kTile, p.scale);
        } else if (in_place) {
          kt = static_cast<const float*>(kv.k) + t0 * kv_stride + kvh * hd;
          vt = static_cast<const float*>(kv.v) + t0 * kv_stride + kvh * hd;
          ld = kv_stride;
        } else {
          for (int64_t j = 0; j < nt; ++j) {
            const int64_t slot = slots ? slots[t0 + j] : t0 + j;
            const int64_t off = slot * kv_stride + kvh * hd;
            if (f16) {
              to_f32(static_cast<const uint16_t*>(kv.k) + off, kt_buf + j * hd, hd);
              to_f32(static_cast<const uint16_t*>(kv.v) + off, vt_buf + j * hd, hd);
            } else {
              std::copy_n(static_cast<const float*>(kv.k) + off, hd, kt_buf + j * hd);
              std::copy_n(static_cast<const float*>(kv.v) + off, hd, vt_buf + j * hd);
            }
          }
          kt = kt_buf;
          vt = vt_buf;
        }
        if (!direct) gemm_nt(rows, nt, hd, qs, hd, kt, ld, s, kTile, false, p.scale, 1);
        // The mask, where some key of the tile is hidden from some query of the block.
        const int64_t k_first = slots ? slots[t0] : t0, k_last = slots ? slots[t0 + nt - 1] : t0 + nt - 1;
        const bool causal_edge = k_last > p_first;
        const bool window_edge = p.window > 0 && k_first < p_last - p.window + 1;
        if (causal_edge || window_edge) {
          for (int64_t r = 0; r < rows; ++r) {
            float* row = s + r * kTile;
            const int64_t qp = q_pos[i0 + r % nb];
            const int64_t lo_pos = p.window > 0 ? qp - p.window + 1 : std::numeric_limits<int64_t>::min();
            for (int64_t j = 0; j < nt; ++j) {
              const int64_t kp = slots ? slots[t0 + j] : t0 + j;
              if (kp < lo_pos || kp > qp) row[j] = neg_inf;
            }
          }
        }
        softmax_tile(rows, nt, s, kTile, mp, lp, cp);
        if (!first) {
          for (int64_t r = 0; r < rows; ++r) {
            if (cp[r] != 1.f) scale_inplace(os + r * hd, cp[r], hd);
          }
        }
        // O (+)= P V
        if (direct) attn_pv_f16(rows, nt, hd, s, kTile, vh, kv_stride, ts, os, hd, !first);
        else gemm_nn(rows, hd, nt, s, kTile, vt, ld, os, hd, !first, 1.f, 1);
        first = false;
      }
      if (first) std::fill(os, os + rows * hd, 0.f);  // no key in range
      if (splits > 1) {
        float* po = partial.data() + task * rows_max * (hd + 2);
        std::copy_n(os, rows * hd, po);
        std::copy_n(mp, rows, po + rows_max * hd);
        std::copy_n(lp, rows, po + rows_max * hd + rows_max);
        continue;
      }
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t g = r / nb, i = r % nb;
        float* orow = out + (i0 + i) * q_stride + (static_cast<int64_t>(kvh) * group + g) * hd;
        if (first || lp[r] == 0.f) {  // no visible key: a zero output (a NaN sum stays NaN)
          std::fill(orow, orow + hd, 0.f);
        } else {
          const float inv = 1.f / lp[r];
          for (int64_t d = 0; d < hd; ++d) orow[d] = os[r * hd + d] * inv;
        }
      }
    }
  }
  if (splits == 1) return;
  // Merge the splits: O = sum_s exp(m_s - M) O_s / sum_s exp(m_s - M) l_s.
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks0 > 1)
  for (int64_t t = 0; t < tasks0; ++t) {
    const int64_t b = t / p.n_head_kv;
    const int kvh = static_cast<int>(t % p.n_head_kv);
    const int64_t i0 = b * qb, nb = std::min(qb, n_q - i0), rows = nb * group;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t g = r / nb, i = r % nb;
      float* orow = out + (i0 + i) * q_stride + (static_cast<int64_t>(kvh) * group + g) * hd;
      float mx = neg_inf;
      bool nan = false;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* po = partial.data() + (t * splits + sp) * rows_max * (hd + 2);
        const float ls = po[rows_max * hd + rows_max + r];
        nan |= ls != ls;
        if (ls > 0.f) mx = std::max(mx, po[rows_max * hd + r]);
      }
      std::fill(orow, orow + hd, nan ? std::numeric_limits<float>::quiet_NaN() : 0.f);
      if (nan || mx == neg_inf) continue;
      float sum = 0.f;
      for (int64_t sp = 0; sp < splits; ++sp) {
        const float* po = partial.data() + (t * splits + sp) * rows_max * (hd + 2);
        const float ls = po[rows_max * hd + rows_max + r];
        if (!(ls > 0.f)) continue;
        const float w = std::exp(po[rows_max * hd + r] - mx);
        sum += w * ls;
        for (int64_t d = 0; d < hd; ++d) orow[d] += w * po[r * hd + d];
      }
      scale_inplace(orow, 1.f / sum, hd);
    }
  }
}

namespace {

// The gated MLP's elementwise product in pieces of 4096 values, shared among the threads for
// long arrays (prefill).
void glu_pieces(int act, float* g, const float* u, int64_t n) {
  constexpr int64_t kPiece = 4096;
  const int64_t pieces = (n + kPiece - 1) / kPiece;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n > 65536)
  for (int64_t p = 0; p < pieces; ++p) {
    const int64_t i0 = p * kPiece;
    glu_mul(act, g + i0, u + i0, std::min(kPiece, n - i0));
  }
}

}  // namespace

void silu_mul(float* g, const float* u, int64_t n) { glu_pieces(0, g, u, n); }

void gelu_tanh_mul(float* g, const float* u, int64_t n) { glu_pieces(1, g, u, n); }

void add_inplace(float* y, const float* x, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void scale_inplace(float* y, float s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= s;
}

void row_l2_norms(const float* x, int64_t n, int64_t dim, float* out) {
  for (int64_t r = 0; r < n; ++r) out[r] = static_cast<float>(std::sqrt(sum_squares(x + r * dim, dim)));
}

}  // namespace dashlm::cpu

namespace dashlm::cpu {

void attention_received(const float* q, const int32_t* q_pos, int64_t n_q, const void* k, KvType type, int64_t n_kv,
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
      float* key = type == KvType::F16 ? attention_scratch(static_cast<size_t>(hd)) : nullptr;
      for (int64_t j = lo; j <= hi; ++j) {
        if (kv_valid && !kv_valid[j]) continue;
        const float* kr = static_cast<const float*>(k) + j * ks + kvh * hd;
        if (key) {
          f16_to_f32_row(static_cast<const uint16_t*>(k) + j * ks + kvh * hd, key, hd);
          kr = key;
        }
        wp[j] = p.scale * dot(q + i * qs + h * hd, kr, hd);
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
