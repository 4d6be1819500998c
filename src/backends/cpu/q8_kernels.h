// Internal to the quantized compute (q8.cpp): what each instruction-set translation unit
// (q8_scalar.cpp, q8_avx2.cpp, q8_avx512vnni.cpp) hands to the driver. As for the float
// kernels (gemm_kernels.h), these units are compiled with different instruction-set flags and so
// export nothing but their one constant pointer; everything else sits in an anonymous namespace
// and no standard-library template is used.
#pragma once
#include <cstdint>

namespace dashlm::cpu::q8_detail {

// Elements per activation block: one float scale per 32 values.
constexpr int64_t kBlock = 32;
// Rows of activations one call of a kernel handles at most.
constexpr int64_t kMaxRows = 4;

// Activations quantized per block of 32: for row i and block b, the values are
// d[i * ldd + b] * q[i * ldq + 32 * b + j] (j < 32) with q in -127..127, and
// s16[i * lds + 2 * b + h] is the sum of q over the half h (16 values) of the block and
// ds[i * lds + 2 * b + h] that sum times d. With group = 256 the scale was chosen per 256 values
// (kSuperBlock): the eight d of a super-block are equal, which the kernels for the K types use to
// sum a super-block's products in integers; s32[i * ldd + b] is then the sum of block b's quants
// (s16's two halves; not filled for group = 32).
// Where the view's first row starts a tile of kTileRows8 rows of the activations (the panels'
// runs), td, tds and ts hold the same per tile, rows side by side (Q8Activations::tile_scales):
// for the tile of view rows [8 t, 8 t + 8), block b, row r: td[(t * ldd + b) * 8 + r] = d of that
// row and block, tds[...] its two scaled half sums added, ts[...] its two half sums as one 32-bit
// pair; otherwise they are null.
struct Q8View {
  const int8_t* q;
  const float* d;
  const int16_t* s16;
  const float* ds;
  const int16_t* s32;
  const float* td;
  const float* tds;
  const int32_t* ts;
  int64_t ldq, ldd, lds;
  int64_t m;  // rows (at most kMaxRows when handed to a kernel)
  int64_t group;  // kBlock or kSuperBlock
};

// Values per activation scale for the K types' super-block kernels.
constexpr int64_t kSuperBlock = 256;

// Rows of activations in one register tile of the AVX-512 VNNI panel kernels (both layouts);
// the other sets' tiles (4 or 6 rows) divide runs of this many rows into whole tiles or end with
// the run.
constexpr int64_t kTileRows8 = 8;

// A group whose largest magnitude is below this quantizes as all zeros (d = 0): 127 / amax must
// stay finite.
constexpr float kMinAmax = 1e-30f;

// The K types (Q4_K, Q5_K, Q6_K): super-blocks of 256 with integer sub-block scales.
inline bool q8_is_k_type(uint32_t type) { return type == 12 || type == 13 || type == 14; }

// Prefill: weights repacked per matmul into panels of kPanelRows rows, for integer register tiles
// (the layout below; the AVX-512 VNNI set has its own for the K types with activations per 256)
// (kPanelRows output columns per vector, one x value of 4 bytes broadcast to every lane). A panel
// of k elements is k / 16 groups of kGroupBytes bytes; group g (elements 16 g .. 16 g + 15):
//   bytes [0, 128):   4 steps of 32 bytes; step s holds, for row r, u[r][16 g + 4 s .. + 3] at
//                     bytes 4 r .. 4 r + 3 (unsigned quants, as in q8_scalar.cpp);
//   bytes [128, 160): float sc[8], each row's scale for the group;
//   bytes [160, 192): float c0[8] = mn - sc * z, each row's offset per unit of sum(q).
// Rows past the matrix are zero throughout.
constexpr int64_t kPanelRows = 8;
constexpr int64_t kGroupBytes = 192;

struct Q8KernelSet {
  const char* name;
  // y[i * ldy + r] (+= with accumulate) = W_r . x_i for weight rows r in [0, n) (row r at
  // w + r * row_bytes, k elements of the DType `type`) and the x.m <= kMaxRows rows of x, whose
  // k values (a multiple of the type's block size) line up with the row's. False, with nothing
  // written, for a type the set does not know.
  bool (*gemv)(uint32_t type, const uint8_t* w, int64_t row_bytes, int64_t n, int64_t k, const Q8View& x, float* y,
               int64_t ldy, bool accumulate);
  // Packs rows [0, rows) (rows <= kPanelRows) of W into one panel of panel_bytes(type, k,
  // group) bytes, for activations quantized per `group`. False for a type without panels (see
  // q8_panel_max_u).
  bool (*pack_panel)(uint32_t type, const uint8_t* w, int64_t row_bytes, int64_t rows, int64_t k, int64_t group,
                     uint8_t* panel);
  // y[i * ldy + j] (+= with accumulate) = W_j . x_i for the `rows` rows of W (of `type`) packed in
  // ceil(rows / kPanelRows) consecutive panels (for x.group) and all x.m rows of x (any number),
  // whose first row starts a tile of kTileRows8 rows (x.td, x.tds, x.ts not null).
  void (*panel_gemm)(uint32_t type, const uint8_t* panels, int64_t rows, int64_t k, const Q8View& x, float* y,
                     int64_t ldy, bool accumulate);
  // Quantizes one row of k values (k % group == 0, group kBlock or kSuperBlock) as
  // Q8Activations::quantize does, bit for bit: per group, amax = max |x| over its values; per
  // block b, q[32 b + j] = round-to-even(x[32 b + j] * 127 / amax), d[b] = amax / 127, the
  // half sums s16[2 b + h] and ds[2 b + h] = d[b] * s16[2 b + h]; a group with a value that is not
  // finite gets zeros and d = NaN, an all-zero group zeros and d = 0; where s32 is not null, the
  // block sums s32[b] = s16[2 b] + s16[2 b + 1] too. The scalar set's loop is the reference.
  void (*quantize_row)(const float* x, int64_t k, int64_t group, int8_t* q, float* d, int16_t* s16, float* ds,
                       int16_t* s32);
  // Whether gemv and the panels have kernels for the K types that sum each super-block in
  // integers when the activations come per kSuperBlock (x.group); without them the
  // activations of the K types are quantized per kBlock.
  bool k_super_blocks;
  // Bytes of the panel of k elements that pack_panel writes for a type (for the panel buffers).
  int64_t (*panel_bytes)(uint32_t type, int64_t k, int64_t group);
  // cpu::q8_outlier_ratio of one row of k values (its groups of kSuperBlock), bit for bit as the
  // scalar set's loop: the block maxima summed in order, NaN where a value is not finite.
  float (*outlier_ratio)(const float* x, int64_t k);
};

// The largest quant of a type with panels (0 for the others). The types up to 31 and Q8_0 have one
// scale and one offset per 32 values, so both groups of a block share sc and c0 in a panel (the
// kernels sum them in integers); Q6_K has a scale per 16. Q8_0's quants are q + 128 (up to 255)
// where the sums are 32 bits from the start (VNNI, portable); the AVX2 panels keep the signed q
// instead (unsigned ones would overflow vpmaddubsw's 16-bit pair sums; see group_dots).
inline int q8_panel_max_u(uint32_t type) {
  switch (type) {
    case 2: case 3: case 12: return 15;  // Q4_0, Q4_1, Q4_K
    case 6: case 7: case 13: return 31;  // Q5_0, Q5_1, Q5_K
    case 14: return 63;                  // Q6_K
    case 8: return 255;                  // Q8_0
    default: return 0;
  }
}

// Bytes of a panel in the layout above.
inline int64_t generic_panel_bytes(uint32_t /*type*/, int64_t k, int64_t /*group*/) { return k / 16 * kGroupBytes; }

// nullptr where the build has no such kernels.
extern const Q8KernelSet* const q8_scalar;
extern const Q8KernelSet* const q8_avx2;
extern const Q8KernelSet* const q8_avx512vnni;

}  // namespace dashlm::cpu::q8_detail
