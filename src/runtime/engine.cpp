#include "runtime/engine.h"

#include <chrono>
#include <numeric>

#include "backends/error.h"

namespace dashlm {

namespace {
using Clock = std::chrono::steady_clock;
double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}
}  // namespace

void KVCache::init(int n_layer, int64_t n_ctx_, int64_t kv_dim_) {
  n_ctx = n_ctx_;
  kv_dim = kv_dim_;
  k.assign(static_cast<size_t>(n_layer), std::vector<float>(static_cast<size_t>(n_ctx * kv_dim)));
  v.assign(static_cast<size_t>(n_layer), std::vector<float>(static_cast<size_t>(n_ctx * kv_dim)));
}

size_t KVCache::bytes() const { return 2 * k.size() * static_cast<size_t>(n_ctx * kv_dim) * sizeof(float); }

void Engine::Scratch::reserve(const HParams& hp, int64_t n) {
  if (n <= cap) return;
  cap = n;
  const auto sz = [n](int64_t w) { return static_cast<size_t>(n * w); };
  xn.resize(sz(hp.n_embd));
  q.resize(sz(hp.q_dim()));
  attn.resize(sz(hp.q_dim()));
  u.resize(sz(hp.n_embd));
  gate.resize(sz(hp.n_ff));
  up.resize(sz(hp.n_ff));
}

Engine::Engine(const Model& model, int64_t n_ctx) : model_(model) {
  if (n_ctx <= 0) fail("context size must be positive");
  cache_.init(model.hp().n_layer, n_ctx, model.hp().kv_dim());
}

void Engine::forward_layer(int il, float* x, const int32_t* pos, int64_t n) {
  const HParams& hp = model_.hp();
  const LayerWeights& L = model_.layer(il);
  const int64_t d = hp.n_embd, qd = hp.q_dim(), kvd = hp.kv_dim();
  const bool swa = hp.layer_is_swa(il);
  float* xn = s_.xn.data();
  float* q = s_.q.data();

  // Attention branch: U = Wo * Attn(RoPE(Wq Norm(x)), RoPE(Wk Norm(x)), Wv Norm(x)).
  cpu::rmsnorm(x, L.attn_norm, xn, n, d, hp.norm_eps);
  cpu::matmul(L.wq, xn, n, q, L.bq);
  // The rows are consecutive positions, so K and V go straight into their cache slots.
  float* kc = cache_.k_row(il, pos[0]);
  float* vc = cache_.v_row(il, pos[0]);
  cpu::matmul(L.wk, xn, n, kc, L.bk);
  cpu::matmul(L.wv, xn, n, vc, L.bv);
  if (L.q_norm) cpu::rmsnorm_heads(q, L.q_norm, n * hp.n_head, hp.head_dim, hp.norm_eps);
  if (L.k_norm) cpu::rmsnorm_heads(kc, L.k_norm, n * hp.n_head_kv, hp.head_dim, hp.norm_eps);
  cpu::RopeParams rp;
  rp.head_dim = hp.head_dim;
  rp.n_rot = hp.n_rot;
  rp.neox = hp.rope_neox;
  rp.freq_base = swa ? hp.rope_base_local : hp.rope_base;
  rp.freq_scale = swa ? 1.f : hp.rope_freq_scale;
  rp.freq_factors = swa ? nullptr : model_.rope_freq_factors();
  cpu::rope(q, n, hp.n_head, qd, pos, rp);
  cpu::rope(kc, n, hp.n_head_kv, kvd, pos, rp);

  cpu::AttentionParams ap;
  ap.n_head = hp.n_head;
  ap.n_head_kv = hp.n_head_kv;
  ap.head_dim = hp.head_dim;
  ap.scale = hp.attn_scale;
  ap.window = swa ? hp.sliding_window : 0;
  const int64_t n_kv = pos[n - 1] + 1;
  cpu::attention(q, pos, n, cache_.k[static_cast<size_t>(il)].data(), cache_.v[static_cast<size_t>(il)].data(), n_kv,
                 nullptr, ap, s_.attn.data());
  float* u = s_.u.data();
  cpu::matmul(L.wo, s_.attn.data(), n, u);
  if (L.post_attn_norm) cpu::rmsnorm(u, L.post_attn_norm, u, n, d, hp.norm_eps);
  cpu::add_inplace(x, u, n * d);

  // MLP branch: x += Wdown (act(Wgate Norm(x)) * Wup Norm(x)).
  cpu::rmsnorm(x, L.ffn_norm, xn, n, d, hp.norm_eps);
  cpu::matmul(L.w_gate, xn, n, s_.gate.data());
  cpu::matmul(L.w_up, xn, n, s_.up.data());
  if (hp.act == Activation::GeluTanh) {
    cpu::gelu_tanh_mul(s_.gate.data(), s_.up.data(), n * hp.n_ff);
  } else {
    cpu::silu_mul(s_.gate.data(), s_.up.data(), n * hp.n_ff);
  }
  cpu::matmul(L.w_down, s_.gate.data(), n, u);
  if (L.post_ffn_norm) cpu::rmsnorm(u, L.post_ffn_norm, u, n, d, hp.norm_eps);
  cpu::add_inplace(x, u, n * d);
}

void Engine::logits(const float* x, int64_t n, float* out) {
  const HParams& hp = model_.hp();
  std::vector<float> xn(static_cast<size_t>(n * hp.n_embd));
  cpu::rmsnorm(x, model_.output_norm(), xn.data(), n, hp.n_embd, hp.norm_eps);
  cpu::matmul(model_.output(), xn.data(), n, out);
}

std::vector<float> Engine::prefill(std::span<const int32_t> tokens, ForwardStats* stats, const Progress& progress,
                                   std::vector<float>* logits_all) {
  const HParams& hp = model_.hp();
  const auto n = static_cast<int64_t>(tokens.size());
  if (n == 0) fail("nothing to process: no tokens");
  if (n_past_ + n > cache_.n_ctx) {
    fail("{} tokens do not fit the context: {} already used of {}", n, n_past_, cache_.n_ctx);
  }
  const auto t0 = Clock::now();
  s_.reserve(hp, n);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  std::iota(pos.begin(), pos.end(), static_cast<int32_t>(n_past_));

  // Hidden states of every token, [n x n_embd].
  std::vector<float> x(static_cast<size_t>(n * hp.n_embd));
  cpu::get_rows(model_.tok_embd(), tokens.data(), n, x.data());
  if (hp.embed_scale != 1.f) cpu::scale_inplace(x.data(), hp.embed_scale, n * hp.n_embd);

  if (stats) stats->layer_ms.assign(static_cast<size_t>(hp.n_layer), 0.0);
  for (int il = 0; il < hp.n_layer; ++il) {
    const auto tl = Clock::now();
    forward_layer(il, x.data(), pos.data(), n);
    if (stats) stats->layer_ms[static_cast<size_t>(il)] = ms_since(tl);
    if (progress) progress(il + 1, hp.n_layer);
  }
  n_past_ += n;

  const auto tlog = Clock::now();
  std::vector<float> last(static_cast<size_t>(hp.n_vocab));
  if (logits_all) {
    logits_all->resize(static_cast<size_t>(n * hp.n_vocab));
    logits(x.data(), n, logits_all->data());
    std::copy_n(logits_all->data() + (n - 1) * hp.n_vocab, hp.n_vocab, last.data());
  } else {
    logits(x.data() + (n - 1) * hp.n_embd, 1, last.data());
  }
  if (stats) {
    stats->logits_ms = ms_since(tlog);
    stats->n_tokens = n;
    stats->total_ms = ms_since(t0);
  }
  return last;
}

}  // namespace dashlm
