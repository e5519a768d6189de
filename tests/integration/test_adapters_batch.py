"""The TFUP batch image job (edgecache.adapters.batch) on a real local Ray cluster bound to
127.0.0.1, with the tiny random open_clip model: mechanics only (accuracies are meaningless).

Input: 30 CIFAR-10 test JPEGs of each of 4 classes from ../shared/data/images/cifar10_test (copied
into tmp_path, never into the repo), two re-encoded variants (grayscale PNG, RGBA PNG at another
size) and five files that are not images. One Ray start for the module; the S3 run uses the
session's moto server (tests/integration/aws/conftest.py) as the S3 endpoint.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")
pytest.importorskip("ray.data")
pyarrow_parquet = pytest.importorskip("pyarrow.parquet")

from edgecache.adapters import TFUPAdapter  # noqa: E402
from edgecache.adapters.batch import (  # noqa: E402
    BatchJobConfig,
    BatchJobError,
    list_inputs,
    run_batch_job,
)
from edgecache.errors import ConfigError, InvalidInputError  # noqa: E402
from tests.helpers import shared_data  # noqa: E402

# The session's AWS fixtures (dummy credentials, moto server on 127.0.0.1), used here too.
from tests.integration.aws.conftest import aws, aws_endpoint, aws_env  # noqa: E402, F401
from tests.integration.processes import descendants, established, is_loopback, local_ray  # noqa: E402

pytestmark = pytest.mark.integration

CLASSES = ["cat", "dog", "ship", "truck"]
PER_CLASS = 30
TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}."]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    src = shared_data("images", "cifar10_test")
    root = tmp_path_factory.mktemp("images")
    valid = []
    for c in CLASSES:
        files = sorted((src / c).glob("*.jpg"))[:PER_CLASS]
        if len(files) < PER_CLASS:
            pytest.skip(f"fewer than {PER_CLASS} images for {c} under {src}")
        (root / c).mkdir()
        for f in files:
            (root / c / f.name).write_bytes(f.read_bytes())
            valid.append(str(root / c / f.name))
    other = src / "bird" / "0000.jpg"
    with Image.open(other) as im:
        im.convert("L").save(root / "gray.png")
        im.convert("RGBA").resize((64, 48)).save(root / "rgba_64x48.png")
    valid += [str(root / "gray.png"), str(root / "rgba_64x48.png")]
    jpeg = (src / "cat" / "0999.jpg").read_bytes()
    (root / "junk").mkdir()
    bad = {
        root / "truncated.jpg": jpeg[:200],
        root / "empty.png": b"",
        root / "notes.txt": b"class names go in a file, not here\n",
        root / "junk" / "fake.png": b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        root / "junk" / "data.bin": os.urandom(512),
    }
    for path, blob in bad.items():
        path.write_bytes(blob)
    (root / ".hidden.jpg").write_bytes(jpeg)  # hidden files are not inputs
    return {"root": root, "valid": sorted(valid), "bad": sorted(str(p) for p in bad)}


@pytest.fixture(scope="module")
def ray_cluster(aws_endpoint):  # noqa: F811 - the imported fixture
    # The AWS environment first: Ray's workers inherit it (dummy credentials, no real account).
    # And the moto server too: started later, by the S3 test, it would be among the processes
    # local_ray finds left behind.
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("another Ray instance is connected in this process")
    with local_ray(num_cpus=2) as run:
        yield run.ray


@pytest.fixture(scope="module")
def backend():
    from edgecache.adapters.openclip import OpenCLIPBackend

    return OpenCLIPBackend.tiny(seed=0)


def _check_rows(rows: list[dict], valid: list[str], k: int) -> None:
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "an image was classified more than once"
    assert sorted(paths) == valid
    for r in rows:
        assert r["label"] in CLASSES and r["zero_shot_label"] in CLASSES
        assert 0 < r["score"] <= 1 and 0 < r["zero_shot_score"] <= 1
        top = r["top_k"]
        assert len(top) == k and top[0]["label"] == r["label"]
        assert top[0]["score"] == pytest.approx(r["score"])
        scores = [t["score"] for t in top]
        assert scores == sorted(scores, reverse=True) and len({t["label"] for t in top}) == k


def test_config_errors(images, tmp_path):
    ok = {"input": str(images["root"]), "output": str(tmp_path / "o.jsonl"), "class_names": ("a", "b")}
    for bad, match in [
        ({"output": str(tmp_path / "o.csv")}, "output format"),
        ({"class_names": ()}, "class_names"),
        ({"class_names": ("a", "a")}, "duplicate"),
        ({"templates": ("a photo",)}, "templates"),
        ({"engine": "tensorrt"}, "engine"),
        ({"top_k": 3}, "top_k"),
        ({"model": "tiny", "checkpoint": "x.pt"}, "tiny"),
        ({"input": "gs://bucket/x"}, "unsupported location"),
        ({"address": "auto", "num_cpus": 2}, "num_cpus"),
    ]:
        with pytest.raises(ConfigError, match=match):
            BatchJobConfig(**{**ok, **bad})
    with pytest.raises(ConfigError, match="not found"):
        list_inputs(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="no input files"):
        run_batch_job(BatchJobConfig(**{**ok, "input": str(tmp_path / "empty")}), progress=None)
    listed = list_inputs(str(images["root"]))
    assert listed == sorted(images["valid"] + images["bad"])  # the hidden file is not listed
    assert list_inputs(str(images["root"]), extensions=["png"]) == sorted(
        p for p in images["valid"] + images["bad"] if p.endswith(".png")
    )


def test_jsonl_torch_two_passes(images, ray_cluster, backend, tmp_path):
    out = tmp_path / "labels.jsonl"
    lines: list[str] = []
    summary = run_batch_job(
        BatchJobConfig(
            input=str(images["root"]),
            output=str(out),
            class_names=tuple(CLASSES),
            templates=tuple(TEMPLATES),
            engine="torch",
            top_k=3,
            save_adapter=str(tmp_path / "cifar4.tfup"),
            include_embeddings=True,
            batch_size=32,
        ),
        progress=lines.append,
    )
    valid, bad = images["valid"], images["bad"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    _check_rows(rows, valid, 3)

    # Every non-image is reported with its reason and counted, and nothing else is.
    assert summary.files == len(valid) + len(bad)
    assert summary.classified == len(rows) == len(valid) and summary.skipped == len(bad)
    assert sorted(e["path"] for e in summary.errors) == bad and all(e["reason"] for e in summary.errors)
    reasons = {Path(e["path"]).name: e["reason"] for e in summary.errors}
    assert "empty" in reasons["empty.png"] and "not a decodable image" in reasons["truncated.jpg"]
    saved = json.loads(Path(summary.summary_path).read_text())
    assert saved["skipped"] == len(bad) and saved["classified"] == len(valid)
    assert any(str(len(bad)) in m and "skipped" in m for m in lines)  # the summary line says how many

    # Pass 1 embedded exactly what the in-process model embeds.
    emb = np.asarray([r["embedding"] for r in rows], dtype=np.float32)
    ref = backend.embed([Path(r["path"]).read_bytes() for r in rows])
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    # The cache was fitted (selection on the driver's candidate pool) as TFUPAdapter.fit on all
    # embeddings fits it, and pass 2 classified every image with it.
    w = backend.class_embeddings(CLASSES, TEMPLATES)
    full = TFUPAdapter.fit(w, emb, fingerprint=backend.fingerprint, class_names=CLASSES)
    adapter = TFUPAdapter.load(tmp_path / "cifar4.tfup", fingerprint=backend.fingerprint)
    assert summary.cache_size == adapter.keys.shape[0] == full.keys.shape[0] == summary.shots * len(CLASSES)
    as_set = {tuple(np.round(k, 5)) for k in adapter.keys}
    assert as_set == {tuple(np.round(k, 5)) for k in full.keys}
    proba = full.predict_proba(emb)
    zero = full.zero_shot_logits(emb).argmax(axis=1)
    assert [r["label"] for r in rows] == [CLASSES[i] for i in proba.argmax(axis=1)]
    assert [r["zero_shot_label"] for r in rows] == [CLASSES[i] for i in zero]
    np.testing.assert_allclose([r["score"] for r in rows], proba.max(axis=1), atol=1e-5)
    assert summary.changed_by_tfup == sum(r["label"] != r["zero_shot_label"] for r in rows)
    assert summary.pass1_s > 0 and summary.pass2_s > 0 and summary.embed_images_per_s > 0
    assert 0 < summary.embed_busy_s < summary.pass1_s * summary.actors and summary.read_busy_s > 0

    # Ray traffic stayed on loopback: every established TCP connection of this process and of
    # the processes Ray started is 127.0.0.1 <-> 127.0.0.1.
    peers = established({os.getpid(), *descendants(os.getpid())})
    assert peers, "no TCP connections seen: the check would prove nothing"
    assert all(is_loopback(a) and is_loopback(b) for a, b in peers), peers


def test_parquet_onnx_via_cli(images, ray_cluster, tmp_path):
    from edgecache.cli import main

    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# CIFAR-10 subset\n" + "\n".join(CLASSES) + "\n")
    templates_file = tmp_path / "templates.json"
    templates_file.write_text(json.dumps(TEMPLATES))
    out = tmp_path / "labels.parquet"
    rc = main(
        [
            "adapters",
            "classify-images",
            "--input",
            str(images["root"]),
            "--output",
            str(out),
            "--classes-file",
            str(classes_file),
            "--templates-file",
            str(templates_file),
            "--engine",
            "onnx",
            "--onnx-path",
            str(tmp_path / "tower.onnx"),
            "--batch-size",
            "48",
            "--quiet",
        ]
    )
    assert rc == 0
    table = pyarrow_parquet.read_table(out)
    assert table.column_names == ["path", "label", "score", "zero_shot_label", "zero_shot_score", "top_k"]
    rows = table.to_pylist()
    _check_rows(rows, images["valid"], 4)
    summary = json.loads(Path(str(out) + ".summary.json").read_text())
    assert summary["engine"] == "onnx" and summary["skipped"] == len(images["bad"])
    assert summary["classified"] == len(images["valid"]) and (tmp_path / "tower.onnx").is_file()
    assert sorted(e["path"] for e in summary["errors"]) == images["bad"]
    assert summary["cache_size"] == summary["shots"] * len(CLASSES)
    assert sum(summary["label_counts"].values()) == len(images["valid"])


def test_s3_in_and_out(images, ray_cluster, aws, tmp_path):  # noqa: F811 - the imported fixture
    prefix = f"photos-{uuid.uuid4().hex[:8]}/"
    root = images["root"]
    keys = {}
    for path in images["valid"] + images["bad"]:
        key = prefix + Path(path).relative_to(root).as_posix()
        aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=Path(path).read_bytes())
        keys[f"s3://{aws.bucket}/{key}"] = path
    out_url = f"s3://{aws.bucket}/results/{prefix}labels.jsonl"
    summary = run_batch_job(
        BatchJobConfig(
            input=f"s3://{aws.bucket}/{prefix}",
            output=out_url,
            class_names=tuple(CLASSES),
            templates=tuple(TEMPLATES),
            endpoint_url=aws.endpoint,
            save_adapter=f"s3://{aws.bucket}/results/{prefix}cifar4.tfup",
            top_k=2,
        ),
        progress=None,
    )
    body = aws.s3.get_object(Bucket=aws.bucket, Key=f"results/{prefix}labels.jsonl")["Body"].read()
    rows = [json.loads(line) for line in body.decode().splitlines()]
    valid_urls = sorted(u for u, p in keys.items() if p in images["valid"])
    _check_rows(rows, valid_urls, 2)
    assert summary.skipped == len(images["bad"]) and summary.classified == len(images["valid"])
    assert sorted(keys[e["path"]] for e in summary.errors) == images["bad"]
    remote = aws.s3.get_object(Bucket=aws.bucket, Key=f"results/{prefix}labels.jsonl.summary.json")
    assert json.loads(remote["Body"].read())["skipped"] == len(images["bad"])
    blob = aws.s3.get_object(Bucket=aws.bucket, Key=f"results/{prefix}cifar4.tfup")["Body"].read()
    assert TFUPAdapter.from_bytes(blob).keys.shape[0] == summary.cache_size
    with pytest.raises(BatchJobError, match="cannot list"):
        list_inputs("s3://no-such-bucket-here/x", endpoint_url=aws.endpoint)


def test_only_corrupt_files(images, ray_cluster, tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i, path in enumerate(images["bad"]):
        (root / f"{i}_{Path(path).name}").write_bytes(Path(path).read_bytes())
    out = tmp_path / "none.jsonl"
    with pytest.raises(BatchJobError, match=f"none of the input files.*{len(images['bad'])} skipped"):
        run_batch_job(
            BatchJobConfig(input=str(root), output=str(out), class_names=tuple(CLASSES)), progress=None
        )
    assert not out.exists()
