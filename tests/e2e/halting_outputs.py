"""run --halting: the JSON halting object, the halting map (PNG and SVG) and the deltas file."""
import os
import struct
import tempfile
import xml.etree.ElementTree as ET

from common import args, expect_error, load_json, run

dashlm, shared, _ = args()
st = os.path.join(shared, "models", "stories260K")
base = ["run", "-m", os.path.join(st, "stories260K.bin"), "--tokenizer", os.path.join(st, "tok512.bin"),
        "-p", "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. " * 3,
        "--query", "One day", "-n", "8", "-q"]

with tempfile.TemporaryDirectory() as d:
    f = lambda name: os.path.join(d, name)
    run(dashlm, *base, "--halting", "topk", "--keep", "0.25", "--kv", "drop", "--json", f("r.json"),
        "--halting-map", f("map.png"), "--dump-deltas", f("d.npy"))
    j = load_json(f("r.json"))
    h = j["halting"]
    for key in ("policy", "kv_mode", "active_per_layer", "flops_full", "flops_done", "flop_speedup", "layer_ms", "keep", "halt_layer"):
        assert key in h, key
    L, n_doc = j["n_layers"], h["n_document_tokens"]
    assert h["policy"] == "topk" and h["kv_mode"] == "drop" and len(h["active_per_layer"]) == L and len(h["layer_ms"]) == L
    assert n_doc == j["n_document_tokens"] and j["n_query_tokens"] > 0
    assert h["active_per_layer"][0] == n_doc and h["active_per_layer"][-1] < n_doc
    assert h["flop_speedup"] > 1.0 and abs(h["flop_speedup"] - h["flops_full"] / h["flops_done"]) < 1e-9
    assert len(j["generated_token_ids"]) == j["n_generated_tokens"]

    png = open(f("map.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    w, hgt = struct.unpack(">II", png[16:24])
    assert w > 100 and hgt > 2 * L, (w, hgt)

    npy = open(f("d.npy"), "rb").read()
    assert npy[:6] == b"\x93NUMPY"
    hlen = struct.unpack("<H", npy[8:10])[0]
    header = npy[10:10 + hlen].decode()
    assert f"'shape': ({n_doc}, {L})" in header and "'<f4'" in header, header
    vals = struct.unpack(f"<{n_doc * L}f", npy[10 + hlen:])
    assert len(vals) == n_doc * L
    # Every token ran layer 0; halted ones have NaN after halting.
    assert all(v == v and v > 0 for v in vals[0::L])
    assert any(v != v for v in vals)

    run(dashlm, *base, "--halting", "threshold", "--tau", "0.5", "--patience", "2", "--delta", "rel",
        "--halting-map", f("map.svg"), "--dump-deltas", f("d.csv"))
    root = ET.parse(f("map.svg")).getroot()
    svg_ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == svg_ns + "svg" and int(root.get("width").rstrip("px")) >= 1000, root.attrib
    # Both panels' cells (one picture each), and text drawn as glyphs: title, axis labels, scales.
    assert len(list(root.iter(svg_ns + "image"))) == 2
    assert len(list(root.iter(svg_ns + "use"))) > 100
    rows = open(f("d.csv")).read().splitlines()
    assert rows[0] == "token," + ",".join(f"L{i}" for i in range(L)) and len(rows) == n_doc + 1

    # Bad halting settings.
    expect_error(dashlm, *base, "--halting", "topk", "--keep", "0", contains="keep")
    expect_error(dashlm, *base, "--halting", "topk", "--keep", "1.5", contains="keep")
    expect_error(dashlm, *base, "--halting", "topk", "--halt-layer", "9", contains="outside the model")
    expect_error(dashlm, *base, "--halting", "threshold", "--tau", "0.1", contains="patience")
    expect_error(dashlm, *base, "--halting", "sometimes", contains="policy")
    expect_error(dashlm, *base, "--halting", "topk", "--kv", "maybe", contains="--kv")
    expect_error(dashlm, *base, "--halting", "topk", "--protect-last", "0", contains="protect-last")
    expect_error(dashlm, *base, "--halting", "topk", "--halting-map", f("map.gif"), contains=".png")
    # Errors name the flag: a setting the policy does not read, a value that is not finite.
    expect_error(dashlm, *base, "--halting", "threshold", "--tau", "0.5", "--patience", "1", "--keep", "0.5", contains="--keep")
    expect_error(dashlm, *base, "--keep", "0.5", contains="--keep")
    expect_error(dashlm, *base, "--halting", "threshold", "--tau", "nan", "--patience", "1", contains="--tau")
    expect_error(dashlm, *base, "--halting", "query", "--pool", "-1", contains="--pool")
    # The query policy: document and query as one segment, the query's rows never halting.
    run(dashlm, *base, "--halting", "query", "--keep", "0.3", "--kv", "drop", "--json", f("q.json"))
    hq = load_json(f("q.json"))["halting"]
    assert hq["policy"] == "query" and hq["pool"] == 3, hq
    n_query = load_json(f("q.json"))["n_query_tokens"]
    assert hq["n_document_tokens"] == load_json(f("q.json"))["n_prompt_tokens"], hq  # one segment
    assert hq["active_per_layer"][-1] >= n_query, hq
print("halting outputs: well-formed")
