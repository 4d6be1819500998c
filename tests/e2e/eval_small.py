"""dashlm eval and calibrate on stories260K (context 512) with the minimal datasets (lengths from 320:
its 512-token vocabulary needs 294 for the variable-tracking task): the table and
JSON are well formed, `none` and keep = 1 equal full prefill exactly, resume skips finished work,
calibrate saves a choice that `run --halting auto` uses."""
import json
import os
import xml.etree.ElementTree as ET
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
    tasks = ["needle", "passkey", "multi-needle", "variable-tracking", "aggregation", "continuation", "fidelity"]
    out_json, png, svg, resume = (os.path.join(tmp, n) for n in ("e.json", "e.png", "e.svg", "r.jsonl"))
    base = ["eval", *model, "--dataset-dir", ds, "--lengths", "320,448", "--samples", "2", "--configs", ",".join(configs),
            "-t", "1", "--resume", resume, "--tasks", ",".join(tasks)]
    table = run(dashlm, *base, "--json", out_json, "--plot", png).stdout.decode()

    # The table: three sections, each a table of scores and one of statistics, every row as many
    # cells as its header.
    for section in ("## length 320", "## length 448", "## all lengths"):
        assert section in table, table
    header = None
    rows = {"config": 0, "task": 0, "kept": 0}
    stats_rows, kept_rows = [], []
    for line in table.splitlines():
        if line.startswith("| config |"):
            header, kind = line, "config"
            assert all(t in line for t in ("speedup", "FLOP speedup", "needle", "passkey", "multi-needle", "variable-tracking",
                                           "aggregation", "continuation NLL", "fidelity top-1")), line
        elif line.startswith("| task |"):
            header, kind = line, "task"
            assert "95% interval of change" in line and "within 2%?" in line, line
        elif line.startswith("| retrieval task |"):
            header, kind = line, "kept"
        elif line.startswith("|") and not line.startswith("| ---"):
            assert header and line.count("|") == header.count("|"), (header, line)
            rows[kind] += 1
            if kind == "task":
                stats_rows.append([c.strip() for c in line.strip("|").split("|")])
            if kind == "kept":
                kept_rows.append([c.strip() for c in line.strip("|").split("|")])
    assert rows["config"] == 3 * len(keys), table
    assert rows["task"] == 3 * len(keys) * len(tasks), table  # every task's primary score, every config
    for i, r in enumerate(stats_rows):
        task, config, n = r[0], r[1], int(r[2])
        assert n == (4 if i >= 2 * len(keys) * len(tasks) else 2), r  # the last section: both lengths
        if config == "full prefill":
            assert r[5] == "" and r[9] == "", r
        else:
            assert r[9] in ("within", "outside", "unresolved"), r
            if config in ("none", "topk:0.4:1:retain"):
                assert float(r[5]) == 0.0 and r[7] == "0/0", r
    assert "closed-book control" in table and "(n 4," in table, table
    # Whether halting kept the planted text: a row per halting configuration and retrieval task,
    # over both lengths' samples; the lost answers split into planted text whole or part halted.
    retrieval = ["needle", "passkey", "multi-needle", "variable-tracking", "aggregation"]
    assert len(kept_rows) == (len(keys) - 1) * len(retrieval), kept_rows
    for r in kept_rows:
        whole, n = (int(v) for v in r[2].split(" of "))
        assert n == 4 and 0 <= whole <= n and int(r[3]) == int(r[4]) + int(r[5]), r
        if r[1] in ("none", "topk:0.4:1:retain"):  # nothing halts
            assert whole == n and r[3] == "0", r

    # JSON.
    j = json.load(open(out_json))
    assert [c["config"] for c in j["configs"]] == keys, j["configs"]
    assert j["tasks"] == tasks and j["lengths"] == [320, 448]
    recs = j["records"]
    assert len(recs) == 2 * len(tasks) * 2 * len(keys), len(recs)
    assert len(j["summary"]) == len(keys) * 3
    by = {(r["task"], r["length"], r["sample"], r["config"]): r for r in recs}
    metrics = ["score", "found", "nll", "top1", "kl", "greedy_match", "top1_last", "kl_last", "generated"]
    for r in recs:
        assert r["n_tokens"] == r["length"], r  # exact lengths in the model's tokens
        assert r["document_ms"] > 0 and r["flops_full"] > 0
        if r["task"] == "continuation":
            assert r["nll"] > 0
        if r["task"] in retrieval and r["config"] != "full":  # a share per planted text
            assert len(r["needles_kept"]) == len(r["depths"]) and all(0 <= v <= 1 for v in r["needles_kept"]), r
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
        for task, ms in s["tasks"].items():
            for m, v in ms.items():
                # Every mean has its interval (none for t with fewer than 2 samples), and every
                # halting row its paired change, interval and verdict.
                assert v["n"] == (4 if s["length"] == "all" else 2) and len(v["ci"]) == 2 and v["ci_method"] in ("wilson", "t"), v
                if v["ci"][0] is not None:
                    assert v["ci"][0] <= v["mean"] + 1e-12 and v["mean"] <= v["ci"][1] + 1e-12, v
                if s["config"] != "full":
                    assert v["n_paired"] == v["n"] and v["change_method"] in ("newcombe", "bootstrap", "t"), v
                    assert v["verdict"] in ("within", "outside", "unresolved"), v
                    if v["change_ci"][0] is not None:
                        assert v["change_ci"][0] <= v["change"] + 1e-12 <= v["change_ci"][1] + 2e-12, v
    assert j["tolerance"] == 0.02 and set(j["closed_book_stats"]) == {t for t in tasks if t not in ("continuation", "fidelity")}
    # New tasks: the planted wrong answers are recorded; a generation giving one first does not count.
    for r in recs:
        if r["task"] in ("variable-tracking", "aggregation"):
            assert r["wrong_answers"] and r["answers"][0] not in r["wrong_answers"], r
    # eval-summary reads the file: its tables, with the intervals and verdicts.
    summ = subprocess.run([sys.executable, os.path.join(source, "scripts", "eval-summary"), out_json], capture_output=True, text=True)
    assert summ.returncode == 0, summ.stderr
    assert "| length | config | task | n |" in summ.stdout and "resolved (95% intervals)" in summ.stdout, summ.stdout
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
    assert ET.parse(svg).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    # Report only: the same table from the resume file, nothing run; with results missing it averages
    # the samples every configuration finished, and says how many.
    report = run(dashlm, *base, "--report-only").stdout.decode()
    assert report.splitlines()[0].startswith("# report only: samples finished by every configuration: needle 320: 2"), report
    assert "\n".join(report.splitlines()[1:]) == table.rstrip("\n"), "--report-only must print the finished run's table"
    assert len(open(resume).read().splitlines()) == n_lines
    partial = os.path.join(tmp, "partial.jsonl")
    with open(partial, "w") as f:  # sample 1 of passkey at 320 lost for one configuration
        for line in open(resume):
            r = json.loads(line)
            if not (r["task"] == "passkey" and r["length"] == 320 and r["sample"] == 1 and r["config"] == "random:0.4:0.33:retain"):
                f.write(line)
    pbase = [a if a != resume else partial for a in base]
    part = run(dashlm, *pbase, "--report-only").stdout.decode()
    assert "passkey 320: 1," in part.splitlines()[0] and "needle 320: 2," in part.splitlines()[0], part.splitlines()[0]
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
    # The default search has topk and query points, staged ones among them.
    assert any(c["spec"].startswith("query:") for c in saved["search"]), saved["search"]
    assert any(":then=" in c["spec"] for c in saved["search"]), saved["search"]
    # A retrieval budget as well: the chosen setting is the fastest within both; every faster one
    # within the NLL budget was measured and lost too much.
    ret = os.path.join(tmp, "ret.json")
    cal2 = run(dashlm, "calibrate", *cmodel, "--budget", "0.5", "--max-retrieval-drop", "0", "--retrieval-task", "variable-tracking",
               "--retrieval-samples", "2", "--dataset-dir", ds, "--length", "448", "--samples", "1", "-t", "1", "-o", ret, "-q").stdout.decode()
    assert "retrieval score" in cal2 and "# retrieval: variable-tracking on 2 sample(s)" in cal2, cal2
    r = json.load(open(ret))
    assert r["max_retrieval_drop"] == 0 and r["retrieval"]["task"] == "variable-tracking" and r["retrieval"]["samples"] == 2, r
    if r["spec"] != "none":
        chosen = next(c for c in r["search"] if c["spec"] == r["spec"])
        assert chosen["delta_nll"] <= 0.5 and chosen["retrieval_drop"] <= 0 and r["retrieval_drop"] == chosen["retrieval_drop"], r
        for c in r["search"]:
            if c["delta_nll"] <= 0.5 and c["flop_speedup"] > chosen["flop_speedup"] + 1e-9:
                assert "retrieval_score" in c and c["retrieval_drop"] > 0, c
    else:
        assert all(c["delta_nll"] > 0.5 or c["retrieval_drop"] > 0 for c in r["search"]), r
    # run's default: the calibration only where it was made within a retrieval budget too.
    plain = run(dashlm, "run", *cmodel, "-f", prompt, "-n", "4").stderr.decode()
    assert "halting auto" not in plain, plain  # the file beside the model has the NLL budget alone
    shutil.copy(ret, os.path.join(tmp, "stories260K.bin.dash.json"))
    dflt = run(dashlm, "run", *cmodel, "-f", prompt, "-n", "4").stderr.decode()
    assert "halting auto (the default; --halting none: full prefill): " in dflt and "variable-tracking score" in dflt, dflt
    off = run(dashlm, "run", *cmodel, "-f", prompt, "-n", "4", "--halting", "none").stderr.decode()
    assert "halting auto" not in off, off
    with open(os.path.join(tmp, "stories260K.bin.dash.json"), "w") as f:
        f.write("{ not json")
    expect_error(dashlm, "run", *cmodel, "-f", prompt, "-n", "4", contains="stories260K.bin.dash.json")
    os.remove(os.path.join(tmp, "stories260K.bin.dash.json"))
    expect_error(dashlm, "calibrate", *cmodel, "--budget", "0.1", "--max-retrieval-drop", "0.1", "--retrieval-task", "fidelity",
                 "--dataset-dir", ds, contains="retrieval task")
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
