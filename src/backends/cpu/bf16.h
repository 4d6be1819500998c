// Products with bf16 weights through AVX512-BF16 dot products (vdpbf16ps): the activations are
// rounded to bf16 (round to nearest even) and each pair of products is summed into float32 lanes,
// twice the multiply-adds per instruction of the float32 FMA. The weights are read as stored:
// decoding streams the rows in place, prefill repacks a block of rows at a time into panels
// whose pairs of values line up with a register of sixteen rows.
//
// Error: bf16 products are exact in float32, so beyond float32 summation the only error is the
// activations' rounding, |x - bf16(x)| <= 2^-8 |x| per value (8 significant bits): for one output
// |y_bf16 - y| <= 2^-8 * sum_j |w_j x_j| (plus float32 rounding of the sums). Input denormals
// count as zero (the instructions' own rule).
//
// Used in the q8 and q8k compute modes where the CPU has AVX512-BF16 (with AVX512F/BW/VL) and the
// kernel level is avx512; `--compute f32` keeps the exact float32 path for bf16 weights too.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dashlm::cpu {

// Whether bf16 weights take these kernels now (CPU, build and kernel level; not the compute mode).
bool bf16_dots_available();

// Rows of activations rounded to bf16 (round to nearest even), each padded with zeros to kp()
// values (a multiple of 32), as the kernels read them. The storage only grows.
class Bf16Activations {
 public:
  Bf16Activations() = default;
  Bf16Activations(const Bf16Activations&) = delete;
  Bf16Activations& operator=(const Bf16Activations&) = delete;
  ~Bf16Activations();

  // m rows of k values (row stride ldx). Fails where bf16_dots_available() is false.
  void convert(const float* x, int64_t ldx, int64_t m, int64_t k);
  int64_t m() const { return m_; }
  int64_t k() const { return k_; }
  int64_t kp() const { return kp_; }
  const uint16_t* rows() const { return data_; }

 private:
  uint16_t* data_ = nullptr;
  size_t capacity_ = 0;  // halves
  int64_t m_ = 0, k_ = 0, kp_ = 0;
};

// y[i * ldy + r] (+= with accumulate) = W_r . x_i for weight rows r in [0, n) (bf16, row r at
// w + r * ldw elements, x.k() values) and the x.m() rows of x. Fails where bf16_dots_available()
// is false.
void bf16_matmul(const uint16_t* w, int64_t ldw, int64_t n, const Bf16Activations& x, float* y, int64_t ldy,
                 bool accumulate);
// The same for float32 rows (row stride ldx), converted first.
void bf16_matmul(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, const float* x, int64_t ldx, int64_t m, float* y,
                 int64_t ldy, bool accumulate);

}  // namespace dashlm::cpu
