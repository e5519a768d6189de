"""TFUP: Training-Free Unsupervised Prompt for vision-language models (Long et al., 2024).

Backend-agnostic core over embeddings from any dual encoder (CLIP image/text, or one text
encoder for both sides): numpy only, no training, no labels.

    zero-shot   z   = logit_scale * f_n @ W_n.T                 f: sample, W: class embeddings
    selection   per class c: the `candidate_factor * K` samples with the highest zero-shot
                probability of c (instance confidence), then the K of those whose prediction
                distribution is closest, in summed KL, to all the other candidates
                (prototype score): the cache keeps typical, not merely confident, samples
    cache (FCM) keys = the selected samples' unit features, values = one-hot pseudo-label c
    MSM         feature level   cos_ij = f_i . k_j
                semantic level  sem_ij in [0, 2]: KL(p_i || q_j) between the prediction
                                distributions softmax(T * f W.T) and softmax(T * k W.T),
                                min-max rescaled per test sample and flipped (2 = closest)
                affinity        A_ij = exp(-beta * (1 - cos_ij * sem_ij))
    prediction  logits = z + alpha * A @ values

Every formula follows the authors' released code (github.com/wlb12345/TFUP, `main.py::TFUP`,
`utils.py::refine_few_shots_without_label` and `get_sim_based_kl`), which pins down what the
paper's text leaves open:

- The two levels are combined by a *product* inside Tip-Adapter's exp(-beta(1 - .)), not a
  weighted sum. `semantic_weight` (gamma) interpolates: cos * (1 + gamma * (sem - 1)); gamma=1
  is the released code, gamma=0 is feature level only (Tip-Adapter's affinity).
- The semantic similarity is z-normalised and then min-max normalised per test row; the
  z-step cannot change a min-max result, so it is skipped here (and a row whose KLs are all
  equal, where the released code would divide by zero, gets sem = 1, a neutral weight).
- Selection probabilities and semantic distributions use temperature 10, the zero-shot logits
  use CLIP's logit scale 100.
- K ("cache shots") = clamp(int(0.3 * N / C), 9, 16) for N target samples and C classes.
- A sample may be cached under several classes (classes select independently), and a class
  always gets K entries even if no sample's argmax is that class: the released code does so.
- "semantic level only" (`levels="semantic"`) is not in the released code; here it means the
  product with cos replaced by 1: A = exp(-beta * (1 - sem)). An assumption of ours.

TFUP-T (the training variant) is not implemented: it trains a class-embedding residual and an
image MLP adapter by gradient descent on weak/strong image augmentations, which neither this
torch-free package nor a text encoder provides, and the released code keeps the epoch with the
best *test-label* accuracy, which a label-free implementation cannot reproduce.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ..errors import ConfigError, InvalidInputError, SnapshotError

MAGIC = b"EDGETFUP"
FORMAT_VERSION = 1
_HEADER = len(MAGIC) + 32
_LEVELS = ("both", "feature", "semantic")
_ARRAY_DTYPES = ("<f4", "<i4")
_ROWS = 2048  # test samples per block in predictions: bounds memory to ~rows x cache size


class AdapterFileError(SnapshotError):
    """A saved adapter that is corrupted, truncated, of another format, or from another encoder."""


@dataclass(frozen=True)
class TFUPConfig:
    """TFUP hyperparameters; defaults are the released code's (DomainNet, ViT-B/16).

    shots: K, cache entries per class. None: the paper's rule
        clamp(int(cache_proportion * N / C), min_shots, max_shots) for N target samples.
    cache_proportion, min_shots, max_shots: that rule (0.3, 9, 16).
    candidate_factor: the top `candidate_factor * K` samples by a class's zero-shot
        probability are that class's candidates; the prototype score keeps K of them (2).
    select_temperature: softmax scale of the zero-shot probabilities used for selection (10).
    semantic_temperature: softmax scale of the prediction distributions compared by the
        semantic level of the MSM (10).
    logit_scale: scale of the zero-shot logits (CLIP's 100). The cache logits are not scaled,
        so alpha / logit_scale is what sets their relative weight.
    alpha: residual weight of the cache logits (0.3).
    beta: sharpness of the affinity exp(-beta * (1 - similarity)) (1.0).
    levels: "both" (MSM), "feature" (cosine only: Tip-Adapter's cache on pseudo-labels) or
        "semantic" (distribution similarity only) — the paper's ablation.
    semantic_weight: gamma, with levels="both": similarity = cos * (1 + gamma * (sem - 1)).
        1.0 is the released code's plain product; 0.0 equals levels="feature".
    """

    shots: int | None = None
    cache_proportion: float = 0.3
    min_shots: int = 9
    max_shots: int = 16
    candidate_factor: int = 2
    select_temperature: float = 10.0
    semantic_temperature: float = 10.0
    logit_scale: float = 100.0
    alpha: float = 0.3
    beta: float = 1.0
    levels: str = "both"
    semantic_weight: float = 1.0

    def __post_init__(self) -> None:
        def whole(name: str, value: Any, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
                raise ConfigError(f"TFUPConfig.{name} must be an integer >= {low}, got {value!r}")

        def real(name: str, value: Any, positive: bool) -> None:
            if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
                raise ConfigError(f"TFUPConfig.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or (value <= 0 if positive else value < 0):
                raise ConfigError(f"TFUPConfig.{name} must be finite and {'> 0' if positive else '>= 0'}")

        if self.shots is not None:
            whole("shots", self.shots, 1)
        whole("min_shots", self.min_shots, 1)
        whole("max_shots", self.max_shots, 1)
        whole("candidate_factor", self.candidate_factor, 1)
        if self.max_shots < self.min_shots:
            raise ConfigError("TFUPConfig.max_shots must be >= min_shots")
        for name in ("cache_proportion", "select_temperature", "semantic_temperature", "logit_scale"):
            real(name, getattr(self, name), positive=True)
        for name in ("alpha", "beta", "semantic_weight"):
            real(name, getattr(self, name), positive=False)
        if self.levels not in _LEVELS:
            raise ConfigError(f"TFUPConfig.levels must be one of {_LEVELS}, got {self.levels!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TFUPConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown TFUPConfig fields: {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Selection:
    """Representative samples chosen from the unlabeled target set (class-major order).

    indices: rows of the target features; labels: the pseudo-label each was cached under;
    confidence: its zero-shot probability of that class (selection temperature);
    prototype_score: summed KL from its prediction distribution to those of the class's
    other candidates (lower = more typical); shots: the K actually used per class.
    """

    indices: np.ndarray  # (C * shots,) int64
    labels: np.ndarray  # (C * shots,) int64
    confidence: np.ndarray  # (C * shots,) float32
    prototype_score: np.ndarray  # (C * shots,) float32
    shots: int


# ---------------------------------------------------------------- validation helpers


def _matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as exc:
        raise InvalidInputError(f"{name} is not an array: {exc}") from exc
    if a.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-d array (rows, dim), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InvalidInputError(f"{name} is empty (shape {a.shape})")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InvalidInputError(f"{name} must hold numbers, got dtype {a.dtype}")
    if dim is not None and a.shape[1] != dim:
        raise InvalidInputError(f"{name} has dimension {a.shape[1]}, expected {dim}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values")
    return a


def _unit(a: np.ndarray, name: str) -> np.ndarray:
    """Rows scaled to unit norm. Rows already unit (to 1e-5) are kept as they are: normalising
    twice moves the last bits, and a reloaded adapter must hold exactly what was saved."""
    norms = np.linalg.norm(a.astype(np.float64), axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] <= 1e-12)
    if zero.size:
        raise InvalidInputError(f"{name} has zero vectors (rows {zero[:5].tolist()})")
    if np.all(np.abs(norms - 1.0) <= 1e-5):
        return np.ascontiguousarray(a, dtype=np.float32)
    return np.ascontiguousarray(a / norms, dtype=np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


# ---------------------------------------------------------------- building blocks


def ensemble_prompts(prompt_embeddings: Sequence[Any] | np.ndarray) -> np.ndarray:
    """Class embeddings (C, d) from each class's prompt embeddings: unit-normalise every prompt,
    average per class, unit-normalise the mean (CLIP's prompt ensembling).

    `prompt_embeddings`: a (C, P, d) array, or a sequence of C arrays (P_c, d) (P_c may differ).
    A class with no prompt raises InvalidInputError.
    """
    if isinstance(prompt_embeddings, np.ndarray) and prompt_embeddings.ndim == 3:
        groups = list(prompt_embeddings)
    else:
        groups = list(prompt_embeddings)
    if not groups:
        raise InvalidInputError("no classes: prompt_embeddings is empty")
    dim = None
    out = []
    for c, group in enumerate(groups):
        g = np.asarray(group)
        if g.ndim == 1:
            g = g[None, :]
        if g.ndim != 2 or g.shape[0] == 0:
            raise InvalidInputError(f"class {c} has no prompt embeddings (shape {g.shape})")
        g = _matrix(g, f"prompt embeddings of class {c}", dim)
        dim = g.shape[1]
        out.append(_unit(g, f"prompt embeddings of class {c}").mean(axis=0))
    return _unit(np.stack(out), "class embeddings (prompts cancel out)")


def zero_shot_logits(features: Any, class_embeddings: Any, logit_scale: float = 100.0) -> np.ndarray:
    """logit_scale * cosine(features, class embeddings): (N, C) float32."""
    w = _unit(_matrix(class_embeddings, "class_embeddings"), "class_embeddings")
    f = _unit(_matrix(features, "features", w.shape[1]), "features")
    return (np.float32(logit_scale) * (f @ w.T)).astype(np.float32)


def paper_shots(n_samples: int, n_classes: int, proportion: float = 0.3, low: int = 9, high: int = 16) -> int:
    """The released code's cache size per class: clamp(int(proportion * N / C), low, high)."""
    return min(high, max(low, int(n_samples * proportion / n_classes)))


def select_representatives(
    features: Any,
    class_embeddings: Any,
    shots: int,
    candidate_factor: int = 2,
    temperature: float = 10.0,
) -> Selection:
    """Per class: the `candidate_factor * shots` most confident samples (zero-shot probability of
    that class), then the `shots` of them with the lowest prototype score (summed KL divergence
    from the sample's prediction distribution to those of all the class's candidates).

    Asking for more than the target set holds is not an error: candidates and shots are capped at
    N (every class then gets min(shots, N) entries).
    """
    w = _unit(_matrix(class_embeddings, "class_embeddings"), "class_embeddings")
    f = _unit(_matrix(features, "features", w.shape[1]), "features")
    if isinstance(shots, bool) or not isinstance(shots, int | np.integer) or shots < 1:
        raise InvalidInputError(f"shots must be a positive integer, got {shots!r}")
    if isinstance(candidate_factor, bool) or not isinstance(candidate_factor, int | np.integer):
        raise InvalidInputError(f"candidate_factor must be a positive integer, got {candidate_factor!r}")
    if candidate_factor < 1:
        raise InvalidInputError(f"candidate_factor must be a positive integer, got {candidate_factor!r}")
    n, c = f.shape[0], w.shape[0]
    n_cand = min(int(candidate_factor) * int(shots), n)
    k = min(int(shots), n_cand)
    logp = _log_softmax(np.float32(temperature) * (f @ w.T)).astype(np.float64)
    p = np.exp(logp)
    # (n_cand, C): for each class, candidates by descending probability; stable -> ties by row.
    cand = np.argsort(-p, axis=0, kind="stable")[:n_cand]
    idx, lab, conf, proto = [], [], [], []
    block = max(1, 4_000_000 // max(1, n_cand * c))  # classes per block: bounded memory
    for start in range(0, c, block):
        cls = np.arange(start, min(c, start + block))
        rows = cand[:, cls].T  # (b, n_cand)
        pc, lc = p[rows], logp[rows]  # (b, n_cand, C)
        # sum_m KL(p_j || p_m) = n_cand * sum p_j log p_j - p_j . sum_m log p_m
        score = n_cand * (pc * lc).sum(axis=2) - np.einsum("bjc,bc->bj", pc, lc.sum(axis=1))
        keep = np.argsort(score, axis=1, kind="stable")[:, :k]  # (b, k)
        chosen = np.take_along_axis(rows, keep, axis=1)
        idx.append(chosen)
        lab.append(np.repeat(cls[:, None], k, axis=1))
        conf.append(p[chosen, cls[:, None]])
        proto.append(np.take_along_axis(score, keep, axis=1))
    return Selection(
        indices=np.concatenate(idx).reshape(-1).astype(np.int64),
        labels=np.concatenate(lab).reshape(-1).astype(np.int64),
        confidence=np.concatenate(conf).reshape(-1).astype(np.float32),
        prototype_score=np.concatenate(proto).reshape(-1).astype(np.float32),
        shots=k,
    )


def feature_similarity(features_unit: np.ndarray, keys_unit: np.ndarray) -> np.ndarray:
    """Feature level of the MSM: cosine between unit test features and unit cache keys (N, M)."""
    return features_unit @ keys_unit.T


def semantic_similarity(test_logits: np.ndarray, key_logits: np.ndarray) -> np.ndarray:
    """Semantic level of the MSM, in [0, 2] (N, M): KL(p_i || q_j) between the test and key
    prediction distributions (softmax of the given, already tempered, logits), min-max rescaled
    per test row and flipped so that 2 is the closest key and 0 the farthest.

    KL(p_i || q_j) = sum p_i log p_i - p_i . log q_j; the first term is constant in a row, so the
    row's min-max rescaling only needs the cross term. A row whose KLs are all equal gets 1.
    """
    p = np.exp(_log_softmax(test_logits.astype(np.float32)))
    cross = p @ _log_softmax(key_logits.astype(np.float32)).T  # higher = closer
    lo = cross.min(axis=1, keepdims=True)
    span = cross.max(axis=1, keepdims=True) - lo
    flat = span <= 1e-12
    sim = 2.0 * (cross - lo) / np.where(flat, 1.0, span)
    return np.where(flat, np.float32(1.0), sim).astype(np.float32)


def msm_cache_logits(
    cos: np.ndarray,
    sem: np.ndarray | None,
    values: np.ndarray,
    beta: float = 1.0,
    levels: str = "both",
    semantic_weight: float = 1.0,
) -> np.ndarray:
    """Cache logits (N, C) = exp(-beta * (1 - s)) @ values, with s = cos ("feature"), sem
    ("semantic") or cos * (1 + gamma * (sem - 1)) ("both"); values: one-hot (M, C)."""
    if levels == "feature":
        s = cos
    elif levels == "semantic":
        s = sem
    elif levels == "both":
        s = cos * sem if semantic_weight == 1.0 else cos * (1.0 + semantic_weight * (sem - 1.0))
    else:
        raise ConfigError(f"levels must be one of {_LEVELS}, got {levels!r}")
    return (np.exp(-beta * (1.0 - s)).astype(np.float32) @ values).astype(np.float32)


# ---------------------------------------------------------------- the adapter


class TFUPAdapter:
    """Zero-shot classifier + TFUP feature cache; `fit` builds it from unlabeled samples.

    Arrays are kept unit-normalised float32; predictions are a pure function of them and the
    config, so a reloaded adapter predicts bit-for-bit the same (for the same `batch_size`).
    """

    def __init__(
        self,
        class_embeddings: Any,
        keys: Any,
        labels: Any,
        config: TFUPConfig | None = None,
        fingerprint: str = "",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.config = config or TFUPConfig()
        self.class_embeddings = _unit(_matrix(class_embeddings, "class_embeddings"), "class_embeddings")
        c, d = self.class_embeddings.shape
        self.keys = _unit(_matrix(keys, "cache keys", d), "cache keys")
        lab = np.asarray(labels)
        if lab.shape != (self.keys.shape[0],) or not np.issubdtype(lab.dtype, np.integer):
            raise InvalidInputError(
                f"labels must be {self.keys.shape[0]} integers, got {lab.dtype} {lab.shape}"
            )
        if lab.min() < 0 or lab.max() >= c:
            raise InvalidInputError(f"labels must lie in [0, {c}), got [{lab.min()}, {lab.max()}]")
        self.labels = lab.astype(np.int32)
        if class_names is not None:
            class_names = [str(x) for x in class_names]
            if len(class_names) != c:
                raise InvalidInputError(f"{len(class_names)} class names for {c} class embeddings")
        self.class_names = class_names
        self.selection: Selection | None = None
        if not isinstance(fingerprint, str):
            raise InvalidInputError("fingerprint must be a string")
        self.fingerprint = fingerprint
        self._values = np.zeros((self.keys.shape[0], c), dtype=np.float32)
        self._values[np.arange(self.keys.shape[0]), self.labels] = 1.0
        self._values.flags.writeable = False
        # The keys' own prediction distributions (semantic level), computed once.
        self._key_logits = np.float32(self.config.semantic_temperature) * (
            self.keys @ self.class_embeddings.T
        )

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def values(self) -> np.ndarray:
        """The cache's one-hot pseudo-labels (M, C), read-only."""
        return self._values

    @property
    def dim(self) -> int:
        return self.class_embeddings.shape[1]

    @classmethod
    def fit(
        cls,
        class_embeddings: Any,
        target_features: Any,
        config: TFUPConfig | None = None,
        fingerprint: str = "",
        class_names: Sequence[str] | None = None,
    ) -> TFUPAdapter:
        """Select representative samples of the unlabeled target set and cache them.

        The returned adapter's `selection` says which samples were cached and why (it is
        not saved with the adapter: a reloaded one has None)."""
        config = config or TFUPConfig()
        w = _unit(_matrix(class_embeddings, "class_embeddings"), "class_embeddings")
        f = _unit(_matrix(target_features, "target_features", w.shape[1]), "target_features")
        shots = config.shots or paper_shots(
            f.shape[0], w.shape[0], config.cache_proportion, config.min_shots, config.max_shots
        )
        sel = select_representatives(f, w, shots, config.candidate_factor, config.select_temperature)
        adapter = cls(w, f[sel.indices], sel.labels, config, fingerprint, class_names)
        adapter.selection = sel
        return adapter

    # ------------------------------------------------------------ inference

    def _blocks(self, features: Any, batch_size: int):
        f = _unit(_matrix(features, "features", self.dim), "features")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        for start in range(0, f.shape[0], batch_size):
            yield f[start : start + batch_size]

    def similarities(self, features: Any, batch_size: int = _ROWS) -> tuple[np.ndarray, np.ndarray]:
        """The two MSM levels for each (sample, cache entry): cosine and semantic (N, M) each."""
        cos, sem = [], []
        for fb in self._blocks(features, batch_size):
            cos.append(feature_similarity(fb, self.keys))
            sem.append(semantic_similarity(self._test_logits(fb), self._key_logits))
        return np.concatenate(cos), np.concatenate(sem)

    def _test_logits(self, fb: np.ndarray) -> np.ndarray:
        return np.float32(self.config.semantic_temperature) * (fb @ self.class_embeddings.T)

    def _block_logits(self, fb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.config
        raw = fb @ self.class_embeddings.T
        zs = (np.float32(cfg.logit_scale) * raw).astype(np.float32)
        cos = feature_similarity(fb, self.keys) if cfg.levels != "semantic" else None
        sem = (
            semantic_similarity(np.float32(cfg.semantic_temperature) * raw, self._key_logits)
            if cfg.levels != "feature"
            else None
        )
        cache = msm_cache_logits(cos, sem, self._values, cfg.beta, cfg.levels, cfg.semantic_weight)
        return zs, cache

    def zero_shot_logits(self, features: Any, batch_size: int = _ROWS) -> np.ndarray:
        """logit_scale * cosine to the class embeddings (N, C): the starting point, no cache."""
        s = np.float32(self.config.logit_scale)
        return np.concatenate(
            [(s * (fb @ self.class_embeddings.T)) for fb in self._blocks(features, batch_size)]
        )

    def cache_logits(self, features: Any, batch_size: int = _ROWS) -> np.ndarray:
        """The FCM's similarity-weighted pseudo-label votes (N, C), before alpha."""
        return np.concatenate([self._block_logits(fb)[1] for fb in self._blocks(features, batch_size)])

    def logits(self, features: Any, batch_size: int = _ROWS) -> np.ndarray:
        """TFUP logits (N, C) = zero-shot logits + alpha * cache logits."""
        a = np.float32(self.config.alpha)
        out = []
        for fb in self._blocks(features, batch_size):
            zs, cache = self._block_logits(fb)
            out.append(zs + a * cache)
        return np.concatenate(out)

    def predict(self, features: Any, batch_size: int = _ROWS) -> np.ndarray:
        """Class index per sample (N,) int64."""
        return self.logits(features, batch_size).argmax(axis=1)

    def predict_proba(self, features: Any, batch_size: int = _ROWS) -> np.ndarray:
        """softmax of the TFUP logits (N, C)."""
        return np.exp(_log_softmax(self.logits(features, batch_size)))

    # ------------------------------------------------------------ persistence

    def to_bytes(self) -> bytes:
        """MAGIC | sha256(payload) | msgpack payload (format version, encoder fingerprint, config,
        class embeddings, cache keys and labels as little-endian bytes with dtype and shape)."""
        payload = {
            "version": FORMAT_VERSION,
            "kind": "tfup",
            "fingerprint": self.fingerprint,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "class_embeddings": _pack(self.class_embeddings),
            "keys": _pack(self.keys),
            "labels": _pack(self.labels),
        }
        body = msgpack.packb(payload, use_bin_type=True)
        return MAGIC + hashlib.sha256(body).digest() + body

    @classmethod
    def from_bytes(cls, data: bytes, fingerprint: str | None = None) -> TFUPAdapter:
        """Load `to_bytes` output. With `fingerprint`, it must equal the saved encoder's."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise AdapterFileError(f"saved adapter must be bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < _HEADER:
            raise AdapterFileError("saved adapter is truncated or empty")
        if data[: len(MAGIC)] != MAGIC:
            raise AdapterFileError("not a saved TFUP adapter (bad magic bytes)")
        body = data[_HEADER:]
        if hashlib.sha256(body).digest() != data[len(MAGIC) : _HEADER]:
            raise AdapterFileError("saved adapter checksum mismatch: the file is corrupted")
        try:
            p = msgpack.unpackb(body, raw=False, strict_map_key=False)
        except Exception as exc:  # checksum passed, so a writer bug
            raise AdapterFileError(f"saved adapter payload is unreadable: {exc}") from exc
        if not isinstance(p, dict) or p.get("kind") != "tfup":
            raise AdapterFileError("saved adapter payload is not a TFUP adapter")
        if p.get("version") != FORMAT_VERSION:
            raise AdapterFileError(
                f"saved adapter format version {p.get('version')!r} is not supported "
                f"(this edgecache reads version {FORMAT_VERSION})"
            )
        saved = p.get("fingerprint")
        if fingerprint is not None and saved != fingerprint:
            raise AdapterFileError(
                f"adapter was built with another encoder ({str(saved)[:16]}... vs {fingerprint[:16]}...); "
                "its embeddings cannot be compared with this encoder's"
            )
        try:
            config = TFUPConfig.from_dict(p["config"])
            return cls(
                _unpack(p["class_embeddings"], "<f4"),
                _unpack(p["keys"], "<f4"),
                _unpack(p["labels"], "<i4"),
                config,
                saved,
                p.get("class_names"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterFileError(f"saved adapter payload is inconsistent: {exc}") from exc

    def save(self, path: str | os.PathLike) -> Path:
        """Write `to_bytes()` atomically (temp file, fsync, rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(self.to_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, fingerprint: str | None = None) -> TFUPAdapter:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError as exc:
            raise AdapterFileError(f"no saved adapter at {path}") from exc
        return cls.from_bytes(data, fingerprint)


def _pack(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


def _unpack(obj: Any, dtype: str) -> np.ndarray:
    if not isinstance(obj, dict) or obj.get("dtype") != dtype or dtype not in _ARRAY_DTYPES:
        raise AdapterFileError(
            f"saved array has dtype {obj.get('dtype') if isinstance(obj, dict) else '?'}, expected {dtype}"
        )
    shape, data = obj.get("shape"), obj.get("data")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise AdapterFileError(f"saved array has a bad shape {shape!r}")
    if not isinstance(data, bytes) or len(data) != int(np.prod(shape)) * np.dtype(dtype).itemsize:
        raise AdapterFileError("saved array data does not match its shape")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
