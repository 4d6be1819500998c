"""Bad input of every kind: one 'error:' line and a non-zero exit, never a crash or a hang."""
import os
import shutil
import tempfile

from common import args, expect_error, run
import gguf_min

dashlm, shared, _ = args()
st = os.path.join(shared, "models", "stories260K")
model, tok = os.path.join(st, "stories260K.bin"), os.path.join(st, "tok512.bin")
ok = ["run", "-m", model, "--tokenizer", tok]

with tempfile.TemporaryDirectory() as d:
    def path(name, data=None):
        p = os.path.join(d, name)
        if data is not None:
            with open(p, "wb") as f:
                f.write(data)
        return p

    # The CLI itself.
    expect_error(dashlm, "run", "--bogus-flag", "-m", model)
    expect_error(dashlm, "frobnicate")
    expect_error(dashlm, "run", "-p", "hi")  # no model
    expect_error(dashlm, *ok, "-n", "-1", "-p", "hi", contains="-n")
    expect_error(dashlm, *ok, "-p", "hi", "--top-p", "0")
    expect_error(dashlm, *ok, "-p", "hi", "-f", model)  # two prompt sources
    # Prompts.
    expect_error(dashlm, *ok, "-p", "", contains="empty prompt")
    expect_error(dashlm, *ok, "-f", path("empty.txt", b""), contains="empty prompt")
    expect_error(dashlm, *ok, "-f", os.path.join(d, "missing.txt"), contains="missing.txt")
    # Prompt files that are not files, or far larger than any context: refused before reading.
    expect_error(dashlm, *ok, "-f", d, contains="not a regular file")
    expect_error(dashlm, *ok, "-f", "/dev/zero", contains="not a regular file")
    expect_error(dashlm, "tokenize", "-m", model, "--tokenizer", tok, "-f", "/dev/zero", contains="not a regular file")
    big = path("big.txt")
    with open(big, "wb") as f:
        f.truncate(50 * 1024 * 1024)  # sparse: 50 MB that cost nothing to write
    expect_error(dashlm, *ok, "-f", big, contains="bytes")
    # Threads and sampling settings out of range (NaN included), refused before any work.
    expect_error(dashlm, *ok, "-p", "hi", "--threads", "100000", contains="--threads")
    expect_error(dashlm, *ok, "-p", "hi", "--top-p", "nan", contains="top-p")
    expect_error(dashlm, *ok, "-p", "hi", "--temp", "inf", contains="temperature")
    expect_error(dashlm, *ok, "-p", "Once upon a time " * 200, contains="context")
    expect_error(dashlm, *ok, "-p", "hi", "--ctx", "2", contains="context")
    expect_error(dashlm, *ok, "--prompt-ids", "1,99999", contains="token id")
    # Model files.
    expect_error(dashlm, "run", "-m", os.path.join(d, "nope.gguf"), "-p", "hi", contains="nope.gguf")
    expect_error(dashlm, "run", "-m", path("empty.bin", b""), "-p", "hi")
    expect_error(dashlm, "run", "-m", path("magic.gguf", b"GGUX" + b"\0" * 64), "--tokenizer", tok, "-p", "hi")
    expect_error(dashlm, "run", "-m", model, "-p", "hi", contains="tokenizer")  # llama2.c needs one
    data = open(model, "rb").read()
    expect_error(dashlm, "run", "-m", path("trunc.bin", data[: len(data) // 2]), "--tokenizer", tok, "-p", "hi")
    expect_error(dashlm, "run", "-m", model, "--tokenizer", path("trunc_tok.bin", open(tok, "rb").read()[:3000]), "-p", "hi")
    gguf_min.tiny_llama(path("tiny.gguf"))
    run(dashlm, "run", "-m", path("tiny.gguf"), "-p", "a", "-n", "2")  # the well-formed one works
    tiny = open(path("tiny.gguf"), "rb").read()
    for cut in (3, 20, 200, len(tiny) // 2, len(tiny) - 1):
        expect_error(dashlm, "inspect", "-m", path(f"tiny_{cut}.gguf", tiny[:cut]))
    gguf_min.tiny_llama(path("arch.gguf"), arch="mamba9")
    expect_error(dashlm, "run", "-m", path("arch.gguf"), "-p", "a", contains="mamba9")
    gguf_min.tiny_llama(path("shape.gguf"), q_rows=8)
    expect_error(dashlm, "run", "-m", path("shape.gguf"), "-p", "a", contains="attn_q")
    # Counts and offsets past the end of the file.
    bad = bytearray(tiny)
    bad[8:16] = (2**60).to_bytes(8, "little")  # tensor count
    expect_error(dashlm, "inspect", "-m", path("count.gguf", bytes(bad)))
    bad = bytearray(tiny)
    bad[16:24] = (2**40).to_bytes(8, "little")  # metadata count
    expect_error(dashlm, "inspect", "-m", path("kvcount.gguf", bytes(bad)))
    bad = bytearray(tiny)
    bad[24:32] = (2**40).to_bytes(8, "little")  # length of the first key
    expect_error(dashlm, "inspect", "-m", path("keylen.gguf", bytes(bad)))
print("bad input: all rejected cleanly")
