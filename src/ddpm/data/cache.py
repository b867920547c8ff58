"""The decoded cache: a data source decoded once, at one size and channel count, into a uint8 ``.npy`` that every
later run, resume and evaluation memory-maps in well under a second.

A cache lives in ``<cache dir>/<key>/`` (``images.npy``, ``labels.npy`` where the source has labels,
``meta.json``). The cache dir is ``--cache-dir``, else ``$DDPM_CACHE_DIR``, else ``$XDG_CACHE_HOME/ddpm``, else
``~/.cache/ddpm``. The key hashes what decides the contents: the source's files with their sizes and
modification times (or the archive's), the image size, the channels and the conversion; a changed folder gets a
new key. A cache is built in worker processes into a hidden folder beside it and renamed into place when whole
(a killed build leaves nothing that is used; the next run builds again), under a lock (two runs never build the
same cache twice), and checked before use: its size, its header and the checksums of eight blocks spread over it
(``verify(full=True)``: every byte). A damaged cache is removed and built again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..atomic import atomic_write_text, file_sha256, written_aside
from ..errors import DDPMError
from .images import CONVERSION, TASK, Size, decode_into, folder_classes, hw

__all__ = ["CACHE_ENV", "cache_root", "Cached", "source_key", "cache_key", "open_cache", "build_folder_cache",
           "build_encoded_cache", "build_array_cache", "verify", "caches_of"]

log = logging.getLogger(__name__)
CACHE_ENV = "DDPM_CACHE_DIR"
VERSION = 1
BLOCK = 1 << 20  # checksummed block size


def cache_root(cache_dir=None) -> Path:
    """Where caches live: ``cache_dir``, ``$DDPM_CACHE_DIR``, ``$XDG_CACHE_HOME/ddpm`` or ``~/.cache/ddpm``."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ddpm"


def _hash(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=12).hexdigest()


def source_key(kind: str, files: Sequence[Path], root: Optional[Path] = None, **extra) -> str:
    """A source's identity: its files' names (relative to ``root``), sizes and modification times."""
    stats, cut = [], len(str(root)) + 1 if root else None
    for f in map(str, files):
        st = os.stat(f)
        stats.append([f[cut:] if cut else os.path.basename(f), st.st_size, st.st_mtime_ns])
    return _hash({"kind": kind, "files": stats, **extra})


def cache_key(source: str, channels: int, size: Size, resize: str = "center-crop") -> str:
    """The key of a source's cache at a size and conversion (the default conversion's keys as before it had a
    choice)."""
    extra = {} if resize == "center-crop" else {"resize": resize}
    return _hash({"source": source, "channels": channels, "size": size, "conversion": CONVERSION, "version": VERSION,
                  **extra})


@dataclass
class Cached:
    """An opened cache: ``images`` uint8 [N, C, S, S] (memory-mapped, copy on write), ``labels`` int64 [N] or None."""

    path: Path
    images: np.ndarray
    labels: Optional[np.ndarray]
    meta: Dict[str, Any]


def _blocks(nbytes: int) -> List[int]:
    """The offsets of the eight blocks checked on every open: the first, the last and six between."""
    last = max(nbytes - BLOCK, 0)
    return sorted({round(i * last / 7) for i in range(8)})


def _block_sums(path: Path, offsets: Sequence[int]) -> Dict[str, str]:
    out = {}
    with open(path, "rb") as f:
        for off in offsets:
            f.seek(off)
            out[str(off)] = hashlib.sha256(f.read(BLOCK)).hexdigest()
    return out


def verify(path: Path, *, full: bool = False) -> Optional[str]:
    """What is wrong with the cache at ``path`` (None: nothing found)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
        npy = path / "images.npy"
        if npy.stat().st_size != meta["bytes"]:
            return f"images.npy has {npy.stat().st_size} bytes, {meta['bytes']} were written"
        if list(np.load(npy, mmap_mode="r").shape) != meta["shape"]:
            return "images.npy has another shape than was written"
        if _block_sums(npy, [int(k) for k in meta["blocks"]]) != meta["blocks"]:
            return "images.npy does not match its checksums"
        if full and file_sha256(npy) != meta["sha256"]:
            return "images.npy does not match its checksum"
        if meta.get("labelled") and not (path / "labels.npy").is_file():
            return "labels.npy is missing"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"it cannot be read ({e})"
    return None


def _built(root: Path, key: str) -> Cached:
    """The cache just built (or found built by another process meanwhile)."""
    cached = open_cache(root, key)
    if cached is None:
        raise DDPMError(f"the cache {root / key} was built but does not check out; run again to build it anew")
    return cached


def open_cache(root: Path, key: str) -> Optional[Cached]:
    """The cache ``key`` if it exists and is intact; a damaged one is removed (and None returned)."""
    path = root / key
    if not (path / "meta.json").is_file():
        return None
    problem = verify(path)
    if problem:
        log.warning("the data cache %s is damaged (%s): building it again", path, problem)
        shutil.rmtree(path, ignore_errors=True)
        return None
    meta = json.loads((path / "meta.json").read_text())
    labels = np.load(path / "labels.npy") if meta.get("labelled") else None
    return Cached(path, np.load(path / "images.npy", mmap_mode="c"), labels, meta)


@contextlib.contextmanager
def _building(root: Path, key: str) -> Iterator[Optional[Cached]]:
    """Hold the build lock of ``key``; yields the cache if another process built it meanwhile."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield open_cache(root, key)


def _reserve(path: Path) -> None:
    """Give a new (sparse) memory-mapped file its disk blocks now: a full disk is then an OSError here, not a
    SIGBUS in the middle of filling it."""
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it: write as before
                return
            raise


def _finish(tmp: Path, meta: Dict[str, Any], labels: Optional[np.ndarray]) -> None:
    npy = tmp / "images.npy"
    nbytes = npy.stat().st_size
    if labels is not None:
        np.save(tmp / "labels.npy", labels.astype(np.int64))
    meta.update(bytes=nbytes, blocks=_block_sums(npy, _blocks(nbytes)), sha256=file_sha256(npy),
                labelled=labels is not None,
                version=VERSION, conversion=CONVERSION, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")


def build_folder_cache(root: Path, key: str, meta: Dict[str, Any], folder: Path, paths: Sequence[Path], channels: int,
                       size: Size, *, resize: str = "center-crop", skip_bad: bool = False, progress: bool = False,
                       workers: Optional[int] = None) -> Cached:
    """Decode ``paths`` of ``folder`` in worker processes into the cache ``key``. Unreadable images stop it with
    the first one named and their count, or, with ``skip_bad``, are left out and listed in the cache's meta."""
    def tasks(npy: str):
        for i in range(0, len(paths), TASK):
            chunk = [str(p) for p in paths[i:i + TASK]]
            yield len(chunk), decode_into, (npy, i, chunk, channels, size, resize)

    def labels(keep: Optional[np.ndarray]):
        classes, labels, why = folder_classes(folder, [p for i, p in enumerate(paths) if keep is None or keep[i]])
        return classes, None if labels is None else np.asarray(labels), why

    return _build(root, key, meta, str(folder), len(paths), tasks, lambda row, _: str(paths[row].relative_to(folder)),
                  labels, channels, size, skip_bad=skip_bad, progress=progress, workers=workers)


def build_encoded_cache(root: Path, key: str, meta: Dict[str, Any], source, channels: int, size: Size, *,
                        resize: str = "center-crop", skip_bad: bool = False, progress: bool = False,
                        workers: Optional[int] = None) -> Cached:
    """``build_folder_cache`` for a ``formats.Encoded`` source (LMDB, zip, parquet, arrow): its chunks listed here,
    decoded in the workers, each reading its images itself."""
    from .formats import decode_chunk

    n = source.count()

    def tasks(npy: str):
        start = 0
        for count, payload in source.chunks():
            yield count, decode_chunk, (npy, start, source, payload, channels, size, resize)
            start += count

    def labels(keep: Optional[np.ndarray]):
        classes, labels, why = source.labels()
        return classes, labels if labels is None or keep is None else labels[keep], why

    # an LMDB allows one handle per process, which a worker keeps: this process only lists (never decodes) it
    return _build(root, key, meta, str(source.path), n, tasks, lambda _, name: name, labels, channels, size,
                  skip_bad=skip_bad, progress=progress, workers=workers, inline=source.kind != "lmdb")


INLINE_MAX = 64  # sources of at most this many images are decoded in the building process, without workers


def _build(root: Path, key: str, meta: Dict[str, Any], what: str, n: int, tasks, name_of, labels, channels: int,
           size: Size, *, skip_bad: bool, progress: bool, workers: Optional[int], inline: bool = True) -> Cached:
    """Run ``tasks(npy)`` ((images, worker function, its task) each) in worker processes, each writing its rows
    of a new images.npy of ``n`` rows and returning what it could not read; then the labels of the rows kept.
    With ``inline``, at most INLINE_MAX images are decoded in this process instead."""
    from tqdm.auto import tqdm

    from ..runtime import usable_cores

    with _building(root, key) as done:
        if done is not None:
            return done
        with written_aside(root / key) as tmp:
            out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                            shape=(n, channels, *hw(size)))
            del out
            _reserve(tmp / "images.npy")
            bad: List[Tuple[int, str, str]] = []
            inline = inline and n <= INLINE_MAX  # a few images: decoded here, sooner than workers start
            with contextlib.nullcontext() if inline else ProcessPoolExecutor(
                    max_workers=workers or usable_cores(), mp_context=get_context("spawn")) as ex, \
                    tqdm(total=n, desc=f"decoding {what} once, into the cache", unit="img",
                         disable=not progress) as bar:
                futures = {}
                for count, fn, task in tasks(str(tmp / "images.npy")):
                    if inline:
                        bad += fn(task)
                        bar.update(count)
                        continue
                    assert ex is not None  # workers, unless decoded here (inline)
                    futures[ex.submit(fn, task)] = count
                    if len(futures) >= 64:  # a bounded queue: listing millions of images holds little at a time
                        _collect(futures, bad, bar, wait_one=True)
                _collect(futures, bad, bar, wait_one=False)
            bad.sort()
            keep = _without_bad(tmp, bad, n, what, skip_bad)
            classes, labels_kept, why = labels(keep)
            kept = n if keep is None else int(keep.sum())
            meta.update(n=kept, shape=[kept, channels, *hw(size)], classes=classes, unlabelled=why,
                        skipped=[name_of(row, name) for row, name, _ in bad])
            _finish(tmp, meta, labels_kept)
    return _built(root, key)


def _collect(futures: Dict, bad: List, bar, wait_one: bool) -> None:
    """Take the results of finished tasks (with ``wait_one``: at least one, else all) off ``futures``."""
    from concurrent.futures import FIRST_COMPLETED, wait

    finished, _ = wait(list(futures), return_when=FIRST_COMPLETED) if wait_one else (list(futures), None)
    for fut in finished:
        bad += fut.result()
        bar.update(futures.pop(fut))


def _without_bad(tmp: Path, bad: List[Tuple[int, str, str]], n: int, folder: str, skip_bad: bool
                 ) -> Optional[np.ndarray]:
    """The rows to keep (None: all), after compacting images.npy without the unreadable ones; DDPMError unless
    ``skip_bad``."""
    if not bad:
        return None
    if not skip_bad:
        raise DDPMError(f"{len(bad)} of the {n} images in {folder} cannot be read; the first: {bad[0][2]}. Pass "
                        "--skip-bad-images to leave them out (a training run lists them in RUN/skipped_images.txt)")
    keep = np.ones(n, bool)
    keep[[i for i, _, _ in bad]] = False
    src = np.load(tmp / "images.npy", mmap_mode="r")
    dst = np.lib.format.open_memmap(tmp / "kept.npy", mode="w+", dtype=np.uint8,
                                    shape=(int(keep.sum()), *src.shape[1:]))
    _reserve(tmp / "kept.npy")
    rows = np.flatnonzero(keep)
    for i in range(0, len(rows), 1024):
        dst[i:i + 1024] = src[rows[i:i + 1024]]
    dst.flush()
    del src, dst
    os.replace(tmp / "kept.npy", tmp / "images.npy")
    return keep


def build_array_cache(root: Path, key: str, meta: Dict[str, Any],
                      load: Callable[[], Tuple[np.ndarray, Optional[np.ndarray]]], classes, channels: int,
                      size: Size, *, resize: str = "center-crop", progress: bool = False,
                      unlabelled: str = "") -> Cached:
    """Cache a source read whole (CIFAR-10, a numpy array), converted to ``channels`` x ``size``. ``classes``: the
    names, or a function of the labels that gives them."""
    from tqdm.auto import tqdm

    from .images import convert_array

    with _building(root, key) as done:
        if done is not None:
            return done
        images, labels = load()
        n = len(images)
        with written_aside(root / key) as tmp:
            out = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                            shape=(n, channels, *hw(size)))
            _reserve(tmp / "images.npy")
            if images.shape[1:] == out.shape[1:]:
                out[:] = images
            else:
                for i in tqdm(range(n), desc="converting into the cache", unit="img", disable=not progress):
                    out[i] = convert_array(images[i], channels, size, resize)
            out.flush()
            del out
            if callable(classes):
                classes = classes(labels) if labels is not None else None
            meta.update(n=n, shape=[n, channels, *hw(size)], classes=None if classes is None else list(classes),
                        unlabelled="" if labels is not None else unlabelled, skipped=[])
            _finish(tmp, meta, labels)
    return _built(root, key)


def caches_of(root: Path, source: str) -> List[Tuple[Path, Dict[str, Any]]]:
    """Every cache of a source (any size or channels) in ``root``, with its meta."""
    found = []
    for meta_path in sorted(root.glob("*/meta.json")) if root.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("source_key") == source:
            found.append((meta_path.parent, meta))
    return found
