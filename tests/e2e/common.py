"""Helpers for the end-to-end tests: run the real dashlm binary and check what it did."""
import json
import os
import subprocess
import sys

SKIP = 77  # ctest's SKIP_RETURN_CODE for these tests


def args():
    """argv: dashlm binary, shared folder, source folder."""
    if len(sys.argv) < 4:
        sys.exit("usage: test.py DASHLM SHARED_DIR SOURCE_DIR")
    return sys.argv[1], sys.argv[2], sys.argv[3]


def run(binary, *cli, timeout=600, check=True):
    p = subprocess.run([binary, *cli], capture_output=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"dashlm {' '.join(cli)} failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    return p


def expect_error(binary, *cli, contains=None, timeout=120):
    """The command must fail cleanly: non-zero exit (not a signal), one 'error:' line on stderr."""
    p = subprocess.run([binary, *cli], capture_output=True, timeout=timeout)
    err = p.stderr.decode(errors="replace").strip()
    assert p.returncode > 0, f"expected a failure exit for {cli}, got {p.returncode}; stderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line for {cli}, got: {err!r}"
    if contains:
        assert contains.lower() in err.lower(), f"expected {contains!r} in {err!r}"
    print(f"ok  {' '.join(str(c) for c in cli)[:90]}\n    -> {err[:150]}")
    return err


def model_or_skip(source_dir, filename):
    path = os.path.join(source_dir, "models", filename)
    if not os.path.exists(path):
        print(f"SKIP: {path} not present (scripts/get-model downloads it)")
        sys.exit(SKIP)
    return path


def load_json(path):
    with open(path) as f:
        return json.load(f)
