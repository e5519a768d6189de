"""Test doubles that are real implementations of small interfaces (no model needed), and the
way tests reach the shared evaluation data."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest

from edgecache.embedder import Embedded
from edgecache.evaldata import data_root

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Bag-of-words feature hashing: texts sharing words are near, others far.

    Deterministic and fast, so cache mechanics are testable without the ONNX model.
    """

    def __init__(self, dim: int = 256, fingerprint: str = "hashing-test-embedder") -> None:
        self.dim, self.fingerprint = dim, fingerprint
        self.calls = 0

    def _vector(self, text: str) -> np.ndarray:
        v = np.zeros(self.dim, np.float32)
        for word in _WORD.findall(text.lower()) or [text]:
            h = int(hashlib.sha256(word.encode()).hexdigest(), 16)
            v[h % self.dim] += 1.0 if (h >> 128) & 1 else -1.0
        n = np.linalg.norm(v)
        if n == 0:
            v[0] = 1.0
            n = 1.0
        return v / n

    def embed(self, texts: list[str]) -> Embedded:
        self.calls += 1
        return Embedded(np.stack([self._vector(t) for t in texts]), [False] * len(texts))


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_in_threads(target: Callable[..., object], args: Iterable[tuple]) -> list[BaseException]:
    """Run target(*a) for each a in its own thread, all at once; the exceptions they raised."""
    errors: list[BaseException] = []

    def guarded(*a: object) -> None:
        try:
            target(*a)
        except Exception as exc:  # returned to the test, which asserts there are none
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=a) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def shared_data(*parts: str) -> Path:
    """A path in the shared evaluation data; the test skips where this machine lacks it
    (a checkout whose ../shared/data is absent and no EDGECACHE_DATA)."""
    path = data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"the shared evaluation data is not at {path}")
    return path


def refuse_new_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make creating any file fail as on a read-only file system (running as root, a folder's
    permissions would not stop it)."""
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
