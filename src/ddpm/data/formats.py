"""Images kept inside other files, read in place: LSUN's LMDB databases, zip archives and Hugging Face datasets
(parquet files, or a ``save_to_disk`` folder of arrow files; their columns in ``tables``).

An ``Encoded`` source (LMDB, zip, parquet, arrow) lists its images cheaply in the main process as chunks of at most
``TASK`` images (an LMDB: one key in every ``TASK``, walked with a cursor that reads no values), and a worker process
decodes a chunk (``decode_chunk``) from what the chunk names, with its own read-only handle: no value is ever read
in the main process, and never all at once. Labels: a zip's class folders or EDM's ``dataset.json``, a dataset's
label column (a ``ClassLabel``'s names become the class names); an LMDB has none (LSUN keeps one category per
database).

The readers need only numpy, Pillow and their own library (``lmdb``, ``pyarrow``: the ``lsun`` and ``hf`` extras),
imported when used; a missing one is one clear line naming the extra. Bad input raises ``DDPMError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DDPMError
from .images import IMAGE_EXTENSIONS, TASK, classes_of_parts, convert_array, decode_bytes
from .tables import Labels, arrow_table, column_labels, handle, numbered, require, stamp, with_columns

__all__ = ["Encoded", "find_encoded", "decode_chunk"]


@dataclass
class Encoded:
    """A source of encoded images (png/jpeg/webp/... bytes) inside one or more files. ``kind``: "lmdb" (``path`` the
    database folder or its data.mdb), "zip", "parquet" (``files``) or "arrow" (a save_to_disk folder's ``files``).
    ``image_column`` / ``label_column`` (parquet, arrow): the columns read, found when not given."""

    kind: str
    path: Path
    files: Tuple[Path, ...] = ()
    image_column: str = ""
    label_column: str = ""
    names: Tuple[str, ...] = field(default=(), repr=False)  # a zip's image members, sorted

    def __getstate__(self):  # what a worker gets: not a zip's list of names (its chunk names its own)
        return {**self.__dict__, "names": ()}

    # -------------------------------------------------------------- listing (main process)

    def count(self) -> int:
        if self.kind == "lmdb":
            with _lmdb(self.path) as env:
                return int(env.stat()["entries"])
        if self.kind == "zip":
            return len(self.names)
        return sum(_rows(self.kind, f) for f in self.files)

    def chunks(self) -> Iterator[Tuple[int, Any]]:
        """(number of images, what a worker needs to read them), in the source's order."""
        if self.kind == "lmdb":
            with _lmdb(self.path) as env, env.begin() as txn:
                start, n = None, 0
                for key in txn.cursor().iternext(keys=True, values=False):
                    if n % TASK == 0:
                        if start is not None:
                            yield TASK, (TASK, start)
                        start = bytes(key)
                    n += 1
                if start is not None:
                    last = n - (n - 1) // TASK * TASK
                    yield last, (last, start)
        elif self.kind == "zip":
            for i in range(0, len(self.names), TASK):
                yield len(self.names[i:i + TASK]), self.names[i:i + TASK]
        elif self.kind == "parquet":
            pq = require("pyarrow.parquet", "hf")
            for f in self.files:
                meta, first = pq.ParquetFile(f).metadata, 0
                for g in range(meta.num_row_groups):
                    rows = meta.row_group(g).num_rows
                    piece = max(GROUP_PIECE, -(-rows // GROUP_PIECES))  # a huge group: pieces for several workers
                    for off in range(0, rows, piece):
                        yield min(piece, rows - off), (str(f), g, first + off, off, min(piece, rows - off))
                    first += rows
        else:
            for f in self.files:
                rows = _rows("arrow", f)
                for i in range(0, rows, TASK):
                    yield min(TASK, rows - i), (str(f), i, min(TASK, rows - i))

    def first(self) -> Tuple[str, Optional[bytes]]:
        """The first image's name and bytes (read here, for checks and a source's native size)."""
        if self.kind == "lmdb":
            with _lmdb(self.path) as env, env.begin(buffers=False) as txn:
                for k, v in txn.cursor():
                    return f"{self.path} key {k.decode('utf-8', 'replace')}", v
        for _, payload in self.chunks():
            for item in self.items(payload, stop=1):
                return item
        raise DDPMError(f"{self.path}: no images in this {self.kind} source")

    def labels(self) -> Labels:
        if self.kind == "lmdb":
            return None, None, "an LMDB holds images only (LSUN keeps one category per database)"
        if self.kind == "zip":
            return _zip_labels(self.path, self.names)
        return column_labels(self)

    def key_files(self) -> List[Path]:
        """The files whose sizes and modification times identify the contents (cheap for millions of images)."""
        if self.kind == "lmdb":
            return [self.path / "data.mdb" if self.path.is_dir() else self.path]
        return [self.path] if self.kind == "zip" else list(self.files)

    def key_extra(self) -> Dict[str, Any]:
        extra: Dict[str, Any] = {"image_column": self.image_column, "label_column": self.label_column}
        if self.kind == "lmdb":
            extra["entries"] = self.count()
        return extra

    # -------------------------------------------------------------- reading (worker processes)

    def items(self, payload, stop: Optional[int] = None) -> Iterator[Tuple[str, Optional[bytes]]]:
        """(name, encoded bytes or None where there is no image) of the images ``payload`` names."""
        if self.kind == "lmdb":
            count, start = payload
            count = min(count, stop or count)
            env = handle(("lmdb", str(self.path), os.getpid()), lambda: _open_lmdb(self.path))  # a worker's own
            with env.begin(buffers=False) as txn:
                cur = txn.cursor()
                if not cur.set_range(start):
                    return
                for _, (k, v) in zip(range(count), cur):
                    yield f"{self.path} key {k.decode('utf-8', 'replace')}", v
        elif self.kind == "zip":
            zf = handle(("zip", *stamp(self.path)), lambda: zipfile.ZipFile(self.path))
            for name in payload[:stop]:
                try:
                    yield f"{self.path}: {name}", zf.read(name)
                except (zipfile.BadZipFile, OSError, KeyError) as e:
                    yield f"{self.path}: {name} ({e})", None
        else:
            if self.kind == "parquet":
                f, group, first, off, count = payload
                pieces = _group_piece(f, group, self.image_column, off, min(count, stop or count))
            else:
                f, first, count = payload
                pieces = iter([arrow_table(Path(f)).column(self.image_column).slice(first, min(count, stop or count))])
            i = 0
            for values in pieces:
                for v in values.to_pylist():
                    data, why = _image_bytes(v, Path(f).parent)
                    yield f"{Path(f).name} row {first + i}" + (f" ({why})" if why else ""), data
                    i += 1


GROUP_PIECE, GROUP_PIECES = 16 * TASK, 8  # a parquet row group is read in pieces of >= 2,048 rows, <= 8 a group


def _group_piece(f: str, group: int, column: str, off: int, count: int) -> Iterator[Any]:
    """Rows ``off`` to ``off + count`` of a parquet row group's ``column``, streamed in batches of ``TASK`` rows
    (a worker never holds a whole group: one of 1M images would be tens of GB); the rows before ``off`` are read
    and dropped, as parquet pages have no index to seek by."""
    pq = require("pyarrow.parquet", "hf")
    seen = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=TASK, row_groups=[group], columns=[column]):
        lo, hi = max(off - seen, 0), min(off + count - seen, batch.num_rows)
        seen += batch.num_rows
        if hi > lo:
            yield batch.column(0).slice(lo, hi - lo)
        if seen >= off + count:
            return


def _image_bytes(v, folder: Path) -> Tuple[Optional[bytes], str]:
    """A dataset cell as bytes: the ``datasets`` Image feature ({bytes, path}: bytes, else the file at path, which
    must lie inside the data's folder) or plain binary; (None, why) where there is no image to read."""
    if isinstance(v, dict):
        if v.get("bytes"):
            return v["bytes"], ""
        if v.get("path"):
            p = (folder / v["path"]).resolve()  # an absolute path stays itself
            if not _within(p, folder.resolve()):
                return None, f"its path {v['path']} lies outside the data set's folder {folder}, which ddpm never reads"
            try:
                return p.read_bytes(), ""
            except OSError as e:
                return None, f"cannot read its path {v['path']}: {e.strerror or e}"
        return None, ""
    if isinstance(v, list):  # an image as an array: H x W (gray) or H x W x C, as datasets' Array2D/Array3D hold it
        return array_image(v)
    return (bytes(v), "") if isinstance(v, (bytes, bytearray)) else (None, "")


def array_image(v: list) -> Tuple[Optional[Any], str]:
    """A nested-list cell as uint8 [C, H, W] (channels last in the cell, as image arrays are kept), or (None, why)."""
    try:
        a = np.asarray(v)
    except ValueError:
        return None, "its rows differ in length"
    if a.ndim not in (2, 3) or a.dtype.kind not in "iu" or a.size == 0 or a.min() < 0 or a.max() > 255:
        return None, f"an array of {a.dtype} {a.shape}, not uint8 values of H x W or H x W x C"
    return (a[None] if a.ndim == 2 else a.transpose(2, 0, 1)).astype(np.uint8), ""


def _within(p: Path, folder: Path) -> bool:
    try:
        p.relative_to(folder)
        return True
    except ValueError:
        return False


def _open_lmdb(path: Path):
    """The database at ``path`` (its folder, or a .mdb file in it), read-only and lock-free: any number of readers,
    nothing written, not even the lock file. LMDB allows one handle per process: the main process opens it only
    while it lists (``_lmdb``), each worker keeps its own."""
    lmdb = require("lmdb", "lsun")
    if path.is_file() and path.name == "data.mdb":
        path = path.parent
    try:
        return lmdb.open(str(path), subdir=path.is_dir(), readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=512)
    except lmdb.Error as e:
        raise DDPMError(f"cannot open the LMDB {path}: {e}") from None


@contextlib.contextmanager
def _lmdb(path: Path):
    env = _open_lmdb(path)
    try:
        yield env
    finally:
        env.close()


def _rows(kind: str, f: Path) -> int:
    if kind == "parquet":
        return require("pyarrow.parquet", "hf").ParquetFile(f).metadata.num_rows
    return arrow_table(f).num_rows


def decode_chunk(task) -> List[Tuple[int, str, str]]:
    """The cache builder's worker for encoded sources: decode the images ``payload`` names into rows ``start ..`` of
    the .npy at ``npy``. Returns (row, name, message) of each image it could not read (those rows stay black)."""
    npy, start, source, payload, channels, size, resize = task
    out = np.load(npy, mmap_mode="r+")
    bad = []
    for j, (name, data) in enumerate(source.items(payload)):
        try:
            if data is None:
                raise DDPMError(f"cannot read image {name}: no image there")
            out[start + j] = convert_array(data, channels, size, resize) if isinstance(data, np.ndarray) else \
                decode_bytes(data, name, channels, size, resize)
        except DDPMError as e:
            bad.append((start + j, name, str(e)))
    out.flush()
    return bad


# ------------------------------------------------------------------ finding a source


def find_encoded(path: Path, image_column: str = "", label_column: str = "") -> Optional[Encoded]:
    """The encoded source at ``path`` (checked: its images found, its columns chosen), or None if it is none."""
    if path.is_dir() and (path / "data.mdb").is_file() or path.is_file() and path.name.endswith(".mdb"):
        return _check_lmdb(Encoded("lmdb", path))
    if path.is_file() and path.suffix.lower() == ".zip" or path.is_file() and zipfile.is_zipfile(path) \
            and path.suffix.lower() not in (".npz", ".npy", ".gz", ".tar"):
        return _find_zip(path)
    if path.is_file() and path.suffix.lower() == ".parquet":
        return with_columns(Encoded("parquet", path, (path,)), image_column, label_column)
    if path.is_file() and path.suffix.lower() == ".arrow":
        return with_columns(Encoded("arrow", path, (path,)), image_column, label_column)
    if not path.is_dir():
        return None
    if (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise DDPMError(f"{path} is a DatasetDict saved with save_to_disk; give one split's folder: "
                        f"{path / (splits[0] if splits else 'train')} (splits: {', '.join(splits) or '?'})")
    if (path / "state.json").is_file() and any(path.glob("*.arrow")):
        try:
            files = [path / f["filename"] for f in json.loads((path / "state.json").read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as e:
            raise DDPMError(f"{path}/state.json cannot be read as a save_to_disk folder's: {e}") from None
        return with_columns(Encoded("arrow", path, tuple(files)), image_column, label_column)
    parquets = sorted(path.glob("*.parquet")) or sorted(path.glob("data/*.parquet"))  # a hub snapshot: data/
    if parquets:
        return with_columns(Encoded("parquet", path, tuple(parquets)), image_column, label_column)
    return None


def _check_lmdb(src: Encoded) -> Encoded:
    if src.count() == 0:
        raise DDPMError(f"the LMDB {src.path} is empty")
    name, data = src.first()
    try:
        if data is None:
            raise DDPMError("no value")
        decode_bytes(data, name, 1, 8)
    except DDPMError:
        raise DDPMError(f"the LMDB {src.path} does not hold images: the value of its first entry ({name}, "
                        f"{len(data or b'')} bytes) is no image format (LSUN's layout: keys -> webp/jpeg/png "
                        "bytes)") from None
    return src


def _find_zip(path: Path) -> Encoded:
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as e:
        raise DDPMError(f"cannot read the zip archive {path}: {e}") from None
    unsafe = [m for m in members if m.startswith(("/", "\\")) or ".." in PurePosixPath(m.replace("\\", "/")).parts
              or (len(m) > 1 and m[1] == ":")]
    if unsafe:
        raise DDPMError(f"the zip archive {path} holds members with absolute names or '..' in them (the first: "
                        f"{unsafe[0]}), which no data set has; ddpm does not read such an archive")
    twice = sorted({m for m in members if members.count(m) > 1})
    if twice:
        raise DDPMError(f"the zip archive {path} holds two members named {twice[0]}; which one is the image is not "
                        "clear, so ddpm does not read it")
    images = [m for m in members if m.lower().endswith(IMAGE_EXTENSIONS)
              and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(m).parts)]
    if not images:
        raise DDPMError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) in the zip archive {path} "
                        f"({len(members)} other files)")
    images.sort(key=lambda m: PurePosixPath(m).parts)
    return Encoded("zip", path, names=tuple(images))


def _zip_labels(path: Path, names: Sequence[str]) -> Labels:
    """EDM's dataset.json ({"labels": [[name, index], ...]}) if the zip has one, else class folders inside it (one
    folder around everything is looked through)."""
    with zipfile.ZipFile(path) as zf:
        meta = zf.read("dataset.json") if "dataset.json" in zf.namelist() else None
    if meta is not None:
        try:
            pairs = json.loads(meta).get("labels")
            table = {str(n): int(i) for n, i in pairs} if pairs is not None else None
        except (ValueError, TypeError, AttributeError) as e:
            raise DDPMError(f"{path}: dataset.json is not EDM's {{\"labels\": [[name, index], ...]}}: {e}") from None
        if table is None:
            return None, None, "its dataset.json has no labels (\"labels\": null)"
        missing = [n for n in names if n not in table]
        extra = set(table) - set(names)
        if missing or extra:
            raise DDPMError(f"{path}: the labels of dataset.json do not match its images: {len(missing)} images have "
                            f"none, {len(extra)} labels name no image; the first: {(missing or sorted(extra))[0]}")
        labels = np.array([table[n] for n in names], np.int64)
        if labels.min() < 0:
            raise DDPMError(f"{path}: dataset.json has negative labels")
        return numbered(labels), labels, ""
    parts = [PurePosixPath(n).parts for n in names]
    if len({p[0] for p in parts}) == 1 and all(len(p) > 1 for p in parts):
        parts = [p[1:] for p in parts]
    classes, found, why = classes_of_parts(parts, str(path))
    return classes, None if found is None else np.asarray(found, np.int64), why
