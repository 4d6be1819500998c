#include "runtime/engine.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "backends/cpu/gemm.h"
#include "backends/cpu/q8.h"
#include "common/error.h"
#include "common/memory.h"
#include "runtime/layer_params.h"

namespace dashlm {

void KVCache::init(int n_layer, int64_t n_ctx_, int64_t kv_dim_, cpu::KvType type_) {
  n_ctx = n_ctx_;
  kv_dim = kv_dim_;
  type = type_;
  const auto L = static_cast<size_t>(n_layer);
  const auto n = static_cast<size_t>(n_ctx * kv_dim);
  if (type == cpu::KvType::F16) {
    k.clear();
    v.clear();
    k16.assign(L, std::vector<uint16_t>(n));
    v16.assign(L, std::vector<uint16_t>(n));
  } else {
    k16.clear();
    v16.clear();
    k.assign(L, std::vector<float>(n));
    v.assign(L, std::vector<float>(n));
  }
  valid.assign(L, std::vector<uint8_t>(static_cast<size_t>(n_ctx), 1));
  has_holes.assign(L, 0);
}

void KVCache::store(int il, const float* k_rows, const float* v_rows, const int32_t* pos, int64_t n) {
  const auto l = static_cast<size_t>(il);
  if (type == cpu::KvType::F32) {
    cpu::scatter_rows(k_rows, pos, n, kv_dim, k[l].data());
    cpu::scatter_rows(v_rows, pos, n, kv_dim, v[l].data());
    return;
  }
  uint16_t* kd = k16[l].data();
  uint16_t* vd = v16[l].data();
  const int64_t d = kv_dim;
#pragma omp parallel for schedule(static) num_threads(cpu::num_threads()) if (n * d > 65536)
  for (int64_t i = 0; i < n; ++i) {
    cpu::f32_to_f16_row(k_rows + i * d, kd + pos[i] * d, d);
    cpu::f32_to_f16_row(v_rows + i * d, vd + pos[i] * d, d);
  }
}

std::vector<float> KVCache::k_at(int il, int64_t pos) const {
  std::vector<float> r(static_cast<size_t>(kv_dim));
  if (type == cpu::KvType::F32) {
    std::copy_n(k[static_cast<size_t>(il)].data() + pos * kv_dim, kv_dim, r.data());
  } else {
    cpu::f16_to_f32_row(k16[static_cast<size_t>(il)].data() + pos * kv_dim, r.data(), kv_dim);
  }
  return r;
}

std::vector<float> KVCache::v_at(int il, int64_t pos) const {
  std::vector<float> r(static_cast<size_t>(kv_dim));
  if (type == cpu::KvType::F32) {
    std::copy_n(v[static_cast<size_t>(il)].data() + pos * kv_dim, kv_dim, r.data());
  } else {
    cpu::f16_to_f32_row(v16[static_cast<size_t>(il)].data() + pos * kv_dim, r.data(), kv_dim);
  }
  return r;
}

cpu::KvRef KVCache::layer(int il) const {
  const auto l = static_cast<size_t>(il);
  if (type == cpu::KvType::F16) return {k16[l].data(), v16[l].data(), type};
  return {k[l].data(), v[l].data(), type};
}

void KVCache::clear_holes() {
  for (size_t il = 0; il < valid.size(); ++il) {
    if (has_holes[il]) std::fill(valid[il].begin(), valid[il].end(), uint8_t{1});
    has_holes[il] = 0;
  }
}

void KVCache::clear_holes_from(int64_t pos) {
  for (size_t il = 0; il < valid.size(); ++il) {
    if (!has_holes[il]) continue;
    std::fill(valid[il].begin() + pos, valid[il].end(), uint8_t{1});
    has_holes[il] = std::find(valid[il].begin(), valid[il].begin() + pos, uint8_t{0}) != valid[il].begin() + pos;
  }
}

void Engine::truncate(int64_t n) {
  if (n < 0 || n > n_past_) fail("cannot keep {} cached tokens: the cache holds {}", n, n_past_);
  n_past_ = n;
  cache_.clear_holes_from(n);
}

size_t KVCache::bytes() const {
  return 2 * valid.size() * static_cast<size_t>(n_ctx * kv_dim) * cpu::kv_type_bytes(type);
}

void Engine::Buffer::reserve(size_t n) {
  if (n <= cap) return;
  p.reset(new float[n]);  // not value-initialised: no page is touched before it is used
  cap = n;
}

void Engine::Scratch::reserve(const HParams& hp, int64_t r, int64_t ff_slice) {
  if (r <= rows) return;
  rows = r;
  const auto sz = [r](int64_t w) { return static_cast<size_t>(r * w); };
  xc.reserve(sz(hp.n_embd));
  xn.reserve(sz(std::max(hp.q_dim(), hp.n_embd)));
  q.reserve(sz(std::max(hp.q_dim(), hp.n_embd)));
  k.reserve(sz(hp.kv_dim()));
  v.reserve(sz(hp.kv_dim()));
  // Fewer than 4 rows (decode) take the MLP in one slice: n_ff floats a row.
  gate.reserve(std::max(sz(ff_slice), static_cast<size_t>(std::min<int64_t>(r, 3) * hp.n_ff)));
  up.reserve(std::max(sz(ff_slice), static_cast<size_t>(std::min<int64_t>(r, 3) * hp.n_ff)));
  x_in.reserve(sz(hp.n_embd));
  norms.reserve(sz(1));
}

namespace {

// Whether n ascending distinct values are consecutive.
bool consecutive(const int32_t* v, int64_t n) { return n > 0 && static_cast<int64_t>(v[n - 1]) - v[0] == n - 1; }

}  // namespace

uint64_t Engine::memory_bytes(const Model& model, int64_t n_ctx, cpu::KvType kv_type, int64_t chunk_rows) {
  const HParams& hp = model.hp();
  using u128 = unsigned __int128;
  int64_t ff_max = 0;
  for (int il = 0; il < hp.n_layer; ++il) ff_max = std::max(ff_max, ff_slice(model, il));
  const auto L = static_cast<u128>(hp.n_layer), ctx = static_cast<u128>(n_ctx), d = static_cast<u128>(hp.n_embd);
  const auto kvd = static_cast<u128>(hp.kv_dim()), qd = static_cast<u128>(std::max(hp.q_dim(), hp.n_embd));
  const u128 rows = static_cast<u128>(std::min(n_ctx, chunk_rows));
  const u128 ff = std::max(rows * static_cast<u128>(ff_max), static_cast<u128>(std::min<int64_t>(n_ctx, 3) * hp.n_ff));
  const u128 kv = L * ctx * (2 * kvd * cpu::kv_type_bytes(kv_type) + 1);  // K, V and the validity flags
  const u128 hidden = ctx * d * sizeof(float);             // a prompt filling the context
  const u128 scratch = (rows * (3 * d + 2 * qd + 2 * kvd + 1) + 2 * ff) * sizeof(float);
  const u128 logits = static_cast<u128>(hp.n_vocab) * sizeof(float);
  const u128 total = kv + hidden + scratch + logits;
  return total > std::numeric_limits<uint64_t>::max() ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(total);
}

void Engine::check_memory_for(const Model& model, int64_t n_ctx, cpu::KvType kv) {
  check_context_size(n_ctx);
  check_memory(memory_bytes(model, n_ctx, kv), fmt::format("the KV cache and buffers of a {}-token context", n_ctx));
}

Engine::Engine(const Model& model, int64_t n_ctx, cpu::KvType kv) : model_(model) {
  // Refused before allocating: the cache is zero-filled at once, the rest grows with the prompt.
  check_memory_for(model, n_ctx, kv);
  cache_.init(model.hp().n_layer, n_ctx, model.hp().kv_dim(), kv);
  for (int il = 0; il < model.hp().n_layer; ++il) ff_slice_max_ = std::max(ff_slice_max_, ff_slice(model, il));
  const auto half = static_cast<size_t>(std::max(0, model.hp().n_rot / 2));
  rope_freq_global_.resize(half);
  rope_freq_local_.resize(half);
  for (int il = 0; il < model.hp().n_layer; ++il) {
    std::vector<double>& f = model.hp().layer_is_swa(il) ? rope_freq_local_ : rope_freq_global_;
    cpu::RopeParams rp = rope_params(il);
    rp.inv_freq = nullptr;
    cpu::rope_frequencies(rp, f.data());
  }
}

int64_t Engine::ff_slice(const Model& model, int il) {
  const int64_t n_ff = model.hp().n_ff;
  // Slices start on whole blocks of down's quantization.
  const int64_t bs = dtype_traits(model.layer(il).w_down.type).block_size;
  if (n_ff % bs != 0) return n_ff;
  const int64_t count = std::min((n_ff + kFfSlice - 1) / kFfSlice, kFfSlices);
  const int64_t width = (n_ff + count - 1) / count;
  return std::min(n_ff, (width + bs - 1) / bs * bs);
}

cpu::RopeParams Engine::rope_params(int il) const {
  const HParams& hp = model_.hp();
  cpu::RopeParams rp = layer_rope<cpu::RopeParams>(hp, il, model_.rope_freq_factors());
  // Filled in by the constructor (which calls this before they exist: then null).
  const std::vector<double>& f = hp.layer_is_swa(il) ? rope_freq_local_ : rope_freq_global_;
  rp.inv_freq = f.size() == static_cast<size_t>(rp.n_rot / 2) && !f.empty() ? f.data() : nullptr;
  return rp;
}

const float* Engine::rope_angles(int il, const cpu::RopeParams& rp, const int32_t* pos, int64_t n) {
  RopeAngles& a = rope_angles_[model_.hp().layer_is_swa(il) ? 1 : 0];
  if (a.pos.size() != static_cast<size_t>(n) || !std::equal(pos, pos + n, a.pos.begin())) {
    a.pos.assign(pos, pos + n);
    a.cs.resize(static_cast<size_t>(n * (rp.n_rot / 2) * 2));
    cpu::rope_angles(pos, n, rp, a.cs.data());
  }
  return a.cs.data();
}

cpu::AttentionParams Engine::attention_params(int il) const { return layer_attention<cpu::AttentionParams>(model_.hp(), il); }

void Engine::write_kv(int il, float* k, float* v, const int32_t* pos, int64_t n, bool in_cache) {
  const HParams& hp = model_.hp();
  const LayerWeights& L = model_.layer(il);
  if (L.k_norm) cpu::rmsnorm_heads(k, L.k_norm, n * hp.n_head_kv, hp.head_dim, hp.norm_eps);
  const cpu::RopeParams rp = rope_params(il);
  cpu::rope(k, n, hp.n_head_kv, hp.kv_dim(), rope_angles(il, rp, pos, n), rp);
  if (!in_cache) cache_.store(il, k, v, pos, n);
}

void Engine::project_kv(int il, float* x, const int32_t* rows, const int32_t* pos, int64_t n) {
  const HParams& hp = model_.hp();
  const LayerWeights& L = model_.layer(il);
  const int64_t d = hp.n_embd;
  const Chunks ch = chunks_of(n, chunk_rows_);
  for (int64_t c = 0; c < ch.count; ++c) {
    const int64_t i0 = ch.begin(c), m = ch.begin(c + 1) - i0;
    const float* xr = x + (rows ? rows[i0] : i0) * d;
    if (rows && !consecutive(rows + i0, m)) {
      cpu::gather_rows(x, rows + i0, m, d, s_.xc.data());
      xr = s_.xc.data();
    }
    cpu::rmsnorm(xr, L.attn_norm, s_.xn.data(), m, d, hp.norm_eps);
    // Consecutive positions write K and V straight into their slots of a float32 cache.
    const bool in_cache = cache_.type == cpu::KvType::F32 && consecutive(pos + i0, m);
    float* k = in_cache ? cache_.k_row(il, pos[i0]) : s_.k.data();
    float* v = in_cache ? cache_.v_row(il, pos[i0]) : s_.v.data();
    cpu::SharedInput in(s_.xn.data(), m, d, s_.xn_q8, s_.xn_bf16);
    cpu::matmul(L.wk, in, k, L.bk);
    cpu::matmul(L.wv, in, v, L.bv);
    write_kv(il, k, v, pos + i0, m, in_cache);
  }
}

void Engine::forward_layer(int il, const LayerIO& io) {
  const HParams& hp = model_.hp();
  const LayerWeights& L = model_.layer(il);
  const int64_t d = hp.n_embd, qd = hp.q_dim(), n = io.n;

  // Keys and values of every row first, so that each chunk's queries below find all the keys up
  // to their positions in the cache.
  project_kv(il, io.x, io.rows, io.pos, n);

  const cpu::AttentionParams ap = attention_params(il);
  const cpu::RopeParams rp = rope_params(il);
  const cpu::KvRef kv = cache_.layer(il);
  const uint8_t* valid = cache_.valid_mask(il);
  // Rows from tail0 on are the last attn_rows, whose attention received is recorded.
  const int64_t tail0 = io.attn_rows > 0 ? n - std::min<int64_t>(io.attn_rows, n) : n;
  float* xn = s_.xn.data();
  float* q = s_.q.data();
  float* attn = s_.xn.data();  // the attention's output, once the normed rows are used
  float* u = s_.q.data();      // the updates, once the queries are used
  float* gate = s_.gate.data();
  float* up = s_.up.data();
  const int64_t n_ff = hp.n_ff;

  const Chunks ch = chunks_of(n, chunk_rows_);
  for (int64_t c = 0; c < ch.count; ++c) {
    const int64_t i0 = ch.begin(c), m = ch.begin(c + 1) - i0;
    const int32_t* pos = io.pos + i0;
    // The chunk's rows of x: used in place when consecutive, else gathered and scattered back.
    const bool gathered = io.rows && !consecutive(io.rows + i0, m);
    float* x = io.x + (io.rows ? io.rows[i0] : i0) * d;
    if (gathered) {
      cpu::gather_rows(io.x, io.rows + i0, m, d, s_.xc.data());
      x = s_.xc.data();
    }

    // Attention branch: U = Wo Attn(RoPE(Wq Norm(x)), K, V).
    cpu::rmsnorm(x, L.attn_norm, xn, m, d, hp.norm_eps);
    cpu::matmul(L.wq, xn, m, q, L.bq);
    if (L.q_norm) cpu::rmsnorm_heads(q, L.q_norm, m * hp.n_head, hp.head_dim, hp.norm_eps);
    cpu::rope(q, m, hp.n_head, qd, rope_angles(il, rp, pos, m), rp);
    cpu::attention(q, pos, m, kv, pos[m - 1] + 1, valid, ap, attn);
    if (i0 + m > tail0) {
      const int64_t a = std::max(i0, tail0);
      std::copy_n(q + (a - i0) * qd, (i0 + m - a) * qd, io.q_tail + (a - tail0) * qd);
    }
    cpu::matmul(L.wo, attn, m, u);
    if (L.post_attn_norm) cpu::rmsnorm(u, L.post_attn_norm, u, m, d, hp.norm_eps);

    // The halting signal, from the update before it joins the residual stream.
    float* delta = io.delta ? io.delta + i0 : nullptr;
    if (delta) {
      switch (io.signal) {
        case DeltaSignal::Abs:
          cpu::row_l2_norms(u, m, d, delta);
          break;
        case DeltaSignal::Rel:
          cpu::row_l2_norms(u, m, d, delta);
          cpu::row_l2_norms(x, m, d, s_.norms.data());
          for (int64_t i = 0; i < m; ++i) delta[i] /= std::max(s_.norms.data()[i], 1e-30f);
          break;
        case DeltaSignal::Block:
          std::copy_n(x, m * d, s_.x_in.data());
          break;
      }
    }
    cpu::add_inplace(x, u, m * d);

    // MLP branch: x += Wdown (act(Wgate Norm(x)) * Wup Norm(x)).
    cpu::rmsnorm(x, L.ffn_norm, xn, m, d, hp.norm_eps);
    // In slices of n_ff: a slice of gate and up rows, then the matching columns of down, added up
    // (decode-sized chunks in one slice: their arrays are small, and each slice costs a few
    // thread fork/joins).
    const int64_t fs = m < 4 ? n_ff : ff_slice(model_, il);
    cpu::SharedInput ffn_in(xn, m, d, s_.xn_q8, s_.xn_bf16);
    for (int64_t f0 = 0; f0 < n_ff; f0 += fs) {
      const int64_t nf = std::min(fs, n_ff - f0);
      cpu::matmul(cpu::weight_rows(L.w_gate, f0, nf), ffn_in, gate);
      cpu::matmul(cpu::weight_rows(L.w_up, f0, nf), ffn_in, up);
      if (hp.act == Activation::GeluTanh) {
        cpu::gelu_tanh_mul(gate, up, m * nf);
      } else {
        cpu::silu_mul(gate, up, m * nf);
      }
      cpu::matmul_cols(L.w_down, f0, f0 + nf, gate, nf, m, u, f0 > 0);
    }
    if (L.post_ffn_norm) cpu::rmsnorm(u, L.post_ffn_norm, u, m, d, hp.norm_eps);
    cpu::add_inplace(x, u, m * d);

    if (delta && io.signal == DeltaSignal::Block) {
      for (int64_t i = 0; i < m; ++i) {
        const float* a = s_.x_in.data() + i * d;
        const float* b = x + i * d;
        double ab = 0, aa = 0, bb = 0;
        for (int64_t j = 0; j < d; ++j) {
          ab += static_cast<double>(a[j]) * b[j];
          aa += static_cast<double>(a[j]) * a[j];
          bb += static_cast<double>(b[j]) * b[j];
        }
        delta[i] = static_cast<float>(1.0 - ab / std::max(std::sqrt(aa * bb), 1e-30));
      }
    }
    if (gathered) cpu::scatter_rows(x, io.rows + i0, m, d, io.x);
  }

  if (tail0 < n) {
    cpu::attention_received(io.q_tail, io.pos + tail0, n - tail0, kv.k, kv.type, io.pos[n - 1] + 1, valid, ap,
                            io.attn_received);
  }
}

void Engine::logits_of_rows(const float* x, int64_t n, float* out) {
  const HParams& hp = model_.hp();
  s_.reserve(hp, std::min(n, chunk_rows_), ff_slice_max_);
  const Chunks ch = chunks_of(n, chunk_rows_);
  for (int64_t c = 0; c < ch.count; ++c) {
    const int64_t i0 = ch.begin(c), m = ch.begin(c + 1) - i0;
    cpu::rmsnorm(x + i0 * hp.n_embd, model_.output_norm(), s_.xn.data(), m, hp.n_embd, hp.norm_eps);
    cpu::matmul(model_.output(), s_.xn.data(), m, out + i0 * hp.n_vocab);
  }
}

std::string Engine::kernels() const {
  const bool f16 = cache_.type == cpu::KvType::F16;
  const cpu::Compute c = cpu::compute_mode();
  const std::string compute = c != cpu::Compute::f32 ? std::string("compute ") + cpu::compute_name(c) + " (" +
                                                           cpu::q8_kernel_name() + " integer kernels" +
                                                           (cpu::bf16_dots_available() ? ", avx512bf16 for bf16 weights)" : ")")
                                                     : std::string("compute f32");
  return std::string("cpu ") + cpu::gemm_level_name(cpu::gemm_level()) + ", " + compute + ", " +
         (f16 ? std::string("f16 KV cache (") + cpu::f16_conversion_name() + " conversion)" : std::string("f32 KV cache")) + ", " +
         std::to_string(cpu::num_threads()) + " threads";
}

std::vector<float> Engine::prefill(std::span<const int32_t> tokens, const PrefillOptions& opt, ForwardStats* stats) {
  std::vector<float> last = prefill_segment(*this, model_.hp(), tokens, n_past_, cache_.n_ctx, opt, stats);
  n_past_ += static_cast<int64_t>(tokens.size());
  if (tokens.size() > 1) std::vector<float>().swap(x_);  // a prompt's hidden states are not kept
  return last;
}

void Engine::begin_segment(std::span<const int32_t> tokens, std::span<const int32_t> pos, bool) {
  const HParams& hp = model_.hp();
  const auto n = static_cast<int64_t>(tokens.size());
  s_.reserve(hp, std::min(n, chunk_rows_), ff_slice_max_);
  x_.assign(static_cast<size_t>(n * hp.n_embd), 0.f);
  cpu::get_rows(model_.tok_embd(), tokens.data(), n, x_.data());
  if (hp.embed_scale != 1.f) cpu::scale_inplace(x_.data(), hp.embed_scale, n * hp.n_embd);
}

void Engine::run_layer(const LayerRun& r) {
  const size_t tail = static_cast<size_t>(r.attention_rows * model_.hp().q_dim());
  if (q_tail_.size() < tail) q_tail_.resize(tail);
  LayerIO io{};
  io.x = x_.data();
  io.rows = r.all ? nullptr : r.rows;
  io.pos = r.pos;
  io.n = r.n;
  io.signal = r.kind;
  io.delta = r.signal ? r.signal_out : nullptr;
  io.attn_rows = r.attention_rows;
  io.attn_received = r.attention_out;
  io.q_tail = q_tail_.data();
  forward_layer(r.layer, io);
}

void Engine::project_kv(int il, std::span<const int32_t> rows, std::span<const int32_t> pos) {
  project_kv(il, x_.data(), rows.data(), pos.data(), static_cast<int64_t>(rows.size()));
}

void Engine::drop_slots(int il, std::span<const int32_t> pos) {
  for (int32_t p : pos) cache_.valid[static_cast<size_t>(il)][static_cast<size_t>(p)] = 0;
  cache_.has_holes[static_cast<size_t>(il)] = 1;
}

void Engine::read_hidden(float* out) { std::copy(x_.begin(), x_.end(), out); }

void Engine::output_logits(int64_t first, int64_t n, float* out) {
  logits_of_rows(x_.data() + first * model_.hp().n_embd, n, out);
}

}  // namespace dashlm
