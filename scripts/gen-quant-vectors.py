#!/usr/bin/env python3
"""Generates tests/data/quant_vectors.bin: dequantization test vectors for tests/test_quants.cpp.

The expected float32 values come from an implementation independent of dashlm: the official
`gguf` Python package (the one shipped with llama.cpp), `gguf.quants.dequantize`. Inputs are
  * for types gguf can quantize (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): random rows of several
    blocks quantized by `gguf.quants.quantize`, plus random but valid block bytes;
  * for the K types (gguf has no quantizer for them): random block bytes whose fp16 scale fields
    are overwritten with sane finite values (including a few zeros and fp16 subnormals).
gguf has no dequantizer for Q8_K nor for the plain integer types and F64; for those the expected
values are computed here with numpy (Q8_K: float32(d) * float32(q); I8/I16/I32/F64: astype).
Q8_1 and I64 are not in the file: dashlm refuses to dequantize them, which the test checks.

Generated with gguf 0.19.0 and numpy 2.4.6 (see GGUF_VERSION below; the script warns on others).
Deterministic: a fixed numpy seed. Rerun with
    pip install gguf numpy && python3 scripts/gen-quant-vectors.py

File format (all integers little-endian u32, floats little-endian IEEE float32):
    magic   4 bytes  b"DLQV"
    version u32      1
    count   u32      number of records
    then `count` records, each:
      type        u32   GGUF type number (ggml_type)
      n_elements  u32   elements in the row (a multiple of the type's block size)
      n_bytes     u32   bytes of raw row data
      label_len   u32   length of the label
      label       label_len bytes of UTF-8, describing the record (for test messages)
      data        n_bytes bytes, the row exactly as stored in a GGUF file
      expected    n_elements float32, the reference dequantization
"""

from __future__ import annotations

import importlib.metadata
import struct
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf import quants

GGUF_VERSION = "0.19.0"
SEED = 20240611
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "quant_vectors.bin"

rng = np.random.default_rng(SEED)
records: list[tuple[int, int, bytes, str, np.ndarray]] = []


def add(qtype: int, data: np.ndarray, expected: np.ndarray, label: str) -> None:
    raw = np.ascontiguousarray(data).view(np.uint8).tobytes()
    exp = np.ascontiguousarray(expected, dtype=np.float32).reshape(-1)
    block, size = GGML_QUANT_SIZES[T(qtype)]
    assert exp.size % block == 0 and len(raw) == exp.size // block * size, label
    records.append((int(qtype), int(exp.size), raw, label, exp))


def sane_halves(n: int) -> np.ndarray:
    """fp16 scale values as a real quantizer would write them: mostly small positive numbers,
    some negative, a few zeros and fp16 subnormals. Returned as raw uint16 bits."""
    v = (rng.uniform(1e-4, 0.05, n) * rng.choice([1.0, -1.0], n, p=[0.8, 0.2])).astype(np.float16)
    special = rng.random(n)
    v[special < 0.05] = np.float16(0.0)
    sub = (special >= 0.05) & (special < 0.12)
    v[sub] = (rng.integers(1, 1024, int(sub.sum())).astype(np.uint16)).view(np.float16)
    return v.view(np.uint16)


def random_blocks(qtype: int, n_blocks: int, half_offsets: list[int]) -> np.ndarray:
    """Random bytes for n_blocks blocks, with the fp16 fields at half_offsets made sane."""
    _, size = GGML_QUANT_SIZES[T(qtype)]
    blocks = rng.integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for off in half_offsets:
        blocks[:, off : off + 2] = sane_halves(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(-1)


def test_rows(n: int) -> list[tuple[str, np.ndarray]]:
    """Rows of n float32 values from a few distributions, with awkward blocks mixed in."""
    normal = rng.standard_normal(n).astype(np.float32)
    outliers = (rng.standard_normal(n) * 0.02).astype(np.float32)
    outliers[rng.integers(0, n, max(1, n // 40))] *= 300.0
    mixed = rng.uniform(-3.0, 1.0, n).astype(np.float32)
    mixed[:32] = 0.0  # an all-zero block (scale 0)
    if n >= 64:
        mixed[32:64] = 0.75  # a constant block
    return [("normal", normal), ("outliers", outliers), ("uniform/zero/constant", mixed)]


# ---- plain float types --------------------------------------------------------------------

specials32 = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -2.5, 65504.0, 65519.99, 65520.0, 1e-8, -1e-40,
     3.4028235e38, 6.1e-5, 5.96e-8, 2.98e-8, 1.0009766, 1.0014648],
    dtype=np.float32,
)
x = np.concatenate([specials32, (rng.standard_normal(46) * 10).astype(np.float32)])
add(T.F32, x, quants.dequantize(x.view(np.uint8), T.F32), "F32 random and special values")

# F16 from float32 data through gguf's quantizer (numpy's float32 -> float16 rounding).
x = np.concatenate([specials32, (rng.standard_normal(203) * 4).astype(np.float32)])
with np.errstate(over="ignore"):
    h = quants.quantize(x, T.F16)  # 65520 and 3.4e38 overflow to inf, as they should
add(T.F16, h, quants.dequantize(h.view(np.uint8), T.F16), "F16 quantized from random and special values")

# F16 bit patterns spread over the whole 16-bit space (every 61st pattern) plus the boundary
# patterns (smallest and largest subnormal, smallest normal, largest finite, infinities, quiet
# NaNs), with signalling NaNs made quiet: whether a float16 -> float32 conversion quiets a
# signalling NaN depends on the hardware numpy uses, so the reference is ambiguous there.
boundaries = [0x0001, 0x0002, 0x03FF, 0x8001, 0x83FF, 0x0400, 0x7BFF, 0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7E55]
bits = np.concatenate([np.arange(0, 65536, 61, dtype=np.uint32), np.array(boundaries, dtype=np.uint32)])
bits = bits.astype(np.uint16)
snan = ((bits & 0x7C00) == 0x7C00) & ((bits & 0x03FF) != 0) & ((bits & 0x0200) == 0)
bits[snan] |= 0x0200
add(T.F16, bits, quants.dequantize(bits.view(np.uint8), T.F16), "F16 bit patterns across the range")

# BF16 through gguf's quantizer (ggml's rounding: nearest even, NaN forced quiet), including
# values exactly halfway between two bf16 numbers.
ties = (np.arange(40, dtype=np.uint32) * np.uint32(0x01234567) & np.uint32(0x7F7F0000)) | np.uint32(0x8000)
ties[::2] |= np.uint32(0x10000)  # odd bf16 mantissa: the tie rounds up
x = np.concatenate([specials32, ties.view(np.float32), (rng.standard_normal(198) * 100).astype(np.float32)])
b = quants.quantize(x, T.BF16)
add(T.BF16, b, quants.dequantize(b, T.BF16), "BF16 quantized from random, special and halfway values")
b = rng.integers(0, 65536, 128, dtype=np.uint32).astype(np.uint16)
add(T.BF16, b, quants.dequantize(b.view(np.uint8), T.BF16), "BF16 random bit patterns")

# ---- 32-element block types: quantized by gguf, and random bytes --------------------------

# Offsets of the fp16 fields in each block struct.
HALVES = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}

for qt in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
    for n_blocks, (what, row) in zip((7, 13, 5), test_rows(13 * 32)):
        row = row[: n_blocks * 32]
        q = quants.quantize(row, qt)
        add(qt, q, quants.dequantize(q, qt), f"{qt.name} quantized by gguf from {what} data, {n_blocks} blocks")
    q = random_blocks(qt, 9, HALVES[qt])
    add(qt, q, quants.dequantize(q, qt), f"{qt.name} random block bytes, 9 blocks")

# ---- K types: random but valid bytes ---------------------------------------------------------

for qt in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K):
    for n_blocks in (1, 3, 2):
        q = random_blocks(qt, n_blocks, HALVES[qt])
        add(qt, q, quants.dequantize(q, qt), f"{qt.name} random block bytes, {n_blocks} blocks")

# Q8_K {float d; int8 qs[256]; int16 bsums[16]}: gguf cannot dequantize it; reference by numpy.
n_blocks = 3
blk = rng.integers(0, 256, (n_blocks, 292), dtype=np.uint8)
d = (rng.uniform(1e-4, 0.05, n_blocks) * np.array([1, -1, 1])).astype(np.float32)
blk[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
qs = blk[:, 4:260].copy().view(np.int8).astype(np.int16)
blk[:, 260:292] = qs.reshape(n_blocks, 16, 16).sum(axis=-1).astype("<i2").view(np.uint8).reshape(n_blocks, 32)
add(T.Q8_K, blk, d.reshape(-1, 1) * qs.astype(np.float32), "Q8_K random blocks (numpy reference)")

# ---- integer types and F64 (numpy reference: astype(float32)) --------------------------------

v = rng.integers(-128, 128, 37, dtype=np.int8)
add(T.I8, v, v.astype(np.float32), "I8 (numpy reference)")
v = np.concatenate([np.array([-32768, 32767, 0], dtype=np.int16), rng.integers(-32768, 32768, 34, dtype=np.int16)])
add(T.I16, v, v.astype(np.float32), "I16 (numpy reference)")
v = np.concatenate([np.array([-(2**31), 2**31 - 1, 16777217, -16777219], dtype=np.int32),
                    rng.integers(-(2**31), 2**31, 33, dtype=np.int32)])
add(T.I32, v, v.astype(np.float32), "I32 (numpy reference, rounding large values)")
v = np.concatenate([np.array([0.0, -0.0, 1e300, -1e300, 1e-300, np.inf, -np.inf, 1.0000000596046448], dtype=np.float64),
                    rng.standard_normal(29)])
with np.errstate(over="ignore"):
    add(T.F64, v, v.astype(np.float32), "F64 (numpy reference, rounding and overflow)")

# ---- write ------------------------------------------------------------------------------------

version = importlib.metadata.version("gguf")
if version != GGUF_VERSION:
    print(f"warning: generated with gguf {version}, this script was last run with {GGUF_VERSION}", file=sys.stderr)

out = bytearray(b"DLQV" + struct.pack("<II", 1, len(records)))
for qtype, n, raw, label, exp in records:
    lab = label.encode()
    out += struct.pack("<IIII", qtype, n, len(raw), len(lab)) + lab + raw + exp.astype("<f4").tobytes()
OUT.parent.mkdir(parents=True, exist_ok=True)
OUT.write_bytes(bytes(out))
print(f"wrote {len(records)} records, {len(out)} bytes, to {OUT.relative_to(OUT.parent.parent.parent)}")
