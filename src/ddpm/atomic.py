"""Writing files so that a reader never sees half of one: write aside, fsync, rename into place; and the checksum
that tells a file read back from the one written.

Every file and folder the tool writes goes through here: checkpoints, config.json, metrics, figures,
GIFs, reference statistics, sample outputs, diffusers directories. A process killed at any moment
leaves either the old file or the new one, plus at most a hidden temporary that the next write removes.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

__all__ = ["BackgroundWrite", "atomic_path", "atomic_write_text", "written_aside", "fsync_dir", "save_safetensors",
           "named", "file_sha256"]

PathLike = Union[str, os.PathLike]


def file_sha256(path: PathLike) -> str:
    """The sha256 of a file, read in blocks of 16 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


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


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _as_if_created(path: Path, mode: int) -> None:
    """Give a temporary from mkstemp (0600) or mkdtemp (0700) the mode a plainly created file or folder gets (0666
    or 0777 less the umask), so that what is renamed into place can be shared like anything else the user makes."""
    os.chmod(path, mode & ~_umask())


def named(e: BaseException, path: PathLike) -> BaseException:
    """``e`` as an OSError that names ``path`` when it names no file (``f.write`` and library writers do not): the
    message a user sees then says where; safetensors' own error becomes the OSError it carries."""
    if not isinstance(e, OSError):
        m = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(path)) if m else e
    if e.filename is None and e.errno is not None:
        return OSError(e.errno, e.strerror or os.strerror(e.errno), str(path))
    return e


def save_safetensors(tensors, path: PathLike, metadata=None) -> None:
    """safetensors' ``save_file``, its failures as OSErrors that name ``path``, its file of the usual mode."""
    from safetensors.torch import save_file

    try:
        save_file(tensors, str(path), metadata=metadata)
    except Exception as e:
        err = named(e, path)
        if err is e:
            raise
        raise err from None
    _as_if_created(Path(path), 0o666)  # safetensors creates its files 0600


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
    _as_if_created(tmp, 0o666)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = named(e, path)
        if err is e:
            raise
        raise err from None
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextlib.contextmanager
def written_aside(final: PathLike, *, replace: Union[bool, Callable[[Path], None]] = False,
                  stale: Optional[str] = None) -> Iterator[Path]:
    """Yield a hidden temporary folder beside ``final`` to fill; when the block succeeds, every file in
    it is fsynced and the folder renamed to ``final`` (an existing ``final`` is removed first only when
    ``replace``: by ``replace(final)`` when it is a function, such as ``ownership.remove_written``, which removes
    only what ddpm wrote, so that the rename fails on a folder still holding anything else; else whole, for
    ddpm's own checkpoints); when it fails, the folder is removed. Folders left by a process killed mid-write are
    removed after a successful write: those matching the glob ``stale`` beside ``final`` (default: the
    ones written for ``final`` itself, ``.tmp-<name>-*``).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{final.name}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
    _as_if_created(tmp, 0o777)
    try:
        yield tmp
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                _fsync_file(f)
            else:
                fsync_dir(f)
        fsync_dir(tmp)
        if replace and final.exists():  # e.g. a signal right after a periodic save of the same step
            replace(final) if callable(replace) else shutil.rmtree(final)
        os.rename(tmp, final)
        fsync_dir(final.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        err = named(e, final)
        if err is e:
            raise
        raise err from None
    for left in final.parent.glob(stale or f"{glob.escape(prefix)}*"):
        shutil.rmtree(left, ignore_errors=True)


class BackgroundWrite:
    """One write at a time on a thread of its own (a checkpoint's, while training goes on): ``start`` waits for the
    one in flight first; ``wait`` joins it and raises what it raised (a full disk, say) in the caller's thread."""

    def __init__(self) -> None:
        self.thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None

    def start(self, write: Callable[[], Any]) -> None:
        self.wait()

        def run() -> None:
            try:
                write()
            except BaseException as e:  # handed to the caller at its next wait
                self.error = e

        self.thread = threading.Thread(target=run, name="ddpm-checkpoint-write")
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        error, self.error = self.error, None
        if error is not None:
            raise error
