// Internal to the bf16 products (bf16.h): what the instruction-set translation unit
// (bf16_avx512.cpp) hands to the driver in bf16.cpp. As with the GEMM's kernel units, that unit
// keeps everything but its one exported pointer in an anonymous namespace.
#pragma once
#include <cstdint>

namespace dashlm::cpu::bf16_detail {

constexpr int64_t kPanelRows = 16;  // weight rows per panel: one vector of float32 lanes (pack_panel transposes 16 x 16)
constexpr int64_t kChunk = 32;      // activations and panels are padded with zeros to a multiple of this
constexpr int64_t kMaxGemvRows = 4; // rows of activations the in-place dot products take at once

struct Bf16KernelSet {
  const char* name;
  // out[0, kp) = bf16(x[0, k)) (round to nearest even), then zeros; kp >= k, a multiple of kChunk.
  void (*to_bf16)(const float* x, int64_t k, int64_t kp, uint16_t* out);
  // Packs rows [0, rows) (rows <= kPanelRows) of W (row r at w + r * ldw, k values) into one
  // panel of kp * kPanelRows values: the pair (2 p, 2 p + 1) of row r at panel[2 (p kPanelRows + r)]
  // and the one after; zeros past k and past rows.
  void (*pack_panel)(const uint16_t* w, int64_t ldw, int64_t rows, int64_t k, int64_t kp, uint16_t* panel);
  // y[i * ldy + j] (+= with accumulate) = W_j . x_i for the `rows` rows of W packed in
  // ceil(rows / kPanelRows) consecutive panels and the m rows of xb (bf16, row stride kp).
  void (*panel_gemm)(const uint16_t* panels, int64_t rows, int64_t kp, const uint16_t* xb, int64_t m, float* y,
                     int64_t ldy, bool accumulate);
  // The same for m <= kMaxGemvRows rows of xb, with W read in place.
  void (*gemv)(const uint16_t* w, int64_t ldw, int64_t n, int64_t k, const uint16_t* xb, int64_t kp, int64_t m, float* y,
               int64_t ldy, bool accumulate);
};

// nullptr where the build has no such kernels.
extern const Bf16KernelSet* const bf16_avx512;

}  // namespace dashlm::cpu::bf16_detail
