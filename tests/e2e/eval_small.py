"""dashlm eval and calibrate on stories260K (context 512) with the minimal datasets: the table and
JSON are well formed, `none` and keep = 1 equal full prefill exactly, resume skips finished work,
calibrate saves a choice that `run --halting auto` uses."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

from common import args, expect_error, run

dashlm, shared, source = args()
st = os.path.join(shared, "models", "stories260K")
tmp = tempfile.mkdtemp(prefix="dashlm_eval_")
try:
    # Datasets: the minimal set from files on this machine (no downloads).
    ds = os.path.join(tmp, "datasets")
    p = subprocess.run([sys.executable, os.path.join(source, "scripts", "build-datasets"), "--minimal", "--out", ds],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "facts.jsonl" in p.stdout, p.stdout
    manifest = json.load(open(os.path.join(ds, "manifest.json")))
    assert manifest["minimal"] and any(b["role"] == "heldout" for b in manifest["books"])

    model = ["-m", os.path.join(st, "stories260K.bin"), "--tokenizer", os.path.join(st, "tok512.bin")]
    configs = ["none", "topk:0.4:1.0:retain", "topk:0.4:0.33:drop", "threshold:2:0.5:2:rel:retain",
               "random:0.4:0.33:retain", "attn:0.4:0.33:retain"]
    keys = ["full", "none", "topk:0.4:1:retain", "topk:0.4:0.33:drop", "threshold:2:0.5:2:rel:retain",
            "random:0.4:0.33:retain", "attn:0.4:0.33:retain"]
    tasks = ["needle", "passkey", "multi-needle", "continuation", "fidelity"]
    out_json, png, svg, resume = (os.path.join(tmp, n) for n in ("e.json", "e.png", "e.svg", "r.jsonl"))
    base = ["eval", *model, "--dataset-dir", ds, "--lengths", "256,448", "--samples", "2", "--configs", ",".join(configs),
            "-t", "1", "--resume", resume]
    table = run(dashlm, *base, "--json", out_json, "--plot", png).stdout.decode()

    # The table: three sections, every row as many cells as its header.
    for section in ("## length 256", "## length 448", "## all lengths"):
        assert section in table, table
    header = None
    rows = 0
    for line in table.splitlines():
        if line.startswith("| config |"):
            header = line
            assert all(t in line for t in ("speedup", "FLOP speedup", "needle", "passkey", "multi-needle", "continuation NLL", "fidelity top-1")), line
        elif line.startswith("|") and not line.startswith("| ---"):
            assert header and line.count("|") == header.count("|"), (header, line)
            rows += 1
    assert rows == 3 * len(keys), table
    assert "closed-book control" in table

    # JSON.
    j = json.load(open(out_json))
    assert [c["config"] for c in j["configs"]] == keys, j["configs"]
    assert j["tasks"] == tasks and j["lengths"] == [256, 448]
    recs = j["records"]
    assert len(recs) == 2 * 5 * 2 * len(keys), len(recs)
    assert len(j["summary"]) == len(keys) * 3
    by = {(r["task"], r["length"], r["sample"], r["config"]): r for r in recs}
    metrics = ["score", "found", "nll", "top1", "kl", "greedy_match", "top1_last", "kl_last", "generated"]
    for r in recs:
        assert r["n_tokens"] == r["length"], r  # exact lengths in the model's tokens
        assert r["document_ms"] > 0 and r["flops_full"] > 0
        if r["task"] == "continuation":
            assert r["nll"] > 0
        ref = by[(r["task"], r["length"], r["sample"], "full")]
        if r["config"] in ("none", "topk:0.4:1:retain"):
            # Nothing halts: every number equals full prefill's exactly.
            for m in metrics:
                if m in ref:
                    assert r[m] == ref[m], (r["config"], r["task"], m, r[m], ref[m])
            assert r["flops_done"] == r["flops_full"] == ref["flops_full"]
        if r["config"] == "topk:0.4:0.33:drop":
            assert r["flop_speedup"] > 1.0, r
    for s in j["summary"]:
        if s["config"] in ("full", "none", "topk:0.4:1:retain"):
            for task, ms in s["tasks"].items():
                for m, v in ms.items():
                    assert v["change"] == 0.0, (s["config"], s["length"], task, m, v)
    # Retrieval needles sit at the stated depths: sample 0 of 2 at the start, sample 1 at the end.
    for r in recs:
        if r["task"] in ("needle", "passkey") and r["config"] == "full":
            assert r["depths"] == [0.0] if r["sample"] == 0 else r["depths"] == [1.0], r
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Resume: everything is done, nothing runs again, the table is the same.
    n_lines = len(open(resume).read().splitlines())
    assert n_lines == len(recs), n_lines
    again = run(dashlm, *base, "--plot", svg, "-q").stdout.decode()
    assert again == table, "a resumed run must report the same results"
    assert len(open(resume).read().splitlines()) == n_lines
    assert open(svg).read().startswith("<svg")
    # Report only: the same table from the resume file, nothing run; with results missing it averages
    # the samples every configuration finished, and says how many.
    report = run(dashlm, *base, "--report-only").stdout.decode()
    assert report.splitlines()[0].startswith("# report only: samples finished by every configuration: needle 256: 2"), report
    assert "\n".join(report.splitlines()[1:]) == table.rstrip("\n"), "--report-only must print the finished run's table"
    assert len(open(resume).read().splitlines()) == n_lines
    partial = os.path.join(tmp, "partial.jsonl")
    with open(partial, "w") as f:  # sample 1 of passkey at 256 lost for one configuration
        for line in open(resume):
            r = json.loads(line)
            if not (r["task"] == "passkey" and r["length"] == 256 and r["sample"] == 1 and r["config"] == "random:0.4:0.33:retain"):
                f.write(line)
    pbase = [a if a != resume else partial for a in base]
    part = run(dashlm, *pbase, "--report-only").stdout.decode()
    assert "passkey 256: 1," in part.splitlines()[0] and "needle 256: 2," in part.splitlines()[0], part.splitlines()[0]
    expect_error(dashlm, *[a if a != resume else os.path.join(tmp, "none.jsonl") for a in base], "--report-only", contains="--resume")
    # A resume file made with other settings is refused.
    expect_error(dashlm, *base, "--seed", "5", contains="other settings")

    expect_error(dashlm, "eval", *model, "--lengths", "256", "--dataset-dir", os.path.join(tmp, "nowhere"), contains="scripts/build-datasets")
    expect_error(dashlm, "eval", *model, "--lengths", "256", "--dataset-dir", ds, "--configs", "topk:0.4", contains="syntax")
    expect_error(dashlm, "eval", *model, "--dataset-dir", ds, "--lengths", "4k", contains="context")
    expect_error(dashlm, "eval", *model, "--lengths", "256", "--dataset-dir", ds, "--tasks", "trivia")
    expect_error(dashlm, "eval", *model, "--dataset-dir", ds, "--lengths", "256", "--plot", os.path.join(tmp, "x.gif"), "--tasks", "passkey",
                 "--samples", "1", "-t", "1", contains="png")

    # Calibrate on a copy of the model (the choice is saved beside it), then run --halting auto.
    for f in ("stories260K.bin", "tok512.bin"):
        shutil.copy(os.path.join(st, f), tmp)
    cmodel = ["-m", os.path.join(tmp, "stories260K.bin"), "--tokenizer", os.path.join(tmp, "tok512.bin")]
    prompt = os.path.join(tmp, "prompt.txt")
    with open(prompt, "w") as f:
        f.write("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " * 4)
    expect_error(dashlm, "run", *cmodel, "-f", prompt, "-n", "4", "--halting", "auto", contains="no calibration for this model: run dashlm calibrate")
    cal = run(dashlm, "calibrate", *cmodel, "--budget", "0.05", "--dataset-dir", ds, "--length", "448", "--samples", "1", "-t", "1", "-q").stdout.decode()
    assert "| config |" in cal and "saved" in cal, cal
    saved = json.load(open(os.path.join(tmp, "stories260K.bin.dash.json")))
    assert saved["budget"] == 0.05 and saved["search"] and saved["spec"]
    within = [c for c in saved["search"] if c["delta_nll"] <= 0.05]
    if within:
        assert saved["flop_speedup"] == max(c["flop_speedup"] for c in within), saved
        assert saved["delta_nll"] <= 0.05
    else:
        assert saved["spec"] == "none"
    p = run(dashlm, "run", *cmodel, "-f", prompt, "-n", "4", "--halting", "auto")
    assert "halting auto:" in p.stderr.decode(), p.stderr.decode()
    # The threshold search, saved elsewhere.
    thr = os.path.join(tmp, "thr.json")
    run(dashlm, "calibrate", *cmodel, "--budget", "0.1", "--policy", "threshold", "--text", "/usr/share/common-licenses/GPL-2",
        "--length", "300", "--samples", "1", "-t", "1", "-o", thr, "-q")
    t = json.load(open(thr))
    assert all(c["spec"].startswith("threshold:") for c in t["search"]), t["search"]
    expect_error(dashlm, "calibrate", *cmodel, "--budget", "-1", "--dataset-dir", ds)
    print("eval and calibrate: tables, JSON, exactness of no-op configs, resume, auto halting ok")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
