"""The batch job's driver-side pieces, without Ray or torch: the streamed candidate pool that
replaces a fit over every embedding, locations, class/template files, configuration."""

from __future__ import annotations

import numpy as np
import pytest

from edgecache.adapters import TFUPAdapter, TFUPConfig
from edgecache.adapters.batch import BatchJobConfig, ImageLocation, fit_from_batches
from edgecache.adapters.cli import read_list_file
from edgecache.errors import ConfigError


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "classes", "batch", "tfup"), [(3000, 7, 256, TFUPConfig()), (90, 12, 7, TFUPConfig(shots=5))]
)
def test_streamed_pool_fits_the_same_cache(n, classes, batch, tfup):
    rng = np.random.default_rng(n)
    w = _unit(rng.normal(size=(classes, 16)))
    # clustered around the classes, so that confidences differ and selection matters
    f = _unit(w[rng.integers(0, classes, n)] + 0.8 * rng.normal(size=(n, 16)))
    bad = set(rng.choice(n, size=n // 10, replace=False).tolist())
    rows = [
        {
            "path": np.asarray([f"img{i}" for i in range(s, min(n, s + batch))], dtype=object),
            "embedding": f[s : s + batch],
            "error": np.asarray(
                ["broken" if i in bad else "" for i in range(s, min(n, s + batch))], dtype=object
            ),
        }
        for s in range(0, n, batch)
    ]
    names = [f"c{i}" for i in range(classes)]
    config = BatchJobConfig(input="in/", output="out.jsonl", class_names=tuple(names), tfup=tfup)
    p1 = fit_from_batches(iter(rows), w, config, "fp", lambda _m: None)
    adapter, valid, errors, shots = p1.adapter, p1.valid, p1.errors, p1.shots
    good = np.asarray([i not in bad for i in range(n)])
    full = TFUPAdapter.fit(w, f[good], tfup, "fp", names)
    assert valid == good.sum() and sorted(e["path"] for e in errors) == sorted(f"img{i}" for i in bad)
    assert shots == full.selection.shots and adapter.config == tfup and adapter.class_names == names
    np.testing.assert_array_equal(adapter.keys, full.keys)
    np.testing.assert_array_equal(adapter.labels, full.labels)
    test = f[:50]
    np.testing.assert_array_equal(adapter.predict_proba(test), full.predict_proba(test))


def test_nothing_decodable_is_an_error():
    from edgecache.adapters.batch import BatchJobError

    config = BatchJobConfig(input="in/", output="out.parquet", class_names=("a", "b"))
    rows = [
        {
            "path": np.asarray(["x"], dtype=object),
            "embedding": np.zeros((1, 4), np.float32),
            "error": np.asarray(["bad"], dtype=object),
        }
    ]
    with pytest.raises(BatchJobError, match="none of the input files"):
        fit_from_batches(rows, _unit(np.eye(2, 4)), config, "", lambda _m: None)


def test_locations():
    assert ImageLocation.parse("s3://b/some/prefix/") == ImageLocation("b", "some/prefix/")
    assert ImageLocation.parse("s3://b") == ImageLocation("b", "")
    assert str(ImageLocation.parse("s3://b/k")) == "s3://b/k" and not ImageLocation.parse("a/b").is_s3
    for bad in ("", "s3://", "s3:///key", "gs://b/k", "http://x/y"):
        with pytest.raises(ConfigError):
            ImageLocation.parse(bad)


def test_config_output_format_and_defaults():
    base = {"input": "in/", "class_names": ("a", "b", "c")}
    assert BatchJobConfig(output="x.jsonl", **base).output_format == "jsonl"
    assert BatchJobConfig(output="s3://b/x.parquet", **base).output_format == "parquet"
    assert BatchJobConfig(output="x.out", output_format="parquet", **base).output_format == "parquet"
    cfg = BatchJobConfig(output="x.jsonl", **base)
    assert cfg.top_k == 3 and cfg.resolved_summary_path == "x.jsonl.summary.json"
    for bad in ({"actors": 0}, {"actor_cpus": 0}, {"read_cpus": float("nan")}, {"batch_size": True}):
        with pytest.raises(ConfigError):
            BatchJobConfig(output="x.jsonl", **base, **bad)
    with pytest.raises(ConfigError, match="onnx_path"):
        BatchJobConfig(output="x.jsonl", onnx_path="t.onnx", **base)
    with pytest.raises(ConfigError, match="not both"):
        BatchJobConfig(output="x.jsonl", model="ViT-B-32", pretrained="tag", checkpoint="c.pt", **base)


def test_read_list_file(tmp_path):
    txt = tmp_path / "classes.txt"
    txt.write_text("# animals\ncat\n\n  dog  \n# more\nsea turtle\n")
    assert read_list_file(str(txt), "class names") == ["cat", "dog", "sea turtle"]
    js = tmp_path / "t.json"
    js.write_text('["a photo of a {}.", "art of a {}."]')
    assert read_list_file(str(js), "templates") == ["a photo of a {}.", "art of a {}."]
    js.write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="JSON list"):
        read_list_file(str(js), "templates")
    js.write_text("[oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_list_file(str(js), "templates")
    with pytest.raises(ConfigError, match="cannot read"):
        read_list_file(str(tmp_path / "missing.txt"), "class names")


def _rows(n: int, dim: int = 4) -> dict[str, np.ndarray]:
    return {
        "path": np.asarray([f"img{i}.jpg" for i in range(n)], dtype=object),
        "label": np.asarray(["a"] * n, dtype=object),
        "score": np.full(n, 0.9),
        "zero_shot_label": np.asarray(["b"] * n, dtype=object),
        "zero_shot_score": np.full(n, 0.6),
        "top_k_labels": np.asarray([["a", "b"]] * n, dtype=object),
        "top_k_scores": np.full((n, 2), 0.5),
        "embedding": np.zeros((n, dim), np.float32),
    }


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_aborted_output_leaves_no_file(tmp_path, fmt):
    from edgecache.adapters.batch.output import ResultWriter

    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / "sub" / f"labels.{fmt}"
    config = BatchJobConfig(input="in/", output=str(out), class_names=("a", "b"))
    writer = ResultWriter(config, dim=4)
    writer.write(_rows(3))
    writer.abort()  # the job failed mid-write
    assert list(out.parent.iterdir()) == []

    writer = ResultWriter(config, dim=4)
    writer.write(_rows(2))
    writer.commit()
    first = out.read_bytes()
    assert list(out.parent.iterdir()) == [out] and first

    writer = ResultWriter(config, dim=4)  # a later run that fails keeps the earlier output
    writer.write(_rows(5))
    writer.abort()
    assert list(out.parent.iterdir()) == [out] and out.read_bytes() == first
