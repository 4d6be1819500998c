#!/usr/bin/env python3
"""The PyTorch peer of dashlm_cuda_bench, on the same GPU: Hugging Face transformers
LlamaForCausalLM / Qwen2ForCausalLM built from a config (all layers, random bf16 weights,
attn_implementation="sdpa"), prefill time at the benchmark's lengths as far as memory allows;
the paper's approach emulated in drop mode (the first 0.4 L layers on every token, the top third
by the attention-output norm at the last of them kept, the remaining layers with plain causal
SDPA on the compacted sequence, original positions kept for RoPE); and
torch.nn.functional.scaled_dot_product_attention alone (causal, hd 128, 32 heads) in TFLOP/s.

    python3 bench/cuda/peer_torch.py [--lengths 4096,8192,...] [--models llama8b,qwen7b] [--reps 3] [--json FILE]

With --decode-at T1,T2,... it times decoding instead: a static KV cache (transformers' StaticCache)
and the step compiled with torch.compile(mode="reduce-overhead") (CUDA graphs), ms per token after
a T-token prompt, and the device-to-device copy rate of the same run.
"""
import argparse
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {
    "llama8b": dict(cls="LlamaForCausalLM", cfg="LlamaConfig", vocab_size=128256, hidden_size=4096,
                    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                    intermediate_size=14336, rope_theta=500000.0, rms_norm_eps=1e-5, bias=False),
    "qwen7b": dict(cls="Qwen2ForCausalLM", cfg="Qwen2Config", vocab_size=152064, hidden_size=3584,
                   num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, head_dim=128,
                   intermediate_size=18944, rope_theta=1000000.0, rms_norm_eps=1e-6, bias=True),
}


def timed(fn, reps, warm=True):
    if warm:
        fn()
    ts = []
    for _ in range(reps):
        torch.cuda.synchronize()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def layer_flops(s, n_q, keys, n_kv_only=0):
    d, hd = s["hidden_size"], s["head_dim"]
    qd, kvd, ff = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd, s["intermediate_size"]
    gemm = 2.0 * n_q * (d * qd + 2 * d * kvd + qd * d + 3 * d * ff)
    return gemm + 4.0 * hd * s["num_attention_heads"] * keys + 2.0 * n_kv_only * 2 * d * kvd


def build(name):
    import transformers
    s = SHAPES[name]
    cfg_cls = getattr(transformers, s["cfg"])
    kw = dict(vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], num_hidden_layers=s["num_hidden_layers"],
              num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
              intermediate_size=s["intermediate_size"], rope_theta=s["rope_theta"], rms_norm_eps=s["rms_norm_eps"],
              max_position_embeddings=131072 + 8, tie_word_embeddings=False)
    if name == "llama8b":
        kw["head_dim"] = s["head_dim"]
    cfg = cfg_cls(**kw)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    cls = getattr(transformers, s["cls"])
    with torch.device("cuda"):
        try:
            model = cls._from_config(cfg, attn_implementation="sdpa", dtype=torch.bfloat16)
        except TypeError:  # transformers 4.x spells it torch_dtype
            model = cls._from_config(cfg, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
    model.to(torch.bfloat16)
    model.eval()
    # Random weights like dashlm's benchmark: std 0.02, norms 1 (from_config already does this).
    return model, s


def full_prefill(model, ids):
    try:
        return model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
    except TypeError:  # older transformers: num_logits_to_keep
        return model(input_ids=ids, use_cache=False, num_logits_to_keep=1).logits


def dash_prefill(model, ids, halt_frac=0.4, keep=1.0 / 3.0):
    """Drop-mode DASH emulated with the model's own modules: layers [0, l_s] on every token, rank
    by ||attention output|| at layer l_s, keep the top third (and the last token), run the remaining
    layers on the compacted sequence with causal SDPA and the tokens' original positions."""
    inner = model.model
    layers = inner.layers
    L = len(layers)
    l_s = max(1, int(round(halt_frac * L))) - 1  # the layer after which tokens halt (0-based)
    T = ids.shape[1]
    h = inner.embed_tokens(ids)
    pos = torch.arange(T, device=ids.device).unsqueeze(0)
    captured = {}

    def hook(_m, _inp, out):
        captured["u"] = out[0] if isinstance(out, tuple) else out

    for i in range(l_s + 1):
        pe = inner.rotary_emb(h, pos)
        if i == l_s:
            handle = layers[i].self_attn.register_forward_hook(hook)
        out = layers[i](h, position_embeddings=pe, position_ids=pos, attention_mask=None)
        h = out[0] if isinstance(out, tuple) else out
        if i == l_s:
            handle.remove()
    delta = captured["u"].float().norm(dim=-1)[0]  # T
    k = max(1, math.ceil(keep * (T - 1)))
    idx = torch.topk(delta[:-1], k).indices
    idx = torch.cat([idx, torch.tensor([T - 1], device=ids.device)]).sort().values
    h = h[:, idx]
    pos = idx.unsqueeze(0)
    # Causal by original position equals causal by index on the ascending compacted sequence.
    for i in range(l_s + 1, L):
        pe = inner.rotary_emb(h, pos)
        out = layers[i](h, position_embeddings=pe, position_ids=pos, attention_mask=None)
        h = out[0] if isinstance(out, tuple) else out
    h = inner.norm(h[:, -1:])
    return model.lm_head(h)


def make_static_cache(model, max_len):
    """transformers' StaticCache for one sequence of max_len tokens (its constructor's arguments
    changed across versions: pass the ones this version takes)."""
    import inspect
    from transformers import StaticCache
    params = inspect.signature(StaticCache.__init__).parameters
    kw = {"config": model.config, "max_cache_len": max_len}
    for k, v in (("max_batch_size", 1), ("batch_size", 1), ("device", "cuda"), ("dtype", torch.bfloat16)):
        if k in params:
            kw[k] = v
    return StaticCache(**kw)


def decode_peer(model, s, T, steps, mode):
    """ms per token decoding after a T-token prompt with a static KV cache of T + steps + 8 slots;
    the step compiled with torch.compile(mode) ('reduce-overhead': CUDA graphs), or eager."""
    torch.manual_seed(T)
    ids = torch.randint(0, s["vocab_size"], (1, T), device="cuda")
    cache = make_static_cache(model, T + steps + 8)
    with torch.no_grad():
        try:
            model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(T, device="cuda"),
                  logits_to_keep=1)
        except TypeError:
            model(input_ids=ids, past_key_values=cache, use_cache=True, cache_position=torch.arange(T, device="cuda"))

    def step(tok, pos):
        return model(input_ids=tok, past_key_values=cache, use_cache=True, cache_position=pos,
                     position_ids=pos.unsqueeze(0)).logits

    fn = torch.compile(step, mode=mode) if mode != "eager" else step
    tok = torch.randint(0, s["vocab_size"], (1, 1), device="cuda")
    with torch.no_grad():
        for i in range(3):  # compilation and graph recording
            fn(tok, torch.tensor([T + i], device="cuda"))
        torch.cuda.synchronize()
        poss = [torch.tensor([T + 3 + i], device="cuda") for i in range(steps)]
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(steps):
            fn(tok, poss[i])
        b.record()
        b.synchronize()
    del cache
    torch.cuda.empty_cache()
    return a.elapsed_time(b) / steps


def copy_rate_gbs():
    x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = timed(lambda: y.copy_(x), 10)
    del x, y
    return 2.0 * (2 << 30) / (ms * 1e-3) / 1e9


def decode_main(a):
    import transformers
    lengths = [int(x) for x in a.decode_at.split(",")]
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
           "copy_gbs": copy_rate_gbs(), "decode": []}
    print(f"# PyTorch decode peer on {res['device']} (torch {torch.__version__}, transformers {transformers.__version__}); "
          f"copy rate {res['copy_gbs']:.0f} GB/s\n")
    print("| model | after T tokens | mode | ms/token |\n|---|---|---|---|")
    for name in a.models.split(","):
        model, s = build(name)
        for T in lengths:
            for mode in a.decode_modes.split(","):
                row = {"model": name, "T": T, "mode": mode}
                try:
                    row["ms"] = decode_peer(model, s, T, a.decode_steps, mode)
                    print(f"| {name} | {T} | {mode} | {row['ms']:.3f} |")
                except Exception as e:  # report and go on
                    row["error"] = repr(e)[:500]
                    print(f"| {name} | {T} | {mode} | error: {row['error'][:200]} |")
                    torch.cuda.empty_cache()
                sys.stdout.flush()
                res["decode"].append(row)
        del model
        torch.cuda.empty_cache()
    with open(a.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"\nJSON written to {a.json}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    ap.add_argument("--models", default="llama8b,qwen7b")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", default="torch_peer.json")
    ap.add_argument("--decode-at", default="", help="decode instead of prefill: ms/token after each of these prompt lengths")
    ap.add_argument("--decode-steps", type=int, default=32)
    ap.add_argument("--decode-modes", default="reduce-overhead", help="torch.compile modes, 'eager' for none")
    a = ap.parse_args()
    if a.decode_at:
        return decode_main(a)
    lengths = [int(x) for x in a.lengths.split(",")]
    import transformers
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
           "sdpa": [], "models": []}
    print(f"# PyTorch peer on {res['device']} (torch {torch.__version__}, transformers {transformers.__version__})\n")

    # SDPA alone.
    print("| SDPA causal (hd 128, 32 heads) | T | ms | TFLOP/s |\n|---|---|---|---|")
    for T in (8192, 16384, 32768):
        q = torch.randn(1, 32, T, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(1, 32, T, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(1, 32, T, 128, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), 5)
        tf = 4.0 * 128 * 32 * T * (T + 1) / 2 / (ms * 1e-3) / 1e12
        print(f"| causal | {T} | {ms:.3f} | {tf:.1f} |")
        res["sdpa"].append({"T": T, "ms": ms, "tflops": tf})
        del q, k, v
    print()

    for name in a.models.split(","):
        model, s = build(name)
        print(f"## {name} shape, transformers {s['cls']} with sdpa, random bf16 weights\n")
        print("| T | full ms | full TFLOP/s | DASH drop (emulated) ms | speedup |\n|---|---|---|---|---|")
        for T in lengths:
            torch.manual_seed(T)
            ids = torch.randint(0, s["vocab_size"], (1, T), device="cuda")
            reps = 1 if T >= 65536 else a.reps
            row = {"model": name, "T": T}
            try:
                with torch.no_grad():
                    full_ms = timed(lambda: full_prefill(model, ids), reps)
                fl = s["num_hidden_layers"] * layer_flops(s, T, T * (T + 1) / 2)
                row.update(full_ms=full_ms, full_tflops=fl / (full_ms * 1e-3) / 1e12)
                with torch.no_grad():
                    dash_ms = timed(lambda: dash_prefill(model, ids), reps)
                row.update(dash_drop_ms=dash_ms, dash_speedup=full_ms / dash_ms)
                print(f"| {T} | {full_ms:.1f} | {row['full_tflops']:.1f} | {dash_ms:.1f} | {full_ms / dash_ms:.2f}x |")
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = "out of memory"
                print(f"| {T} | out of memory | | | |")
                torch.cuda.empty_cache()
                res["models"].append(row)
                break
            except Exception as e:  # report and go on with the next model
                row["error"] = repr(e)
                print(f"| {T} | error: {e!r} | | | |")
                res["models"].append(row)
                break
            sys.stdout.flush()
            res["models"].append(row)
            torch.cuda.empty_cache()
        del model
        torch.cuda.empty_cache()
        print()
    with open(a.json, "w") as f:
        json.dump(res, f, indent=2)
    print(f"JSON written to {a.json}")


if __name__ == "__main__":
    main()
