"""Where snapshots live: a small key -> bytes interface and its local implementations.

S3 and DynamoDB stores implement the same three methods. Keys are derived from a
hash of the user id (see `user_key`) so no user id ever appears in a path and two
users can never collide on a key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from .errors import ConfigError, ConflictError, InvalidInputError

# No leading dot: the folder store's own files (temp files, lock files) start with one.
_KEY = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")


def user_key(user: str) -> str:
    return hashlib.sha256(user.encode("utf-8")).hexdigest()[:40]


def check_user(user: object) -> str:
    if not isinstance(user, str):
        raise InvalidInputError(f"user must be a string, got {type(user).__name__}")
    if not user.strip() or len(user) > 512 or not user.isprintable():
        raise InvalidInputError("user must be 1-512 printable characters")
    return user


@runtime_checkable
class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...

    # `expires_at` (epoch seconds) is a hint: a store that can expire data by itself
    # (DynamoDB TTL) does, so orphaned bodies do not live forever; others may ignore it.
    def put(self, key: str, data: bytes, expires_at: float | None = None) -> None: ...

    def delete(self, key: str) -> None: ...


@runtime_checkable
class VersionedStore(Store, Protocol):
    """A store with conditional writes, so concurrent writers of one key lose nothing: a
    writer reads (data, version), and its write succeeds only if the version is unchanged
    (else ConflictError, and it merges and retries). S3 ETags and DynamoDB version
    attributes implement this; so do the local stores below."""

    def get_versioned(self, key: str) -> tuple[bytes, str] | None: ...

    # expected=None: the key must not exist yet. Returns the new version.
    def put_if(self, key: str, data: bytes, expected: str | None) -> str: ...


def _version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


# From the OS: processes restored from one snapshot (Lambda SnapStart) must not share a
# pseudo-random sequence, or their retries would collide in lockstep.
_JITTER = random.SystemRandom()
# Conditional writes lost in a row before giving up. Generous because a writer that loses is
# one whose read-merge-encode was slow, which is what a loaded machine makes of every writer.
WRITE_ATTEMPTS = 50


def backoff(lost: int, base_delay: float = 0.01, max_delay: float = 0.5) -> None:
    """Wait before retrying a conditional write lost `lost` times: "full jitter" exponential
    backoff, so writers that collided once do not collide again in lockstep."""
    time.sleep(_JITTER.uniform(0.0, min(max_delay, base_delay * 2 ** min(lost, 16))))


def update_versioned(
    store: VersionedStore,
    key: str,
    change: Callable[[bytes | None], bytes],
    *,
    attempts: int = WRITE_ATTEMPTS,
    base_delay: float = 0.01,
    max_delay: float = 0.5,
) -> bytes:
    """Read-modify-write `key` until no other writer got in between; returns what was written.

    `change` gets the current bytes (None when absent) and may be called several times, so it
    must be free of side effects. Raises ConflictError after `attempts` lost races.
    """
    if attempts < 1:
        raise InvalidInputError(f"attempts must be at least 1, got {attempts!r}")
    for lost in range(attempts):
        if lost:
            backoff(lost - 1, base_delay, max_delay)
        current = store.get_versioned(key)
        data, version = (None, None) if current is None else current
        new = change(data)
        try:
            store.put_if(key, new, version)
            return new
        except ConflictError:
            if lost == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _check_key(key: str) -> str:
    if not _KEY.match(key):
        raise InvalidInputError(f"invalid store key {key!r}")
    return key


class MemoryStore:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        with self._lock:
            data = self._data.get(_check_key(key))
        return None if data is None else (data, _version_of(data))

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        with self._lock:
            current = self._data.get(_check_key(key))
            if (None if current is None else _version_of(current)) != expected:
                raise ConflictError(f"{key} changed since it was read")
            self._data[key] = bytes(data)
        return _version_of(data)

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(_check_key(key))

    def put(self, key: str, data: bytes, expires_at: float | None = None) -> None:
        with self._lock:
            self._data[_check_key(key)] = bytes(data)

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(_check_key(key), None)


# A temp file this old is left by a writer that died mid-write (a live write takes seconds).
STALE_TEMP_SECONDS = 3600.0


class LocalFolderStore:
    """One file per key; writes are atomic (temp file, fsync, rename, fsync folder)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.root} as a store folder: {exc.strerror or exc}") from exc
        if not self.root.is_dir():
            raise ConfigError(f"cannot use {self.root} as a store folder: not a folder")
        # A folder that can be read but not written would lose every save, silently until
        # the first flush; a probe named like our temp files is cleaned up as one if it stays.
        try:
            fd, probe = self._create_temp(".write-check.")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise ConfigError(f"cannot use {self.root} as a store folder: {exc.strerror or exc}") from exc
        self._remove_stale_temps()

    def _create_temp(self, prefix: str) -> tuple[int, str]:
        """A new temp file in the folder, open for writing. Created with the mode the umask
        gives any new file (tempfile's are 0600): workers that share the folder under other
        Unix users in one group read each other's snapshots."""
        for _ in range(100):
            path = self.root / f"{prefix}{secrets.token_hex(8)}.tmp"
            try:
                return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(path)
            except FileExistsError:
                continue
        raise FileExistsError(f"no free temp file name in {self.root}")

    def _remove_stale_temps(self) -> None:
        """Temp files of writers killed mid-write: the snapshot itself is intact (the rename
        never happened), but each left a snapshot-sized file behind."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for tmp in self.root.glob(".*.tmp"):
            with contextlib.suppress(OSError):  # gone meanwhile, or not ours to remove
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes, expires_at: float | None = None) -> None:
        target = self._path(key)
        fd, tmp = self._create_temp(f".{key}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        data = self.get(key)
        return None if data is None else (data, _version_of(data))

    def put_if(self, key: str, data: bytes, expected: str | None) -> str:
        """Compare and write under an exclusive lock on a per-key lock file, so processes
        sharing the folder (several `edgecache serve` workers) cannot interleave."""
        lock_path = self.root / f".{_check_key(key)}.lock"
        with open(lock_path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = self.get(key)
                if (None if current is None else _version_of(current)) != expected:
                    raise ConflictError(f"{key} changed since it was read")
                self.put(key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return _version_of(data)
