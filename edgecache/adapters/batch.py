"""Batch image classification with TFUP on Ray Data: a folder or S3 prefix in, JSONL/Parquet out.

    from edgecache.adapters.batch import BatchJobConfig, run_batch_job
    summary = run_batch_job(BatchJobConfig(
        input="s3://photos/2026/", output="s3://results/2026.parquet",
        class_names=("cat", "dog"), model="ViT-B-32", pretrained="/models/vit_b32.pt",
        engine="onnx"))
    print(summary.line())

or `edgecache adapters classify-images ...` (edgecache.adapters.cli).

The pipeline (every stage is a Ray Data operator, so the same code runs on one machine or on a
multi-node cluster):

    driver      list the input files (os.walk / S3 ListObjectsV2); load the model; embed the
                class prompts (text tower, prompt ensemble); ship the image tower to the
                object store (a state dict for torch, the exported graph for ONNX)
    pass 1      read bytes (local file or S3 GetObject) -> decode (PIL) -> resize + center
                crop to uint8 (tasks) -> normalise + embed (actor pool, the model loaded once
                per actor) -> materialized in the object store: path, embedding, error
    fit         the driver streams pass 1 once, keeping per class only the
                `candidate_factor * max_shots` most confident samples (zero-shot probability),
                and runs TFUP's selection on that pool. The top candidates of each class in the
                pool are those of the whole set, and the prototype score looks only at
                candidates, so the cache equals `TFUPAdapter.fit` on all embeddings while the
                driver holds O(classes x shots) vectors, not O(images)
    pass 2      classify every embedding with the fitted adapter (tasks; no re-embedding), the
                rows stream back to the driver, which writes one JSONL or Parquet file (locally,
                or uploads it to S3)

A file that cannot be read or is not a decodable image becomes an error row in pass 1 (path and
reason) and is left out of pass 2: it never fails the job. The summary (printed as one line,
written as JSON next to the output) counts files, classified images and skipped files, lists
every skipped file with its reason, and times the passes, including the seconds the read/decode
tasks and the embedding actors were busy (images per busy second = the engine's own rate).

Output rows: path, label, score (TFUP probability), zero_shot_label, zero_shot_score, top_k
(list of {label, score}), and the embedding when asked (`include_embeddings`).

Ray: `address=None` starts a local cluster bound to 127.0.0.1 (see `start_local_ray`) unless
this process is already connected; an address ("auto", "ray://head:10001", "host:6379") joins
an existing cluster. S3: boto3 (`edgecache.aws_stores.make_client`), credentials from the
environment of every process (driver and workers), `endpoint_url` for an S3-compatible server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgecacheError, InvalidInputError
from .tfup import TFUPAdapter, TFUPConfig, paper_shots, select_representatives

__all__ = [
    "BatchJobConfig",
    "BatchJobError",
    "BatchJobSummary",
    "ImageLocation",
    "Pass1",
    "fit_from_batches",
    "list_inputs",
    "run_batch_job",
    "start_local_ray",
]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
OUTPUT_FORMATS = ("jsonl", "parquet")
ENGINES = ("torch", "onnx")
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# The driver's read-back of pass 1: rows per batch it holds at once.
_STREAM_ROWS = 4096


class BatchJobError(EdgecacheError):
    """A batch job that cannot start or finish: unreadable input listing, unwritable output,
    an embedding stage that fails its self-check."""


# ---------------------------------------------------------------- locations


@dataclass(frozen=True)
class ImageLocation:
    """A local folder/file or an S3 `s3://bucket/prefix` location."""

    bucket: str | None
    key: str  # local path, or S3 key (prefix)

    @classmethod
    def parse(cls, text: str) -> ImageLocation:
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("a location must be a non-empty path or s3:// URL")
        if text.startswith("s3://"):
            bucket, _, key = text[5:].partition("/")
            if not bucket or "/" in bucket or bucket != bucket.strip():
                raise ConfigError(f"not an s3://bucket/prefix URL: {text!r}")
            return cls(bucket, key)
        if "://" in text:
            raise ConfigError(f"unsupported location {text!r}: a local path or s3://bucket/prefix")
        return cls(None, text)

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.is_s3 else self.key


_CLIENTS: dict[str | None, Any] = {}


def _s3(endpoint_url: str | None) -> Any:
    """One boto3 client per process and endpoint (clients are thread-safe, creating one is not
    cheap); reused by every batch a worker reads."""
    client = _CLIENTS.get(endpoint_url)
    if client is None:
        from ..aws_stores import make_client

        client = _CLIENTS[endpoint_url] = make_client("s3", endpoint_url=endpoint_url)
    return client


def list_inputs(
    location: str, endpoint_url: str | None = None, extensions: Sequence[str] | None = None
) -> list[str]:
    """Every file under a folder (recursive, hidden files and folders excluded) or an S3 prefix,
    as paths / s3:// URLs, sorted. `extensions` (".jpg", "png") keeps only those suffixes; by
    default every file is listed, so that a stray non-image is reported rather than ignored."""
    loc = ImageLocation.parse(location)
    suffixes = None
    if extensions:
        suffixes = tuple("." + e.lower().lstrip(".") for e in extensions)

    def wanted(name: str) -> bool:
        return suffixes is None or name.lower().endswith(suffixes)

    if not loc.is_s3:
        root = Path(loc.key).expanduser()
        if root.is_file():
            return [str(root)]
        if not root.is_dir():
            raise ConfigError(f"input folder not found: {root}")
        out = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and wanted(f)]
        return sorted(out)
    from botocore.exceptions import BotoCoreError, ClientError

    out = []
    try:
        pages = _s3(endpoint_url).get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key)
        for page in pages:
            for obj in page.get("Contents", []):
                key = obj["Key"]
                name = key.rsplit("/", 1)[-1]
                if key.endswith("/") or name.startswith(".") or not wanted(name):
                    continue
                out.append(f"s3://{loc.bucket}/{key}")
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot list {loc}: {exc}") from exc
    return sorted(out)


def _read(path: str, endpoint_url: str | None, max_bytes: int) -> bytes:
    """A file's bytes; OSError (local) or a botocore error (S3) when it cannot be read."""
    if path.startswith("s3://"):
        bucket, _, key = path[5:].partition("/")
        obj = _s3(endpoint_url).get_object(Bucket=bucket, Key=key)
        if obj.get("ContentLength", 0) > max_bytes:
            obj["Body"].close()
            raise ValueError(f"{obj['ContentLength']} bytes, over the {max_bytes}-byte limit")
        return obj["Body"].read()
    size = os.path.getsize(path)
    if size > max_bytes:
        raise ValueError(f"{size} bytes, over the {max_bytes}-byte limit")
    return Path(path).read_bytes()


# ---------------------------------------------------------------- configuration


def _format_of(output: str, given: str | None) -> str:
    if given is not None:
        if given not in OUTPUT_FORMATS:
            raise ConfigError(f"output format must be one of {OUTPUT_FORMATS}, got {given!r}")
        return given
    suffix = os.path.splitext(output.rstrip("/"))[1].lower()
    if suffix not in _SUFFIX_FORMAT:
        raise ConfigError(f"cannot tell the output format of {output!r}: end it in .jsonl or .parquet")
    return _SUFFIX_FORMAT[suffix]


@dataclass(frozen=True)
class BatchJobConfig:
    """One batch classification run.

    input: a folder (recursive), one file, or s3://bucket/prefix. output: a .jsonl or .parquet
        file path or s3:// URL (`output_format` overrides the suffix).
    class_names, templates: the classes and the prompt templates ("{}" = the class name),
        ensembled per class.
    model / pretrained / checkpoint / seed: "tiny" (the random test model, `seed`) or an
        open_clip model name with a pretrained tag, a local checkpoint file, or neither
        (random weights: for throughput only).
    engine: "torch" or "onnx" (the image tower exported once by the driver, checked against
        torch; `onnx_path` keeps it on disk and reuses it when its fingerprint matches).
    tfup: the adapter's hyperparameters (TFUPConfig). top_k: entries of each row's top_k list
        (default 5, at most the number of classes).
    endpoint_url: S3 endpoint for an S3-compatible server (None: AWS).
    summary_path: where the JSON summary goes (default: output + ".summary.json").
    save_adapter: also save the fitted adapter there (local path or s3://).
    batch_size: images per Ray Data batch. actors: embedding actors (default: the cluster's CPUs
        minus one, at least 1). actor_cpus: CPUs reserved per actor; threads: intra-op threads
        per actor (default: actor_cpus rounded up). read_cpus: CPUs reserved per read/decode task.
    extensions: keep only files with these suffixes (default: every file; non-images are
        reported). max_file_bytes: larger files are skipped and reported.
    include_embeddings: add each image's unit embedding to its output row.
    address: Ray cluster to join (None: this process's, or a new local one); num_cpus: CPUs of a
        new local cluster.
    """

    input: str
    output: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    model: str = "tiny"
    pretrained: str | None = None
    checkpoint: str | None = None
    seed: int = 0
    engine: str = "torch"
    onnx_path: str | None = None
    tfup: TFUPConfig = field(default_factory=TFUPConfig)
    top_k: int | None = None
    output_format: str | None = None
    endpoint_url: str | None = None
    summary_path: str | None = None
    save_adapter: str | None = None
    batch_size: int = 64
    actors: int | None = None
    actor_cpus: float = 1.0
    threads: int | None = None
    read_cpus: float = 0.5
    extensions: tuple[str, ...] | None = None
    max_file_bytes: int = 64 << 20
    include_embeddings: bool = False
    address: str | None = None
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        ImageLocation.parse(self.input)
        ImageLocation.parse(self.output)
        object.__setattr__(self, "output_format", _format_of(self.output, self.output_format))
        names = tuple(self.class_names) if not isinstance(self.class_names, str) else ()
        if not names or any(not isinstance(c, str) or not c.strip() for c in names):
            raise ConfigError("class_names must be a non-empty list of non-empty strings")
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise ConfigError(f"duplicate class names: {dup}")
        object.__setattr__(self, "class_names", names)
        temps = tuple(self.templates) if not isinstance(self.templates, str) else ()
        if not temps or any(not isinstance(t, str) or "{}" not in t for t in temps):
            raise ConfigError('templates must be a non-empty list of strings containing "{}"')
        for t in temps:
            try:
                t.format("x")
            except (IndexError, KeyError, ValueError) as exc:
                raise ConfigError(f"template {t!r} is not a format string with one {{}}: {exc}") from None
        object.__setattr__(self, "templates", temps)
        if self.engine not in ENGINES:
            raise ConfigError(f"engine must be one of {ENGINES}, got {self.engine!r}")
        if self.onnx_path is not None and self.engine != "onnx":
            raise ConfigError("onnx_path needs engine='onnx'")
        if self.pretrained is not None and self.checkpoint is not None:
            raise ConfigError("give a pretrained tag or a checkpoint file, not both")
        if self.model == "tiny" and (self.pretrained or self.checkpoint):
            raise ConfigError("the tiny test model has no pretrained weights; drop pretrained/checkpoint")
        if not isinstance(self.tfup, TFUPConfig):
            raise ConfigError("tfup must be a TFUPConfig")
        if self.top_k is None:
            object.__setattr__(self, "top_k", min(5, len(names)))
        for name, low in (("top_k", 1), ("batch_size", 1), ("max_file_bytes", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {v!r}")
        if self.top_k > len(names):
            raise ConfigError(f"top_k must be at most the number of classes ({len(names)}), got {self.top_k}")
        for name in ("actors", "threads", "num_cpus"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        for name in ("actor_cpus", "read_cpus"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if self.address is not None and self.num_cpus is not None:
            raise ConfigError("num_cpus sizes a new local cluster; it cannot be given with address")
        if self.extensions is not None:
            object.__setattr__(self, "extensions", tuple(self.extensions))

    @property
    def resolved_summary_path(self) -> str:
        return self.summary_path or self.output + ".summary.json"


@dataclass
class BatchJobSummary:
    """What a run did: counts, timings, the cache it built, every skipped file and why."""

    input: str
    output: str
    output_format: str
    engine: str
    model: str
    fingerprint: str
    files: int
    classified: int
    skipped: int
    errors: list[dict[str, str]]
    classes: list[str]
    shots: int
    cache_size: int
    cache_per_class: dict[str, int]
    label_counts: dict[str, int]
    zero_shot_label_counts: dict[str, int]
    changed_by_tfup: int
    pass1_s: float
    fit_s: float
    pass2_s: float
    total_s: float
    embed_images_per_s: float
    read_busy_s: float
    embed_busy_s: float
    embed_busy_images_per_s: float
    actors: int
    adapter_path: str | None = None
    summary_path: str | None = None

    def line(self) -> str:
        return (
            f"classified {self.classified} of {self.files} files, skipped {self.skipped} "
            f"(not readable/decodable); pass 1 (embed, {self.engine}, {self.actors} actor(s)) "
            f"{self.pass1_s:.1f} s = {self.embed_images_per_s:.1f} images/s; TFUP cache "
            f"{self.cache_size} ({self.shots}/class); pass 2 (classify) {self.pass2_s:.1f} s; "
            f"TFUP changed {self.changed_by_tfup} zero-shot labels; total {self.total_s:.1f} s "
            f"-> {self.output}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- Ray


def _keep_ray_on_loopback() -> None:
    """On Linux Ray maps a 127.0.0.1 node address to the machine's routable one unless
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (../shared/ENVIRONMENT.md, Ray 2.60): a local node then
    registers on the external interface, and a driver joining a cluster at 127.0.0.1 dials the
    external address where nothing listens. Ray reads the variable into a constant when first
    imported, so it is set here (unless the caller set it) for the processes Ray starts, and the
    already imported constant is brought in line."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    if os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].strip().lower() in ("0", "false"):
        ray_constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(num_cpus: int | None = None) -> Any:
    """A new single-node cluster in this process, bound to 127.0.0.1, no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    _keep_ray_on_loopback()
    import ray

    return ray.init(
        address="local",
        num_cpus=num_cpus,
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )


def _ensure_ray(config: BatchJobConfig) -> bool:
    """Connect as configured; True when this call started Ray (and the job should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if config.address is None:
        start_local_ray(config.num_cpus)
        return True
    host = config.address.split("://")[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        _keep_ray_on_loopback()
        ray.init(
            address=config.address, _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False
        )
    else:
        ray.init(address=config.address, log_to_driver=False, configure_logging=False)
    return True


# ---------------------------------------------------------------- the model


def _load_backend(config: BatchJobConfig) -> Any:
    from .openclip import OpenCLIPBackend

    if config.model == "tiny":
        return OpenCLIPBackend.tiny(seed=config.seed)
    return OpenCLIPBackend.from_pretrained(config.model, config.checkpoint or config.pretrained)


def _state_arrays(model: Any) -> dict[str, np.ndarray]:
    import torch

    out = {}
    for name, t in model.state_dict().items():
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:  # numpy has no bfloat16
            t = t.float()
        out[name] = t.numpy()
    return out


def _onnx_bytes(backend: Any, onnx_path: str | None, progress: Callable[[str], None]) -> bytes:
    """The exported image tower: reused from `onnx_path` when it was exported from these
    weights (fingerprint in its metadata), else exported (and numerically checked) anew."""
    from .openclip import OnnxImageBackend, export_image_onnx

    if onnx_path and Path(onnx_path).is_file():
        try:
            existing = OnnxImageBackend(onnx_path).fingerprint
        except Exception as exc:  # an unreadable old export is simply replaced
            existing = f"unreadable ({exc})"
        if existing == backend.fingerprint:
            progress(f"reusing the ONNX image tower {onnx_path}")
            return Path(onnx_path).read_bytes()
        progress(f"re-exporting {onnx_path}: it holds other weights or does not load")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(onnx_path) if onnx_path else Path(tmp) / "image_tower.onnx"
        t = time.perf_counter()
        report = export_image_onnx(backend, target)
        progress(
            f"exported the image tower to ONNX in {time.perf_counter() - t:.1f} s "
            f"(min cosine vs torch {report.min_cosine:.6f})"
        )
        return target.read_bytes()


# ---------------------------------------------------------------- pass 1 stages


def _load_batch(
    batch: dict[str, np.ndarray], transform: dict[str, Any], endpoint_url: str | None, max_bytes: int
) -> dict[str, np.ndarray]:
    """path -> (uint8 crop, error). Every failure becomes the row's error text, never an exception:
    one bad file must not fail the task and with it the job."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .openclip import InvalidImageError, decode_image, resize_crop_fn

    t0 = time.perf_counter()
    crop = resize_crop_fn(transform)
    h, w = transform["crop"]
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        try:
            blob = _read(path, endpoint_url, max_bytes)
        except (OSError, ValueError, ClientError, BotoCoreError) as exc:
            errors.append(f"unreadable: {type(exc).__name__}: {exc}")
            continue
        try:
            pixels[i] = crop(decode_image(blob))
            errors.append("")
        except InvalidImageError as exc:
            errors.append(str(exc))
        except Exception as exc:  # PIL raises assorted types on hostile files
            errors.append(f"not a decodable image: {type(exc).__name__}: {exc}")
    # Per-row share of this batch's wall time: summed by the driver into the busy time of the stage.
    busy = np.full(len(paths), (time.perf_counter() - t0) / max(1, len(paths)))
    return {
        "path": np.asarray(paths, dtype=object),
        "pixels": pixels,
        "error": np.asarray(errors, dtype=object),
        "read_s": busy,
    }


class _Embedder:
    """The actor-pool stage: the image tower loaded once per actor, checked against the driver's
    embedding of a probe batch so that a tower that does not reproduce the driver's model (wrong
    weights, a broken export) fails the job instead of writing wrong labels."""

    def __init__(
        self,
        engine: dict[str, Any],
        transform: dict[str, Any],
        probe: np.ndarray,
        expected: np.ndarray,
        threads: int,
    ) -> None:
        import ray

        self.transform = transform
        payload = ray.get(engine["ref"])
        if engine["kind"] == "torch":
            self._embed = self._torch_tower(engine, payload, threads)
        else:
            self._embed = self._onnx_tower(payload, threads)
        got = self._embed(_normalize(probe, transform))
        cos = float((got * expected).sum(axis=1).min())
        if not cos > 0.999:
            raise BatchJobError(
                f"the {engine['kind']} image tower disagrees with the driver's model (cos {cos})"
            )

    @staticmethod
    def _torch_tower(engine: dict[str, Any], state: dict[str, np.ndarray], threads: int) -> Callable:
        import open_clip
        import torch
        from open_clip import factory

        torch.set_num_threads(threads)
        if open_clip.get_model_config(engine["model_name"]) is None:  # tiny / custom configs
            factory._MODEL_CONFIGS[engine["model_name"]] = json.loads(json.dumps(engine["config"]))
        model = open_clip.create_model(engine["model_name"], pretrained=None)
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        model.eval()

        def embed(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                f = model.encode_image(torch.from_numpy(x)).float()
                return torch.nn.functional.normalize(f, dim=-1).numpy()

        return embed

    @staticmethod
    def _onnx_tower(blob: bytes, threads: int) -> Callable:
        from .._native import onnxruntime as ort  # the onnxruntime-before-usearch import order

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])

        def embed(x: np.ndarray) -> np.ndarray:
            (out,) = session.run(["embedding"], {"pixels": x})
            return np.asarray(out, dtype=np.float32)

        return embed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        errors = np.asarray(batch["error"], dtype=object)
        ok = np.flatnonzero(errors == "")
        out = None
        if len(ok):
            from .openclip import normalize_pixels

            out = self._embed(normalize_pixels(np.asarray(batch["pixels"])[ok], self.transform))
        dim = out.shape[1] if out is not None else self._dim()
        emb = np.zeros((len(errors), dim), dtype=np.float32)
        if out is not None:
            emb[ok] = out
        busy = np.full(len(errors), (time.perf_counter() - t0) / max(1, len(errors)))
        return {
            "path": batch["path"],
            "embedding": emb,
            "error": errors,
            "read_s": batch["read_s"],
            "embed_s": busy,
        }

    def _dim(self) -> int:
        h, w = self.transform["crop"]
        return int(self._embed(_normalize(np.zeros((1, h, w, 3), np.uint8), self.transform)).shape[1])


def _normalize(crops: np.ndarray, transform: dict[str, Any]) -> np.ndarray:
    from .openclip import normalize_pixels

    return normalize_pixels(crops, transform)


def _probe(transform: dict[str, Any]) -> np.ndarray:
    """Two fixed uint8 images (a gradient and its mirror) for the actors' self-check."""
    h, w = transform["crop"]
    g = np.linspace(0, 255, h * w * 3).reshape(h, w, 3).astype(np.uint8)
    return np.stack([g, g[::-1, ::-1]])


# ---------------------------------------------------------------- the fit (driver)


class _CandidatePool:
    """Per class, the `m` rows with the highest selection probability seen so far (ties: the
    earlier row), so that TFUP's selection can run on the pool instead of on every row."""

    def __init__(self, class_embeddings: np.ndarray, m: int, temperature: float) -> None:
        self.w = class_embeddings
        self.m, self.t = m, np.float32(temperature)
        self.rows = np.zeros((0,), dtype=np.int64)
        self.feats = np.zeros((0, class_embeddings.shape[1]), dtype=np.float32)
        self.p = np.zeros((0, class_embeddings.shape[0]), dtype=np.float64)

    def add(self, feats: np.ndarray, first_row: int) -> None:
        if not len(feats):
            return
        logits = self.t * (feats @ self.w.T)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z - np.log(np.exp(z).sum(axis=1, keepdims=True))).astype(np.float64)
        # Rows arrive in increasing order and the pool keeps them sorted, so the stable sort below
        # breaks probability ties by row, as select_representatives does over the whole set.
        rows = np.concatenate([self.rows, first_row + np.arange(len(feats))])
        f = np.concatenate([self.feats, feats])
        pp = np.concatenate([self.p, p])
        top = np.argsort(-pp, axis=0, kind="stable")[: self.m]
        keep = np.unique(top)
        self.rows, self.feats, self.p = rows[keep], f[keep], pp[keep]


@dataclass
class Pass1:
    """What the driver learns from pass 1: the fitted adapter, how many images were embedded,
    the skipped files, the shots per class, and the summed busy seconds of the read/decode tasks
    and of the embedding actors."""

    adapter: TFUPAdapter
    valid: int
    errors: list[dict[str, str]]
    shots: int
    read_busy_s: float
    embed_busy_s: float


def fit_from_batches(
    batches: Iterable[dict[str, np.ndarray]],
    class_embeddings: np.ndarray,
    config: BatchJobConfig,
    fingerprint: str,
    progress: Callable[[str], None],
) -> Pass1:
    """Stream pass 1's rows (path, embedding, error, read_s, embed_s) once: collect the skipped
    files, count the embedded ones, sum the stages' busy time, pool candidates; then TFUP's
    selection on the pool."""
    cfg = config.tfup
    c = class_embeddings.shape[0]
    max_k = cfg.shots or cfg.max_shots
    pool = _CandidatePool(class_embeddings, cfg.candidate_factor * max_k, cfg.select_temperature)
    errors: list[dict[str, str]] = []
    n = 0
    read_s = embed_s = 0.0
    for batch in batches:
        read_s += float(np.sum(batch.get("read_s", 0.0)))
        embed_s += float(np.sum(batch.get("embed_s", 0.0)))
        err = np.asarray(batch["error"], dtype=object)
        bad = err != ""
        for path, reason in zip(batch["path"][bad], err[bad], strict=True):
            errors.append({"path": str(path), "reason": str(reason)})
        feats = np.asarray(batch["embedding"], dtype=np.float32)[~bad]
        pool.add(feats, n)
        n += len(feats)
    if n == 0:
        raise BatchJobError(f"none of the input files is a decodable image ({len(errors)} skipped)")
    shots = cfg.shots or paper_shots(n, c, cfg.cache_proportion, cfg.min_shots, cfg.max_shots)
    sel = select_representatives(
        pool.feats, class_embeddings, shots, cfg.candidate_factor, cfg.select_temperature
    )
    adapter = TFUPAdapter(
        class_embeddings, pool.feats[sel.indices], sel.labels, cfg, fingerprint, list(config.class_names)
    )
    progress(
        f"TFUP cache: {len(sel.indices)} entries ({sel.shots}/class) from {n} images, pool {len(pool.rows)}"
    )
    return Pass1(adapter, n, errors, sel.shots, read_s, embed_s)


# ---------------------------------------------------------------- pass 2


_ADAPTERS: dict[str, TFUPAdapter] = {}


def _classify_batch(
    batch: dict[str, np.ndarray], adapter_bytes: bytes, top_k: int, include_embeddings: bool
) -> dict[str, np.ndarray]:
    key = hashlib.sha256(adapter_bytes).hexdigest()
    adapter = _ADAPTERS.get(key)
    if adapter is None:  # parsed once per worker process, not once per batch
        adapter = _ADAPTERS[key] = TFUPAdapter.from_bytes(adapter_bytes)
    ok = np.asarray(batch["error"], dtype=object) == ""
    feats = np.asarray(batch["embedding"], dtype=np.float32)[ok]
    names = np.asarray(adapter.class_names, dtype=object)
    out: dict[str, np.ndarray] = {"path": np.asarray(batch["path"], dtype=object)[ok]}
    if not len(feats):
        empty = np.zeros((0,), dtype=object)
        out.update(label=empty, score=np.zeros(0), zero_shot_label=empty, zero_shot_score=np.zeros(0))
        out.update(top_k_labels=np.zeros((0, top_k), dtype=object), top_k_scores=np.zeros((0, top_k)))
        if include_embeddings:
            out["embedding"] = np.zeros((0, adapter.dim), dtype=np.float32)
        return out
    proba = adapter.predict_proba(feats)
    zs = adapter.zero_shot_logits(feats)
    zs = np.exp(zs - zs.max(axis=1, keepdims=True))
    zs /= zs.sum(axis=1, keepdims=True)
    order = np.argsort(-proba, axis=1, kind="stable")[:, :top_k]
    zi = zs.argmax(axis=1)
    out["label"] = names[order[:, 0]]
    out["score"] = np.take_along_axis(proba, order[:, :1], axis=1)[:, 0].astype(np.float64)
    out["zero_shot_label"] = names[zi]
    out["zero_shot_score"] = zs[np.arange(len(zi)), zi].astype(np.float64)
    out["top_k_labels"] = names[order]
    out["top_k_scores"] = np.take_along_axis(proba, order, axis=1).astype(np.float64)
    if include_embeddings:
        out["embedding"] = feats
    return out


# ---------------------------------------------------------------- output


class _Writer:
    """One output file written by the driver from streamed rows; an s3:// target is written to a
    local temporary file and uploaded when the job finishes, so a failed job leaves nothing."""

    def __init__(self, config: BatchJobConfig, dim: int) -> None:
        self.config = config
        self.target = ImageLocation.parse(config.output)
        self.fmt = config.output_format
        if self.target.is_s3:
            fd, name = tempfile.mkstemp(suffix="." + self.fmt)
            os.close(fd)
            self.local = Path(name)
        else:
            self.local = Path(self.target.key).expanduser()
            self.local.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._json = None
        self._parquet = None
        if self.fmt == "jsonl":
            self._json = open(self.local, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [
                ("path", pa.string()),
                ("label", pa.string()),
                ("score", pa.float64()),
                ("zero_shot_label", pa.string()),
                ("zero_shot_score", pa.float64()),
                ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
            ]
            if config.include_embeddings:
                fields.append(("embedding", pa.list_(pa.float32(), dim)))
            self.schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(str(self.local), self.schema)

    def write(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["path"])
        if not n:
            return
        top = [
            [{"label": str(lab), "score": float(s)} for lab, s in zip(labs, scores, strict=True)]
            for labs, scores in zip(batch["top_k_labels"], batch["top_k_scores"], strict=True)
        ]
        cols: dict[str, list[Any]] = {
            "path": [str(p) for p in batch["path"]],
            "label": [str(x) for x in batch["label"]],
            "score": [float(x) for x in batch["score"]],
            "zero_shot_label": [str(x) for x in batch["zero_shot_label"]],
            "zero_shot_score": [float(x) for x in batch["zero_shot_score"]],
            "top_k": top,
        }
        if self.config.include_embeddings:
            cols["embedding"] = [list(map(float, e)) for e in np.asarray(batch["embedding"])]
        if self._json is not None:
            for i in range(n):
                self._json.write(json.dumps({k: v[i] for k, v in cols.items()}) + "\n")
        else:
            import pyarrow as pa

            self._parquet.write_table(pa.Table.from_pydict(cols, schema=self.schema))
        self.rows += n

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
        if self._parquet is not None:
            self._parquet.close()

    def commit(self) -> None:
        self.close()
        if self.target.is_s3:
            try:
                _upload_file(self.local, str(self.target), self.config.endpoint_url)
            finally:
                self.local.unlink(missing_ok=True)

    def abort(self) -> None:
        self.close()
        if self.target.is_s3:
            self.local.unlink(missing_ok=True)


def _upload_file(local: Path, url: str, endpoint_url: str | None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    loc = ImageLocation.parse(url)
    try:
        _s3(endpoint_url).upload_file(str(local), loc.bucket, loc.key)
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot write {url}: {exc}") from exc


def _put(url: str, data: bytes, endpoint_url: str | None) -> None:
    """Bytes to a local path or an s3:// URL."""
    loc = ImageLocation.parse(url)
    if not loc.is_s3:
        path = Path(loc.key).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        _s3(endpoint_url).put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    except (ClientError, BotoCoreError) as exc:
        raise BatchJobError(f"cannot write {url}: {exc}") from exc


def _stderr(message: str) -> None:
    print(f"[classify-images] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the job


def run_batch_job(
    config: BatchJobConfig, progress: Callable[[str], None] | None = _stderr
) -> BatchJobSummary:
    """Run both passes and write the output and the summary; see the module docstring.

    progress: called with one line per step (None: silent). Ray Data's own progress bars show
    the stages while they run."""
    say = progress or (lambda _m: None)
    t0 = time.perf_counter()
    paths = list_inputs(config.input, config.endpoint_url, config.extensions)
    if not paths:
        raise InvalidInputError(f"no input files under {config.input}")
    say(f"{len(paths)} files under {config.input}")

    backend = _load_backend(config)
    from .openclip import transform_params

    transform = transform_params(backend)
    class_embeddings = backend.class_embeddings(list(config.class_names), list(config.templates))
    probe = _probe(transform)
    expected = backend.embed_pil([_pil(x) for x in probe])
    fingerprint = backend.fingerprint

    started = _ensure_ray(config)
    try:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = config.actors or max(1, math.floor((cpus - config.read_cpus) / config.actor_cpus))
        if actors * config.actor_cpus + config.read_cpus > cpus:
            # Ray Data would wait forever for CPUs the cluster does not have.
            raise ConfigError(
                f"{actors} actor(s) x {config.actor_cpus} CPU + {config.read_cpus} CPU for reading "
                f"need more than the cluster's {cpus} CPUs: lower actors, actor_cpus or read_cpus"
            )
        threads = config.threads or max(1, math.ceil(config.actor_cpus))
        if config.engine == "torch":
            ref = ray.put(_state_arrays(backend.model))
            engine = {"kind": "torch", "ref": ref, "model_name": backend.model_name, "config": backend.config}
        else:
            engine = {"kind": "onnx", "ref": ray.put(_onnx_bytes(backend, config.onnx_path, say))}
        del backend  # the driver no longer needs the weights; the actors have their own copy

        summary = _run_passes(
            config,
            paths,
            transform,
            class_embeddings,
            fingerprint,
            probe,
            expected,
            engine,
            actors,
            threads,
            say,
        )
        summary.total_s = time.perf_counter() - t0
        summary.summary_path = config.resolved_summary_path
        _put(summary.summary_path, json.dumps(summary.to_dict(), indent=2).encode(), config.endpoint_url)
        say(summary.line())
        return summary
    finally:
        if started:
            import ray

            ray.shutdown()


def _pil(pixels: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(pixels, "RGB")


def _run_passes(
    config: BatchJobConfig,
    paths: list[str],
    transform: dict[str, Any],
    class_embeddings: np.ndarray,
    fingerprint: str,
    probe: np.ndarray,
    expected: np.ndarray,
    engine: dict[str, Any],
    actors: int,
    threads: int,
    say: Callable[[str], None],
) -> BatchJobSummary:
    import ray
    import ray.data

    bs = config.batch_size
    blocks = max(1, min(-(-len(paths) // bs), 1000))
    say(
        f"pass 1: read, decode and embed {len(paths)} files "
        f"({config.engine}, {actors} actor(s) x {threads} thread(s))"
    )
    t1 = time.perf_counter()
    ds = (
        ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
        .map_batches(
            _load_batch,
            fn_kwargs={
                "transform": transform,
                "endpoint_url": config.endpoint_url,
                "max_bytes": config.max_file_bytes,
            },
            batch_size=bs,
            batch_format="numpy",
            num_cpus=config.read_cpus,
        )
        .map_batches(
            _Embedder,
            fn_constructor_kwargs={
                "engine": engine,
                "transform": transform,
                "probe": probe,
                "expected": expected,
                "threads": threads,
            },
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=bs,
            batch_format="numpy",
            num_cpus=config.actor_cpus,
        )
        .materialize()
    )
    pass1_s = time.perf_counter() - t1

    t2 = time.perf_counter()
    rows = ds.iter_batches(batch_size=_STREAM_ROWS, batch_format="numpy")
    p1 = fit_from_batches(rows, class_embeddings, config, fingerprint, say)
    adapter, n_valid, errors, shots = p1.adapter, p1.valid, p1.errors, p1.shots
    if errors:
        say(f"skipped {len(errors)} file(s), e.g. {errors[0]['path']}: {errors[0]['reason']}")
    adapter_bytes = adapter.to_bytes()
    if config.save_adapter:
        _put(config.save_adapter, adapter_bytes, config.endpoint_url)
        say(f"saved the adapter to {config.save_adapter}")
    fit_s = time.perf_counter() - t2

    say(f"pass 2: classify {n_valid} images with TFUP")
    t3 = time.perf_counter()
    classified = ds.map_batches(
        _classify_batch,
        fn_kwargs={
            "adapter_bytes": adapter_bytes,
            "top_k": config.top_k,
            "include_embeddings": config.include_embeddings,
        },
        batch_size=max(bs, 256),
        batch_format="numpy",
        num_cpus=config.read_cpus,
    )
    writer = _Writer(config, adapter.dim)
    names = list(config.class_names)
    labels = dict.fromkeys(names, 0)
    zs_labels = dict.fromkeys(names, 0)
    changed = 0
    try:
        for batch in classified.iter_batches(batch_size=_STREAM_ROWS, batch_format="numpy"):
            writer.write(batch)
            for a, b in zip(batch["label"], batch["zero_shot_label"], strict=True):
                labels[str(a)] += 1
                zs_labels[str(b)] += 1
                changed += str(a) != str(b)
        if writer.rows != n_valid:
            raise BatchJobError(f"pass 2 wrote {writer.rows} rows for {n_valid} embedded images")
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    pass2_s = time.perf_counter() - t3
    per_class = np.bincount(adapter.labels, minlength=len(names))
    return BatchJobSummary(
        input=config.input,
        output=config.output,
        output_format=str(config.output_format),
        engine=config.engine,
        model=config.model,
        fingerprint=fingerprint,
        files=len(paths),
        classified=writer.rows,
        skipped=len(errors),
        errors=errors,
        classes=names,
        shots=shots,
        cache_size=int(adapter.keys.shape[0]),
        cache_per_class={c: int(k) for c, k in zip(names, per_class, strict=True)},
        label_counts=labels,
        zero_shot_label_counts=zs_labels,
        changed_by_tfup=int(changed),
        pass1_s=pass1_s,
        fit_s=fit_s,
        pass2_s=pass2_s,
        total_s=0.0,
        embed_images_per_s=n_valid / pass1_s if pass1_s > 0 else 0.0,
        read_busy_s=p1.read_busy_s,
        embed_busy_s=p1.embed_busy_s,
        embed_busy_images_per_s=n_valid / p1.embed_busy_s if p1.embed_busy_s > 0 else 0.0,
        actors=actors,
        adapter_path=config.save_adapter,
    )
