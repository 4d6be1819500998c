"""A minimal GGUF v3 writer for crafting small (also deliberately wrong) model files in tests."""
import struct

U32, I32, F32, BOOL, STRING, ARRAY = 4, 5, 6, 7, 8, 9
ALIGN = 32


def _str(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _value(t, v):
    if t == U32:
        return struct.pack("<I", v)
    if t == I32:
        return struct.pack("<i", v)
    if t == F32:
        return struct.pack("<f", v)
    if t == BOOL:
        return struct.pack("<?", v)
    if t == STRING:
        return _str(v)
    if t == ARRAY:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(_value(et, x) for x in items)
    raise ValueError(t)


def write(path, kv, tensors):
    """kv: [(key, type, value)], arrays as (ARRAY, (elem_type, [items])).
    tensors: [(name, ne, ggml_type, data_bytes)]."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for k, t, v in kv:
        out += _str(k) + struct.pack("<I", t) + _value(t, v)
    offset = 0
    offsets = []
    for name, ne, typ, data in tensors:
        offsets.append(offset)
        out += _str(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, offset)
        offset += (len(data) + ALIGN - 1) // ALIGN * ALIGN
    out += b"\0" * ((ALIGN - len(out) % ALIGN) % ALIGN)
    for (name, ne, typ, data), off in zip(tensors, offsets):
        out += data + b"\0" * ((ALIGN - len(data) % ALIGN) % ALIGN)
    with open(path, "wb") as f:
        f.write(out)


def tiny_llama(path, arch="llama", q_rows=None, kv_set=None, layers=2, poison=None):
    """A random-free tiny llama-shaped model (all weights zero): 2 layers, 16 dims, 4 tokens.
    q_rows changes the query projection's output size to make a shape error; kv_set
    {key: (type, value)} replaces or adds metadata; layers is how many layers' tensors the file
    holds (it declares 2); poison (tensor name, float) fills one tensor with that value."""
    d, ff, nv = 16, 32, 4
    import struct as _s
    f32 = lambda n: b"\0" * (4 * n)
    kv = [("general.architecture", STRING, arch), (f"{arch}.block_count", U32, 2),
          (f"{arch}.embedding_length", U32, d), (f"{arch}.feed_forward_length", U32, ff),
          (f"{arch}.attention.head_count", U32, 2), (f"{arch}.context_length", U32, 64),
          ("tokenizer.ggml.model", STRING, "llama"),
          ("tokenizer.ggml.tokens", ARRAY, (STRING, ["<unk>", "<s>", "</s>", "\u2581a"])),
          ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, 0.0, 0.0, -1.0])),
          ("tokenizer.ggml.token_type", ARRAY, (I32, [2, 3, 3, 1])),
          ("tokenizer.ggml.bos_token_id", U32, 1), ("tokenizer.ggml.eos_token_id", U32, 2)]
    for key, (typ, value) in (kv_set or {}).items():
        kv = [e for e in kv if e[0] != key] + [(key, typ, value)]
    t = [("token_embd.weight", [d, nv], 0, f32(d * nv)), ("output_norm.weight", [d], 0, f32(d))]
    for i in range(layers):
        p = f"blk.{i}."
        t += [(p + "attn_norm.weight", [d], 0, f32(d)), (p + "ffn_norm.weight", [d], 0, f32(d)),
              (p + "attn_q.weight", [d, q_rows or d], 0, f32(d * (q_rows or d))),
              (p + "attn_k.weight", [d, d], 0, f32(d * d)), (p + "attn_v.weight", [d, d], 0, f32(d * d)),
              (p + "attn_output.weight", [d, d], 0, f32(d * d)),
              (p + "ffn_gate.weight", [d, ff], 0, f32(d * ff)), (p + "ffn_up.weight", [d, ff], 0, f32(d * ff)),
              (p + "ffn_down.weight", [ff, d], 0, f32(d * ff))]
    if poison:
        name, value = poison
        t = [(n, ne, typ, _s.pack("<f", value) * (len(data) // 4) if n == name else data) for n, ne, typ, data in t]
    write(path, kv, t)
