"""`TFUPClassifier`: a Ray Serve deployment that classifies text or images with a saved TFUP adapter.

    from ray import serve
    from edgecache.adapters.serve import app
    serve.run(app("domains.tfup"), route_prefix="/tfup")

or, from the CLI, `serve run edgecache.adapters.serve:build_app adapter_path=domains.tfup`.

HTTP API (JSON in, JSON out):

    POST {"text": "..."}                  -> [{"label", "score", "top_k": [[label, score], ...]}]
    POST {"texts": ["...", ...], "top_k": 3}
    POST <image bytes>, Content-Type image/* or application/octet-stream   (an image backend)
    POST {"image": "<base64>"} or {"images": ["<base64>", ...]}             (an image backend)
    GET                                   -> the deployment's state (classes, cache size, refreshes)

`top_k` (body field or `?top_k=` query parameter) defaults to 5 (capped at the number of classes
when defaulted), must be an integer in [1, number of classes] when given. Scores are the TFUP
softmax probabilities. Bad input gets a 4xx with {"error": {"code", "message"}}: 400 malformed,
wrong types, bad base64 or image bytes that do not decode, 413 too many texts / a text or body
too large, 415 an image or a content type the backend cannot embed, 405 another method.

Backends. The adapter only sees vectors, so what embeds the input is a seam (`FeatureBackend`):
`embed(list[str | bytes]) -> (n, d)` float32, a `fingerprint` that the saved adapter must carry
(an adapter built with another encoder is refused at load), and the `modalities` it accepts.
`TextBackend` wraps edgecache's ONNX MiniLM (its raw 384-d unit vectors, as
`benchmarks/tfup_text.py` fits them). Image backends plug in through `backend="module:factory"`:
`edgecache.adapters.openclip:image_backend` (options model, pretrained = a tag or a checkpoint
path), `:onnx_backend` (path of an exported image tower, no torch in the replica) or
`:tiny_backend` (the random test model). Without one, image bytes get a 415. Image bytes that do
not decode get a 400 ("bad_image"), alone: the other requests of the same `serve.batch` are
answered.

Feature-cache refresh from traffic (`refresh=True`, default off): the replica keeps the
embeddings of its last `refresh_buffer` inputs and every `refresh_every` inputs re-fits the
adapter's cache (TFUP selection) on those plus the original target features (a .npy given as
`target_features_path`; without one, the saved cache keys stand in for it). It is off by default
because it makes the served model drift: pseudo-labels come from the model itself, so its
mistakes on traffic are reinforced (confirmation bias); a burst of odd or adversarial traffic
can crowd the cache; each replica drifts on its own traffic, so replicas disagree; and the saved
adapter no longer reproduces what is served. Turn it on only where the target domain shifts and
predictions are monitored.

This module imports ray only when the deployment is built, so the request parsing and the
classifier core (`TFUPService`) work and are testable without it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import importlib
import itertools
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import ConfigError, InvalidInputError
from ..httperrors import (
    RequestError,
    check_body_length,
    check_declared_length,
    decode_json_body,
    media_type,
)
from ..policy import refuse_unknown_keys
from ..settings_strings import dataclass_from_strings
from .tfup import AdapterFileError, TFUPAdapter

Item = str | bytes

__all__ = [
    "FeatureBackend",
    "RequestError",
    "ServeConfig",
    "TFUPService",
    "TextBackend",
    "app",
    "build_app",
    "deployment",
    "make_backend",
    "parse_request",
]


# ---------------------------------------------------------------- backends


@runtime_checkable
class FeatureBackend(Protocol):
    """What turns inputs into the vectors a TFUP adapter compares.

    modalities: subset of {"text", "image"}; text items are str, image items are encoded image
    bytes (PNG, JPEG...). fingerprint: identifies the encoder; a saved adapter must carry the same.
    """

    name: str
    dim: int
    fingerprint: str
    modalities: frozenset[str]

    def embed(self, items: list[Item]) -> np.ndarray: ...


class TextBackend:
    """edgecache's int8 ONNX MiniLM: raw 384-d unit vectors (no projection)."""

    name = "text"
    modalities = frozenset({"text"})

    def __init__(self, threads: int = 1, home: str | Path | None = None, encoder: Any = None) -> None:
        if encoder is None:
            from ..encoder import load_encoder

            encoder = load_encoder(Path(home) if home else None, threads=threads)
        self.encoder = encoder
        self.dim = int(encoder.dim)
        self.fingerprint = str(encoder.fingerprint)

    def embed(self, items: list[Item]) -> np.ndarray:
        if any(not isinstance(t, str) for t in items):
            raise RequestError(415, "unsupported_media", "the text backend embeds text only")
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(self.encoder.encode(list(items)), dtype=np.float32)


def make_backend(spec: str = "text", options: dict[str, Any] | None = None) -> FeatureBackend:
    """Backend "text" (edgecache's encoder) or "package.module:factory", called with `options`."""
    options = dict(options or {})
    if spec == "text":
        return TextBackend(**options)
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"backend must be 'text' or 'module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import backend {spec!r}: {exc}") from exc
    backend = factory(**options)
    if not isinstance(backend, FeatureBackend):
        raise ConfigError(f"backend {spec!r} lacks name/dim/fingerprint/modalities/embed")
    return backend


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ServeConfig:
    """Everything a `TFUPClassifier` replica needs; plain values, so it travels to Ray as a dict.

    adapter_path: the saved TFUP adapter (TFUPAdapter.save); its encoder fingerprint must equal
        the backend's.
    backend / backend_options: see `make_backend` ("text": threads, home).
    default_top_k: top_k when the request gives none (capped at the number of classes).
    max_texts, max_text_chars, max_body_bytes: request limits (413 beyond them).
    refresh, refresh_buffer, refresh_every, target_features_path: the cache refresh from
        traffic (module docstring; off by default).
    max_batch_size, batch_wait_timeout_s: `serve.batch` across concurrent requests.
    """

    adapter_path: str
    backend: str = "text"
    backend_options: dict[str, Any] = field(default_factory=dict)
    default_top_k: int = 5
    max_texts: int = 64
    max_text_chars: int = 4000
    max_body_bytes: int = 1 << 20
    refresh: bool = False
    refresh_buffer: int = 2048
    refresh_every: int = 512
    target_features_path: str | None = None
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.005

    def __post_init__(self) -> None:
        if not isinstance(self.adapter_path, str | Path) or not str(self.adapter_path):
            raise ConfigError("ServeConfig.adapter_path must be a path")
        object.__setattr__(self, "adapter_path", str(self.adapter_path))
        if self.target_features_path is not None:
            object.__setattr__(self, "target_features_path", str(self.target_features_path))
        if not isinstance(self.backend, str) or not isinstance(self.backend_options, dict):
            raise ConfigError("ServeConfig.backend must be a string and backend_options a dict")
        if not isinstance(self.refresh, bool):
            raise ConfigError("ServeConfig.refresh must be true or false")
        for name in (
            "default_top_k",
            "max_texts",
            "max_text_chars",
            "max_body_bytes",
            "refresh_buffer",
            "refresh_every",
            "max_batch_size",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be an integer >= 1, got {value!r}")
        t = self.batch_wait_timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"ServeConfig.batch_wait_timeout_s must be a number >= 0, got {t!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        refuse_unknown_keys(data, {f.name for f in fields(cls)}, "unknown ServeConfig fields:")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- request parsing

_BODY_FIELDS = {"text", "texts", "image", "images", "top_k"}


def _top_k(value: Any, num_classes: int, from_query: bool = False) -> int:
    if from_query and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise RequestError(400, "bad_top_k", f"top_k must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, "bad_top_k", f"top_k must be an integer, got {value!r}")
    if not 1 <= value <= num_classes:
        raise RequestError(400, "bad_top_k", f"top_k must lie in [1, {num_classes}], got {value}")
    return value


def parse_request(
    body: bytes,
    content_type: str,
    config: ServeConfig,
    num_classes: int,
    modalities: frozenset[str],
    query_top_k: str | None = None,
) -> tuple[list[Item], int]:
    """(items, top_k) from an HTTP request body, or a RequestError saying what is wrong."""
    check_body_length(len(body), config.max_body_bytes)
    media = media_type(content_type)
    no_images = RequestError(
        415,
        "unsupported_media",
        "this deployment embeds text only: image classification needs an image backend "
        '(open_clip), which is not configured; send JSON {"text": ...}',
    )
    if media.startswith("image/") or media == "application/octet-stream":
        if "image" not in modalities:
            raise no_images
        if not body:
            raise RequestError(400, "empty", "empty image body")
        items: list[Item] = [bytes(body)]
        payload: dict[str, Any] = {}
    else:
        # A 415 for a media type that is not JSON either; a 400 for a body that is not a
        # UTF-8 JSON object.
        payload = decode_json_body(body, content_type, config.max_body_bytes)
        unknown = set(payload) - _BODY_FIELDS
        if unknown:
            raise RequestError(400, "bad_request", f"unknown fields {sorted(unknown)}; use text or texts")
        given = [k for k in ("text", "texts", "image", "images") if k in payload]
        if len(given) != 1:
            raise RequestError(400, "bad_request", "give exactly one of text, texts (or image, images)")
        key = given[0]
        if key in ("image", "images") and "image" not in modalities:
            raise no_images
        if key in ("text", "image"):
            raw = [payload[key]]
        else:
            raw = payload[key]
            if not isinstance(raw, list):
                raise RequestError(400, "bad_request", f"{key} must be a list")
            if not raw:
                raise RequestError(400, "empty", f"{key} is empty")
        if len(raw) > config.max_texts:
            raise RequestError(
                413, "too_many", f"{len(raw)} inputs in one request, at most {config.max_texts}"
            )
        items = []
        for i, x in enumerate(raw):
            if not isinstance(x, str):
                raise RequestError(400, "bad_type", f"{key}[{i}] must be a string, got {type(x).__name__}")
            if key in ("text", "texts"):
                if not x.strip():
                    raise RequestError(400, "empty", f"text {i} is empty")
                if len(x) > config.max_text_chars:
                    raise RequestError(
                        413,
                        "text_too_long",
                        f"text {i} has {len(x)} characters, at most {config.max_text_chars}",
                    )
                items.append(x)
            else:
                try:
                    items.append(base64.b64decode(x, validate=True))
                except (binascii.Error, ValueError):
                    raise RequestError(400, "bad_image", f"{key}[{i}] is not base64") from None
    if "top_k" in payload and query_top_k is not None:
        raise RequestError(400, "bad_top_k", "top_k given both in the body and the query")
    if "top_k" in payload:
        k = _top_k(payload["top_k"], num_classes)
    elif query_top_k is not None:
        k = _top_k(query_top_k, num_classes, from_query=True)
    else:
        k = min(config.default_top_k, num_classes)
    return items, k


# ---------------------------------------------------------------- the classifier core


class TFUPService:
    """Adapter + backend + optional refresh buffer; what one replica runs, without Ray."""

    def __init__(self, config: ServeConfig | dict[str, Any], backend: FeatureBackend | None = None) -> None:
        self.config = config if isinstance(config, ServeConfig) else ServeConfig.from_dict(config)
        self.backend = backend or make_backend(self.config.backend, self.config.backend_options)
        # Refuses an adapter fitted on another encoder's vectors (AdapterFileError).
        self.adapter = TFUPAdapter.load(self.config.adapter_path, fingerprint=self.backend.fingerprint)
        if self.adapter.dim != self.backend.dim:
            raise AdapterFileError(
                f"adapter vectors are {self.adapter.dim}-d, "
                f"the {self.backend.name} backend gives {self.backend.dim}"
            )
        names = self.adapter.class_names or [str(i) for i in range(self.adapter.num_classes)]
        self.class_names: Sequence[str] = names
        self._target: np.ndarray | None = None
        if self.config.refresh:
            if self.config.target_features_path:
                target = np.load(self.config.target_features_path, allow_pickle=False)
                if target.ndim != 2 or target.shape[1] != self.adapter.dim or not np.isfinite(target).all():
                    raise ConfigError(
                        f"target features must be finite (n, {self.adapter.dim}), got {target.shape}"
                    )
                self._target = np.asarray(target, dtype=np.float32)
            else:
                self._target = self.adapter.keys.copy()
        self._buffer: deque[np.ndarray] = deque(maxlen=self.config.refresh_buffer)
        self._lock = threading.Lock()
        self._since_refresh = 0
        self.refreshes = 0
        self.classified = 0

    @property
    def num_classes(self) -> int:
        return self.adapter.num_classes

    def parse(self, body: bytes, content_type: str, query_top_k: str | None = None) -> tuple[list[Item], int]:
        return parse_request(
            body, content_type, self.config, self.num_classes, self.backend.modalities, query_top_k
        )

    def embed(self, items: list[Item]) -> np.ndarray:
        """The backend's vectors; an input it refuses (an undecodable image) is a RequestError."""
        try:
            return self.backend.embed(items)
        except RequestError:
            raise
        except InvalidInputError as exc:
            from .openclip import InvalidImageError  # torch-free module

            code = "bad_image" if isinstance(exc, InvalidImageError) else "bad_input"
            raise RequestError(400, code, str(exc)) from exc

    def embed_requests(self, requests: Sequence[list[Item]]) -> list[np.ndarray | RequestError]:
        """Each request's vectors, or the RequestError that refuses it.

        One backend run for all of them; only when that fails (one request's image does not
        decode) is each request embedded on its own, so that a bad request in a `serve.batch`
        fails alone and the others are answered."""
        try:
            features = self.embed([x for items in requests for x in items])
        except RequestError as exc:
            if len(requests) == 1:
                return [exc]
            out: list[np.ndarray | RequestError] = []
            for items in requests:
                try:
                    out.append(self.embed(items))
                except RequestError as one:
                    out.append(one)
            return out
        bounds = np.cumsum([0] + [len(items) for items in requests])
        return [features[a:b] for a, b in itertools.pairwise(bounds)]

    def classify_features(self, features: np.ndarray, top_ks: Sequence[int]) -> list[dict[str, Any]]:
        """One result per row; `top_ks` gives each row's k. Feeds the refresh buffer when on."""
        adapter = self.adapter  # a refresh swaps the reference; this call keeps one adapter
        proba = adapter.predict_proba(features)
        out = []
        for row, k in zip(proba, top_ks, strict=True):
            order = np.argsort(-row, kind="stable")[:k]
            top = [[self.class_names[c], float(row[c])] for c in order]
            out.append({"label": top[0][0], "score": top[0][1], "top_k": top})
        self.observe(features)
        return out

    def classify(self, items: list[Item], top_k: int) -> list[dict[str, Any]]:
        return self.classify_features(self.embed(items), [top_k] * len(items))

    def observe(self, features: np.ndarray) -> bool:
        """Count classified inputs and, with refresh on, buffer them; True when a refresh is due."""
        with self._lock:
            self.classified += len(features)
            if not self.config.refresh:
                return False
            self._buffer.extend(np.asarray(features, dtype=np.float32))
            self._since_refresh += len(features)
            return self._since_refresh >= self.config.refresh_every

    def refresh_due(self) -> bool:
        with self._lock:
            return self.config.refresh and self._since_refresh >= self.config.refresh_every

    def refresh_now(self) -> int:
        """Re-fit the cache on the original target features + the buffered traffic; returns the
        number of samples it was fitted on (0 when refresh is off or nothing was buffered)."""
        if not self.config.refresh or self._target is None:
            return 0
        with self._lock:
            if not self._buffer:
                return 0
            recent = np.stack(list(self._buffer))
            self._since_refresh = 0
        features = np.concatenate([self._target, recent])
        old = self.adapter
        new = TFUPAdapter.fit(old.class_embeddings, features, old.config, old.fingerprint, old.class_names)
        with self._lock:
            self.adapter = new
            self.refreshes += 1
        return int(features.shape[0])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "backend": self.backend.name,
                "modalities": sorted(self.backend.modalities),
                "fingerprint": self.adapter.fingerprint,
                "classes": list(self.class_names),
                "cache_size": int(self.adapter.keys.shape[0]),
                "classified": self.classified,
                "refresh": {
                    "enabled": self.config.refresh,
                    "buffered": len(self._buffer),
                    "since_refresh": self._since_refresh,
                    "refreshes": self.refreshes,
                    "every": self.config.refresh_every,
                },
            }


# ---------------------------------------------------------------- the Ray Serve deployment


class TFUPClassifier:
    """The deployment's body (wrapped by `deployment()`): HTTP in, `TFUPService` underneath.

    Concurrent requests are grouped by `serve.batch` into one encoder run and one prediction.
    """

    def __init__(self, config: dict[str, Any] | ServeConfig) -> None:
        from ray import serve

        self.service = TFUPService(config)
        cfg = self.service.config
        self._batched = serve.batch(
            max_batch_size=cfg.max_batch_size, batch_wait_timeout_s=cfg.batch_wait_timeout_s
        )(self._run_batch)
        self._refresh_task: asyncio.Future | None = None

    async def _run_batch(self, requests: list[tuple[list[Item], int]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        embedded = await loop.run_in_executor(
            None, self.service.embed_requests, [items for items, _ in requests]
        )
        good = [i for i, e in enumerate(embedded) if not isinstance(e, RequestError)]
        out: list[Any] = list(embedded)
        if good:
            features = np.concatenate([embedded[i] for i in good])
            ks = [requests[i][1] for i in good for _ in requests[i][0]]
            results = await loop.run_in_executor(None, self.service.classify_features, features, ks)
            start = 0
            for i in good:
                n = len(requests[i][0])
                out[i] = results[start : start + n]
                start += n
        return out

    def _maybe_refresh(self) -> None:
        if self._refresh_task is not None and not self._refresh_task.done():
            return
        if self.service.refresh_due():
            self._refresh_task = asyncio.get_running_loop().run_in_executor(None, self.service.refresh_now)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        if request.method == "GET":
            return JSONResponse(self.service.stats())
        if request.method != "POST":
            return JSONResponse(
                RequestError(405, "method_not_allowed", "POST a JSON body; GET for state").body(),
                status_code=405,
            )
        try:
            check_declared_length(request.headers, self.service.config.max_body_bytes)
            body = await request.body()
            items, k = self.service.parse(
                body, request.headers.get("content-type", ""), request.query_params.get("top_k")
            )
            result = await self._batched((items, k))
            if isinstance(result, RequestError):
                raise result
        except RequestError as exc:
            return JSONResponse(exc.body(), status_code=exc.status)
        self._maybe_refresh()
        return JSONResponse(result)


def deployment(**options: Any) -> Any:
    """`TFUPClassifier` as a Ray Serve deployment; `options` go to `serve.deployment`
    (num_replicas, ray_actor_options, ...). One CPU per replica unless told otherwise."""
    from ray import serve

    options.setdefault("name", "TFUPClassifier")
    options.setdefault("ray_actor_options", {"num_cpus": 1})
    return serve.deployment(**options)(TFUPClassifier)


def app(adapter_path: str | Path, deployment_options: dict[str, Any] | None = None, **config: Any) -> Any:
    """A bound application: `serve.run(app("x.tfup", refresh=True), route_prefix="/tfup")`."""
    cfg = ServeConfig(adapter_path=str(adapter_path), **config)  # validated here, before Ray
    return deployment(**(deployment_options or {})).bind(cfg.to_dict())


def build_app(args: dict[str, Any]) -> Any:
    """Application builder for `serve run edgecache.adapters.serve:build_app adapter_path=...`
    and Serve config files (`args` = the ServeConfig fields; CLI values arrive as strings)."""
    args = dict(args)
    deployment_options = args.pop("deployment_options", None)
    if not args.get("adapter_path"):
        raise ConfigError("build_app needs adapter_path")
    cfg = dataclass_from_strings(ServeConfig, args).to_dict()
    return app(cfg.pop("adapter_path"), deployment_options, **cfg)
