"""dashlm bench: rows, formats and DASH columns (speed itself is measured, not tested)."""
import csv
import io
import json
import os

from common import args, expect_error, run

dashlm, shared, _ = args()
st = os.path.join(shared, "models", "stories260K")
base = ["bench", "-m", os.path.join(st, "stories260K.bin"), "--tokenizer", os.path.join(st, "tok512.bin"), "-r", "2"]

rows = json.loads(run(dashlm, *base, "-p", "64,128", "-n", "8", "--halting", "topk", "--kv", "drop", "-o", "json").stdout)
assert [r["test"] for r in rows] == ["pp64", "pp64+dash(topk(l=2,keep=0.33,drop))", "pp128",
                                      "pp128+dash(topk(l=2,keep=0.33,drop))", "tg8 @ 64", "tg8 @ 128"], [r["test"] for r in rows]
for r in rows:
    assert r["avg_ts"] > 0 and len(r["ms"]) == 2 and r["peak_rss_mib"] > 0 and r["threads"] >= 1
    assert r["kernels"].startswith("cpu "), r["kernels"]
    assert r["kv_type"] == "f16" and "f16 KV cache" in r["kernels"], r
    assert r["median_ms"] > 0
    # tgN @ P: N tokens after a P-token prompt; prompt rows have no depth.
    assert (r["n_tokens"], r["n_depth"]) == ((8, int(r["test"].split("@ ")[1])) if r["test"].startswith("tg") else (r["n_tokens"], 0)), r
    if "dash" in r["test"]:
        assert r["flop_speedup"] > 1.0 and r["speedup"] > 0

table = run(dashlm, *base, "-p", "0.25k", "-o", "md", "-f", "/usr/share/common-licenses/GPL-3").stdout.decode()
assert table.splitlines()[0].startswith("| model |") and "pp256" in table, table
assert "stories260K" in table
c = list(csv.DictReader(io.StringIO(run(dashlm, *base, "-p", "32", "-o", "csv").stdout.decode())))
assert len(c) == 1 and c[0]["test"] == "pp32" and float(c[0]["avg_ts"]) > 0
# The same columns for a tg row, and the float32 cache on request.
c = list(csv.DictReader(io.StringIO(run(dashlm, *base, "-p", "32", "-n", "4", "--kv-type", "f32", "-o", "csv").stdout.decode())))
assert [r["test"] for r in c] == ["pp32", "tg4 @ 32"], c
assert c[1]["n_tokens"] == "4" and c[1]["n_depth"] == "32" and c[1]["kv_type"] == "f32" and float(c[1]["avg_ts"]) > 0, c
rows = json.loads(run(dashlm, *base, "-p", "16", "--kv-type", "f32", "-o", "json").stdout)
assert rows[0]["kv_type"] == "f32" and "f32 KV cache" in rows[0]["kernels"], rows

expect_error(dashlm, *base, "-p", "0")
expect_error(dashlm, *base, "-p", "abc")
expect_error(dashlm, *base, "-p", "4096", contains="context")
expect_error(dashlm, *base, "-o", "xml")
expect_error(dashlm, *base, "--kv-type", "q4")
# Each engine's own cache types: bf16 and fp8 are the CUDA engine's, f32 and f16 the CPU's (refused
# before any device is looked for).
expect_error(dashlm, *base, "--kv-type", "fp8", contains="the CPU engine keeps f32 or f16")
expect_error(dashlm, *base, "--kv-type", "bf16", contains="the CPU engine keeps f32 or f16")
expect_error(dashlm, *base, "--backend", "cuda", "--kv-type", "f16", contains="the CUDA engine keeps bf16 or fp8")
expect_error(dashlm, *base, "-p", "500", "-n", "100", contains="context")
expect_error(dashlm, *base, "--halting", "topk", "--keep", "2")
print("bench: rows and formats ok")
