"""Linear projections that compress encoder vectors (PCA or a learned head).

A projection is `y = normalize((x - mean) @ matrix)`; it is saved as .npz with a
fingerprint of its numbers so snapshots can refuse vectors from another projection.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .errors import ConfigError

ASSETS = "edgecache.assets"


@dataclass(frozen=True)
class Projection:
    name: str
    mean: np.ndarray  # (in_dim,)
    matrix: np.ndarray  # (in_dim, out_dim)
    info: dict

    @property
    def in_dim(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def out_dim(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.mean, dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.matrix, dtype=np.float32).tobytes())
        return digest.hexdigest()

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """(in_dim,) or (n, in_dim) -> unit vectors of out_dim, float32."""
        x = np.asarray(vectors, dtype=np.float32)
        y = (x - self.mean) @ self.matrix
        # Not np.linalg.norm: its Python layer costs a lookup ~10 us when the encoder left caches cold.
        norms = np.sqrt((y * y).sum(axis=-1, keepdims=True))
        return (y / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            mean=self.mean.astype(np.float32),
            matrix=self.matrix.astype(np.float32),
            info=np.frombuffer(json.dumps({"name": self.name, **self.info}).encode(), np.uint8),
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Projection:
        with np.load(io.BytesIO(data)) as npz:
            info = json.loads(npz["info"].tobytes().decode())
            return cls(info.pop("name"), npz["mean"], npz["matrix"], info)


def identity(dim: int = 384) -> Projection:
    return Projection("none", np.zeros(dim, np.float32), np.eye(dim, dtype=np.float32), {})


def fit_pca(vectors: np.ndarray, dim: int) -> Projection:
    x = np.asarray(vectors, dtype=np.float64)
    if not 1 <= dim <= x.shape[1]:
        raise ConfigError(f"PCA dimension must be in 1..{x.shape[1]}, got {dim}")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    explained = float((s[:dim] ** 2).sum() / (s**2).sum())
    return Projection(
        f"pca-{dim}",
        mean.astype(np.float32),
        vt[:dim].T.astype(np.float32),
        {"kind": "pca", "explained_variance": explained, "n_fit": int(x.shape[0])},
    )


def shipped_names() -> list[str]:
    """The projections a config may name: "none" and those in edgecache/assets."""
    files = [Path(p.name) for p in resources.files(ASSETS).iterdir()]
    fitted = [
        f.stem.removeprefix("projection-")
        for f in files
        if f.suffix == ".npz" and f.stem.startswith("projection-")
    ]
    return ["none", *sorted(fitted)]


def check_shipped(name: object) -> None:
    """A clear ConfigError unless `name` is one of `shipped_names()`."""
    names = shipped_names()
    if name not in names:
        raise ConfigError(f"unknown projection {name!r}; shipped: {', '.join(names)}")


def shipped(name: str) -> Projection:
    """A projection shipped in edgecache/assets (see `edgecache model fit-projection`)."""
    check_shipped(name)
    if name == "none":
        return identity()
    path = resources.files(ASSETS) / f"projection-{name}.npz"
    return Projection.from_bytes(path.read_bytes())


def save_shipped(projection: Projection, assets_dir: Path) -> Path:
    path = assets_dir / f"projection-{projection.name}.npz"
    path.write_bytes(projection.to_bytes())
    return path
