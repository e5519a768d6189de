"""The Lambda layer built by functions/build_layer.py runs on its own.

Builds the x86_64 lambda layer into a temp folder (pip resolves the python3.12 wheels from the
index), unzips it, and starts a fresh python3.12 whose only non-stdlib path is the layer:
import edgecache + the handler, load the packaged encoder, lookup/insert/lookup, /health.
Needs python3.12 (pyenv) and the package index; skips, saying which, when either is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgecache.encoder import current_model_dir

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NETWORK_ERRORS = (
    "Could not fetch URL",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


def _builder():
    spec = importlib.util.spec_from_file_location("build_layer", REPO / "functions" / "build_layer.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_layer", module)
    spec.loader.exec_module(module)
    return module


def _index_unreachable(bl, tmp: Path) -> str | None:
    """Why pip cannot fetch a cp312 manylinux wheel from the index, or None if it can."""
    req = next(r for r in bl.runtime_requirements() if bl.requirement_name(r) == "msgpack")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
        "--timeout", "15", "--retries", "1", "-d", str(tmp),
        "--python-version", bl.PY_VERSION, "--implementation", "cp", "--only-binary=:all:",
        "--platform", f"manylinux_2_{bl.MANYLINUX_MAX}_x86_64", "--platform", "manylinux2014_x86_64",
        "--platform", "manylinux_2_17_x86_64", req,
    ]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "pip download timed out"
    if out.returncode == 0:
        return None
    text = out.stdout + out.stderr
    if any(marker in text for marker in NETWORK_ERRORS):
        return "pip cannot reach the package index: " + text.strip().splitlines()[-1][:200]
    # Reachable but failing is a real problem with the pins or the platform flags.
    pytest.fail(f"pip download {req} failed with the index reachable:\n{text[-2000:]}")


def test_lambda_layer_runs_from_its_contents_alone(tmp_path):
    bl = _builder()
    python = bl.find_python312()
    if python is None:
        pytest.skip("python3.12 is not installed (the layer targets the python3.12 Lambda runtime)")
    reason = _index_unreachable(bl, tmp_path / "probe")
    if reason:
        pytest.skip(reason)
    current_model_dir()  # the encoder must be built (scripts/setup), as for the other integration tests

    started = time.perf_counter()
    report = bl.build("x86_64", tmp_path / "out", "lambda", python=python)
    bundle = bl.unzip(Path(report.zip_path), tmp_path / "unzipped")
    res = bl.run_probe(bundle, python, handler=True)
    elapsed = time.perf_counter() - started

    assert res["python"].startswith("3.12")
    assert res["miss_first"] and res["hit"], res
    assert res["health"] == 200
    assert res["outside_bundle"] == [], "modules loaded from outside the layer and the stdlib"
    assert not res["boto3_loaded"] and not res["torch_loaded"]
    assert res["model_dir"].startswith(str(bundle / bl.LAYER_HOME))
    assert res["edgecache_pyc"].endswith(".cpython-312.pyc")
    unzipped = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert unzipped == report.unzipped_bytes
    assert unzipped < 250 * 2**20, f"{unzipped / 1e6:.1f} MB unzipped: over Lambda's 250 MiB"
    assert report.elf.get("glibc_ok_2_28") in (True, None), report.elf
    names = {p.name for p in (bundle / bl.LAYER_PYTHON).iterdir()}
    assert {"edgecache", "edgecache_functions", "onnxruntime", "numpy", "usearch", "tokenizers"} <= names
    assert not names & {"boto3", "botocore", "huggingface_hub", "torch", "bin"}
    print(
        f"layer {report.unzipped_bytes / 1e6:.1f} MB unzipped / {report.zipped_bytes / 1e6:.1f} MB zipped; "
        f"cold start {res['total_ms']:.0f} ms; build+check {elapsed:.0f} s"
    )
