"""Where edgecache keeps built models and local caches on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .errors import ConfigError

DEFAULT_MODEL_NAME = "minilm-l6-int8"


def edgecache_home() -> Path:
    """EDGECACHE_HOME, else ~/.cache/edgecache."""
    env = os.environ.get("EDGECACHE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "edgecache"


def make_dirs(path: Path) -> Path:
    """`path`, created with its parents when missing, or a ConfigError that says why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the folder {path}: {exc.strerror or exc}; EDGECACHE_HOME (or --home) "
            "must name a folder edgecache can write to"
        ) from exc
    return path


def models_dir(home: Path | None = None) -> Path:
    return (home or edgecache_home()) / "models"


def llm_dir(home: Path | None = None) -> Path:
    return (home or edgecache_home()) / "llm"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def install_content_addressed(root: Path, tmp: Path, digest: str) -> Path:
    """Move the finished build folder `tmp` (inside `root`) to `root/<digest[:16]>` and return it.

    Content-addressed: an existing folder of this hash already holds these bytes (and may
    be in use), so it is kept rather than replaced. `tmp` is removed either way.
    """
    final = root / digest[:16]
    try:
        # mkdtemp creates 0700; the installed copy is read by processes that may run as other users.
        tmp.chmod(0o755)
        if not final.exists():
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_current(root: Path, name: str) -> None:
    """Point `root/CURRENT` at the folder `name`, replacing the pointer atomically."""
    tmp = root / "CURRENT.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, root / "CURRENT")


def read_current(root: Path) -> Path | None:
    """The folder `root/CURRENT` names, or None when nothing was installed yet."""
    pointer = root / "CURRENT"
    if not pointer.is_file():
        return None
    return root / pointer.read_text().strip()
