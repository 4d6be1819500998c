"""No crash, no hang: the CLI over a corpus of crafted bad files and flags, each case under an
address-space limit (ulimit -v 4 GiB) and a time limit. Every case must end with exit code 1 or 2
(never a signal), in time, with exactly one line starting with 'error:' on stderr."""
import math
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

from common import args
import gguf_min

dashlm, shared, _ = args()
st = os.path.join(shared, "models", "stories260K")
model, tok = os.path.join(st, "stories260K.bin"), os.path.join(st, "tok512.bin")
MEM_LIMIT = 4 << 30
TIMEOUT = 60


def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))


failures = []
n_cases = 0


def case(name, *cli):
    global n_cases
    n_cases += 1
    t0 = time.time()
    try:
        p = subprocess.run([dashlm, *cli], capture_output=True, timeout=TIMEOUT, preexec_fn=limit_memory,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        failures.append(f"{name}: no answer within {TIMEOUT} s")
        print(f"HANG {name}")
        return
    err = p.stderr.decode(errors="replace")
    errors = [l for l in err.splitlines() if l.startswith("error:")]
    problem = None
    if p.returncode < 0:
        problem = f"killed by signal {-p.returncode}"
    elif p.returncode not in (1, 2):
        problem = f"exit code {p.returncode}"
    elif len(errors) != 1:
        problem = f"{len(errors)} 'error:' lines"
    if problem:
        failures.append(f"{name}: {problem}; stderr: {err.strip()[:400]!r}")
        print(f"FAIL {name}: {problem}")
    else:
        print(f"ok   {name} ({time.time() - t0:.2f} s): {errors[0][:140]}")


def write(path, data):
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


def safetensors(header, tail=b""):
    h = header.encode() if isinstance(header, str) else header
    return struct.pack("<Q", len(h)) + h + tail


with tempfile.TemporaryDirectory() as d:
    p = lambda name: os.path.join(d, name)
    F32, U32, STRING = gguf_min.F32, gguf_min.U32, gguf_min.STRING

    # --- GGUF files -----------------------------------------------------------------------
    gguf_min.tiny_llama(p("tiny.gguf"))
    tiny = open(p("tiny.gguf"), "rb").read()
    run_tiny = lambda m, *extra: ("run", "-m", m, "-p", "a a", "-n", "2", *extra)
    for cut in (0, 4, 8, 24, 40, 100, len(tiny) // 3, len(tiny) - 8):
        case(f"gguf cut at {cut}", *run_tiny(write(p(f"cut{cut}.gguf"), tiny[:cut])))
    for off, value, what in [(4, 99, "version"), (8, 2**63, "tensor count"), (16, 2**62, "kv count"), (24, 2**63, "key length")]:
        bad = bytearray(tiny)
        bad[off:off + (4 if what == "version" else 8)] = value.to_bytes(4 if what == "version" else 8, "little")
        case(f"gguf {what} {value}", *run_tiny(write(p(f"bad_{off}.gguf"), bytes(bad))))
    case("gguf bad magic", *run_tiny(write(p("magic.gguf"), b"GGUF"[::-1] + tiny[4:])))
    kv_cases = {
        "rope base nan": {"llama.rope.freq_base": (F32, math.nan)},
        "rope base 0": {"llama.rope.freq_base": (F32, 0.0)},
        "rope base -1": {"llama.rope.freq_base": (F32, -1.0)},
        "rms eps inf": {"llama.attention.layer_norm_rms_epsilon": (F32, math.inf)},
        "rms eps 0": {"llama.attention.layer_norm_rms_epsilon": (F32, 0.0)},
        "head count 0": {"llama.attention.head_count": (U32, 0)},
        "head count 3 (does not divide 16)": {"llama.attention.head_count": (U32, 3)},
        "kv head count 3": {"llama.attention.head_count_kv": (U32, 3)},
        "head count 2^31": {"llama.attention.head_count": (U32, 2**31)},
        "context length 0": {"llama.context_length": (U32, 0)},
        "block count 1 of 2": {"llama.block_count": (U32, 1)},
        "block count 2^32-1": {"llama.block_count": (U32, 2**32 - 1)},
        "embedding 0": {"llama.embedding_length": (U32, 0)},
        "rope scaling factor 0": {"llama.rope.scaling.type": (STRING, "linear"), "llama.rope.scaling.factor": (F32, 0.0)},
        "rope scaling yarn": {"llama.rope.scaling.type": (STRING, "yarn")},
        "architecture as a number": {"general.architecture": (U32, 7)},
        "tokenizer model unknown": {"tokenizer.ggml.model": (STRING, "wordpiece")},
    }
    for name, kv in kv_cases.items():
        m = p(f"kv_{len(name)}_{abs(hash(name)) % 10**6}.gguf")
        gguf_min.tiny_llama(m, kv_set=kv)
        case(f"gguf {name}", *run_tiny(m))
    gguf_min.tiny_llama(p("layers3.gguf"), layers=3)
    case("gguf declares 2 layers, holds 3", *run_tiny(p("layers3.gguf")))
    gguf_min.tiny_llama(p("layers1.gguf"), layers=1)
    case("gguf declares 2 layers, holds 1", *run_tiny(p("layers1.gguf")))
    # (NaN in the query or key projection only is not among them: the softmax's exp clamps a NaN
    # score, so nothing non-finite reaches the hidden state, which is what the guard checks.)
    for tensor, value in [("blk.1.ffn_down.weight", math.nan), ("blk.0.attn_v.weight", math.inf),
                          ("token_embd.weight", math.nan), ("output_norm.weight", math.inf)]:
        m = p(f"poison_{tensor}.gguf")
        gguf_min.tiny_llama(m, poison=(tensor, value))
        case(f"gguf {tensor} = {value}", *run_tiny(m))
        case(f"gguf {tensor} = {value}, halting", *run_tiny(m, "--halting", "topk", "--kv", "drop"))
    gguf_min.tiny_llama(p("longctx.gguf"), kv_set={"llama.context_length": (U32, 2**31 - 1)})
    case("gguf context 2^31-1, -n 2^31-10 (KV cache beyond memory)", "run", "-m", p("longctx.gguf"), "-p", "a",
         "-n", str(2**31 - 10))
    case("bench of 2^30 tokens (refused before the prompt is made)", "bench", "-m", p("longctx.gguf"), "-p", "1048576k",
         "-r", "1", "-n", "0")
    case("run --ctx 2^31-1 -n 2^31-1000", "run", "-m", model, "--tokenizer", tok, "-p", "hi", "--ctx", str(2**31 - 1),
         "-n", str(2**31 - 1000))
    gguf_min.tiny_llama(p("shape.gguf"), q_rows=8)
    case("gguf wrong tensor shape", *run_tiny(p("shape.gguf")))

    # --- safetensors checkpoints ----------------------------------------------------------
    cfg = ('{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16, '
           '"num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10}')
    tensor = '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    st_cases = {
        "header length 2^40": (2**40).to_bytes(8, "little") + tensor.encode() + b"\0" * 4,
        "header length 0": (0).to_bytes(8, "little") + tensor.encode() + b"\0" * 4,
        "header length 1": (1).to_bytes(8, "little") + tensor.encode() + b"\0" * 4,
        "header not JSON": safetensors("{not json at all", b"\0" * 4),
        "header nested deeply": safetensors("{\"a\": " + "[" * 100000 + "]" * 100000 + "}"),
        "data offsets past the end": safetensors('{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4000000]}}'),
        "unknown dtype": safetensors('{"a": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}', b"\0" * 4),
        "shape overflows": safetensors('{"a": {"dtype": "F32", "shape": [4294967296, 4294967296, 4294967296], '
                                       '"data_offsets": [0, 4]}}', b"\0" * 4),
        "empty header": safetensors("{}"),
    }
    for i, (name, data) in enumerate(st_cases.items()):
        folder = p(f"st{i}")
        os.makedirs(folder)
        write(os.path.join(folder, "model.safetensors"), data)
        write(os.path.join(folder, "config.json"), cfg)
        case(f"safetensors {name}", "run", "-m", os.path.join(folder, "model.safetensors"), "-p", "a")
    for i, bad_cfg in enumerate(["", "[" * 100000, '{"architectures": ["LlamaForCausalLM"], "hidden_size": -8}',
                                 cfg.replace('"num_attention_heads": 2', '"num_attention_heads": 3'),
                                 cfg.replace('"vocab_size": 10', '"vocab_size": 1e30')]):
        folder = p(f"cfg{i}")
        os.makedirs(folder)
        write(os.path.join(folder, "model.safetensors"), safetensors(tensor, b"\0" * 4))
        write(os.path.join(folder, "config.json"), bad_cfg)
        case(f"config.json #{i}", "run", "-m", folder, "-p", "a")

    # --- llama2.c checkpoints and tokenizers ----------------------------------------------
    data = open(model, "rb").read()
    case("llama2.c truncated", "run", "-m", write(p("trunc.bin"), data[: len(data) // 2]), "--tokenizer", tok, "-p", "a")
    case("llama2.c random bytes", "run", "-m", write(p("random.bin"), os.urandom(4096)), "--tokenizer", tok, "-p", "a")
    case("llama2.c huge dims", "run", "-m", write(p("huge.bin"), struct.pack("<7i", 2**30, 2**30, 2**30, 1, 1, 2**30, 2**30)),
         "--tokenizer", tok, "-p", "a")
    case("llama2.c negative dims", "run", "-m", write(p("neg.bin"), struct.pack("<7i", -1, 8, 1, 1, 1, 10, 8) + b"\0" * 64),
         "--tokenizer", tok, "-p", "a")
    tokdata = open(tok, "rb").read()
    case("tokenizer truncated", "run", "-m", model, "--tokenizer", write(p("tok_cut.bin"), tokdata[:999]), "-p", "a")
    case("tokenizer random", "run", "-m", model, "--tokenizer", write(p("tok_rand.bin"), os.urandom(2000)), "-p", "a")
    case("tokenizer.json garbage", "run", "-m", model, "--tokenizer", write(p("tokenizer.json"), "{\"model\": 3"), "-p", "a")
    case("tokenizer is a folder", "run", "-m", model, "--tokenizer", d, "-p", "a")
    case("no model", "run", "-m", p("nothing.gguf"), "-p", "a")
    case("model is a folder without config", "run", "-m", d, "-p", "a")
    case("model is /dev/zero", "run", "-m", "/dev/zero", "-p", "a")

    # --- prompts ------------------------------------------------------------------------------
    ok = ["run", "-m", model, "--tokenizer", tok]
    big = p("big.txt")
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)
    case("prompt /dev/zero", *ok, "-f", "/dev/zero")
    case("prompt folder", *ok, "-f", d)
    case("prompt 50 MB", *ok, "-f", big)
    case("prompt too long for the context", *ok, "-p", "Once upon a time " * 300)
    case("prompt ids garbage", *ok, "--prompt-ids", "1,x,3")
    case("prompt ids out of range", *ok, "--prompt-ids", "1,99999999999")
    case("tokenize /dev/zero", "tokenize", "-m", model, "--tokenizer", tok, "-f", "/dev/zero")

    # --- flags --------------------------------------------------------------------------------
    run_ok = [*ok, "-p", "hi"]
    for flags in (["-n", str(2**31)], ["-n", "-1"], ["--ctx", str(2**63)], ["--ctx", "-5"], ["--seed", "-1"],
                  ["--seed", str(2**64)], ["--threads", "100000"], ["--threads", str(2**31)], ["--temp", "nan"],
                  ["--top-p", "nan"], ["--keep", "0.5"], ["--halting", "topk", "--keep", "2"],
                  ["--halting", "topk", "--halt-layer", "nan"], ["--halting", "threshold", "--tau", "nan"],
                  ["--halting", "attn", "--attn-queries", str(2**31)], ["--halting", "topk", "--protect-first", "-1"],
                  ["--halting", "bogus"], ["--halting", "auto"], ["--kv", "keep"], ["--backend", "cuda"],
                  ["--backend", "tpu"], ["--json", d], ["--json", p("no/such/x.json")], ["--halting-map", p("x.gif")],
                  ["--dump-deltas", p("x.txt")], ["--save-logits", d], ["--save-logits-last", str(2**40)],
                  ["--bogus-flag"]):
        case("run " + " ".join(flags), *run_ok, *([] if "-n" in flags else ["-n", "2"]), *flags)
    bench = ["bench", "-m", model, "--tokenizer", tok]
    for flags in (["-p", "0"], ["-p", "1e30"], ["-p", "x"], ["-p", str(2**31)], ["-r", "0"], ["-o", "xml"],
                  ["--seed", "-1"], ["--threads", "-2"], ["-f", "/dev/zero"]):
        case("bench " + " ".join(flags), *bench, *flags)
    ev = ["eval", "-m", model, "--tokenizer", tok, "--dataset-dir", p("no-datasets")]
    for flags in (["--lengths", "0"], ["--lengths", "1e30"], ["--lengths", "1024"], ["--tasks", "bogus"],
                  ["--samples", "0"], ["--configs", "topk:2:2"], ["--configs", "random:0.5:0.5:retain:seed=-1"],
                  ["--json", d], ["--plot", p("x.jpg")], ["--resume", d], ["--seed", str(2**64)], ["--chat", "maybe"]):
        case("eval " + " ".join(flags), *ev, *([] if "--lengths" in flags else ["--lengths", "256"]), *flags)
    case("eval without datasets", *ev, "--lengths", "256")
    case("calibrate -o folder", "calibrate", "-m", model, "--tokenizer", tok, "--budget", "1", "-o", d)
    case("calibrate budget nan", "calibrate", "-m", model, "--tokenizer", tok, "--budget", "nan")
    case("inspect garbage", "inspect", "-m", write(p("garbage.gguf"), b"GGUF" + os.urandom(200)))
    case("unknown command", "frobnicate")

print(f"{n_cases} cases, {len(failures)} failures")
for f in failures:
    print("  " + f)
sys.exit(1 if failures else 0)
