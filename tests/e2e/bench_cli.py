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
                                      "pp128+dash(topk(l=2,keep=0.33,drop))", "tg8"], [r["test"] for r in rows]
for r in rows:
    assert r["avg_ts"] > 0 and len(r["ms"]) == 2 and r["peak_rss_mib"] > 0 and r["threads"] >= 1
    assert r["kernels"].startswith("cpu "), r["kernels"]
    if "dash" in r["test"]:
        assert r["flop_speedup"] > 1.0 and r["speedup"] > 0

table = run(dashlm, *base, "-p", "0.25k", "-o", "md", "-f", "/usr/share/common-licenses/GPL-3").stdout.decode()
assert table.splitlines()[0].startswith("| model |") and "pp256" in table, table
assert "stories260K" in table
c = list(csv.DictReader(io.StringIO(run(dashlm, *base, "-p", "32", "-o", "csv").stdout.decode())))
assert len(c) == 1 and c[0]["test"] == "pp32" and float(c[0]["avg_ts"]) > 0

expect_error(dashlm, *base, "-p", "0")
expect_error(dashlm, *base, "-p", "abc")
expect_error(dashlm, *base, "-p", "4096", contains="context")
expect_error(dashlm, *base, "-o", "xml")
expect_error(dashlm, *base, "--halting", "topk", "--keep", "2")
print("bench: rows and formats ok")
