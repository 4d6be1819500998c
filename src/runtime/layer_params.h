// The per-layer RoPE and attention parameters of a model, filled into a backend's own parameter
// structs (cpu::RopeParams and cuda::RopeParams share these field names, as do the
// AttentionParams): the rule lives here once, whichever backend runs the layer.
#pragma once
#include "model/hparams.h"

namespace dashlm {

// freq_factors: the backend's copy of the model's per-pair frequency divisors, or null.
template <typename Rope>
Rope layer_rope(const HParams& hp, int il, const float* freq_factors) {
  const bool swa = hp.layer_is_swa(il);
  Rope rp;
  rp.head_dim = hp.head_dim;
  rp.n_rot = hp.n_rot;
  rp.neox = hp.rope_neox;
  rp.freq_base = swa ? hp.rope_base_local : hp.rope_base;
  rp.freq_scale = swa ? 1.f : hp.rope_freq_scale;
  rp.freq_factors = swa ? nullptr : freq_factors;
  return rp;
}

template <typename Attention>
Attention layer_attention(const HParams& hp, int il) {
  Attention ap;
  ap.n_head = hp.n_head;
  ap.n_head_kv = hp.n_head_kv;
  ap.head_dim = hp.head_dim;
  ap.scale = hp.attn_scale;
  ap.window = hp.layer_window(il);
  return ap;
}

}  // namespace dashlm
