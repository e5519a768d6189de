"""Where edgecache keeps built models and local caches on disk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DEFAULT_MODEL_NAME = "minilm-l6-int8"


def edgecache_home() -> Path:
    """EDGECACHE_HOME, else ~/.cache/edgecache."""
    env = os.environ.get("EDGECACHE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "edgecache"


def models_dir(home: Path | None = None) -> Path:
    return (home or edgecache_home()) / "models"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
