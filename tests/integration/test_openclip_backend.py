"""open_clip backend of the TFUP adapter on a tiny randomly initialised CLIP (no weights exist
here): mechanics only, accuracies are meaningless. Needs torch + open_clip_torch."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from edgecache.adapters import TFUPAdapter, TFUPConfig
from edgecache.adapters.openclip import (
    InvalidImageError,
    OnnxImageBackend,
    OpenCLIPBackend,
    WeightsUnavailableError,
    export_image_onnx,
)
from edgecache.adapters.serve import FeatureBackend
from edgecache.errors import ConfigError, InvalidInputError
from tests.helpers import shared_data

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8


@pytest.fixture(scope="module")
def backend():
    return OpenCLIPBackend.tiny(seed=0)


@pytest.fixture(scope="module")
def cifar():
    root = shared_data("images", "cifar10_test")
    blobs, labels = [], []
    for c, name in enumerate(CIFAR10):
        files = sorted((root / name).glob("*.jpg"))[:20]
        if not files:
            pytest.skip(f"no images for {name} under {root}")
        blobs += [f.read_bytes() for f in files]
        labels += [c] * len(files)
    return blobs, np.asarray(labels)


def test_protocol_and_fingerprint(backend):
    assert isinstance(backend, FeatureBackend)
    assert backend.modalities == {"image", "text"}
    assert backend.fingerprint == OpenCLIPBackend.tiny(seed=0).fingerprint
    assert backend.fingerprint != OpenCLIPBackend.tiny(seed=1).fingerprint


def test_embed_images_texts_and_corrupt_bytes(backend, cifar):
    blobs, _ = cifar
    f = backend.embed(blobs[:5])
    assert f.shape == (5, backend.dim) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    mixed = backend.embed(["a photo of a cat", blobs[0]])
    np.testing.assert_allclose(mixed[1], f[0], atol=1e-6)
    np.testing.assert_allclose(mixed[0], backend.embed_texts(["a photo of a cat"])[0], atol=1e-6)

    with pytest.raises(InvalidImageError, match="item 2: not a decodable image") as info:
        backend.embed([blobs[0], blobs[1], CORRUPT])
    assert isinstance(info.value, InvalidInputError) and info.value.index == 2
    with pytest.raises(InvalidImageError):
        backend.embed([b""])
    emb, kept, errors = backend.embed_images([blobs[0], CORRUPT, blobs[1]], skip_invalid=True)
    assert emb.shape == (2, backend.dim) and kept.tolist() == [0, 2]
    assert [e.index for e in errors] == [1]


def test_class_embeddings_and_tfup_fit(backend, cifar):
    blobs, labels = cifar
    w = backend.class_embeddings(CIFAR10, ["a photo of a {}.", "a blurry photo of a {}."])
    assert w.shape == (10, backend.dim)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)
    feats = backend.embed(blobs)
    assert feats.shape == (200, backend.dim)
    adapter = TFUPAdapter.fit(w, feats, TFUPConfig(), backend.fingerprint, CIFAR10)
    assert adapter.fingerprint == backend.fingerprint
    assert adapter.keys.shape[0] == 10 * adapter.selection.shots
    pred = adapter.predict(feats)
    assert pred.shape == labels.shape and set(pred.tolist()) <= set(range(10))


def test_onnx_export_matches_torch(backend, cifar, tmp_path):
    blobs, _ = cifar
    report = export_image_onnx(backend, tmp_path / "tiny.onnx")
    assert report.opset >= 17 and report.min_cosine >= 0.9999
    onnx_backend = OnnxImageBackend(report.path, threads=2)
    assert isinstance(onnx_backend, FeatureBackend)
    assert onnx_backend.fingerprint == backend.fingerprint and onnx_backend.dim == backend.dim
    a, b = backend.embed(blobs[:37]), onnx_backend.embed(blobs[:37])  # own numpy preprocessing
    assert (a * b).sum(axis=1).min() > 0.9999
    c = OnnxImageBackend(report.path, preprocess=backend.preprocess).embed(blobs[:5])
    assert (a[:5] * c).sum(axis=1).min() > 0.9999
    with pytest.raises(InvalidImageError):
        onnx_backend.embed([CORRUPT])
    with pytest.raises(InvalidInputError):
        onnx_backend.embed(["text"])
    fixed = export_image_onnx(backend, tmp_path / "tiny8.onnx", batch=8)
    d = OnnxImageBackend(fixed.path).embed(blobs[:11])  # padded last chunk
    assert (a[:11] * d).sum(axis=1).min() > 0.9999


def test_local_checkpoint_and_errors(backend, tmp_path):
    import torch

    path = tmp_path / "tiny.pt"
    torch.save(backend.model.state_dict(), path)
    loaded = OpenCLIPBackend.from_pretrained(backend.model_name, str(path))
    assert loaded.fingerprint == backend.fingerprint
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        OpenCLIPBackend.from_pretrained(backend.model_name, str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="no pretrained tag"):
        OpenCLIPBackend.from_pretrained("ViT-B-32", "no-such-tag")
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        OpenCLIPBackend.from_pretrained("no-such-model", None)
    assert issubclass(WeightsUnavailableError, RuntimeError)
