"""One user's vector index: a usearch HNSW over cosine distance at reduced precision."""

from __future__ import annotations

import math

import numpy as np

from ._native import Index, MetricKind, ScalarKind
from .errors import InvalidInputError, SnapshotError

_SCALARS = {"f32": ScalarKind.F32, "f16": ScalarKind.F16, "i8": ScalarKind.I8}
_WIDTH = {"f32": 4, "f16": 2, "i8": 1}


def vector_bytes(dim: int, dtype: str) -> int:
    """Bytes one stored vector takes (what an entry's size counts for it)."""
    return dim * _WIDTH[dtype]


def stored_vector_bytes(data: bytes) -> int:
    """Bytes per vector of a serialized index, from its own header."""
    try:
        meta = Index.metadata(data)
    except Exception as exc:  # usearch raises plain RuntimeError on bad bytes
        raise SnapshotError(f"index bytes are unreadable: {exc}") from exc
    kinds = {kind: name for name, kind in _SCALARS.items()}
    if meta is None or meta.get("kind_scalar") not in kinds:
        raise SnapshotError("index bytes do not hold an index of a known precision")
    return vector_bytes(int(meta["dimensions"]), kinds[meta["kind_scalar"]])


def all_finite(x: np.ndarray) -> bool:
    """No NaN or infinity in `x`. A finite sum of squares clears every value in one numpy
    call (a lookup makes its calls when the encoder has left the caches cold, 5-10 us each);
    only an overflow or a bad value takes the elementwise check."""
    flat = x.ravel()
    return math.isfinite(float(flat @ flat)) or bool(np.isfinite(flat).all())


def checked_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != dim:
        raise InvalidInputError(f"expected vectors of dimension {dim}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InvalidInputError("vector contains NaN or infinity")
    if not (x * x).sum(axis=1).all():  # a zero row; np.linalg.norm costs ~10 us more per lookup
        raise InvalidInputError("zero vector has no direction to compare")
    return np.ascontiguousarray(x)


def checked_vector(vector: np.ndarray, dim: int) -> np.ndarray:
    """One query vector as a (1, dim) row, checked as `checked_vectors` checks it.

    A lookup runs right after the encoder has left the CPU caches cold, where each numpy
    call costs 5-10 us: a finite, non-zero squared norm clears a well-formed vector in one
    call, and anything else takes the full check for its precise error.
    """
    x = np.asarray(vector, dtype=np.float32)
    if x.shape == (dim,) and x.flags.c_contiguous:
        squared = float(x @ x)
        if math.isfinite(squared) and squared > 0.0:
            return x[None, :]
    rows = checked_vectors(x, dim)
    if len(rows) != 1:
        raise InvalidInputError(f"expected one vector of dimension {dim}, got shape {x.shape}")
    return rows


# The layout of usearch's serialized index (the pinned 2.26): a matrix part (rows and bytes
# per row as two u32, then the vectors), a 64-byte metadata block, a header of five u64
# (size, connectivity, connectivity at level 0, max level, entry slot), each node's level
# (i16), then per node: key (u64), level (i16) and, for each of its levels, a neighbour count
# (u32) and that level's capacity of neighbour slots (u32).
_METADATA_BYTES = 64


def check_graph(data: bytes) -> None:
    """Refuse serialized index bytes whose graph could send a search outside the index.

    usearch trusts the graph it loads: a neighbour slot past the end (a damaged snapshot
    whose checksum was recomputed, a faulty writer) crashes the process on a later search
    instead of raising. Rebuilding the graph from the vectors would cost seconds per 100k
    entries, so the graph is checked instead: every count within its list's capacity, every
    slot within the index, the levels consistent, the length exact."""
    try:
        meta = Index.metadata(data)
    except Exception as exc:  # usearch raises plain RuntimeError on bad bytes
        raise SnapshotError(f"index bytes are unreadable: {exc}") from exc
    if meta is None or meta.get("kind_metric") != MetricKind.Cos or meta.get("matrix_uses_64_bit_dimensions"):
        raise SnapshotError("index bytes do not hold a cosine index as this edgecache writes them")
    buf = np.frombuffer(data, dtype=np.uint8)

    def u32(at: np.ndarray) -> np.ndarray:
        return (
            buf[at].astype(np.uint32)
            | buf[at + 1].astype(np.uint32) << 8
            | (buf[at + 2].astype(np.uint32) << 16 | buf[at + 3].astype(np.uint32) << 24)
        )

    try:
        rows, width = (int(v) for v in np.frombuffer(data, dtype="<u4", count=2))
        start = 8 + rows * width + _METADATA_BYTES
        size, conn, base, max_level, entry = (int(v) for v in np.frombuffer(data, "<u8", 5, start))
        if size != rows:
            raise ValueError("its header disagrees with its vectors")
        if not size:  # an empty graph's max level and entry are placeholders
            if len(data) != start + 40:
                raise ValueError("its length is not what its nodes take")
            return
        if not 0 < conn <= base <= 4096 or entry >= size or max_level > 64:
            raise ValueError("its header disagrees with itself")
        levels = np.frombuffer(data, "<i2", size, start + 40).astype(np.int64)
        node_bytes = 14 + 4 * base + levels * (4 + 4 * conn)
        first = start + 40 + 2 * size
        if first + int(node_bytes.sum()) != len(data):
            raise ValueError("its length is not what its nodes take")
        if levels.min() < 0 or levels.max() != max_level:
            raise ValueError("its node levels disagree with its header")
        offsets = first + np.concatenate([[0], np.cumsum(node_bytes)[:-1]])
        if not (buf[offsets + 8].astype(np.int64) | buf[offsets + 9].astype(np.int64) << 8 == levels).all():
            raise ValueError("a node's level disagrees with the level list")
        lists = [(offsets + 10, base)]
        for level in range(1, max_level + 1):
            at = offsets[levels >= level] + 14 + 4 * base + (level - 1) * (4 + 4 * conn)
            lists.append((at, conn))
        for at, capacity in lists:
            counts = u32(at)
            if (counts > capacity).any():
                raise ValueError("a node has more neighbours than fit")
            slots = u32(at[:, None] + 4 + 4 * np.arange(capacity))
            if (slots[np.arange(capacity) < counts[:, None]] >= size).any():
                raise ValueError("a neighbour lies outside the index")
    except (ValueError, IndexError) as exc:  # IndexError: a length that runs past the bytes
        raise SnapshotError(f"index graph is damaged: {exc}") from exc


class VectorIndex:
    def __init__(self, dim: int, dtype: str = "i8", connectivity: int = 8) -> None:
        self.dim, self.dtype, self.connectivity = dim, dtype, connectivity
        self._index = self._new()

    def _new(self) -> Index:
        return Index(
            ndim=self.dim,
            metric=MetricKind.Cos,
            dtype=_SCALARS[self.dtype],
            connectivity=self.connectivity,
        )

    def __len__(self) -> int:
        return len(self._index)

    def add(self, keys: np.ndarray | int, vectors: np.ndarray) -> None:
        x = checked_vectors(vectors, self.dim)
        self._index.add(np.atleast_1d(np.asarray(keys, dtype=np.uint64)), x, threads=1)

    def holds_all(self, keys: list[int]) -> bool:
        """Whether every key has a vector here (one vectorized check)."""
        return bool(self._index.contains(np.asarray(keys, dtype=np.uint64)).all()) if keys else True

    def remove(self, key: int) -> None:
        self._index.remove(int(key))

    def search(self, vector: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Keys and cosine similarities of the k nearest, most similar first."""
        x = checked_vector(vector, self.dim)
        size = len(self._index)
        if size == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.float32)
        # usearch's compiled search, without Index.search's Python wrapper (argument checks
        # and result objects): ~35-40 us less per lookup after an encoder run (A/B in one
        # process, 10k entries). Pinned usearch version; test_cache checks both agree.
        keys, distances, counts = self._index._compiled.search_many(
            x, count=min(k, size), exact=False, threads=1, dtype=ScalarKind.Unknown
        )[:3]
        found = int(counts[0])
        return keys[0, :found], 1.0 - distances[0, :found]

    def similarities(self, keys: list[int], vector: np.ndarray) -> list[float]:
        """Cosine of the query with the stored vectors of `keys` (as the index holds them)."""
        if not keys:
            return []
        x = checked_vector(vector, self.dim)[0]
        stored = self._index.get(np.asarray(keys, dtype=np.uint64), dtype=np.float32)
        if any(v is None for v in stored):
            raise KeyError(f"index holds no vector for some of {keys}")
        m = np.asarray(stored, dtype=np.float32)
        return [float(s) for s in (m @ x) / (np.linalg.norm(m, axis=1) * np.linalg.norm(x))]

    def clear(self) -> None:
        self._index = self._new()

    def to_bytes(self) -> bytes:
        return bytes(self._index.save())

    def load_bytes(self, data: bytes) -> None:
        check_graph(data)
        try:
            restored = Index.restore(data, view=False)
        except Exception as exc:  # usearch raises plain RuntimeError on bad bytes
            raise SnapshotError(f"index bytes are unreadable: {exc}") from exc
        if restored is None or restored.ndim != self.dim:
            raise SnapshotError("index bytes do not hold an index of the configured dimension")
        if restored.dtype != _SCALARS[self.dtype] or restored.connectivity != self.connectivity:
            # Saved under another dtype or connectivity: rebuilt as configured, so a changed
            # setting reaches existing caches (from the stored vectors: i8 -> f16 keeps i8's
            # precision, it cannot restore what was rounded away).
            keys = np.asarray(restored.keys, dtype=np.uint64)
            rebuilt = self._new()
            if len(keys):
                rebuilt.add(keys, np.stack(restored.get(keys, dtype=np.float32)), threads=1)
            restored = rebuilt
        self._index = restored

    def serialized_bytes(self) -> int:
        """Vectors + graph as stored; usearch's memory_usage counts reserved, untouched arena."""
        return int(self._index.serialized_length)
