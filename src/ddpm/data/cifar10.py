"""CIFAR-10 from a local file or folder, in either official format, never extracted and never unpickled freely.

The python format's batches are pickles: they are read with an unpickler that builds dicts, lists, bytes
and numpy arrays and refuses every other global, so a hostile file cannot run code. Archive members with
absolute paths, ``..`` or links are refused. The binary format is plain records.
"""

from __future__ import annotations

import codecs
import io
import pickle
import re
import tarfile
import zlib
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from ..errors import DDPMError

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct  # type: ignore[no-redef]

__all__ = ["read_cifar10", "CIFAR10_CLASSES"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

SPLITS = {"train": (tuple(f"data_batch_{i}" for i in range(1, 6)), tuple(f"data_batch_{i}.bin" for i in range(1, 6))),
          "test": (("test_batch",), ("test_batch.bin",))}
_ALL = tuple(n for py, binary in SPLITS.values() for n in py + binary)
_CIFAR_DIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, bytes and numpy arrays; refuses every other global, so no code runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return _np_reconstruct  # pickles from numpy 1 and 2 name it differently
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return codecs.encode
        raise DDPMError(f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only numpy arrays")


def read_cifar10(path: Path, split: str = "train") -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """uint8 images [50000, 3, 32, 32] (the ``test`` split: [10000, ...]) and labels from a CIFAR-10 archive or
    folder; None if ``path`` holds no CIFAR-10 batches (then it may be a folder of images)."""
    if path.is_dir():
        for d in (path, *(path / x for x in _CIFAR_DIRS)):
            blobs = {n: (d / n).read_bytes() for n in _ALL if (d / n).is_file()}
            if blobs:
                return _decode_cifar(str(d), blobs, split)
        return None
    return _decode_cifar(str(path), _read_tar(path), split)


def _read_tar(path: Path) -> Dict[str, bytes]:
    """The data_batch_* members of a tar archive (any compression), read in memory; refuses
    archives with absolute, ``..`` or link members."""
    blobs: Dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = re.split(r"[/\\]", m.name)
                if m.name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", m.name) or ".." in parts:
                    raise DDPMError(f"refusing archive {path}: member {m.name!r} points outside the archive")
                if m.issym() or m.islnk():
                    raise DDPMError(f"refusing archive {path}: member {m.name!r} is a link")
                if m.isfile() and parts[-1] in _ALL and parts[-1] not in blobs:
                    member = tf.extractfile(m)
                    if member is not None:  # a regular file always has one
                        blobs[parts[-1]] = member.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DDPMError(f"cannot read {path} as a CIFAR-10 archive: {e}") from None
    return blobs


def _decode_cifar(where: str, blobs: Dict[str, bytes], split: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if not blobs:
        return None
    py, binary = SPLITS[split]
    python_format = any(n in blobs for py_names, _ in SPLITS.values() for n in py_names)
    names = py if python_format else binary
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DDPMError(f"CIFAR-10 data in {where} is missing {', '.join(missing)} (the {split} split)")
    decode = _decode_py_batch if python_format else _decode_bin_batch
    data, labels = zip(*(decode(f"{where}: {n}", blobs[n]) for n in names))
    labels = np.concatenate(labels)
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DDPMError(f"CIFAR-10 data in {where} has labels outside 0..9")
    return np.concatenate(data).reshape(-1, 3, 32, 32), labels


def _decode_py_batch(where: str, blob: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """A python-format batch: pickled dict with b"data" uint8 [n, 3072] (1024 R, 1024 G, 1024 B,
    each row-major 32 x 32) and b"labels" (n ints)."""
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(blob), encoding="bytes").load()
        data, labels = d[b"data"], np.asarray(d[b"labels"], dtype=np.int64)
    except DDPMError as e:
        raise DDPMError(f"{where}: {e}") from None
    except Exception as e:  # truncated / corrupt pickle, or not the expected dict
        raise DDPMError(f"{where}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072 and labels.shape == (data.shape[0],)):
        raise DDPMError(f"{where}: not a CIFAR-10 python batch (expected uint8 data [n, 3072] and n labels)")
    return data, labels


def _decode_bin_batch(where: str, blob: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """A binary-format batch: records of 1 label byte + 3072 pixel bytes (same layout as above)."""
    if not blob or len(blob) % 3073:
        raise DDPMError(f"{where}: not a CIFAR-10 binary batch ({len(blob)} bytes, not a multiple of 3073)")
    rec = np.frombuffer(blob, np.uint8).reshape(-1, 3073)
    return rec[:, 1:], rec[:, 0].astype(np.int64)
