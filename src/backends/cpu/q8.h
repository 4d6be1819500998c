// Quantized compute on the CPU: activations quantized to 8 bits per block of 32 values (one
// float scale per block, round to nearest even), multiplied against the quantized weights with
// integer dot products, with run-time dispatch on the instruction set: AVX-512 VNNI (vpdpbusd),
// AVX2 (vpmaddubsw / vpmaddwd) or portable C++. The level follows the float GEMM's
// (gemm_level(): DASHLM_CPU lowers both); the AVX-512 level uses VNNI when the CPU has
// AVX512BW, AVX512VL and AVX512VNNI, and the AVX2 kernels otherwise.
//
// Error: the integer sums are exact, so the only error beyond float32 rounding is that of the
// activations' quantization: |x - d q| <= d / 2 per value with d = max |x| / 127 over its block,
// hence for one output |y_q8 - y| <= sum over blocks of d_b / 2 * sum_{j in b} |w_j| (plus the
// float32 rounding of the scales and the sums).
#pragma once
#include <cstddef>
#include <cstdint>

#include "backends/dtype.h"

namespace dashlm::cpu {

// How products with quantized weights are computed: f32 dequantizes the weights and multiplies
// in float32 (the exactness oracle), q8 uses the integer kernels below where the weight type
// has them, with activations per 32 values; q8k does too but with the K types' activations per
// 256 where the kernels sum super-blocks in integers (q8_super_blocks: faster, less exact). The
// start value is q8, or the environment variable DASHLM_COMPUTE=f32|q8|q8k.
enum class Compute : int { f32 = 0, q8 = 1, q8k = 2 };
Compute compute_mode();
void set_compute_mode(Compute c);
const char* compute_name(Compute c);
// "f32", "q8" or "q8k"; false for anything else.
bool parse_compute(const char* s, Compute* out);

// Weight types with integer kernels: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K.
bool q8_supports(DType type);

// Types whose products with many rows of activations (prefill) have integer kernels too (all of
// q8_supports).
bool q8_prefill_supports(DType type);

// Name of the integer kernels in use: "scalar", "avx2" or "avx512vnni".
const char* q8_kernel_name();

// Whether products with weights of `type` over k inputs take activations per 256 values: in the
// q8k compute mode, for the K types (Q4_K, Q5_K, Q6_K) where the kernels in use sum a super-block
// in integers (the AVX-512 VNNI ones) and k is a multiple of 256. One scale per 256 values is
// llama.cpp's choice for the K types (its q8_K); it lets a product apply the weights' integer
// sub-block scales in integers and convert to float once per 256 products instead of once per 32.
bool q8_super_blocks(DType type, int64_t k);

// The scale group to ask Q8Activations::quantize for, for products with weights of `type` over k
// inputs: 256 where q8_super_blocks holds, else 32.
inline int64_t q8_group(DType type, int64_t k) { return q8_super_blocks(type, k) ? 256 : 32; }

// The largest, over the groups of 256 values of the k values at x, of the group's largest
// magnitude over the mean of its eight blocks' (1 when every block of 32 has the same largest
// magnitude, 8 when one block's values dominate the group; NaN for a value that is not finite). It
// is how much larger the quantization step of a group's values is with one scale per 256 than,
// on average over its blocks, with one per 32. It catches a group dominated by one block: with
// large values in two blocks it is at most 4, and such a group stays per 256.
float q8_outlier_ratio(const float* x, int64_t k);

// Rows of activations whose ratio exceeds this (or is NaN) are quantized per 32 even when per 256
// is asked for. The massive activations of a prompt's first token in models such as Qwen2.5 (ratios above
// 7) would otherwise leave the rest of their group a few quantization steps: on
// Qwen2.5-Coder-1.5B that token's logits moved by 11 (0.35 of the largest logit; 1.9 with it per
// 32). Measured there with the project's README as the prompt (1024 tokens, 64 decoded): rows per
// 32 at this limit 0.1-0.3% of the prefill's and 11% of decoding's inputs of the down projection
// (61% at a limit of 4, for a mean logit error about as large: 0.081 against 0.090 on the
// 64-token text of tests/e2e/reference_parity.py).
constexpr float kQ8OutlierRatio = 6.f;

// Rows of activations quantized to 8 bits with one scale per group of 32 or 256 values. The
// storage only grows.
class Q8Activations {
 public:
  Q8Activations() = default;
  Q8Activations(const Q8Activations&) = delete;
  Q8Activations& operator=(const Q8Activations&) = delete;
  ~Q8Activations();

  // Quantizes m rows of k values (k a multiple of group; row stride ldx) with one scale per
  // `group` values (32 or 256); with 256, a row whose q8_outlier_ratio exceeds kQ8OutlierRatio
  // gets one scale per 32 (a fine row).
  void quantize(const float* x, int64_t ldx, int64_t m, int64_t k, int64_t group = 32);

  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  int64_t group() const { return group_; }
  // Rows quantized per 32 although the group is 256 (all rows with group 32), and whether rows
  // [i, i + n) all have the group's scales.
  int64_t fine_rows() const {
    int64_t n = 0;
    for (int64_t r = 0; r < m_; ++r) n += fine_[r];
    return n;
  }
  bool coarse(int64_t i, int64_t n) const {
    if (group_ == 32) return false;
    for (int64_t r = i; r < i + n; ++r)
      if (fine_[r]) return false;
    return true;
  }
  // Row i: k quants, k / 32 scales (one per block of 32; equal within a group of 256), k / 16
  // sums of 16 quants and the same sums times their block's scale, and (group 256 only) k / 32
  // sums of each block's quants.
  const int8_t* q(int64_t i) const { return q_ + i * k_; }
  const float* d(int64_t i) const { return d_ + i * (k_ / 32); }
  const int16_t* sums(int64_t i) const { return s_ + i * (k_ / 16); }
  const float* scaled_sums(int64_t i) const { return ds_ + i * (k_ / 16); }
  const int16_t* block_sums(int64_t i) const { return s32_ + i * (k_ / 32); }
  // The same per tile of kTileRows (8) rows, rows side by side, for the panels' register tiles:
  // tile t, block b, row r of the tile at [(t * (k / 32) + b) * 8 + r]: the scales, the two
  // scaled half sums added, and the two half sums as one 32-bit pair. Tile t starts at row 8 t.
  static constexpr int64_t kTileRows = 8;
  const float* tile_scales(int64_t t) const { return td_ + t * (k_ / 32) * kTileRows; }
  const float* tile_scaled_sums(int64_t t) const { return tds_ + t * (k_ / 32) * kTileRows; }
  const int32_t* tile_sums(int64_t t) const { return ts_ + t * (k_ / 32) * kTileRows; }

 private:
  int64_t m_ = 0, k_ = 0, group_ = 32;
  int8_t* q_ = nullptr;
  float* d_ = nullptr;
  int16_t* s_ = nullptr;
  float* ds_ = nullptr;
  int16_t* s32_ = nullptr;
  float* td_ = nullptr;
  float* tds_ = nullptr;
  int32_t* ts_ = nullptr;
  uint8_t* fine_ = nullptr;
  void* data_ = nullptr;
  size_t capacity_ = 0;
};

// y[i * ldy + r] (+= with accumulate) = W_r . x_i for the n rows of W starting at w (row stride
// row_bytes, x.k() elements each of `type`) and every row i of x. Rows of W are shared among
// `threads` threads as for gemm_nt (0: the default). Throws for a type without kernels.
void q8_matmul(DType type, const uint8_t* w, size_t row_bytes, int64_t n, const Q8Activations& x, float* y,
               int64_t ldy, bool accumulate, int threads = 0);

}  // namespace dashlm::cpu
