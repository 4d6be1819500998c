"""The real CLI on the downloadable models: a long real document plus a question, --chat, --json."""
import os
import sys
import tempfile

from common import SKIP, args, load_json, run

dashlm, shared, src = args()
doc = "/usr/share/common-licenses/GPL-3"
cases = [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", ["--chat"], "llama", 30),
    ("gemma-3-270m-q4_k_m.gguf", [], "gemma3", 18),
    ("qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", ["--chat"], "qwen2", 24),
]
ran = 0
for name, extra, arch, layers in cases:
    model = os.path.join(src, "models", name)
    if not os.path.exists(model):
        print(f"skip {name}: not downloaded")
        continue
    with tempfile.TemporaryDirectory() as d:
        js = os.path.join(d, "out.json")
        text = open(doc, encoding="utf-8").read()[:6000]
        path = os.path.join(d, "doc.txt")
        open(path, "w", encoding="utf-8").write(text)
        p = run(dashlm, "run", "-m", model, "-f", path, "--query", "Question: what is this document? Answer:", "-n", "24",
                "--threads", "2", "--json", js, *extra)
        j = load_json(js)
        assert j["arch"] == arch and j["n_layers"] == layers, (j["arch"], j["n_layers"])
        assert j["n_document_tokens"] > 1000 and j["n_query_tokens"] > 5, j
        assert j["n_prompt_tokens"] == j["n_document_tokens"] + j["n_query_tokens"]
        assert j["prefill_ms"] > 0 and j["prefill_tokens_per_s"] > 0
        assert 0 < j["n_generated_tokens"] <= 24 and len(j["generated_token_ids"]) == j["n_generated_tokens"]
        assert p.stdout.decode("utf-8").strip() == j["generated_text"].strip()
        assert "prefill" in p.stderr.decode() and "tokens/s" in p.stderr.decode()
        print(f"{name}: {j['n_prompt_tokens']} tokens, {j['prefill_tokens_per_s']:.0f} tok/s prefill -> {j['generated_text'][:80]!r}")
        ran += 1
sys.exit(0 if ran else SKIP)
