#!/usr/bin/env python3
"""Writes a llama2.c checkpoint with random weights (normal, std 0.02; norms 1) of a given shape,
for GPU runs that need a model larger than the real ones that travel (e.g. dashlm serve
--backend cuda on a 32k-token chat, with the tokenizer of stories260K, tok512.bin):

    python3 bench/cuda/random_llama2c.py OUT.bin [--dim 2048 --hidden 8192 --layers 16 --heads 32
        --kv-heads 8 --vocab 512 --seq 65536 --seed 0]

The default is the Llama 3.2 1B shape with a 512-token vocabulary.
"""
import argparse
import struct
import sys

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=8192)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seq", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    if a.dim % a.heads or a.heads % a.kv_heads:
        sys.exit("error: dim must be a multiple of heads, heads a multiple of kv-heads")
    hs = a.dim // a.heads
    kv = hs * a.kv_heads
    L, d, h = a.layers, a.dim, a.hidden
    rng = np.random.default_rng(a.seed)
    chunk = 1 << 24

    with open(a.out, "wb") as f:
        f.write(struct.pack("<7i", d, h, L, a.heads, a.kv_heads, a.vocab, a.seq))  # vocab > 0: shared classifier

        def rand(n):
            while n > 0:
                m = min(n, chunk)
                f.write((rng.standard_normal(m, dtype=np.float32) * np.float32(0.02)).tobytes())
                n -= m

        def ones(n):
            f.write(np.ones(n, dtype=np.float32).tobytes())

        rand(a.vocab * d)          # token embeddings
        ones(L * d)                # attention norms
        rand(L * d * d)            # wq
        rand(L * kv * d)           # wk
        rand(L * kv * d)           # wv
        rand(L * d * d)            # wo
        ones(L * d)                # ffn norms
        rand(L * h * d)            # w1 (gate)
        rand(L * d * h)            # w2 (down)
        rand(L * h * d)            # w3 (up)
        ones(d)                    # final norm
        f.write(np.zeros(2 * a.seq * hs // 2, dtype=np.float32).tobytes())  # legacy RoPE tables (unused)
    params = a.vocab * d + L * (2 * d * d + 2 * kv * d + 3 * h * d)
    print(f"{a.out}: {params / 1e9:.2f}B parameters, dim {d}, {L} layers, {a.heads}/{a.kv_heads} heads, ff {h}, "
          f"vocab {a.vocab}, context {a.seq}", file=sys.stderr)


if __name__ == "__main__":
    main()
