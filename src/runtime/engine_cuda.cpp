#include "runtime/engine_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <numeric>
#include <optional>

#include "backends/cpu/quants.h"
#include "backends/cuda/cuda_ops.h"
#include "common/error.h"
#include "common/finite.h"
#include "runtime/layer_params.h"

namespace dashlm {

namespace cu = dashlm::cuda;
using cu::bf16;
template <typename T>
using DBuf = cu::DeviceBuffer<T>;

bool cuda_available(std::string* why) { return cu::device_available(why); }

namespace {


// Rows of a (possibly quantized) weight matrix as bf16, appended to out.
// Appends w's rows to out as bf16; returns how many of its values are not finite (counted while
// converting: a NaN in a query or key projection would otherwise only blank attention rows).
int64_t append_bf16(const WeightView& w, std::vector<uint16_t>& out) {
  const int64_t in = w.in_features, rows = w.out_features;
  const size_t base = out.size();
  out.resize(base + static_cast<size_t>(rows * in));
  const size_t rb = dtype_row_bytes(w.type, in);
  int64_t bad = 0;
#pragma omp parallel reduction(+ : bad)
  {
    std::vector<float> row(static_cast<size_t>(in));
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      cpu::dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + static_cast<size_t>(r) * rb, row.data(), in);
      uint16_t* dst = out.data() + base + static_cast<size_t>(r * in);
      for (int64_t i = 0; i < in; ++i) {
        const float v = row[static_cast<size_t>(i)];
        bad += std::isfinite(v) ? 0 : 1;
        dst[i] = cpu::fp32_to_bf16(v);
      }
    }
  }
  return bad;
}

template <typename T>
DBuf<T> upload(const std::vector<T>& v) {
  DBuf<T> b(v.size());
  b.upload(v.data(), v.size());
  return b;
}
DBuf<float> upload_f32(const float* p, int64_t n) {
  DBuf<float> b;
  if (!p) return b;
  b.resize(static_cast<size_t>(n));
  b.upload(p, static_cast<size_t>(n));
  return b;
}


// MLP rows per GEMM pair: bounds the gate/up scratch (32768 rows of a 14336-wide MLP: 1.9 GB + 0.9
// GB). Smaller chunks cost time: at 8192 rows the Llama-3.1-8B shape's gate/up GEMMs took 11.0 ms
// per layer at 32k tokens against 10.0 ms in one piece (kernel timeline, docs/PERFORMANCE.md).
constexpr int64_t kMlpChunk = 32768;

}  // namespace

struct CudaEngine::Impl final : LayerExecutor {
  struct Layer {
    DBuf<bf16> w_qkv;  // [q_dim + 2 kv_dim, n_embd]: Wq, Wk, Wv stacked (Wk, Wv contiguous: the K/V-only GEMM)
    DBuf<bf16> wo;     // [n_embd, q_dim]
    DBuf<bf16> w_gu;   // [2 n_ff, n_embd]: Wgate, Wup stacked
    DBuf<bf16> w_down; // [n_embd, n_ff]
    DBuf<float> b_qkv, attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm;
  };

  HParams hp;
  int64_t n_ctx = 0;
  std::vector<Layer> layers;
  DBuf<bf16> tok_embd, output_own;
  const bf16* output = nullptr;  // output_own or tok_embd (tied)
  DBuf<float> output_norm, rope_ff;

  DBuf<bf16> k_cache, v_cache;  // [n_layer][n_ctx][kv_dim] (bf16 cache)
  // The fp8 cache (cu::Fp8Kv): k8, v8 [n_layer][n_ctx][kv_dim], their scales [n_layer][n_head_kv][scale_stride()].
  // A layer's keys and values are written in bf16 into k_work / v_work (one layer's n_ctx slots,
  // what k_layer() returns then) and quantized from there into the cache (store_kv). The decode
  // attention reads the fp8 cache; every other attention reads k_work / v_work, which then first
  // gets the layer's slots dequantized (load_kv).
  bool fp8 = false;
  DBuf<uint8_t> k8, v8;
  DBuf<float> k_sc, v_sc;
  DBuf<bf16> k_work, v_work;
  DBuf<uint8_t> valid;          // [n_layer][n_ctx]
  std::vector<std::vector<uint8_t>> valid_host;
  std::vector<uint8_t> has_holes;

  // Scratch, sized for `cap` rows.
  int64_t cap = 0;
  DBuf<float> x, x_act, qkv, u, x_in, d_delta, d_norm_x, recv;
  DBuf<float> decode_ws;  // cu::attention_decode's partial results
  DBuf<float> recv_ws;    // cu::attention_received's log-sum-exps
  DBuf<bf16> xn, q, attn, gu, h;
  DBuf<bf16> k_dense, v_dense;  // drop mode: the valid cache slots packed, for the dense attention
  DBuf<int32_t> dense_slots;
  std::vector<int32_t> dense_slots_host, slots_now;  // the list on the device, and this layer's
  DBuf<uint8_t> select_bytes;  // the device topk's eligibility and halt flags
  DBuf<int32_t> tokens, pos_all, pos_active, idx_active, pos_halted, idx_halted;
  DBuf<float> logits;
  // A decode step's host side, page-locked so that its copies are queued with the step and not
  // staged: the token and its position in, the logits out.
  cu::PinnedBuffer<int32_t> step_in;
  cu::PinnedBuffer<float> step_logits;

  int64_t qkv_w() const { return hp.q_dim() + 2 * hp.kv_dim(); }
  bf16* k_layer(int il) const {
    return fp8 ? k_work.get() : k_cache.get() + static_cast<size_t>(il) * static_cast<size_t>(n_ctx * hp.kv_dim());
  }
  bf16* v_layer(int il) const {
    return fp8 ? v_work.get() : v_cache.get() + static_cast<size_t>(il) * static_cast<size_t>(n_ctx * hp.kv_dim());
  }
  int64_t scale_stride() const { return (n_ctx + 15) / 16 * 16; }
  cu::Fp8Kv fp8_layer(int il) const {
    const auto per = static_cast<size_t>(n_ctx * hp.kv_dim()), per_sc = static_cast<size_t>(scale_stride() * hp.n_head_kv);
    const auto l = static_cast<size_t>(il);
    return cu::Fp8Kv{k8.get() + l * per, v8.get() + l * per, k_sc.get() + l * per_sc, v_sc.get() + l * per_sc, scale_stride()};
  }
  // fp8: the n rows just written to k_work / v_work at the slots pos (device) into the cache.
  void store_kv(int il, const int32_t* pos, int64_t n) {
    if (fp8) cu::kv_fp8_store(k_work.get(), v_work.get(), pos, n, hp.n_head_kv, hp.head_dim, fp8_layer(il));
  }
  // fp8: the layer's slots [0, n) dequantized into k_work / v_work.
  void load_kv(int il, int64_t n) const {
    if (fp8) cu::kv_fp8_load(fp8_layer(il), n, hp.n_head_kv, hp.head_dim, k_work.get(), v_work.get());
  }
  const uint8_t* valid_mask(int il) const {
    return has_holes[static_cast<size_t>(il)] ? valid.get() + static_cast<size_t>(il) * static_cast<size_t>(n_ctx) : nullptr;
  }

  void init_graphs() {
    const char* env = std::getenv("DASHLM_CUDA_GRAPHS");
    if (env && std::string(env) == "0") {
      graphs_on = false;
      graphs_off_why = "DASHLM_CUDA_GRAPHS=0";
    }
  }

  void init_cache() {
    const size_t per = static_cast<size_t>(n_ctx * hp.kv_dim()) * static_cast<size_t>(hp.n_layer);
    const size_t per_sc = static_cast<size_t>(scale_stride() * hp.n_head_kv) * static_cast<size_t>(hp.n_layer);
    const size_t work = static_cast<size_t>(n_ctx * hp.kv_dim());
    // Checked before allocating, with the sizes in the message (cudaMalloc's own error names neither).
    const double cache_bytes = fp8 ? 2.0 * (static_cast<double>(per) + 4.0 * static_cast<double>(per_sc) + 2.0 * static_cast<double>(work))
                                   : 2.0 * static_cast<double>(per) * sizeof(bf16);
    const double need = cache_bytes + static_cast<double>(n_ctx) * static_cast<double>(hp.n_layer);
    const double free_bytes = static_cast<double>(cu::device_free_memory());
    if (need > free_bytes) {
      fail("the KV cache for a context of {} tokens needs {:.0f} MiB of device memory, and the device has {:.0f} MiB free "
           "(after the weights): use a smaller context (--ctx)",
           n_ctx, need / 1048576.0, free_bytes / 1048576.0);
    }
    if (fp8) {
      for (DBuf<uint8_t>* b : {&k8, &v8}) {
        b->resize(per);
        cu::fill_bytes(b->get(), 0, per);
      }
      for (DBuf<float>* b : {&k_sc, &v_sc}) {
        b->resize(per_sc);
        cu::fill_bytes(b->get(), 0, per_sc * sizeof(float));
      }
      k_work.resize(work);
      v_work.resize(work);
    } else {
      k_cache.resize(per);
      v_cache.resize(per);
      cu::fill_bytes(k_cache.get(), 0, per * sizeof(bf16));
      cu::fill_bytes(v_cache.get(), 0, per * sizeof(bf16));
    }
    valid.resize(static_cast<size_t>(n_ctx) * static_cast<size_t>(hp.n_layer));
    reset_valid();
  }
  void reset_valid() {
    cu::fill_bytes(valid.get(), 1, valid.size());
    valid_host.assign(static_cast<size_t>(hp.n_layer), std::vector<uint8_t>(static_cast<size_t>(n_ctx), 1));
    has_holes.assign(static_cast<size_t>(hp.n_layer), 0);
  }
  // Slots pos.. of every layer valid again (the cache keeps positions before pos).
  void reset_valid_from(int64_t pos) {
    for (size_t il = 0; il < has_holes.size(); ++il) {
      if (!has_holes[il]) continue;
      auto& vh = valid_host[il];
      std::fill(vh.begin() + pos, vh.end(), uint8_t{1});
      cu::fill_bytes(valid.get() + il * static_cast<size_t>(n_ctx) + static_cast<size_t>(pos), 1,
                     static_cast<size_t>(n_ctx - pos));
      has_holes[il] = std::find(vh.begin(), vh.begin() + pos, uint8_t{0}) != vh.begin() + pos;
    }
  }

  void reserve(int64_t n, bool block_signal) {
    if (block_signal) x_in.reserve(static_cast<size_t>(n * hp.n_embd));
    if (n <= cap) return;
    cap = 0;  // set once every buffer below is allocated (an allocation may throw)
    const auto sz = [n](int64_t w) { return static_cast<size_t>(n * w); };
    x.resize(sz(hp.n_embd));
    x_act.resize(sz(hp.n_embd));
    qkv.resize(sz(qkv_w()));
    u.resize(sz(hp.n_embd));
    d_delta.resize(sz(1));
    d_norm_x.resize(sz(1));
    xn.resize(sz(hp.n_embd));
    q.resize(sz(hp.q_dim()));
    attn.resize(sz(hp.q_dim()));
    const int64_t chunk = std::min(n, kMlpChunk);
    gu.resize(static_cast<size_t>(chunk * 2 * hp.n_ff));
    h.resize(static_cast<size_t>(chunk * hp.n_ff));
    for (DBuf<int32_t>* b : {&tokens, &pos_all, &pos_active, &idx_active, &pos_halted, &idx_halted}) b->resize(sz(1));
    cap = n;
  }

  cu::RopeParams rope_params(int il) const { return layer_rope<cu::RopeParams>(hp, il, opt(rope_ff)); }
  cu::AttentionParams attention_params(int il) const { return layer_attention<cu::AttentionParams>(hp, il); }
  static const float* opt(const DBuf<float>& b) { return b.size() ? b.get() : nullptr; }

  // K (norm, RoPE) and V of n rows whose stacked projections sit at kv (row stride `stride`,
  // K first), scattered into the layer's cache slots pos (device).
  void write_kv(int il, const float* kv, int64_t stride, const int32_t* pos, int64_t n) {
    const Layer& L = layers[static_cast<size_t>(il)];
    const int64_t kvd = hp.kv_dim(), qd = hp.q_dim();
    const float* b = opt(L.b_qkv);
    cu::prep_heads(kv, stride, n, hp.n_head_kv, b ? b + qd : nullptr, opt(L.k_norm), hp.norm_eps, rope_params(il), pos,
                   k_layer(il), kvd, pos);
    cu::RopeParams none;
    none.head_dim = hp.head_dim;
    none.n_rot = 0;
    cu::prep_heads(kv + kvd, stride, n, hp.n_head_kv, b ? b + qd + kvd : nullptr, nullptr, hp.norm_eps, none, nullptr,
                   v_layer(il), kvd, pos);
  }

  // K and V of n rows of hidden state at xa (device) into the cache slots pos (device).
  void project_kv_rows(int il, const float* xa, const int32_t* pos, int64_t n) {
    const Layer& L = layers[static_cast<size_t>(il)];
    const int64_t d = hp.n_embd, kvd = hp.kv_dim(), qd = hp.q_dim();
    cu::rmsnorm(xa, L.attn_norm.get(), xn.get(), n, d, hp.norm_eps);
    cu::gemm(xn.get(), L.w_qkv.get() + static_cast<size_t>(qd * d), n, 2 * kvd, d, qkv.get());
    write_kv(il, qkv.get(), 2 * kvd, pos, n);
    store_kv(il, pos, n);
  }

  struct LayerIO {
    float* x;             // n rows of n_embd (device), updated in place
    const int32_t* pos;   // device positions
    const int32_t* pos_host;  // host copy of the n positions (null: only pos, and n_kv given)
    int64_t n;
    int64_t n_kv = 0;     // key slots the attention may read (0: the last position + 1)
    DeltaSignal signal = DeltaSignal::Abs;
    bool want_signal = false;      // the halting signal into d_delta (device, n values)...
    float* delta = nullptr;        // ... and copied here (host), when given
    int attn_rows = 0;             // > 0: attention received from the last attn_rows rows...
    float* attn_received = nullptr;  // ... per cache slot (host, n_ctx values)
    bool carry_norms = false;      // decoding's layer loop: nothing but the layers touches x
  };

  // Decoding: the RMS norms before the Q/K/V, gate/up and output products ride on the GEMVs that
  // add into x before them (cu::NormCarry): no norm kernel runs between. norm_carried: the last
  // layer run left x's next norm in xn and ss_part.
  bool norm_carried = false;
  DBuf<float> ss_part;
  cu::NormCarry carry(const DBuf<float>& w_norm, int64_t n) {
    ss_part.reserve(static_cast<size_t>(n * cu::norm_carry_parts(hp.n_embd)));
    return cu::NormCarry{w_norm.get(), xn.get(), ss_part.get(), hp.n_embd, hp.norm_eps};
  }
  // The norm that follows layer il's MLP (the next layer's, or the output's), where the layer's
  // down product can carry it to a GEMV.
  const DBuf<float>* next_norm(int il, const LayerIO& io) const {
    const Layer& L = layers[static_cast<size_t>(il)];
    if (!io.carry_norms || L.post_ffn_norm.size() || !cu::norm_carry_fits(io.n, hp.n_ff, L.w_down.get())) return nullptr;
    if (il + 1 < hp.n_layer) {
      const Layer& N = layers[static_cast<size_t>(il) + 1];
      return N.attn_norm.size() && cu::norm_carry_fits(io.n, hp.n_embd, N.w_qkv.get()) ? &N.attn_norm : nullptr;
    }
    return output_norm.size() && cu::norm_carry_fits(io.n, hp.n_embd, output) ? &output_norm : nullptr;
  }

  // Attention through cuDNN when it is there, false otherwise (our own kernel then runs it).
  // Dense case (cu::attention_dense): every query sees all earlier valid slots, so when the
  // queries are the last io.n valid slots of the layer and there is no sliding window, causal by
  // position is causal by index over the valid slots. Full prefill reads the cache as it is; drop
  // mode packs the valid slots first (the halted tokens' slots are the holes). Retain mode after
  // halting (a subset of the queries against every slot): cu::attention_subset.
  static constexpr int64_t kCudnnMinRows = 16;
  bool attend_cudnn(int il, const LayerIO& io, int64_t n_kv, const cu::AttentionParams& ap) {
    const int64_t n = io.n;
    if (n < kCudnnMinRows || ap.window > 0 || !io.pos_host) return false;
    const int64_t kvd = hp.kv_dim();
    if (!valid_mask(il)) {
      if (io.pos_host[0] != n_kv - n)  // not the last n slots
        return cu::attention_subset(q.get(), io.pos, io.pos_host, n, k_layer(il), v_layer(il), n_kv, ap, attn.get());
      return cu::attention_dense(q.get(), n, k_layer(il), v_layer(il), n_kv, ap, attn.get());
    }
    const std::vector<uint8_t>& vh = valid_host[static_cast<size_t>(il)];
    slots_now.clear();
    for (int64_t s = 0; s < n_kv; ++s)
      if (vh[static_cast<size_t>(s)]) slots_now.push_back(static_cast<int32_t>(s));
    const auto nc = static_cast<int64_t>(slots_now.size());
    if (nc < n || !std::equal(io.pos_host, io.pos_host + n, slots_now.end() - n)) return false;
    dense_slots.reserve(static_cast<size_t>(n_ctx));
    k_dense.reserve(static_cast<size_t>(n_ctx * kvd));
    v_dense.reserve(static_cast<size_t>(n_ctx * kvd));
    // The list changes only when tokens halt: uploaded (a synchronising copy) only then.
    if (slots_now != dense_slots_host) {
      dense_slots.upload(slots_now.data(), static_cast<size_t>(nc));
      dense_slots_host.swap(slots_now);  // only once the device holds it
    }
    cu::gather_rows(k_layer(il), dense_slots.get(), nc, kvd, k_dense.get());
    cu::gather_rows(v_layer(il), dense_slots.get(), nc, kvd, v_dense.get());
    return cu::attention_dense(q.get(), n, k_dense.get(), v_dense.get(), nc, ap, attn.get());
  }

  // Decoding (at most cu::kDecodeMaxRows rows): the keys split over many CTAs, merged by
  // log-sum-exp, with this engine's own workspace (a recorded decode graph points at it).
  static bool decodes_split(const LayerIO& io, const cu::AttentionParams& ap) {
    return cu::split_decode_enabled() && cu::attention_decode_supported(ap, io.n);
  }
  bool attend_decode(int il, const LayerIO& io, int64_t n_kv, const cu::AttentionParams& ap) {
    if (!decodes_split(io, ap)) return false;
    decode_ws.reserve(cu::attention_decode_workspace(ap, io.n, fp8));
    if (fp8) {
      cu::attention_decode(q.get(), io.pos, io.n, fp8_layer(il), n_kv, valid_mask(il), ap, attn.get(), decode_ws.get(),
                           decode_ws.size());
    } else {
      cu::attention_decode(q.get(), io.pos, io.n, k_layer(il), v_layer(il), n_kv, valid_mask(il), ap, attn.get(),
                           decode_ws.get(), decode_ws.size());
    }
    return true;
  }

  void forward_layer(int il, const LayerIO& io) {
    const Layer& L = layers[static_cast<size_t>(il)];
    const int64_t d = hp.n_embd, n = io.n, qd = hp.q_dim(), qkvw = qkv_w();
    float* xp = io.x;

    // Attention branch: U = Wo Attn(RoPE(Wq Norm(x)), RoPE(Wk Norm(x)), Wv Norm(x)).
    const bool carried = io.carry_norms && il > 0 && norm_carried;
    norm_carried = false;
    // A few rows without per-head norms: the product prepares Q, K and V itself (gemv_qkv).
    const bool qkv_epilogue = cu::fused_qkv_enabled() && !L.q_norm.size() && !L.k_norm.size() &&
                              cu::qkv_epilogue_fits(n, d, L.w_qkv.get());
    // Where Q, K and V go: q, and the layer's cache slots at the rows' positions.
    cu::QkvPrep p;
    p.n_head = hp.n_head;
    p.n_head_kv = hp.n_head_kv;
    p.bias = opt(L.b_qkv);
    p.rope = rope_params(il);
    p.pos = io.pos;
    p.q = q.get();
    p.q_stride = qd;
    p.k = k_layer(il);
    p.v = v_layer(il);
    p.kv_stride = hp.kv_dim();
    const cu::AttentionParams ap = attention_params(il);
    const int64_t n_kv = io.n_kv > 0 ? io.n_kv : static_cast<int64_t>(io.pos_host[n - 1]) + 1;
    // fp8: every reader of k_layer() below but the decode attention needs the layer's slots in
    // bf16, loaded before the rows' own are written over them.
    if (!decodes_split(io, ap) || io.attn_rows > 0) load_kv(il, n_kv);
    if (!carried) cu::rmsnorm(xp, L.attn_norm.get(), xn.get(), n, d, hp.norm_eps);
    if (qkv_epilogue) {
      if (carried) cu::gemv_qkv_normed(carry(L.attn_norm, n), L.w_qkv.get(), n, p);
      else cu::gemv_qkv(xn.get(), L.w_qkv.get(), n, d, p);
    } else {
      if (carried) cu::gemm_normed(carry(L.attn_norm, n), L.w_qkv.get(), n, qkvw, qkv.get());
      else cu::gemm(xn.get(), L.w_qkv.get(), n, qkvw, d, qkv.get());
      // Q into q, K and V into the cache, in one launch (or three).
      if (cu::fused_qkv_enabled()) {
        cu::prep_qkv(qkv.get(), qkvw, n, p, opt(L.q_norm), opt(L.k_norm), hp.norm_eps);
      } else {
        cu::prep_heads(qkv.get(), qkvw, n, hp.n_head, opt(L.b_qkv), opt(L.q_norm), hp.norm_eps, rope_params(il), io.pos,
                       q.get(), qd, nullptr);
        write_kv(il, qkv.get() + qd, qkvw, io.pos, n);
      }
    }
    store_kv(il, io.pos, n);

    if (!attend_decode(il, io, n_kv, ap) && !attend_cudnn(il, io, n_kv, ap))
      cu::attention(q.get(), io.pos, n, k_layer(il), v_layer(il), n_kv, valid_mask(il), ap, attn.get());
    if (io.attn_rows > 0) {
      const int64_t r = std::min<int64_t>(io.attn_rows, n);
      recv.reserve(static_cast<size_t>(n_ctx));
      recv_ws.reserve(cu::attention_received_workspace(ap, r));
      cu::attention_received(q.get() + static_cast<size_t>((n - r) * qd), io.pos + (n - r), r, k_layer(il), n_kv,
                             valid_mask(il), ap, recv.get(), recv_ws.get(), recv_ws.size());
      std::fill(io.attn_received, io.attn_received + n_ctx, 0.f);
      recv.download(io.attn_received, static_cast<size_t>(n_kv));
    }
    const bool want = io.want_signal;
    if (want && io.signal == DeltaSignal::Block) cu::copy_on_device(x_in.get(), xp, static_cast<size_t>(n * d) * sizeof(float));
    const bool gelu = hp.act == Activation::GeluTanh;
    const bool ffn_carried = io.carry_norms && !L.post_attn_norm.size() && L.ffn_norm.size() &&
                             cu::norm_carry_fits(n, qd, L.wo.get()) && cu::norm_carry_fits(n, d, L.w_gu.get());
    if (ffn_carried) {
      // The MLP's norm carried from the output product to the gate/up product.
      cu::gemm_accumulate_carry(attn.get(), L.wo.get(), n, d, qd, xp, carry(L.ffn_norm, n));
    } else if (!L.post_attn_norm.size() && (!want || io.signal == DeltaSignal::Block)) {
      // Nothing needs the update on its own: the GEMM adds it to the residual stream.
      cu::gemm_accumulate(attn.get(), L.wo.get(), n, d, qd, xp);
      cu::rmsnorm(xp, L.ffn_norm.get(), xn.get(), n, d, hp.norm_eps);
    } else {
      cu::gemm(attn.get(), L.wo.get(), n, d, qd, u.get());
      if (L.post_attn_norm.size()) cu::rmsnorm(u.get(), L.post_attn_norm.get(), u.get(), n, d, hp.norm_eps);
      // The halting signal from the update before it joins the residual stream, fused with the
      // residual add and the MLP's input norm.
      cu::add_residual(xp, u.get(), n, d, want && io.signal != DeltaSignal::Block ? d_delta.get() : nullptr,
                       want && io.signal == DeltaSignal::Rel ? d_norm_x.get() : nullptr, L.ffn_norm.get(), xn.get(),
                       hp.norm_eps);
    }

    // MLP branch: x += Wdown (act(Wgate Norm(x)) * Wup Norm(x)), in row chunks; without a
    // post-MLP norm the down GEMM adds into x itself.
    const bool post_ffn = L.post_ffn_norm.size() > 0;
    const DBuf<float>* carry_next = next_norm(il, io);
    for (int64_t r0 = 0; r0 < n; r0 += kMlpChunk) {
      const int64_t c = std::min(kMlpChunk, n - r0);
      if (ffn_carried) {
        cu::gemv_glu_normed(carry(L.ffn_norm, n), L.w_gu.get(), c, hp.n_ff, gelu, h.get());
      } else if (!cu::gemv_glu(xn.get() + static_cast<size_t>(r0 * d), L.w_gu.get(), c, hp.n_ff, d, gelu, h.get())) {
        cu::gemm(xn.get() + static_cast<size_t>(r0 * d), L.w_gu.get(), c, 2 * hp.n_ff, d, gu.get());
        (gelu ? cu::geglu_tanh : cu::swiglu)(gu.get(), h.get(), c, hp.n_ff);
      }
      if (post_ffn) {
        cu::gemm(h.get(), L.w_down.get(), c, d, hp.n_ff, u.get() + static_cast<size_t>(r0 * d));
      } else if (carry_next) {  // decoding: one chunk
        cu::gemm_accumulate_carry(h.get(), L.w_down.get(), c, d, hp.n_ff, xp, carry(*carry_next, n));
        norm_carried = true;
      } else {
        cu::gemm_accumulate(h.get(), L.w_down.get(), c, d, hp.n_ff, xp + static_cast<size_t>(r0 * d));
      }
    }
    if (post_ffn) {
      cu::rmsnorm(u.get(), L.post_ffn_norm.get(), u.get(), n, d, hp.norm_eps);
      cu::add_residual(xp, u.get(), n, d, nullptr, nullptr, nullptr, nullptr, hp.norm_eps);
    }

    if (want && io.signal == DeltaSignal::Block) cu::block_delta(x_in.get(), xp, n, d, d_delta.get());
    if (io.delta) {
      d_delta.download(io.delta, static_cast<size_t>(n));
      if (io.signal == DeltaSignal::Rel) {
        std::vector<float> nx(static_cast<size_t>(n));
        d_norm_x.download(nx.data(), static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) io.delta[i] /= std::max(nx[static_cast<size_t>(i)], 1e-30f);
      }
    }
  }

  // The topk decision from the deltas in d_delta (one per active token): the tokens that halt,
  // ascending (HaltingPolicy::topk_rule says why this equals the policy's observe()).
  std::vector<int32_t> rank_topk(std::span<const int32_t> active, std::span<const uint8_t> eligible, double keep) override {
    const auto na = static_cast<int64_t>(active.size());
    std::vector<uint8_t> flags(active.size());
    int64_t n_eligible = 0;
    for (size_t i = 0; i < active.size(); ++i) {
      flags[i] = eligible[static_cast<size_t>(active[i])];
      n_eligible += flags[i];
    }
    select_bytes.reserve(2 * active.size());
    select_bytes.upload(flags.data(), flags.size());
    uint8_t* halt = select_bytes.get() + active.size();
    cu::topk_halt_flags(d_delta.get(), select_bytes.get(), na, halting_keep_count(keep, n_eligible), halt);
    cu::copy_to_host(flags.data(), halt, flags.size());
    std::vector<int32_t> out;
    for (size_t i = 0; i < active.size(); ++i)
      if (flags[i]) out.push_back(active[i]);
    return out;
  }

  // --- LayerExecutor: the GPU side of the prefill driver ---
  int64_t seg_n = 0;  // rows of the segment being prefilled

  void begin_segment(std::span<const int32_t> toks, std::span<const int32_t> pos, bool block_signal) override {
    const auto n = static_cast<int64_t>(toks.size());
    drop_graph();  // scratch may move and layers may gain holes: the decode graph is recorded anew
    reserve(n, block_signal);
    seg_n = n;
    tokens.upload(toks.data(), static_cast<size_t>(n));
    pos_all.upload(pos.data(), static_cast<size_t>(n));
    cu::embed_rows(tok_embd.get(), hp.n_vocab, tokens.get(), n, hp.n_embd, hp.embed_scale, x.get());
  }

  void run_layer(const LayerRun& r) override {
    LayerIO io{};
    io.signal = r.kind;
    io.want_signal = r.signal;
    io.delta = r.signal_out;
    io.attn_rows = r.attention_rows;
    io.attn_received = r.attention_out;
    io.pos_host = r.pos;
    io.n = r.n;
    if (r.all) {
      io.x = x.get();
      io.pos = pos_all.get();
      forward_layer(r.layer, io);
      return;
    }
    // Active tokens: gathered into a dense batch, computed, written back.
    const int64_t d = hp.n_embd;
    cu::gather_rows(x.get(), idx_active.get(), r.n, d, x_act.get());
    io.x = x_act.get();
    io.pos = pos_active.get();
    forward_layer(r.layer, io);
    cu::scatter_rows(x_act.get(), idx_active.get(), r.n, d, x.get());
  }

  // Retain mode: K and V of the halted rows (the device lists of rows_changed) from their frozen
  // states.
  void project_kv(int il, std::span<const int32_t> rows, std::span<const int32_t>) override {
    const auto nh = static_cast<int64_t>(rows.size());
    cu::gather_rows(x.get(), idx_halted.get(), nh, hp.n_embd, x_act.get());
    project_kv_rows(il, x_act.get(), pos_halted.get(), nh);
  }

  void drop_slots(int il, std::span<const int32_t> pos) override {
    auto& vh = valid_host[static_cast<size_t>(il)];
    for (int32_t p : pos) vh[static_cast<size_t>(p)] = 0;
    cu::set_bytes_at(valid.get() + static_cast<size_t>(il) * static_cast<size_t>(n_ctx), pos_halted.get(),
                     static_cast<int64_t>(pos.size()), 0);
    has_holes[static_cast<size_t>(il)] = 1;
  }

  void rows_changed(const TokenSets& sets) override {
    idx_active.upload(sets.active.data(), sets.active.size());
    pos_active.upload(sets.pos_active.data(), sets.pos_active.size());
    idx_halted.upload(sets.halted.data(), sets.halted.size());
    pos_halted.upload(sets.pos_halted.data(), sets.pos_halted.size());
  }

  const uint8_t* valid_slots(int il) const override {
    return has_holes[static_cast<size_t>(il)] ? valid_host[static_cast<size_t>(il)].data() : nullptr;
  }
  // Relative deltas are divided on the host.
  bool ranks_on_device(DeltaSignal kind) const override { return kind != DeltaSignal::Rel; }
  void read_hidden(float* out) override { x.download(out, static_cast<size_t>(seg_n * hp.n_embd)); }
  void output_logits(int64_t first, int64_t n, float* out) override {
    compute_logits(x.get() + static_cast<size_t>(first * hp.n_embd), n, out);
  }
  void synchronize() override { cu::synchronize(); }

  // One decode step for the token and position already in tokens[0] and pos_all[0], queued
  // without any host copy, so that it can be recorded into decode_graph: the attention reads its
  // key range from the position on the device (n_kv is the whole cache), the logits stay in
  // `logits`.
  void decode_step() {
    const int64_t d = hp.n_embd;
    cu::embed_rows(tok_embd.get(), hp.n_vocab, tokens.get(), 1, d, hp.embed_scale, x.get());
    for (int il = 0; il < hp.n_layer; ++il) {
      LayerIO io{};
      io.x = x.get();
      io.pos = pos_all.get();
      io.pos_host = nullptr;
      io.n = 1;
      io.n_kv = n_ctx;
      io.carry_norms = true;
      forward_layer(il, io);
    }
    if (norm_carried) {
      cu::gemm_normed(carry(output_norm, 1), output, 1, hp.n_vocab, logits.get());
    } else {
      cu::rmsnorm(x.get(), output_norm.get(), xn.get(), 1, d, hp.norm_eps);
      cu::gemm(xn.get(), output, 1, hp.n_vocab, d, logits.get());
    }
    norm_carried = false;
  }
  cu::Graph decode_graph;
  bool graphs_on = true;
  std::string graphs_off_why;
  int eager_decodes = 0;  // decode steps run without the graph since it was last dropped
  void drop_graph() {
    decode_graph.reset();
    eager_decodes = 0;
  }

  // Logits of n rows of hidden state at xp (device) into out (host, n x n_vocab).
  void compute_logits(const float* xp, int64_t n, float* out) {
    const int64_t d = hp.n_embd, V = hp.n_vocab;
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t{1} << 26) / V));
    logits.reserve(static_cast<size_t>(rows * V));
    for (int64_t r0 = 0; r0 < n; r0 += rows) {
      const int64_t c = std::min(rows, n - r0);
      cu::rmsnorm(xp + static_cast<size_t>(r0 * d), output_norm.get(), xn.get(), c, d, hp.norm_eps);
      cu::gemm(xn.get(), output, c, V, d, logits.get());
      logits.download(out + static_cast<size_t>(r0 * V), static_cast<size_t>(c * V));
    }
  }
};

// --- construction ------------------------------------------------------------------------------

namespace {
bool fp8_cache(CacheType t) {
  if (t != CacheType::Default && t != CacheType::BF16 && t != CacheType::FP8)
    fail("the CUDA engine keeps a bf16 or fp8 KV cache, not {}", t == CacheType::F32 ? "f32" : "f16");
  return t == CacheType::FP8;
}
}  // namespace

CudaEngine::CudaEngine(const Model& model, int64_t n_ctx, CacheType cache)
    : impl_(std::make_unique<Impl>()), hp_(model.hp()), n_ctx_(n_ctx) {
  if (n_ctx <= 0) fail("context size must be positive");
  std::string why;
  if (!cuda_available(&why)) fail("CUDA backend unavailable: {}", why);
  Impl& m = *impl_;
  m.fp8 = fp8_cache(cache);
  m.hp = hp_;
  m.n_ctx = n_ctx;
  const HParams& hp = hp_;
  const int64_t d = hp.n_embd;
  std::vector<uint16_t> buf;
  auto up = [&](std::initializer_list<const WeightView*> ws, const std::string& what) {
    buf.clear();
    int64_t bad = 0;
    for (const WeightView* w : ws) bad += append_bf16(*w, buf);
    if (bad) fail("{}: {} values are NaN or Inf; the model file is broken", what, bad);
    return upload(buf);
  };
  m.layers.resize(static_cast<size_t>(hp.n_layer));
  for (int il = 0; il < hp.n_layer; ++il) {
    const LayerWeights& L = model.layer(il);
    Impl::Layer& D = m.layers[static_cast<size_t>(il)];
    const std::string blk = "tensors blk." + std::to_string(il) + ".";
    D.w_qkv = up({&L.wq, &L.wk, &L.wv}, blk + "attn_q/attn_k/attn_v");
    D.wo = up({&L.wo}, blk + "attn_output");
    D.w_gu = up({&L.w_gate, &L.w_up}, blk + "ffn_gate/ffn_up");
    D.w_down = up({&L.w_down}, blk + "ffn_down");
    if (L.bq || L.bk || L.bv) {
      std::vector<float> b(static_cast<size_t>(m.qkv_w()), 0.f);
      if (L.bq) std::copy_n(L.bq, hp.q_dim(), b.begin());
      if (L.bk) std::copy_n(L.bk, hp.kv_dim(), b.begin() + hp.q_dim());
      if (L.bv) std::copy_n(L.bv, hp.kv_dim(), b.begin() + hp.q_dim() + hp.kv_dim());
      D.b_qkv = upload(b);
    }
    D.attn_norm = upload_f32(L.attn_norm, d);
    D.ffn_norm = upload_f32(L.ffn_norm, d);
    D.q_norm = upload_f32(L.q_norm, hp.head_dim);
    D.k_norm = upload_f32(L.k_norm, hp.head_dim);
    D.post_attn_norm = upload_f32(L.post_attn_norm, d);
    D.post_ffn_norm = upload_f32(L.post_ffn_norm, d);
  }
  m.tok_embd = up({&model.tok_embd()}, "tensor token_embd");
  if (hp.tied_embeddings) {
    m.output = m.tok_embd.get();
  } else {
    m.output_own = up({&model.output()}, "tensor output");
    m.output = m.output_own.get();
  }
  m.output_norm = upload_f32(model.output_norm(), d);
  m.rope_ff = upload_f32(model.rope_freq_factors(), hp.n_rot / 2);
  m.init_cache();
  m.init_graphs();
  cu::synchronize();
}

CudaEngine::CudaEngine(const HParams& hp_in, int64_t n_ctx, uint64_t seed, CacheType cache)
    : impl_(std::make_unique<Impl>()), hp_(hp_in), n_ctx_(n_ctx) {
  if (n_ctx <= 0) fail("context size must be positive");
  std::string why;
  if (!cuda_available(&why)) fail("CUDA backend unavailable: {}", why);
  HParams& hp = hp_;
  if (hp.n_rot == 0) hp.n_rot = hp.head_dim;
  if (hp.n_head <= 0 || hp.n_head_kv <= 0 || hp.n_head % hp.n_head_kv || hp.head_dim <= 0 || hp.n_embd <= 0 ||
      hp.n_layer <= 0 || hp.n_ff <= 0 || hp.n_vocab <= 0)
    fail("random CUDA model: inconsistent hyperparameters");
  Impl& m = *impl_;
  m.fp8 = fp8_cache(cache);
  m.hp = hp;
  m.n_ctx = n_ctx;
  const int64_t d = hp.n_embd, qd = hp.q_dim(), kvd = hp.kv_dim(), ff = hp.n_ff;
  constexpr float kStd = 0.02f;
  uint64_t s = seed * 1000003ull;
  auto rnd = [&](int64_t n) {
    DBuf<bf16> b(static_cast<size_t>(n));
    cu::fill_random_bf16(b.get(), n, 0.f, kStd, ++s);
    return b;
  };
  auto vec = [&](int64_t n, float mean, float stddev) {
    DBuf<float> b(static_cast<size_t>(n));
    cu::fill_random_f32(b.get(), n, mean, stddev, ++s);
    return b;
  };
  const bool gemma = hp.arch == Arch::Gemma3, qwen = hp.arch == Arch::Qwen2;
  m.layers.resize(static_cast<size_t>(hp.n_layer));
  for (auto& D : m.layers) {
    D.w_qkv = rnd((qd + 2 * kvd) * d);
    D.wo = rnd(d * qd);
    D.w_gu = rnd(2 * ff * d);
    D.w_down = rnd(d * ff);
    if (qwen) D.b_qkv = vec(qd + 2 * kvd, 0.f, kStd);
    D.attn_norm = vec(d, 1.f, 0.f);
    D.ffn_norm = vec(d, 1.f, 0.f);
    if (gemma) {
      D.q_norm = vec(hp.head_dim, 1.f, 0.f);
      D.k_norm = vec(hp.head_dim, 1.f, 0.f);
      D.post_attn_norm = vec(d, 1.f, 0.f);
      D.post_ffn_norm = vec(d, 1.f, 0.f);
    }
  }
  m.tok_embd = rnd(hp.n_vocab * d);
  if (hp.tied_embeddings) {
    m.output = m.tok_embd.get();
  } else {
    m.output_own = rnd(hp.n_vocab * d);
    m.output = m.output_own.get();
  }
  m.output_norm = vec(d, 1.f, 0.f);
  m.init_cache();
  m.init_graphs();
  cu::synchronize();
}

CudaEngine::~CudaEngine() = default;

void CudaEngine::reset() {
  n_past_ = 0;
  impl_->reset_valid();
  impl_->drop_graph();
}

void CudaEngine::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("cannot keep {} cached tokens: the cache holds {}", n, n_past_);
  n_past_ = n;
  impl_->reset_valid_from(n);
  impl_->drop_graph();
}

void CudaEngine::set_cuda_graphs(bool on) {
  impl_->graphs_on = on;
  impl_->graphs_off_why = on ? "" : "switched off";
  impl_->drop_graph();
}

std::vector<float> CudaEngine::decode(int32_t token) {
  Impl& m = *impl_;
  check_tokens(std::span<const int32_t>(&token, 1), n_past_, n_ctx_, hp_.n_vocab);
  // Buffers first (a reallocation would move what a recorded graph points at: prefill() and
  // reset() drop the graph, and only a first decode before any prefill grows these).
  const auto V = static_cast<size_t>(hp_.n_vocab);
  if (m.cap < 1 || m.logits.size() < V) m.drop_graph();
  m.reserve(1, false);
  m.logits.reserve(V);
  m.step_in.reserve(2);
  m.step_logits.reserve(V);
  // Free to write: the last step's copies ended before it returned.
  m.step_in.get()[0] = token;
  m.step_in.get()[1] = static_cast<int32_t>(n_past_);
  cu::copy_to_device_queued(m.tokens.get(), m.step_in.get(), sizeof(int32_t));
  cu::copy_to_device_queued(m.pos_all.get(), m.step_in.get() + 1, sizeof(int32_t));
  // The first step after a change runs as it is (GEMM plans, kernel attributes set up), the
  // second is recorded, every later one replays the recording; without graphs every step runs
  // the same launches as they are.
  if (m.graphs_on && !m.decode_graph.ready() && m.eager_decodes > 0) {
    try {
      m.decode_graph.begin_capture();
      m.decode_step();
      m.decode_graph.end_capture();
    } catch (const std::exception& e) {
      m.decode_graph.abort_capture();
      m.graphs_on = false;
      m.graphs_off_why = std::string("recording failed: ") + e.what();
    }
  }
  if (m.decode_graph.ready()) {
    m.decode_graph.launch();
  } else {
    m.decode_step();
    ++m.eager_decodes;
  }
  cu::copy_to_host_queued(m.step_logits.get(), m.logits.get(), V * sizeof(float));
  cu::synchronize();
  std::vector<float> out(m.step_logits.get(), m.step_logits.get() + V);
  // The prefill driver checks its logits; this path bypasses it, so it checks its own.
  if (!all_finite(out)) {
    fail("decoding at position {}: the logits are not finite (NaN or Inf); the model's weights or hyperparameters are broken, "
         "or the activations overflowed",
         n_past_);
  }
  ++n_past_;
  return out;
}

std::string CudaEngine::kernels() const {
  std::string why;
  const std::string attention = cu::dense_attention_available(&why)
                                    ? "attention: cuDNN for dense causal and DASH query subsets, dashlm's kernel otherwise"
                                    : "attention: dashlm's kernel (" + why + ")";
  const std::string graphs = impl_->graphs_on ? "CUDA graphs for decode" : "no CUDA graphs (" + impl_->graphs_off_why + ")";
  const std::string decode = cu::split_decode_enabled() ? "split-over-keys decode attention" : "decode attention unsplit";
  const std::string cache = impl_->fp8 ? "fp8 KV cache (e4m3, a scale per slot and head)" : "bf16 KV cache";
  return "cuda " + cu::device_name() + ", bf16 weights, cuBLASLt GEMMs, " + cache + ", " + attention + ", " + decode + ", " +
         graphs;
}

CacheType CudaEngine::cache_type() const { return impl_->fp8 ? CacheType::FP8 : CacheType::BF16; }

void CudaEngine::read_cache(int il, std::vector<float>* k, std::vector<float>* v, std::vector<uint8_t>* valid) const {
  const Impl& m = *impl_;
  if (il < 0 || il >= hp_.n_layer) fail("read_cache: no layer {}", il);
  const size_t n = static_cast<size_t>(n_ctx_ * hp_.kv_dim());
  std::vector<uint16_t> tmp(n);
  auto conv = [&](const bf16* src, std::vector<float>* dst) {
    cu::copy_to_host(tmp.data(), src, n * sizeof(bf16));
    dst->resize(n);
    for (size_t i = 0; i < n; ++i) (*dst)[i] = cpu::bf16_to_fp32(tmp[i]);
  };
  m.load_kv(il, n_ctx_);  // fp8: the layer dequantized into k_work / v_work
  if (k) conv(m.k_layer(il), k);
  if (v) conv(m.v_layer(il), v);
  if (valid) *valid = m.valid_host[static_cast<size_t>(il)];
}

size_t CudaEngine::device_bytes() const {
  const Impl& m = *impl_;
  size_t b = 0;
  for (const auto& L : m.layers) {
    b += (L.w_qkv.size() + L.wo.size() + L.w_gu.size() + L.w_down.size()) * sizeof(bf16);
    b += (L.b_qkv.size() + L.attn_norm.size() + L.ffn_norm.size() + L.q_norm.size() + L.k_norm.size() +
          L.post_attn_norm.size() + L.post_ffn_norm.size()) * sizeof(float);
  }
  b += (m.tok_embd.size() + m.output_own.size() + m.k_cache.size() + m.v_cache.size()) * sizeof(bf16) + m.valid.size();
  b += m.k8.size() + m.v8.size() + (m.k_sc.size() + m.v_sc.size()) * sizeof(float) + (m.k_work.size() + m.v_work.size()) * sizeof(bf16);
  b += (m.x.size() + m.x_act.size() + m.qkv.size() + m.u.size() + m.x_in.size() + m.logits.size()) * sizeof(float);
  b += (m.xn.size() + m.q.size() + m.attn.size() + m.gu.size() + m.h.size()) * sizeof(bf16);
  return b;
}

// --- prefill -------------------------------------------------------------------------------------

std::vector<float> CudaEngine::prefill(std::span<const int32_t> tokens, const PrefillOptions& opt, ForwardStats* stats) {
  std::vector<float> last = prefill_segment(*impl_, hp_, tokens, n_past_, n_ctx_, opt, stats);
  n_past_ += static_cast<int64_t>(tokens.size());
  return last;
}

}  // namespace dashlm
