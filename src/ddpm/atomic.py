"""Writing files so that a reader never sees half of one: write aside, fsync, rename into place.

Every file and folder the tool writes goes through here: checkpoints, config.json, metrics, figures,
GIFs, reference statistics, sample outputs, diffusers directories. A process killed at any moment
leaves either the old file or the new one, plus at most a hidden temporary that the next write removes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Union

__all__ = ["atomic_path", "atomic_write_text", "written_aside", "fsync_dir"]

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """fsync a folder, so that a rename inside it survives a power cut (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` with the same suffix (so writers that choose a format by
    the name, such as matplotlib, Pillow and numpy, still do); when the block succeeds it is fsynced and
    renamed over ``path``, when it fails it is removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def written_aside(final: PathLike, *, replace: bool = False, stale: Optional[str] = None) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``final`` to fill; when the block succeeds, every file in
    it is fsynced and the folder renamed to ``final`` (an existing ``final`` is removed first only when
    ``replace``); when it fails, the folder is removed. Folders left by a process killed mid-write are
    removed after a successful write: those matching the glob ``stale`` beside ``final`` (default: the
    ones written for ``final`` itself, ``.tmp-<name>-*``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync_file(f)
            else:
                fsync_dir(f)
        fsync_dir(tmp)
        if replace and final.exists():  # e.g. a signal right after a periodic save of the same step
            shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for left in final.parent.glob(stale or f"{glob.escape(prefix)}*"):
        shutil.rmtree(left, ignore_errors=True)
