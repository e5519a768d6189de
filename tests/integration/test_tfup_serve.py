"""TFUPClassifier (edgecache.adapters.serve) on a real local Ray Serve, over HTTP on 127.0.0.1.

The adapter: the 10 CLINC150 domains as classes (prompts from their names, as in
benchmarks/tfup_text.py), fitted on 300 unlabeled CLINC val queries with the built encoder's raw
384-d vectors. The served answers must equal the adapter's own predictions in this process.
The first tests use a fake backend and need neither Ray nor the encoder.

Images: a third application serves an adapter fitted on 100 CIFAR-10 test images with the tiny
random open_clip model (backend `edgecache.adapters.openclip:tiny_backend`); its answers to raw
and base64 image bytes must equal the adapter's predictions in this process, and bytes that are
not an image get a 400 while the deployment keeps serving.
"""

from __future__ import annotations

import http.client
import json
import random
import time

import numpy as np
import pytest

from edgecache.adapters import TFUPAdapter, TFUPConfig, ensemble_prompts
from edgecache.adapters.serve import RequestError, ServeConfig, TFUPService, parse_request
from edgecache.adapters.tfup import AdapterFileError
from tests.integration.processes import free_port, listening_on, local_ray

pytestmark = pytest.mark.integration

TEMPLATES = ("{}", "a question about {}", "a request about {}", "help me with {}", "I want to ask about {}")


# ---------------------------------------------------------------- no Ray: a fake backend


class FakeBackend:
    name, dim, fingerprint, modalities = "fake", 8, "fake-fp", frozenset({"text"})

    def embed(self, items):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).normal(size=8) for t in items]
        return np.asarray(rows, dtype=np.float32)


@pytest.fixture
def fake_adapter(tmp_path):
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(3, 8)), rng.normal(size=(60, 8))
    path = tmp_path / "fake.tfup"
    TFUPAdapter.fit(w, x, TFUPConfig(shots=4), "fake-fp", ["a", "b", "c"]).save(path)
    return path


def test_parse_request_errors():
    cfg = ServeConfig(adapter_path="x", max_texts=3, max_text_chars=10, max_body_bytes=200)
    text = frozenset({"text"})

    def err(body, ctype="application/json", query=None):
        with pytest.raises(RequestError) as info:
            parse_request(body, ctype, cfg, 4, text, query)
        return info.value.status, info.value.code

    assert parse_request(b'{"text": "hi"}', "application/json", cfg, 4, text) == (["hi"], 4)
    assert parse_request(b'{"texts": ["a", "b"], "top_k": 2}', "", cfg, 4, text) == (["a", "b"], 2)
    assert parse_request(b'{"text": "a"}', "application/json", cfg, 4, text, "3")[1] == 3
    assert err(b"{nope") == (400, "bad_json")
    assert err(b'{"text": "caf\xe9"}') == (400, "bad_encoding")  # latin-1, not UTF-8
    assert err('{"text": "a"}'.encode("utf-16")) == (400, "bad_encoding")
    assert err(b"[1]") == (400, "bad_request")
    assert err(b"{}") == (400, "bad_request")
    assert err(b'{"text": "a", "texts": ["b"]}') == (400, "bad_request")
    assert err(b'{"txt": "a"}') == (400, "bad_request")
    assert err(b'{"text": "  "}') == (400, "empty")
    assert err(b'{"texts": []}') == (400, "empty")
    assert err(b'{"texts": "a"}') == (400, "bad_request")
    assert err(b'{"texts": ["a", 3]}') == (400, "bad_type")
    assert err(b'{"text": null}') == (400, "bad_type")
    assert err(b'{"texts": ["a", "b", "c", "d"]}') == (413, "too_many")
    assert err(b'{"text": "' + b"x" * 11 + b'"}') == (413, "text_too_long")
    assert err(b'{"text": "' + b"x" * 300 + b'"}') == (413, "body_too_large")
    for k in (b"0", b"5", b"true", b"1.5", b'"2"'):
        assert err(b'{"text": "a", "top_k": ' + k + b"}") == (400, "bad_top_k")
    assert err(b'{"text": "a"}', query="x") == (400, "bad_top_k")
    assert err(b"\x89PNG....", "image/png") == (415, "unsupported_media")
    assert err(b'{"image": "aGk="}') == (415, "unsupported_media")
    assert err(b"a", "text/plain") == (415, "unsupported_media")


def test_build_app_converts_strings():
    pytest.importorskip("ray.serve")
    from edgecache.adapters.serve import build_app
    from edgecache.errors import ConfigError

    args = {"adapter_path": "x.tfup", "refresh": "yes", "max_texts": "8", "batch_wait_timeout_s": "0.01"}
    dep = build_app({**args, "backend_options": '{"threads": 2}'})._bound_deployment
    assert ServeConfig.from_dict(dep.init_args[0]) == ServeConfig(
        adapter_path="x.tfup",
        refresh=True,
        max_texts=8,
        batch_wait_timeout_s=0.01,
        backend_options={"threads": 2},
    )
    with pytest.raises(ConfigError, match="not a boolean"):
        build_app({**args, "refresh": "ture"})
    with pytest.raises(ConfigError, match="adapter_path"):
        build_app({"refresh": "true"})


def test_service_fingerprint_and_refresh(fake_adapter, tmp_path):
    class Other(FakeBackend):
        fingerprint = "another-encoder"

    with pytest.raises(AdapterFileError, match="another encoder"):
        TFUPService(ServeConfig(adapter_path=str(fake_adapter)), backend=Other())

    off = TFUPService(ServeConfig(adapter_path=str(fake_adapter)), backend=FakeBackend())
    out = off.classify(["x", "y"], 2)
    assert [len(r["top_k"]) for r in out] == [2, 2] and out[0]["label"] in "abc"
    assert off.refresh_now() == 0 and off.stats()["refresh"]["buffered"] == 0

    svc = TFUPService(
        ServeConfig(adapter_path=str(fake_adapter), refresh=True, refresh_every=5, refresh_buffer=8),
        backend=FakeBackend(),
    )
    keys0 = svc.adapter.keys.copy()
    svc.classify(["a", "b", "c"], 1)
    assert not svc.refresh_due()
    svc.classify([f"t{i}" for i in range(10)], 1)
    assert svc.refresh_due() and svc.stats()["refresh"]["buffered"] == 8  # bounded buffer
    assert svc.refresh_now() == keys0.shape[0] + 8  # saved cache keys stand in for the target set
    assert svc.refreshes == 1 and not svc.refresh_due()
    assert svc.adapter.fingerprint == "fake-fp" and svc.adapter.class_names == ["a", "b", "c"]


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CORRUPT_IMAGE = b"\xff\xd8\xff\xe0" + b"not a jpeg at all" * 10


@pytest.fixture(scope="module")
def image_adapter(tmp_path_factory):
    """The tiny open_clip model's adapter over 100 CIFAR-10 images, or None where torch,
    open_clip or the images are missing (the image tests then skip, the text ones still run)."""
    try:
        import open_clip  # noqa: F401

        from edgecache.adapters.openclip import OpenCLIPBackend
        from edgecache.evaldata import data_root
    except ImportError:
        return None
    root = data_root() / "images" / "cifar10_test"
    if not root.is_dir():
        return None
    backend = OpenCLIPBackend.tiny(seed=0)
    fit_blobs = [f.read_bytes() for c in CIFAR10 for f in sorted((root / c).glob("*.jpg"))[:10]]
    held = [f.read_bytes() for c in CIFAR10 for f in sorted((root / c).glob("*.jpg"))[10:12]]
    w = backend.class_embeddings(CIFAR10, ["a photo of a {}."])
    adapter = TFUPAdapter.fit(w, backend.embed(fit_blobs), TFUPConfig(), backend.fingerprint, CIFAR10)
    path = tmp_path_factory.mktemp("tfup-image") / "cifar10-tiny.tfup"
    adapter.save(path)
    return {"path": path, "adapter": adapter, "backend": backend, "held": held}


def test_image_service_isolates_corrupt_requests(image_adapter):
    if image_adapter is None:
        pytest.skip("torch/open_clip or the CIFAR-10 images are missing")
    svc = TFUPService(ServeConfig(adapter_path=str(image_adapter["path"])), backend=image_adapter["backend"])
    good = image_adapter["held"][:2]
    out = svc.embed_requests([[good[0]], [CORRUPT_IMAGE], [good[1], good[0]]])
    assert isinstance(out[1], RequestError) and (out[1].status, out[1].code) == (400, "bad_image")
    np.testing.assert_allclose(out[0], svc.embed([good[0]]), atol=1e-6)
    assert out[2].shape == (2, svc.backend.dim)
    with pytest.raises(RequestError) as info:
        svc.classify([b""], 1)
    assert info.value.status == 400


def test_image_backend_factories(image_adapter, tmp_path):
    if image_adapter is None:
        pytest.skip("torch/open_clip or the CIFAR-10 images are missing")
    from edgecache.adapters.openclip import export_image_onnx
    from edgecache.adapters.serve import make_backend
    from edgecache.errors import ConfigError

    cfg = ServeConfig(adapter_path=str(image_adapter["path"]))
    held = image_adapter["held"][:6]
    want = image_adapter["adapter"].predict_proba(image_adapter["backend"].embed(held))
    tiny = make_backend("edgecache.adapters.openclip:tiny_backend", {"seed": 0, "threads": 1})
    export_image_onnx(image_adapter["backend"], tmp_path / "tower.onnx")
    onnx = make_backend("edgecache.adapters.openclip:onnx_backend", {"path": str(tmp_path / "tower.onnx")})
    for backend in (tiny, onnx):
        out = TFUPService(cfg, backend=backend).classify(held, 2)
        assert [r["label"] for r in out] == [CIFAR10[int(i)] for i in want.argmax(axis=1)]
        np.testing.assert_allclose([r["score"] for r in out], want.max(axis=1), atol=1e-3)
    with pytest.raises(AdapterFileError, match="another encoder"):
        TFUPService(cfg, backend=make_backend("edgecache.adapters.openclip:tiny_backend", {"seed": 1}))
    with pytest.raises(ConfigError, match="not found"):
        make_backend("edgecache.adapters.openclip:onnx_backend", {"path": str(tmp_path / "nope.onnx")})
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        make_backend("edgecache.adapters.openclip:image_backend", {"model": "no-such-model"})


# ---------------------------------------------------------------- real Ray Serve over HTTP


@pytest.fixture(scope="module")
def clinc_adapter(tmp_path_factory):
    from edgecache.encoder import load_encoder

    try:
        from edgecache.evaldata import load_clinc

        rows = load_clinc("val")
    except (OSError, KeyError, ValueError) as exc:
        pytest.skip(f"CLINC150 data not available: {exc}")
    encoder = load_encoder(threads=2)
    names = sorted({r.group for r in rows})
    assert len(names) == 10
    prompts = [t.format(n.replace("_", " ")) for n in names for t in TEMPLATES]
    w = ensemble_prompts(encoder.encode(prompts).reshape(len(names), len(TEMPLATES), -1))
    random.Random(0).shuffle(rows)
    target, held = rows[:300], rows[300:340]
    adapter = TFUPAdapter.fit(
        w, encoder.encode([r.text for r in target]), TFUPConfig(), encoder.fingerprint, names
    )
    path = tmp_path_factory.mktemp("tfup") / "clinc-domains.tfup"
    adapter.save(path)
    return {"path": path, "adapter": adapter, "encoder": encoder, "held": held, "names": names}


@pytest.fixture(scope="module")
def served(clinc_adapter, image_adapter):
    pytest.importorskip("ray", reason="ray is not installed: pip install 'edgecache[serve]'")
    from ray import serve

    from edgecache.adapters.serve import app

    t0 = time.perf_counter()
    port = free_port()
    with local_ray(num_cpus=2):
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            small = {"ray_actor_options": {"num_cpus": 0.5}}
            serve.run(
                app(
                    clinc_adapter["path"],
                    deployment_options=small,
                    max_texts=16,
                    backend_options={"threads": 1},
                ),
                name="tfup",
                route_prefix="/tfup",
            )
            serve.run(
                app(
                    clinc_adapter["path"],
                    deployment_options={**small, "name": "TFUPClassifierRefresh"},
                    refresh=True,
                    refresh_every=20,
                    refresh_buffer=64,
                ),
                name="tfup-refresh",
                route_prefix="/tfup-refresh",
            )
            if image_adapter is not None:
                serve.run(
                    app(
                        image_adapter["path"],
                        deployment_options={**small, "name": "TFUPImageClassifier"},
                        backend="edgecache.adapters.openclip:tiny_backend",
                        backend_options={"seed": 0, "threads": 1},
                        max_batch_size=8,
                        batch_wait_timeout_s=0.05,
                    ),
                    name="tfup-image",
                    route_prefix="/tfup-image",
                )
            yield {
                "port": port,
                "startup_s": time.perf_counter() - t0,
                "image": image_adapter,
                **clinc_adapter,
            }
        finally:
            serve.shutdown()


def _http(port, method, path, body=None, ctype="application/json"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": ctype} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


def test_http_bound_to_loopback(served):
    from ray import serve

    details = serve.status()
    assert details.applications["tfup"].status == "RUNNING"
    # the HTTP proxy listens on loopback only: every listening socket on the port is 127.0.0.1
    listening = listening_on(served["port"])
    assert listening and {a.split(":")[0] for a in listening} == {"0100007F"}, listening


def test_classify_matches_adapter(served):
    held, names, adapter = served["held"], served["names"], served["adapter"]
    texts = [r.text for r in held[:12]]
    status, out = _http(served["port"], "POST", "/tfup", {"texts": texts, "top_k": 3})
    assert status == 200 and len(out) == len(texts)
    proba = adapter.predict_proba(served["encoder"].encode(texts))
    for r, p in zip(out, proba, strict=True):
        assert r["label"] == names[int(p.argmax())]
        assert r["score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert len(r["top_k"]) == 3 and r["top_k"][0] == [r["label"], pytest.approx(r["score"])]
        assert [s for _, s in r["top_k"]] == sorted((s for _, s in r["top_k"]), reverse=True)
        assert {lab for lab, _ in r["top_k"]} <= set(names)
    # a sanity floor, far above chance (1.6 of 16), not a benchmark (benchmarks/tfup_text.py is)
    status, out = _http(served["port"], "POST", "/tfup", {"texts": [r.text for r in held[12:28]]})
    assert status == 200 and all(len(r["top_k"]) == 5 for r in out)
    right = sum(r["label"] == h.group for r, h in zip(out, held[12:28], strict=True))
    assert right >= 5, right
    status, out = _http(served["port"], "POST", "/tfup?top_k=1", {"text": "what is my checking balance"})
    assert status == 200 and out[0]["label"] == "banking" and len(out[0]["top_k"]) == 1


def test_errors_over_http(served):
    port = served["port"]
    cases = [
        (b"{not json", "application/json", 400),
        ({"texts": []}, "application/json", 400),
        ({"text": 5}, "application/json", 400),
        ({"text": "hi", "top_k": 11}, "application/json", 400),
        ({"texts": ["hi"] * 17}, "application/json", 413),
        ({"text": "x" * 5000}, "application/json", 413),
        (b"\x89PNG\r\n\x1a\n", "image/png", 415),
    ]
    for body, ctype, want in cases:
        status, out = _http(port, "POST", "/tfup", body, ctype)
        assert status == want, (body if not isinstance(body, bytes) else body[:20], status, out)
        assert set(out["error"]) == {"code", "message"}
    assert _http(port, "POST", "/tfup", {"text": "x"}, "image/jpeg")[1]["error"]["message"].count("image")
    assert _http(port, "PUT", "/tfup", {"text": "x"})[0] == 405


def test_concurrent_requests_and_refresh(served):
    from concurrent.futures import ThreadPoolExecutor

    port, held = served["port"], served["held"]
    status, state = _http(port, "GET", "/tfup")
    assert status == 200 and state["refresh"]["enabled"] is False and len(state["classes"]) == 10
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda h: _http(port, "POST", "/tfup-refresh", {"text": h.text}), held[:24]))
    assert all(s == 200 and len(o) == 1 for s, o in outs)
    deadline = time.monotonic() + 20
    while True:
        state = _http(port, "GET", "/tfup-refresh")[1]
        if state["refresh"]["refreshes"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert state["refresh"]["enabled"] and state["refresh"]["refreshes"] >= 1, state
    assert state["classified"] == 24 and state["refresh"]["buffered"] == 24
    status, out = _http(port, "POST", "/tfup-refresh", {"text": "book me a flight to paris"})
    assert status == 200 and out[0]["label"] in served["names"]


def test_image_bytes_over_http(served):
    import base64
    from concurrent.futures import ThreadPoolExecutor

    image = served["image"]
    if image is None:
        pytest.skip("torch/open_clip or the CIFAR-10 images are missing")
    port, held = served["port"], image["held"]
    proba = image["adapter"].predict_proba(image["backend"].embed(held))

    def check(result, p, k):
        assert result["label"] == CIFAR10[int(p.argmax())]
        # The replica's torch runs on one thread, this process's on more: the embeddings agree to
        # ~1e-6 and the probabilities (logit scale 100) to ~1e-4.
        assert result["score"] == pytest.approx(float(p.max()), abs=1e-3)
        assert len(result["top_k"]) == k and result["top_k"][0][0] == result["label"]

    status, out = _http(port, "POST", "/tfup-image?top_k=3", held[0], "image/jpeg")
    assert status == 200 and len(out) == 1, out
    check(out[0], proba[0], 3)
    b64 = [base64.b64encode(b).decode() for b in held[1:5]]
    status, out = _http(port, "POST", "/tfup-image", {"images": b64, "top_k": 2})
    assert status == 200 and len(out) == 4
    for r, p in zip(out, proba[1:5], strict=True):
        check(r, p, 2)

    # Bytes that are not an image: a clear 400, whether raw or base64, and the deployment goes on.
    for body, ctype in [
        (CORRUPT_IMAGE, "image/jpeg"),
        (b"GIF89a" + b"\x00" * 30, "application/octet-stream"),
        ({"image": base64.b64encode(CORRUPT_IMAGE).decode()}, "application/json"),
        ({"images": [b64[0], base64.b64encode(b"plain text").decode()]}, "application/json"),
        ({"image": "%%% not base64 %%%"}, "application/json"),
    ]:
        status, out = _http(port, "POST", "/tfup-image", body, ctype)
        assert status == 400 and out["error"]["code"] == "bad_image", (status, out)
        assert out["error"]["message"]

    # Corrupt and valid requests batched together by serve.batch: each gets its own answer.
    jobs = [(held[i % len(held)], i) if i % 3 else (CORRUPT_IMAGE, i) for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda j: _http(port, "POST", "/tfup-image?top_k=1", j[0], "image/jpeg"), jobs)
        )
    for (body, i), (status, out) in zip(jobs, answers, strict=True):
        if body is CORRUPT_IMAGE:
            assert status == 400 and out["error"]["code"] == "bad_image"
        else:
            assert status == 200
            check(out[0], proba[i % len(held)], 1)
    status, state = _http(port, "GET", "/tfup-image")
    assert status == 200 and state["modalities"] == ["image", "text"] and state["classified"] == 1 + 4 + 8
