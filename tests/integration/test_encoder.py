import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgecache import ModelNotBuiltError
from edgecache.encoder import current_model_dir, load_encoder

pytestmark = pytest.mark.integration


def test_vectors_are_unit_and_batch_matches_single():
    enc = load_encoder()
    texts = ["hi", "How do I enable two-factor authentication?", "What is the capital of France?"]
    batch = enc.encode(texts)
    assert batch.shape == (3, 384)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-3)
    single = np.stack([enc.encode(t) for t in texts])
    # A text's vector is a function of the text alone, not of what it was encoded beside.
    assert np.array_equal(batch, single)
    assert np.array_equal(enc.encode(texts[::-1])[::-1], batch)


def test_built_graph_runs_fused_attention_and_matches_the_shipped_projections():
    import json

    import onnx

    from edgecache.projection import shipped

    folder = current_model_dir()
    manifest = json.loads((folder / "manifest.json").read_text())
    ops = [n.op_type for n in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node]
    # One fused (quantized) attention per transformer layer: the unfused MatMul/Softmax chain is gone.
    assert manifest["fused_ops"]["Attention"] == ops.count("QAttention") == 6
    assert "Softmax" not in ops
    # Residual adds stay unfused (the fused kernel is the slower one), and stay so once loaded.
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 12
    # The pinned build reproduces the graph the shipped projections were fitted on.
    assert shipped("learned-64").info["fitted_on_encoder"] == manifest["sha256"]


def test_paraphrase_is_nearer_than_unrelated():
    enc = load_encoder()
    a, b, c = enc.encode(
        [
            "How can I lose weight fast?",
            "What is the quickest way to lose weight?",
            "Who won the world cup in 2010?",
        ]
    )
    assert a @ b > 0.8 > 0.3 > a @ c


def test_long_input_is_flagged_truncated():
    enc = load_encoder()
    out = enc.encode_detailed(["short one", "word " * 600])
    assert out.truncated == [False, True]


def test_missing_model_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECACHE_HOME", str(tmp_path))
    with pytest.raises(ModelNotBuiltError, match="edgecache model build"):
        load_encoder()


def test_tampered_model_is_refused(tmp_path, monkeypatch):
    src = current_model_dir()
    dst = tmp_path / "models" / "minilm-l6-int8"
    shutil.copytree(src.parent, dst)
    model = dst / src.name / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    monkeypatch.setenv("EDGECACHE_HOME", str(tmp_path))
    with pytest.raises(ModelNotBuiltError, match="does not match"):
        load_encoder()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "tokenizer.json").unlink(), "cannot read the tokenizer"),
        (lambda d: (d / "tokenizer.json").write_text("{garbled"), "cannot read the tokenizer"),
        (lambda d: (d / "manifest.json").write_text("{}"), "manifest"),
    ],
)
def test_a_damaged_model_folder_says_how_to_rebuild(tmp_path, monkeypatch, damage, message):
    src = current_model_dir()
    dst = tmp_path / "models" / "minilm-l6-int8"
    shutil.copytree(src.parent, dst)
    damage(dst / src.name)
    monkeypatch.setenv("EDGECACHE_HOME", str(tmp_path))
    with pytest.raises(ModelNotBuiltError, match=message) as err:
        load_encoder()
    assert "edgecache model build" in str(err.value)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(), timeout=120
    )


def test_public_api_in_the_fatal_order_does_not_crash():
    # vector index (usearch) first, encoder (onnxruntime) second: the order that segfaults raw.
    out = _run(
        "from edgecache.vectorindex import VectorIndex\n"
        "from edgecache.encoder import load_encoder\n"
        "import numpy as np\n"
        "i = VectorIndex(384); e = load_encoder(); i.add(1, e.encode('hello'))\n"
        "print(len(i))"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_user_importing_usearch_first_gets_an_error_not_a_crash():
    out = _run("import usearch\nimport edgecache")
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert "Import edgecache (or onnxruntime) before usearch" in out.stderr


def test_recent_texts_skip_the_model_and_the_lru_is_bounded():
    from edgecache.embedder import ProjectedEncoder
    from edgecache.projection import shipped

    enc = load_encoder()
    embedder = ProjectedEncoder(enc, shipped("learned-64"), recent_size=2)
    calls = []
    real = enc.encode_detailed
    enc.encode_detailed = lambda texts: calls.append(list(texts)) or real(texts)
    first = embedder.embed(["alpha question", "beta question"]).vectors
    again = embedder.embed(["beta question", "alpha question"]).vectors
    assert calls == [["alpha question", "beta question"]]
    assert np.array_equal(first[::-1], again)
    embedder.embed(["gamma question"])  # evicts beta, the least recently used
    embedder.embed(["beta question"])
    assert calls[-1] == ["beta question"] and len(embedder._recent) == 2


def test_the_runtime_does_not_fuse_the_residual_adds_again(tmp_path):
    import onnx
    import onnxruntime as ort

    from edgecache.encoder import UNFUSED_AT_LOAD

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(
        str(current_model_dir() / "model.onnx"),
        sess_options=options,
        providers=["CPUExecutionProvider"],
        disabled_optimizers=list(UNFUSED_AT_LOAD),
    )
    ops = [n.op_type for n in onnx.load(str(tmp_path / "loaded.onnx")).graph.node]
    assert "SkipLayerNormalization" not in ops and ops.count("LayerNormalization") == 12
