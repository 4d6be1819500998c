"""Bad JSON in every file the CLI reads (config.json, safetensors headers, tokenizer.json,
calibration files, dataset files, eval resume files): one 'error:' line and a non-zero exit, never
a crash or a library message; resume files with cut-off or garbage lines lose no results and say
how many lines were skipped, in one warning."""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

from common import args, expect_error, run

dashlm, shared, source = args()
st = os.path.join(shared, "models", "stories260K")
model = ["-m", os.path.join(st, "stories260K.bin"), "--tokenizer", os.path.join(st, "tok512.bin")]
DEEP = 100000


def nested(depth, inner="1"):
    return "[" * depth + inner + "]" * depth


def write(path, text):
    with open(path, "w" if isinstance(text, str) else "wb") as f:
        f.write(text)
    return path


def safetensors(header):
    h = header.encode()
    return struct.pack("<Q", len(h)) + h


def no_library_text(p):
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert "json.exception" not in out, out


tmp = tempfile.mkdtemp(prefix="dashlm_bad_json_")
try:
    # config.json: nested 100000 deep as the file, and as the value of a key; a value of the wrong type.
    ck = os.path.join(tmp, "ck")
    os.makedirs(ck)
    write(os.path.join(ck, "model.safetensors"), safetensors("{}"))
    write(os.path.join(ck, "config.json"), nested(DEEP))
    expect_error(dashlm, "inspect", "-m", ck, contains="config.json: nested too deeply")
    write(os.path.join(ck, "config.json"), '{"architectures": ["LlamaForCausalLM"], "hidden_size": ' + nested(DEEP) + "}")
    expect_error(dashlm, "inspect", "-m", ck, contains="config.json: nested too deeply")
    write(os.path.join(ck, "config.json"), '{"architectures": ["LlamaForCausalLM"], "hidden_size": {"a": [1]}}')
    expect_error(dashlm, "inspect", "-m", ck, contains="hidden_size must be an integer, not an object with 1 key")
    # A safetensors header nested deeply inside a tensor's shape.
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 16,
           "num_attention_heads": 2}
    write(os.path.join(ck, "config.json"), json.dumps(cfg))
    write(os.path.join(ck, "model.safetensors"),
          safetensors('{"a": {"dtype": "F32", "shape": [' + nested(DEEP) + '], "data_offsets": [0, 0]}}'))
    expect_error(dashlm, "inspect", "-m", ck, contains="safetensors header: nested too deeply")
    write(os.path.join(ck, "model.safetensors"),
          safetensors('{"a": {"dtype": "F32", "shape": [[[2]]], "data_offsets": [0, 8]}}'))
    expect_error(dashlm, "inspect", "-m", ck, contains="invalid shape (an array of 1 element)")
    # tokenizer.json given with --tokenizer.
    tok = write(os.path.join(tmp, "tokenizer.json"), '{"model": ' + nested(DEEP) + "}")
    expect_error(dashlm, "run", "-m", os.path.join(st, "stories260K.bin"), "--tokenizer", tok, "-p", "hi",
                 contains="tokenizer.json: nested too deeply")
    write(tok, '{"model": {"type": "BPE", "vocab": {"a": "zero"}}}')
    expect_error(dashlm, "run", "-m", os.path.join(st, "stories260K.bin"), "--tokenizer", tok, "-p", "hi",
                 contains="token a has no integer id")

    # The calibration file beside a model.
    for f in ("stories260K.bin", "tok512.bin"):
        shutil.copy(os.path.join(st, f), tmp)
    cmodel = ["-m", os.path.join(tmp, "stories260K.bin"), "--tokenizer", os.path.join(tmp, "tok512.bin")]
    cal = os.path.join(tmp, "stories260K.bin.dash.json")
    write(cal, nested(DEEP))
    expect_error(dashlm, "run", *cmodel, "-p", "Once upon a time", "-n", "2", "--halting", "auto",
                 contains="stories260K.bin.dash.json: nested too deeply")
    write(cal, '{"spec": ["none"]}')
    expect_error(dashlm, "run", *cmodel, "-p", "Once upon a time", "-n", "2", "--halting", "auto",
                 contains="key 'spec' is an array of 1 element, expected a string")

    # Dataset files.
    ds = os.path.join(tmp, "datasets")
    p = subprocess.run([sys.executable, os.path.join(source, "scripts", "build-datasets"), "--minimal", "--out", ds],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    bad_ds = os.path.join(tmp, "bad_datasets")
    shutil.copytree(ds, bad_ds)
    write(os.path.join(bad_ds, "manifest.json"), nested(DEEP))
    ev = ["eval", *model, "--lengths", "256", "--samples", "1", "--tasks", "passkey", "--configs", "none", "-t", "1"]
    expect_error(dashlm, *ev, "--dataset-dir", bad_ds, contains="manifest.json: nested too deeply")
    shutil.copy(os.path.join(ds, "manifest.json"), bad_ds)
    with open(os.path.join(bad_ds, "facts.jsonl"), "a") as f:
        f.write('{"key": "k", "statement": "s", "question": "q", "answer": 42}\n')
    n_facts = len(open(os.path.join(bad_ds, "facts.jsonl")).read().splitlines())
    expect_error(dashlm, *ev, "--dataset-dir", bad_ds,
                 contains=f"facts.jsonl line {n_facts}: key 'answer' is a number (42), expected a string")

    # Resume files. A complete run first.
    ev = ["eval", *model, "--lengths", "256", "--samples", "2", "--tasks", "passkey", "--configs", "none", "-t", "1",
          "--dataset-dir", ds]
    resume = os.path.join(tmp, "r.jsonl")
    first = run(dashlm, *ev, "--resume", resume)
    assert "| full prefill |" in first.stdout.decode()
    lines = open(resume).read().splitlines()
    assert len(lines) == 4, lines  # 2 samples x (full, none)
    # Killed in the middle of writing the last record: its line is cut off, with no '\n'.
    with open(resume, "w") as f:
        f.write("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    p = run(dashlm, *ev, "--resume", resume, "-q")
    no_library_text(p)
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resume: skipped 1 unreadable line of " + resume + " (line 4: not valid JSON"), err
    after = open(resume).read()
    assert after.endswith("\n")
    recs = []
    for i, line in enumerate(after.splitlines()):
        if i == 3:
            assert line == lines[3][: len(lines[3]) // 2]  # the cut line, left alone on its own line
            continue
        recs.append(json.loads(line))  # every other line is a whole record
    assert len(recs) == 4, after
    keys = sorted((r["sample"], r["config"]) for r in recs)
    assert keys == [(0, "full"), (0, "none"), (1, "full"), (1, "none")], keys
    # Garbage in the middle: skipped (those results run again), one warning with the count and lines.
    with open(resume, "w") as f:
        f.write(lines[0] + "\n" + "garbage\n" + nested(DEEP) + "\n")
        bad = json.loads(lines[1])
        bad["document_ms"] = "fast"
        f.write(json.dumps(bad) + "\n" + "\n".join(lines[2:]) + "\n")
    p = run(dashlm, *ev, "--resume", resume, "-q")
    no_library_text(p)
    err = p.stderr.decode().strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"resume: skipped 3 unreadable lines of {resume} (line 2: not valid JSON"), err
    assert "line 3: nested too deeply" in err[0] and "line 4: key 'document_ms' is a string (\"fast\"), expected a number" in err[0], err
    # Report only: the same warning, the file untouched.
    before = open(resume).read()
    p = run(dashlm, *ev, "--resume", resume, "--report-only", "-q")
    assert len(p.stderr.decode().strip().splitlines()) == 1 and "skipped 3 unreadable lines" in p.stderr.decode()
    assert open(resume).read() == before
    # Results made with other settings: refused, saying which setting differs.
    expect_error(dashlm, *ev, "--resume", resume, "--seed", "5", contains="other settings (line 1: seed a number (0) there, a number (5) here)")
    print("bad JSON: all rejected cleanly; resume files lose nothing")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
