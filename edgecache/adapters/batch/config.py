"""`BatchJobConfig`: one run's settings, validated when constructed."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ...errors import ConfigError
from ..openclip import DEFAULT_TEMPLATES
from ..tfup import TFUPConfig
from .storage import ImageLocation

OUTPUT_FORMATS = ("jsonl", "parquet")
ENGINES = ("torch", "onnx")
_SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


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
