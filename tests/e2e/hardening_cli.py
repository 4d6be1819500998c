"""Issue 17's remaining classes through the real CLI: hyperparameters out of range, layers declared
but not present, non-finite weights, contexts that cannot fit in memory, seeds and integers out of
range, --backend cuda without a GPU, and output files checked before any work and never left
half-written."""
import math
import os
import subprocess
import tempfile

from common import args, expect_error, load_json, run
import gguf_min

dashlm, shared, _ = args()
st = os.path.join(shared, "models", "stories260K")
model, tok = os.path.join(st, "stories260K.bin"), os.path.join(st, "tok512.bin")
ok = ["run", "-m", model, "--tokenizer", tok, "-p", "hi", "-n", "2"]

with tempfile.TemporaryDirectory() as d:
    def tiny(name, **kw):
        p = os.path.join(d, name)
        gguf_min.tiny_llama(p, **kw)
        return p

    # 1. Hyperparameters: every bad value named with its key; structure checked.
    F32, U32 = gguf_min.F32, gguf_min.U32
    for key, value, shown in [("llama.rope.freq_base", math.nan, "nan"), ("llama.rope.freq_base", 0.0, "0"),
                              ("llama.rope.freq_base", -1.0, "-1"), ("llama.attention.layer_norm_rms_epsilon", math.inf, "inf"),
                              ("llama.attention.layer_norm_rms_epsilon", 0.0, "0")]:
        m = tiny("hp.gguf", kv_set={key: (F32, value)})
        expect_error(dashlm, "run", "-m", m, "-p", "a", contains=f"{key} = {shown} must be a positive finite number")
    m = tiny("heads.gguf", kv_set={"llama.attention.head_count": (U32, 3)})
    expect_error(dashlm, "run", "-m", m, "-p", "a", contains="embedding_length 16 is not a multiple of llama.attention.head_count 3")
    m = tiny("ctx.gguf", kv_set={"llama.context_length": (U32, 0)})
    expect_error(dashlm, "run", "-m", m, "-p", "a", contains="llama.context_length = 0 is out of range")
    m = tiny("fewer.gguf", kv_set={"llama.block_count": (U32, 1)})
    expect_error(dashlm, "run", "-m", m, "-p", "a", contains="declares 1 layers, but the file holds tensors of 2 layers")
    m = tiny("more.gguf", layers=3)
    expect_error(dashlm, "run", "-m", m, "-p", "a", contains="declares 2 layers, but the file holds tensors of 3 layers")
    # A safetensors file whose header length is wrong is called that, not "not a llama2.c checkpoint".
    stp = os.path.join(d, "st", "model.safetensors")
    os.makedirs(os.path.dirname(stp))
    with open(stp, "wb") as f:
        f.write((10**9).to_bytes(8, "little") + b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' + b"\0" * 4)
    with open(os.path.join(d, "st", "config.json"), "w") as f:
        f.write('{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16, '
                '"num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10}')
    expect_error(dashlm, "run", "-m", stp, "-p", "a", contains="bad safetensors header")

    # 2. Non-finite weights: an error naming the layer, not "eos" or dots.
    m = tiny("nan.gguf", poison=("blk.1.ffn_down.weight", math.nan))
    expect_error(dashlm, "run", "-m", m, "-p", "a a a", "-n", "2", contains="stopped being finite at layer 1")
    m = tiny("inf.gguf", poison=("blk.0.attn_v.weight", math.inf))
    expect_error(dashlm, "run", "-m", m, "-p", "a a a", "-n", "2", "--halting", "topk", contains="stopped being finite at layer 0")

    # 3. A context that cannot fit in memory is refused before allocating, with both numbers.
    m = tiny("longctx.gguf", kv_set={"llama.context_length": (U32, 2**31 - 1)})
    err = expect_error(dashlm, "run", "-m", m, "-p", "a", "-n", str(2**31 - 10), contains="of memory is available")
    assert "bytes" in err and "need" in err, err
    expect_error(dashlm, *ok[:-2], "--ctx", str(2**31), contains="--ctx")

    # 4. Seeds and integers out of range: refused, not wrapped.
    for bad in ["-1", str(2**64), str(2**64 + 5), "1e3", "0x10"]:
        expect_error(dashlm, *ok, "--seed", bad, contains="--seed: must be a whole number from 0 to 18446744073709551615")
        expect_error(dashlm, "bench", "-m", model, "--tokenizer", tok, "--seed", bad, contains="--seed")
        expect_error(dashlm, "eval", "-m", model, "--tokenizer", tok, "--seed", bad, contains="--seed")
        expect_error(dashlm, "calibrate", "-m", model, "--tokenizer", tok, "--budget", "1", "--seed", bad, contains="--seed")
    run(dashlm, *ok, "--seed", str(2**64 - 1), "--temp", "0.8")  # the largest seed is fine
    for flag in ["-n", "--top-k", "--threads"]:
        expect_error(dashlm, *ok, flag, str(2**31), contains=f"must be a whole number from -2147483648 to 2147483647, got '{2**31}'")

    # 5. --backend cuda on a machine (or build) without a GPU says so.
    has_gpu = os.path.exists("/dev/nvidia0")
    if not has_gpu:
        expect_error(dashlm, *ok, "--backend", "cuda", contains="no CUDA device")

    # 6. Output paths: checked before the model is even opened (a missing model is not reported),
    # and files written whole (no temporary file left beside them).
    missing = os.path.join(d, "no-such-model.gguf")
    nodir = os.path.join(d, "no", "such", "out")
    for flag, name in [("--json", "x.json"), ("--save-logits", "x.bin"), ("--halting-map", "x.png"), ("--dump-deltas", "x.npy")]:
        expect_error(dashlm, "run", "-m", missing, "-p", "a", "--halting", "topk", flag, os.path.join(nodir, name),
                     contains=f"{flag}: cannot write")
        expect_error(dashlm, "run", "-m", missing, "-p", "a", "--halting", "topk", flag, d, contains="it is a folder")
    expect_error(dashlm, "run", "-m", missing, "-p", "a", "--halting", "topk", "--halting-map", os.path.join(d, "m.jpg"),
                 contains="use a .png or .svg file name")
    expect_error(dashlm, "run", "-m", missing, "-p", "a", "--dump-deltas", os.path.join(d, "m.txt"), contains=".npy or .csv")
    expect_error(dashlm, "calibrate", "-m", missing, "--budget", "1", "-o", os.path.join(nodir, "c.json"), contains="-o: cannot write")
    expect_error(dashlm, "eval", "-m", missing, "--json", os.path.join(nodir, "e.json"), contains="--json: cannot write")
    expect_error(dashlm, "eval", "-m", missing, "--plot", os.path.join(nodir, "e.png"), contains="--plot: cannot write")
    expect_error(dashlm, "eval", "-m", missing, "--resume", os.path.join(nodir, "r.jsonl"), contains="--resume: cannot write")
    out = os.path.join(d, "out")
    os.makedirs(out)
    run(dashlm, *ok, "--halting", "topk", "--json", os.path.join(out, "r.json"), "--halting-map", os.path.join(out, "m.svg"),
        "--dump-deltas", os.path.join(out, "d.csv"), "--save-logits", os.path.join(out, "l.bin"))
    assert sorted(os.listdir(out)) == ["d.csv", "l.bin", "m.svg", "r.json"], os.listdir(out)
    assert load_json(os.path.join(out, "r.json"))["n_prompt_tokens"] > 0
print("hardening: all rejected cleanly")
