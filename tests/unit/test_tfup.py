"""TFUP core (edgecache.adapters.tfup) on synthetic embeddings: hermetic, no encoder."""

from __future__ import annotations

import dataclasses

import msgpack
import numpy as np
import pytest

from edgecache.adapters import tfup
from edgecache.adapters.tfup import (
    AdapterFileError,
    TFUPAdapter,
    TFUPConfig,
    ensemble_prompts,
    msm_cache_logits,
    paper_shots,
    select_representatives,
    semantic_similarity,
    zero_shot_logits,
)
from edgecache.errors import ConfigError, InvalidInputError, SnapshotError

TUNED = TFUPConfig(alpha=10.0, beta=5.5)


def clusters(seed: int = 0, classes: int = 6, dim: int = 32, per_class: int = 60, sigma: float = 0.15):
    """Gaussian clusters around orthonormal class directions; the "text" embedding of class c
    leans towards class c+1, so zero-shot confuses c with c-1 while the clusters stay apart."""
    rng = np.random.default_rng(seed)
    mu = np.linalg.qr(rng.normal(size=(dim, classes)))[0].T
    y = np.repeat(np.arange(classes), per_class)
    x = mu[y] + sigma * rng.normal(size=(y.size, dim))
    w = mu + 0.8 * np.roll(mu, -1, axis=0) + 0.1 * rng.normal(size=(classes, dim))
    return x.astype(np.float32), y, w.astype(np.float32)


def accuracy(pred, y) -> float:
    return float((pred == y).mean())


def _unit(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ it works


@pytest.mark.parametrize("config", [TFUPConfig(), TUNED], ids=["paper-defaults", "tuned"])
def test_tfup_improves_over_biased_zero_shot(config):
    x, y, w = clusters()
    adapter = TFUPAdapter.fit(w, x, config)
    zs = accuracy(adapter.zero_shot_logits(x).argmax(1), y)
    tf = accuracy(adapter.predict(x), y)
    assert zs < 0.8
    assert tf >= zs + (0.2 if config is TUNED else 0.03)


def test_both_levels_beat_zero_shot_and_each_level_helps():
    x, y, w = clusters(seed=1, sigma=0.2)
    zs = accuracy(zero_shot_logits(x, w).argmax(1), y)
    acc = {
        lv: accuracy(TFUPAdapter.fit(w, x, dataclasses.replace(TUNED, levels=lv)).predict(x), y)
        for lv in ("feature", "semantic", "both")
    }
    assert all(a > zs for a in acc.values()), (zs, acc)


def test_selection_is_confident_prototypical_and_mostly_correct():
    x, y, w = clusters()
    shots = 9
    sel = select_representatives(x, w, shots)
    classes = w.shape[0]
    assert sel.shots == shots and sel.indices.shape == (classes * shots,)
    assert np.array_equal(sel.labels, np.repeat(np.arange(classes), shots))
    p = _softmax(10.0 * _unit(x) @ _unit(w).T)
    for c in range(classes):
        chosen = sel.indices[sel.labels == c]
        top = np.argsort(-p[:, c], kind="stable")[: 2 * shots]
        assert set(chosen) <= set(top)  # instance confidence: only top-2K candidates
        assert np.allclose(sel.confidence[sel.labels == c], p[chosen, c])
    # pseudo-labels of the cache are far more accurate than zero-shot on the whole set
    zs = accuracy(p.argmax(1), y)
    assert accuracy(y[sel.indices], sel.labels) > zs + 0.1


def test_selection_matches_the_reference_double_loop():
    """The released code's per-class loop (top 2K by probability, then the K with the smallest
    summed KL to the other candidates), written naively."""
    x, _, w = clusters(seed=2, per_class=25)
    shots = 5
    p = _softmax(10.0 * _unit(x) @ _unit(w).T)
    expected = []
    for c in range(w.shape[0]):
        top = np.argsort(-p[:, c], kind="stable")[: 2 * shots]
        pc = p[top]
        kl = np.array([np.sum(pc[j] * np.log(pc[j] / pc)) for j in range(len(top))])
        expected.extend(top[np.argsort(kl, kind="stable")[:shots]])
    sel = select_representatives(x, w, shots)
    assert sel.indices.tolist() == [int(i) for i in expected]


def test_msm_matches_the_reference_formula():
    x, _, w = clusters(seed=3, per_class=15)
    cfg = TFUPConfig(shots=4, alpha=2.0, beta=3.0)
    adapter = TFUPAdapter.fit(w, x, cfg)
    f, k, wn = _unit(x.astype(np.float64)), adapter.keys.astype(np.float64), _unit(w.astype(np.float64))
    pt, pk = _softmax(10.0 * f @ wn.T), _softmax(10.0 * k @ wn.T)
    kl = np.array([[np.sum(pt[i] * np.log(pt[i] / pk[j])) for j in range(len(k))] for i in range(len(f))])
    z = (kl - kl.mean(1, keepdims=True)) / kl.std(1, ddof=1, keepdims=True)  # released code's steps
    lo, hi = z.min(1, keepdims=True), z.max(1, keepdims=True)
    sem = 2 * (1 - (z - lo) / (hi - lo))
    affinity = np.exp(-3.0 * (1 - (f @ k.T) * sem))
    values = np.eye(w.shape[0])[adapter.labels]
    expected = 100.0 * f @ wn.T + 2.0 * affinity @ values
    np.testing.assert_allclose(adapter.logits(x), expected, rtol=1e-4, atol=1e-3)
    _, got_sem = adapter.similarities(x)
    np.testing.assert_allclose(got_sem, sem, atol=1e-4)


def test_levels_and_semantic_weight():
    x, _, w = clusters(seed=4)
    both = TFUPAdapter.fit(w, x, dataclasses.replace(TUNED, semantic_weight=0.0))
    feat = TFUPAdapter.fit(w, x, dataclasses.replace(TUNED, levels="feature"))
    np.testing.assert_allclose(both.cache_logits(x), feat.cache_logits(x), rtol=1e-6)
    cos, sem = feat.similarities(x)
    sem_only = msm_cache_logits(cos, sem, feat.values, 5.5, "semantic")
    np.testing.assert_allclose(sem_only, np.exp(-5.5 * (1 - sem)) @ feat.values, rtol=1e-5)
    assert sem.min() >= 0.0 and sem.max() <= 2.0


def test_semantic_similarity_flat_row_is_neutral():
    sim = semantic_similarity(np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32))
    assert np.array_equal(sim, np.ones((2, 4), np.float32))


def test_ensemble_prompts_normalises_each_prompt_then_the_mean():
    a = [np.array([[2.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 5.0]])]
    w = ensemble_prompts(a)
    np.testing.assert_allclose(w, [[2**-0.5, 2**-0.5], [0.0, 1.0]], atol=1e-6)
    same = ensemble_prompts(np.stack([a[0], a[0]]))
    np.testing.assert_allclose(same[0], w[0], atol=1e-6)


def test_paper_shot_rule():
    assert paper_shots(3000, 150) == 9  # CLINC val intents: 6 clamped up
    assert paper_shots(15000, 150) == 16  # 30 clamped down
    assert paper_shots(2000, 10) == 16
    assert paper_shots(400, 10) == 12


def test_more_shots_than_samples_is_capped_not_an_error():
    x, _, w = clusters(per_class=1)  # 6 samples, 6 classes
    adapter = TFUPAdapter.fit(w, x, TFUPConfig(shots=16))
    sel = adapter.selection
    assert sel.shots == 6 and adapter.keys.shape == (36, x.shape[1])
    assert adapter.predict(x).shape == (6,)
    assert select_representatives(x[:1], w, 3).indices.tolist() == [0] * w.shape[0]


def test_large_target_set_is_vectorised():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10_000, 16)).astype(np.float32)
    w = rng.normal(size=(150, 16)).astype(np.float32)
    adapter = TFUPAdapter.fit(w, x)
    sel = adapter.selection
    assert sel.indices.size == 150 * 16
    assert adapter.predict(x[:3000], batch_size=1000).shape == (3000,)


# ------------------------------------------------------------------ determinism and persistence


def test_deterministic():
    x, _, w = clusters()
    a1 = TFUPAdapter.fit(w, x, TUNED)
    s1 = a1.selection
    a2 = TFUPAdapter.fit(w.copy(), x.copy(), TUNED)
    s2 = a2.selection
    assert np.array_equal(s1.indices, s2.indices)
    assert np.array_equal(a1.logits(x), a2.logits(x))
    assert a1.to_bytes() == a2.to_bytes()


def test_save_load_round_trip_is_bit_exact(tmp_path):
    x, _, w = clusters()
    names = [f"class {i}" for i in range(w.shape[0])]
    adapter = TFUPAdapter.fit(w, x, TUNED, fingerprint="enc-123", class_names=names)
    path = adapter.save(tmp_path / "tfup.bin")
    for loaded in (TFUPAdapter.load(path, fingerprint="enc-123"), TFUPAdapter.from_bytes(adapter.to_bytes())):
        assert loaded.config == adapter.config and loaded.class_names == names
        assert loaded.fingerprint == "enc-123"
        assert np.array_equal(loaded.logits(x), adapter.logits(x))
        assert np.array_equal(loaded.predict(x), adapter.predict(x))
        assert loaded.to_bytes() == adapter.to_bytes()


def test_corrupted_or_foreign_files_raise(tmp_path):
    x, _, w = clusters()
    data = TFUPAdapter.fit(w, x, fingerprint="enc-123").to_bytes()
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    bad = {
        "checksum": bytes(flipped),
        "truncated": data[:20],
        "empty": b"",
        "magic": b"EDGECSNP" + data[8:],
    }
    for name, blob in bad.items():
        with pytest.raises(AdapterFileError):
            TFUPAdapter.from_bytes(blob)
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(SnapshotError):  # AdapterFileError is a SnapshotError
            TFUPAdapter.load(tmp_path / name)
    with pytest.raises(AdapterFileError, match="another encoder"):
        TFUPAdapter.from_bytes(data, fingerprint="enc-456")
    with pytest.raises(AdapterFileError, match="no saved adapter"):
        TFUPAdapter.load(tmp_path / "missing")


def _resealed(data: bytes, change) -> bytes:
    payload = msgpack.unpackb(data[40:], raw=False)
    change(payload)
    body = msgpack.packb(payload, use_bin_type=True)
    import hashlib

    return tfup.MAGIC + hashlib.sha256(body).digest() + body


def test_well_sealed_but_inconsistent_payloads_raise():
    x, _, w = clusters()
    data = TFUPAdapter.fit(w, x).to_bytes()
    cases = [
        lambda p: p.update(version=99),
        lambda p: p.update(kind="cache"),
        lambda p: p["keys"].update(shape=[3, 3]),
        lambda p: p["keys"].update(dtype="<f8"),
        lambda p: p["config"].update(alpha=-1.0),
        lambda p: p["config"].update(bogus=1),
        lambda p: p.pop("labels"),
    ]
    for change in cases:
        with pytest.raises(AdapterFileError):
            TFUPAdapter.from_bytes(_resealed(data, change))


# ------------------------------------------------------------------ bad input


def test_bad_inputs_raise_clear_errors():
    x, _, w = clusters()
    adapter = TFUPAdapter.fit(w, x)
    with pytest.raises(InvalidInputError, match="dimension"):
        TFUPAdapter.fit(w, x[:, :10])
    with pytest.raises(InvalidInputError, match="dimension"):
        adapter.predict(x[:, :10])
    nan = x.copy()
    nan[3, 2] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        TFUPAdapter.fit(w, nan)
    with pytest.raises(InvalidInputError, match="NaN"):
        adapter.predict(nan)
    with pytest.raises(InvalidInputError, match="zero vectors"):
        adapter.predict(np.zeros((2, x.shape[1])))
    with pytest.raises(InvalidInputError, match="2-d"):
        adapter.predict(x[0])
    with pytest.raises(InvalidInputError, match="empty"):
        adapter.predict(np.zeros((0, x.shape[1])))
    with pytest.raises(InvalidInputError, match="empty"):
        TFUPAdapter.fit(np.zeros((0, x.shape[1])), x)
    with pytest.raises(InvalidInputError, match="numbers"):
        adapter.predict(np.array([["a", "b"]]))
    with pytest.raises(InvalidInputError, match="class 1 has no prompt"):
        ensemble_prompts([np.ones((2, 4)), np.zeros((0, 4))])
    with pytest.raises(InvalidInputError, match="no classes"):
        ensemble_prompts([])
    with pytest.raises(InvalidInputError, match="labels"):
        TFUPAdapter(w, x[:3], [0, 1, w.shape[0]])
    with pytest.raises(InvalidInputError, match="class names"):
        TFUPAdapter(w, x[:3], [0, 1, 2], class_names=["a"])
    with pytest.raises(InvalidInputError, match="shots"):
        select_representatives(x, w, 0)
    with pytest.raises(InvalidInputError, match="batch_size"):
        adapter.predict(x, batch_size=0)


@pytest.mark.parametrize(
    "bad",
    [
        {"alpha": -1.0},
        {"beta": float("nan")},
        {"logit_scale": 0.0},
        {"shots": 0},
        {"shots": 2.5},
        {"min_shots": 10, "max_shots": 5},
        {"candidate_factor": 0},
        {"levels": "pixel"},
        {"semantic_temperature": float("inf")},
        {"alpha": True},
    ],
)
def test_bad_config_raises(bad):
    with pytest.raises(ConfigError):
        TFUPConfig(**bad)
