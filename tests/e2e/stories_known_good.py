"""stories260K, BOS only, greedy, 200 steps (BOS then 200 new tokens, as llama2.c counts them): exactly llama2.c's known-good text."""
import os
import re
import tempfile

from common import args, load_json, run

dashlm, shared, _ = args()
models = os.path.join(shared, "models")
readme = open(os.path.join(models, "README.md"), encoding="utf-8").read()
block = readme.split("Known-good output", 1)[1]
expected = "\n".join(l[4:] for l in block.splitlines() if l.startswith("    ")).strip("\n")
assert expected.startswith("Once upon a time"), expected[:80]

model = os.path.join(models, "stories260K", "stories260K.bin")
tok = os.path.join(models, "stories260K", "tok512.bin")
with tempfile.TemporaryDirectory() as d:
    js = os.path.join(d, "out.json")
    p = run(dashlm, "run", "-m", model, "--tokenizer", tok, "--prompt-ids", "1", "-n", "200", "--temp", "0",
            "--ignore-eos", "--threads", "2", "--json", js)
    out = p.stdout.decode("utf-8").rstrip("\n")
    if out != expected:
        import difflib
        print("\n".join(difflib.unified_diff(expected.splitlines(), out.splitlines(), "expected", "dashlm", lineterm="")))
        raise SystemExit("stories260K output differs from the known-good text")
    j = load_json(js)
    assert j["n_generated_tokens"] == 200, j["n_generated_tokens"]
    assert j["generated_text"].rstrip("\n") == expected
    assert j["arch"] == "llama" and j["n_layers"] == 5 and j["n_prompt_tokens"] == 1
print("stories260K known-good output: identical")
