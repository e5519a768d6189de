"""The content-addressed install and CURRENT pointer shared by the encoder and LLM builds."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from edgecache.home import install_content_addressed, read_current, write_current


def _build(root: Path, text: str) -> Path:
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".build-"))
    (tmp / "weights").write_text(text)
    return tmp


def test_install_is_world_readable_and_keeps_an_existing_folder(tmp_path: Path) -> None:
    final = install_content_addressed(tmp_path, _build(tmp_path, "a"), "ab" * 32)
    assert final == tmp_path / ("ab" * 8)
    assert stat.S_IMODE(final.stat().st_mode) == 0o755
    # Same digest again: the installed folder is kept and the new build folder removed.
    again = install_content_addressed(tmp_path, _build(tmp_path, "b"), "ab" * 32)
    assert again == final
    assert (final / "weights").read_text() == "a"
    assert not list(tmp_path.glob(".build-*"))


def test_current_pointer_round_trip(tmp_path: Path) -> None:
    assert read_current(tmp_path) is None
    write_current(tmp_path, "0123456789abcdef")
    assert read_current(tmp_path) == tmp_path / "0123456789abcdef"
    assert not (tmp_path / "CURRENT.tmp").exists()
