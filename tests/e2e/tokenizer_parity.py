"""Token ids of dashlm equal llama.cpp's (llama-cpp-python) on real and tricky texts, for every
model present: SmolLM2 (byte-level BPE, smollm pre-tokenizer), Gemma 3 (SentencePiece-style with
user-defined tokens), the Qwen2.5 models (qwen2 pre-tokenizer) and stories260K (llama2.c)."""
import glob
import os
import subprocess
import sys

from common import SKIP, args

dashlm, shared, src = args()
try:
    import llama_cpp  # noqa: F401
    import gguf  # noqa: F401
except ImportError as e:
    print(f"SKIP: {e.name} is not installed")
    sys.exit(SKIP)
st = os.path.join(shared, "models", "stories260K")
models = sorted(glob.glob(os.path.join(src, "models", "*.gguf")))
models.append(os.path.join(st, "stories260K.bin") + ":" + os.path.join(st, "tok512.bin"))
extra = ["--with-pre", "default,gpt-2,llama-bpe,qwen2"] if any("SmolLM2" in m for m in models) else []
p = subprocess.run([sys.executable, os.path.join(src, "scripts", "tokenizer-parity"), "--dashlm", dashlm, "--fuzz", "6",
                    *extra, *models], capture_output=True, text=True)
print(p.stdout[-6000:])
print(p.stderr[-2000:], file=sys.stderr)
sys.exit(p.returncode)
