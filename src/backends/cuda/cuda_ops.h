// CUDA operations on device pointers, with a plain C++ interface (no CUDA headers here, so the
// runtime compiles with the host compiler). Storage is bf16 (raw 16-bit patterns, `bf16` below)
// for GEMM operands, attention inputs and the KV cache, float32 for the residual stream and norm
// weights; every op accumulates in float32. Row-major throughout, like the CPU ops.
//
// All work is queued on one CUDA stream per process (created on first use), so ops run in the
// order they are called; copies to and from the host synchronise. A sequence of ops can be
// recorded once into a CUDA graph and replayed with one launch (Graph below). Because the stream
// is shared, engines must be driven from one thread: while a graph is being recorded, ops that
// another thread queued would be recorded into it. Errors throw dashlm::Error with
// the failing call named.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

namespace dashlm::cuda {

using bf16 = uint16_t;  // a bfloat16 bit pattern (device memory only in the calls below)

// --- device, memory --------------------------------------------------------------------------

// True when a CUDA device and a driver that can run our kernels (sm_90) are present; otherwise
// false with the reason in *why.
bool device_available(std::string* why);
std::string device_name();
int multiprocessor_count();  // of device 0, read once

void* device_alloc(size_t bytes);  // throws on failure; never returns null for bytes > 0
void device_free(void* p) noexcept;
void copy_to_device(void* dst, const void* src, size_t bytes);    // synchronous
void copy_to_host(void* dst, const void* src, size_t bytes);      // synchronous
void copy_on_device(void* dst, const void* src, size_t bytes);    // queued
// Page-locked host memory (the DMA engines read and write it in place; no staging copy).
void* pinned_alloc(size_t bytes);  // throws on failure
void pinned_free(void* p) noexcept;
// Queued copies between page-locked host memory and the device: the host must neither change nor
// read src / dst until a later synchronising call (copy_to_host, synchronize) has returned.
void copy_to_device_queued(void* dst, const void* pinned_src, size_t bytes);
void copy_to_host_queued(void* pinned_dst, const void* src, size_t bytes);
void fill_bytes(void* dst, uint8_t value, size_t bytes);          // queued
void synchronize();  // waits for all queued work; throws if a kernel failed
size_t device_free_memory();

// An owning buffer of n elements of T (uninitialised) from an allocator pair: device memory
// (DeviceBuffer) or page-locked host memory (PinnedBuffer).
template <typename T, void* (*Alloc)(size_t), void (*Free)(void*) noexcept>
class OwningBuffer {
 public:
  OwningBuffer() = default;
  explicit OwningBuffer(size_t n) { resize(n); }
  ~OwningBuffer() { Free(p_); }
  OwningBuffer(const OwningBuffer&) = delete;
  OwningBuffer& operator=(const OwningBuffer&) = delete;
  OwningBuffer(OwningBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)) {}
  OwningBuffer& operator=(OwningBuffer&& o) noexcept {
    if (this != &o) {
      Free(p_);
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
    }
    return *this;
  }
  // Reallocates (contents lost) when n exceeds the capacity.
  void reserve(size_t n) {
    if (n > n_) resize(n);
  }
  void resize(size_t n) {
    Free(p_);
    p_ = nullptr;
    n_ = 0;
    if (n) p_ = static_cast<T*>(Alloc(n * sizeof(T)));
    n_ = n;
  }
  T* get() const { return p_; }
  size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// An owning device buffer of n elements of T (uninitialised).
template <typename T>
class DeviceBuffer : public OwningBuffer<T, device_alloc, device_free> {
 public:
  using OwningBuffer<T, device_alloc, device_free>::OwningBuffer;
  void upload(const T* src, size_t n, size_t offset = 0) { copy_to_device(this->get() + offset, src, n * sizeof(T)); }
  void download(T* dst, size_t n, size_t offset = 0) const { copy_to_host(dst, this->get() + offset, n * sizeof(T)); }
};

// An owning page-locked host buffer, for the copies each decode step makes: a pageable copy goes
// through a driver staging buffer and blocks.
template <typename T>
using PinnedBuffer = OwningBuffer<T, pinned_alloc, pinned_free>;

// --- CUDA graphs -------------------------------------------------------------------------------

// A sequence of ops recorded once and replayed with one launch (the decode step: hundreds of small
// kernels whose launch cost would otherwise show). Between begin_capture() and end_capture() the
// ops below are recorded, not run, and nothing may copy between host and device; a replay reuses
// the recorded pointers and scalar arguments, so whatever changes between replays must be read
// by the kernels from device memory.
class Graph {
 public:
  Graph() = default;
  ~Graph() { reset(); }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void begin_capture();
  // Ends the recording and instantiates it; throws if an op could not be recorded.
  void end_capture();
  // After an exception between begin_capture() and end_capture(): leaves capture mode.
  void abort_capture() noexcept;
  void launch() const;  // queued like any op
  bool ready() const { return exec_ != nullptr; }
  void reset() noexcept;  // forgets the recording

 private:
  void* graph_ = nullptr;  // cudaGraph_t
  void* exec_ = nullptr;   // cudaGraphExec_t
};

// --- conversions, random weights ---------------------------------------------------------------

void f32_to_bf16(const float* src, bf16* dst, int64_t n);
void bf16_to_f32(const bf16* src, float* dst, int64_t n);
// dst[i] = mean + uniform(-a, a) with a = stddev * sqrt(3), from a hash of (seed, i): repeatable.
void fill_random_bf16(bf16* dst, int64_t n, float mean, float stddev, uint64_t seed);
void fill_random_f32(float* dst, int64_t n, float mean, float stddev, uint64_t seed);

// --- element-wise and row ops ---------------------------------------------------------------

// y = x / rms(x) * w for n rows of dim (w may be null). x and y may alias only in the f32 form.
void rmsnorm(const float* x, const float* w, bf16* y, int64_t n, int64_t dim, float eps);
void rmsnorm(const float* x, const float* w, float* y, int64_t n, int64_t dim, float eps);

// The residual add with the halting signals fused in. For each of n rows of dim:
//   norm_u[r] = ||u_r||, norm_x[r] = ||x_r|| (before the add)   (either may be null)
//   x_r += u_r
//   when w_next is given: xn_r = rmsnorm(x_r) * w_next (the next sub-block's input, bf16)
void add_residual(float* x, const float* u, int64_t n, int64_t dim, float* norm_u, float* norm_x,
                  const float* w_next, bf16* xn, float eps);
// out[r] = 1 - cos(a_r, b_r) (the whole-block delta).
void block_delta(const float* a, const float* b, int64_t n, int64_t dim, float* out);
// L2 norm of each row.
void row_l2_norms(const float* x, int64_t n, int64_t dim, float* out);

// Gated MLP activations on a GEMM output holding [gate | up] per row (n rows of 2*n_ff):
// h[r][i] = act(gate[r][i]) * up[r][i], act = SiLU or GELU(tanh).
void swiglu(const bf16* gate_up, bf16* h, int64_t n, int64_t n_ff);
void geglu_tanh(const bf16* gate_up, bf16* h, int64_t n, int64_t n_ff);
// The same on separate float32 arrays (tests and small cases): g = act(g) * u.
void silu_mul(float* g, const float* u, int64_t n);
void gelu_tanh_mul(float* g, const float* u, int64_t n);

void add_inplace(float* y, const float* x, int64_t n);
void scale_inplace(float* y, float s, int64_t n);

// x[i] = table[tokens[i]] * scale (table: bf16 rows of dim). Token ids must be in range (the
// caller checks; out-of-range ids give zero rows).
void embed_rows(const bf16* table, int64_t n_rows_table, const int32_t* tokens, int64_t n, int64_t dim,
                float scale, float* x);
// dst[i] = src[idx[i]] and dst[idx[i]] = src[i], rows of width floats.
void gather_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst);
void gather_rows(const bf16* src, const int32_t* idx, int64_t n, int64_t width, bf16* dst);
void scatter_rows(const float* src, const int32_t* idx, int64_t n, int64_t width, float* dst);
// dst[i] = v for the n slots listed (validity masks).
void set_bytes_at(uint8_t* dst, const int32_t* idx, int64_t n, uint8_t v);

// --- heads: bias, per-head RMSNorm, RoPE, conversion, scatter into the cache ------------------

struct RopeParams {
  int head_dim = 0;
  int n_rot = 0;              // rotated dimensions (<= head_dim, even); 0: no rotation
  float freq_base = 10000.f;
  float freq_scale = 1.f;     // positions are multiplied by this
  bool neox = false;          // pairs (i, i + n_rot/2) instead of (2i, 2i+1)
  const float* freq_factors = nullptr;  // device, optional, n_rot/2 divisors of the frequency
};

// For n rows of n_heads * head_dim float32 values at in + r * in_stride:
//   v = in_row (+ bias)  ->  per-head RMSNorm with norm_w (when norm_w, eps)  ->  RoPE at pos[r]
//   (when rope.n_rot > 0)  ->  bf16 into out + dst_row * out_stride, dst_row = rows ? rows[r] : r.
// The query path writes q rows in order; the key path scatters into cache slots (rows = pos).
void prep_heads(const float* in, int64_t in_stride, int64_t n, int n_heads, const float* bias, const float* norm_w,
                float eps, const RopeParams& rope, const int32_t* pos, bf16* out, int64_t out_stride,
                const int32_t* rows);
// Where the Q, K and V heads of a layer go (prep_qkv, gemv_qkv): Q's n_head heads, then K's and
// V's n_head_kv each, stacked in a row; the bias (optional) is over the stacked row; Q and K are
// rotated at pos[r]; Q goes in order into q (row stride q_stride), K and V into the cache slots
// pos[r] of k and v (row stride kv_stride), all in bf16.
struct QkvPrep {
  int n_head = 0, n_head_kv = 0;
  const float* bias = nullptr;   // optional, [q_dim + 2 kv_dim]
  RopeParams rope;
  // device, one position per row; gemv_qkv reads it before the kernels queued before it have
  // finished, like the weights, so they must not write it (copies may)
  const int32_t* pos = nullptr;
  bf16* q = nullptr;
  int64_t q_stride = 0;
  bf16* k = nullptr;
  bf16* v = nullptr;
  int64_t kv_stride = 0;
};
// The Q, K and V heads of n rows of stacked projections (row stride in_stride) in one launch:
// bias, per-head RMSNorm of Q and K (q_norm, k_norm optional, eps), RoPE, conversion and stores as
// QkvPrep says. The same as prep_heads on each part.
void prep_qkv(const float* in, int64_t in_stride, int64_t n, const QkvPrep& p, const float* q_norm, const float* k_norm,
              float eps);
// Whether the engine's layers prepare Q, K and V with prep_qkv (one launch) rather than three
// prep_heads (benchmarks compare the two). DASHLM_CUDA_FUSED_QKV=0 switches it off at start.
void set_fused_qkv_enabled(bool on);
bool fused_qkv_enabled();
// The same in float32, in place (tests and the CPU-shaped path).
void prep_heads_f32(float* x, int64_t stride, int64_t n, int n_heads, const float* bias, const float* norm_w, float eps,
                    const RopeParams& rope, const int32_t* pos);

// --- attention ---------------------------------------------------------------------------------

struct AttentionParams {
  int n_head = 0;
  int n_head_kv = 0;
  int head_dim = 0;
  float scale = 1.f;
  int window = 0;  // sliding window (0 = none): key j visible to a query at p iff p - j < window
};

// Causal attention by position (the CPU's cpu::attention on the device). q: n_q rows of
// n_head*head_dim bf16 at positions q_pos (device int32, ascending). k, v: the cache, slot s
// holding the token at position s (n_kv slots of n_head_kv*head_dim bf16). kv_valid (device,
// optional, n_kv bytes): slots with 0 are skipped. out: n_q rows of n_head*head_dim bf16.
// Rows that see no key get zeros. Head dims 64, 128, 256 run the tensor-core kernel; others
// (<= 256) a simple one. force_simple selects the simple kernel (tests).
void attention(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
               const uint8_t* kv_valid, const AttentionParams& p, bf16* out, bool force_simple = false);

// The dense case through cuDNN's fused flash attention (the field's tuned Hopper kernel, opened
// at run time): n_q queries that are the last n_q of n_kv consecutive key slots (query i sees keys
// 0 .. n_kv - n_q + i), no sliding window, no invalid slots; same layouts and result as
// attention(). Returns false, doing nothing, when cuDNN is not there, is switched off, or
// rejects the shape: the caller then runs attention().
bool attention_dense(const bf16* q, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv, const AttentionParams& p,
                     bf16* out);
// DASH's retain case through cuDNN: n_q queries at ascending positions (q_pos on the device,
// q_pos_host the same on the host) against every one of n_kv key slots (all valid, no window),
// causal by position. The queries are cut into blocks of 128 rows; cuDNN attends each block to
// the keys before its first position (no mask inside: a padded batch of blocks sharing K and V),
// attention_tail the rest (each row's keys from its block's first position to its own), and
// attention_merge joins the two by their log-sum-exp. Same result as attention(); false, doing
// nothing, when cuDNN is not there or rejects the shape.
bool attention_subset(const bf16* q, const int32_t* q_pos, const int32_t* q_pos_host, int64_t n_q, const bf16* k,
                      const bf16* v, int64_t n_kv, const AttentionParams& p, bf16* out);
// The pieces of attention_subset. attention_tail: our flash kernel in split mode, each row against
// the keys from the position of the first row of its block of `block` rows (a multiple of 64) to
// its own position; writes each row's log-sum-exp (natural log of the sum of exp(scaled score),
// -inf when it saw no key) to lse[row * n_head + head]. Head dims 64, 128, 256.
void attention_tail(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
                    const AttentionParams& p, int block, bf16* out, float* lse);
// out = the softmax-weighted merge of out (log-sum-exp lse, [row][head]) and part (lse_part,
// [block][head][row in block]); rows of a block whose first position is 0 keep out.
void attention_merge(bf16* out, const float* lse, const bf16* part, const float* lse_part, const int32_t* q_pos, int64_t n_q,
                     int n_head, int head_dim, int block);
// Decoding: attention of at most kDecodeMaxRows query rows (positions ascending, on the device)
// with the keys split over many CTAs (flash-decoding): the key range of the rows, read from the
// positions on the device and cut into attention_decode_splits() chunks there (so a recorded graph
// replays at any cache length, n_kv being the whole cache), each chunk's partial output and
// log-sum-exp into `workspace`, then one merge. Same arguments and result as attention();
// invalid slots (kv_valid 0) are not read. Head dims 64, 128, 256 (attention_decode_supported).
// The positions, kv_valid and the keys below the first row's position are read before the kernel
// queued before it has finished: only q and the rows' own keys may come from that kernel.
// workspace: attention_decode_workspace() floats on the device, owned by the caller (a graph that
// recorded the call keeps pointing at it).
constexpr int64_t kDecodeMaxRows = 4;
constexpr int kDecodeMaxVectors = 8;  // query vectors (row, head of a KV head's group) per CTA
bool attention_decode_supported(const AttentionParams& p, int64_t n_q);
int attention_decode_splits(const AttentionParams& p, int64_t n_q, bool fp8 = false);
size_t attention_decode_workspace(const AttentionParams& p, int64_t n_q, bool fp8 = false);
// Off: the engine decodes with attention() (benchmarks compare the two); DASHLM_CUDA_SPLIT_DECODE=0
// switches it off at start.
void set_split_decode_enabled(bool on);
bool split_decode_enabled();
void attention_decode(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, const bf16* v, int64_t n_kv,
                      const uint8_t* kv_valid, const AttentionParams& p, bf16* out, float* workspace, size_t workspace_floats);

// --- fp8 KV cache ------------------------------------------------------------------------------

// A KV cache in fp8 (e4m3: 4 exponent bits, 3 mantissa bits, largest finite 448) with one float32
// scale per (slot, KV head): element e of head h in slot s stands for
// k[s * kv_dim + h * head_dim + e] * k_scale[h * scale_stride + s], and the same for v (a head's
// scales are consecutive, scale_stride a multiple of 16 and at least the slots). Each head's
// scale is its largest magnitude / 448, so that value is stored as 448 and every other keeps e4m3's
// relative precision (rounding error at most 2^-4 of the value, or 2^-10 of the scale for values
// below 2^-6 of it, the subnormals). Half the bytes of bf16, plus 4 bytes per head and slot.
struct Fp8Kv {
  uint8_t* k = nullptr;
  uint8_t* v = nullptr;
  float* k_scale = nullptr;
  float* v_scale = nullptr;
  int64_t scale_stride = 0;
};
inline constexpr float kFp8Max = 448.f;
// The n rows of k and v (bf16, rows of n_head_kv * head_dim, slot s = row s, like the cache) at
// the slots pos (device, n of them) quantized into the same slots of dst. Queued with programmatic
// dependent launch: the decode attention that follows may start before it ends (attention_decode).
void kv_fp8_store(const bf16* k, const bf16* v, const int32_t* pos, int64_t n, int n_head_kv, int head_dim, const Fp8Kv& dst);
// Slots [0, n) of src dequantized into k and v (bf16, same layout).
void kv_fp8_load(const Fp8Kv& src, int64_t n, int n_head_kv, int head_dim, bf16* k, bf16* v);
// attention_decode reading an fp8 cache, on the tensor cores (attention.cu says how; the bf16
// cache's CUDA-core kernel, loading e4m3, was measured slower than the bf16 cache itself: it is
// bound by its instructions once the bytes halve); its splits and workspace with fp8 = true.
void attention_decode(const bf16* q, const int32_t* q_pos, int64_t n_q, const Fp8Kv& kv, int64_t n_kv,
                      const uint8_t* kv_valid, const AttentionParams& p, bf16* out, float* workspace, size_t workspace_floats);

// DASH's topk decision on the device: of n rows with scores (largest first, ties to the earlier
// row), the n_keep best eligible ones stay; halt[i] = 1 for every other eligible row, 0 for the
// rest. eligible: n bytes on the device (null: all rows). The same choice as the host policy
// (runtime/halting.cpp) makes from the same scores, NaN and -inf scores aside (NaN sorts above
// +inf; an eligible -inf ties with the ineligible rows).
void topk_halt_flags(const float* score, const uint8_t* eligible, int64_t n, int64_t n_keep, uint8_t* halt);

// Whether attention_dense can run (cuDNN found and loaded), else false with the reason.
bool dense_attention_available(std::string* why);
// Off: attention_dense always returns false (benchmarks and tests of our own kernel).
void set_dense_attention_enabled(bool on);
// One line: cuDNN's version, execution plans built so far and the time spent building them.
std::string dense_attention_stats();

// For each key slot, the attention it receives from the n_q query rows, summed over rows and heads
// (softmax probabilities). out: n_kv floats (device), overwritten. workspace: at least
// attention_received_workspace(p, n_q) floats (device; each row's log-sum-exp per head).
size_t attention_received_workspace(const AttentionParams& p, int64_t n_q);
void attention_received(const bf16* q, const int32_t* q_pos, int64_t n_q, const bf16* k, int64_t n_kv,
                        const uint8_t* kv_valid, const AttentionParams& p, float* out, float* workspace, size_t workspace_floats);

// --- GEMM (cuBLASLt) ---------------------------------------------------------------------------

// y[m x n] = x[m x k] * W^T with W row-major [n x k] (the model's [out x in]), bf16 in, fp32
// accumulate; y in float32 or bf16. ldy: row stride of y in elements (0: n).
void gemm(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y, int64_t ldy = 0);
void gemm(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, bf16* y, int64_t ldy = 0);
// y[m x n] += x[m x k] * W^T (float32 y; the residual add done by the GEMM's epilogue).
void gemm_accumulate(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y);
// Products of at most 4 rows with k % 8 == 0 and 16-byte aligned x and W run our own GEMV
// (bandwidth-bound decoding); off: cuBLAS runs them too (benchmarks compare the two).
// DASHLM_CUDA_GEMV=0 switches it off at start.
void set_gemv_enabled(bool on);
bool gemv_enabled();
// The decoding step's kernels (GEMV, norms, head preparation, decode attention) launched with
// programmatic dependent launch, each starting while the one before it finishes; off: plain
// launches (benchmarks compare the two). DASHLM_CUDA_PDL=0 switches it off at start.
void set_pdl_enabled(bool on);
// The MLP's first half for at most 4 rows in one GEMV: h[m x n_ff] = act(x Wg^T) * (x Wu^T) in
// bf16, with w_gate_up = [Wg; Wu] (2 n_ff rows of k), act SiLU or GELU (tanh). The products stay
// in float32 until the activation (gemm then swiglu rounds them to bf16 first). False, and nothing
// done, where the GEMV does not apply (see above): the caller runs gemm and swiglu/geglu_tanh.
bool gemv_glu(const bf16* x, const bf16* w_gate_up, int64_t m, int64_t n_ff, int64_t k, bool gelu, bf16* h);

// An RMS norm carried from one decoding GEMV to the next, so that no norm kernel runs between
// them: the producer (gemm_accumulate_carry: x += h W^T, a residual add) also writes xw =
// bf16(x * w_norm), the norm's weight applied but not its scale, and each of its CTAs' sums of the
// new x's squares into ss_part (norm_carry_parts(dim) floats per row); the consumer (gemm_normed,
// gemv_glu_normed) multiplies xw and scales its dot products by 1 / rms, the sums joined in a
// fixed order. The same as rmsnorm then gemm, but for where the rounding to bf16 falls (before
// the scale, not after). Only where our GEMV runs both products: norm_carry_fits says where.
struct NormCarry {
  const float* w_norm = nullptr;  // [dim] the norm's weight
  bf16* xw = nullptr;             // [m x dim] written by the producer, 16-byte aligned
  float* ss_part = nullptr;       // [m x norm_carry_parts(dim)]
  int64_t dim = 0;
  float eps = 0.f;
};
int64_t norm_carry_parts(int64_t dim);
// Whether a product of m rows and inner size k with weights w runs our GEMV (m <= 4, k % 8 == 0,
// w 16-byte aligned, the GEMV switched on): both ends of a carry must.
bool norm_carry_fits(int64_t m, int64_t k, const bf16* w);
// y[m x n] += x W^T as gemm_accumulate, and the carry's xw and ss_part for the next product (c.dim == n).
void gemm_accumulate_carry(const bf16* x, const bf16* w, int64_t m, int64_t n, int64_t k, float* y, const NormCarry& c);
// y[m x n] = rmsnorm(x) W^T in float32, from the carry (k = c.dim).
void gemm_normed(const NormCarry& c, const bf16* w, int64_t m, int64_t n, float* y);
// gemv_glu of rmsnorm(x), from the carry.
void gemv_glu_normed(const NormCarry& c, const bf16* w_gate_up, int64_t m, int64_t n_ff, bool gelu, bf16* h);

// The Q/K/V product of a few rows (decoding) with prep_qkv's work as its epilogue: the stacked
// projections x [Wq; Wk; Wv]^T, then bias, RoPE and the stores as QkvPrep says (rope.head_dim
// even). One launch instead of gemm then prep_qkv, with the same result bit for bit. No per-head
// norms (q_norm, k_norm): those layers run prep_qkv.
// Whether gemv_qkv runs a product of m rows and inner size k with weights w (as norm_carry_fits,
// and the epilogue switched on: DASHLM_CUDA_QKV_EPILOGUE=0 switches it off at start, so that
// benchmarks can compare it with gemm then prep_qkv).
bool qkv_epilogue_fits(int64_t m, int64_t k, const bf16* w);
void set_qkv_epilogue_enabled(bool on);
// Throws where qkv_epilogue_fits is false (or x is not 16-byte aligned).
void gemv_qkv(const bf16* x, const bf16* w_qkv, int64_t m, int64_t k, const QkvPrep& p);
// The same on rmsnorm(x), from the carry (k = c.dim).
void gemv_qkv_normed(const NormCarry& c, const bf16* w_qkv, int64_t m, const QkvPrep& p);

}  // namespace dashlm::cuda
