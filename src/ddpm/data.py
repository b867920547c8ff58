"""Data sources and the [0, 255] <-> [-1, 1] transforms.

``load_data(src, channels=C, image_size=S)`` turns any supported source into one uint8 tensor
[N, C, S, S] held in memory (the data sets this tool trains on fit easily):

- ``"mnist"``: the 5,000-image MNIST subset shipped in ``ddpm/assets`` (see its README for the
  attribution), 500 images per digit, sorted by class;
- a folder of images (png, jpg, jpeg, bmp, webp; searched recursively, hidden entries skipped);
- CIFAR-10 from a local file or folder in either official format (the python pickles or the binary
  records, as the ``.tar.gz`` or extracted): the 50,000 training images of ``data_batch_1..5``.

Every image goes through one conversion path: to gray ("L") or RGB, short side resized to S,
centre-cropped to S x S. Archives are read in memory and never extracted; pickles are read with an
unpickler that can build numpy arrays and nothing else. Bad input raises ``DDPMError``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .errors import DDPMError

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

__all__ = ["EMBEDDED", "ImageData", "load_data", "to_float", "to_uint8"]

EMBEDDED = ("mnist",)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_PY_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_BIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_DIRS = ("cifar-10-batches-py", "cifar-10-batches-bin")
_HIGH_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit sources, scaled 0..65535 -> 0..255


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1] (``x / 255 * 2 - 1``), any shape."""
    return x.to(torch.float32) / 255 * 2 - 1


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 [0, 255], rounded and clipped; exact inverse of ``to_float``."""
    return ((x.to(torch.float32) + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)


@dataclass
class ImageData:
    """A data set in memory.

    ``images``: uint8 [N, C, H, W] in [0, 255], contiguous, already at the requested channels and size.
    ``labels``: int64 [N] class labels when the source has them (mnist, cifar10), else None.
    ``name``: "mnist", "cifar10", or the folder's path.
    ``hflip``: whether random horizontal flips suit the data (not for digits).
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str
    hflip: bool

    def __len__(self) -> int:
        return self.images.shape[0]


def load_data(src: str, *, channels: int, image_size: int, progress: bool = False) -> ImageData:
    """Load ``src`` ("mnist", a folder of images, or a CIFAR-10 archive/folder) as uint8
    [N, channels, image_size, image_size]. ``channels`` is 1 (gray) or 3 (RGB)."""
    if channels not in (1, 3):
        raise DDPMError(f"channels must be 1 or 3, got {channels!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DDPMError(f"image_size must be a positive integer, got {image_size!r}")
    src = os.fspath(src)
    if src == "mnist":
        images, labels = _load_mnist()
        return _make(images, labels, "mnist", False, channels, image_size, progress)
    path = Path(src).expanduser()
    if not path.exists():
        raise DDPMError(
            f"data source {src!r} not found: expected 'mnist', a folder of images, or a CIFAR-10 archive/folder"
        )
    cifar = _read_cifar(path)
    if cifar is not None:
        return _make(*cifar, "cifar10", True, channels, image_size, progress)
    if path.is_file():
        raise DDPMError(f"{src}: not a CIFAR-10 archive (no data_batch_1..5 inside); expected 'mnist', "
                        "a folder of images, or a CIFAR-10 archive/folder")
    return _load_folder(path, src, channels, image_size, progress)


def _make(images: np.ndarray, labels: Optional[np.ndarray], name: str, hflip: bool,
          channels: int, size: int, progress: bool) -> ImageData:
    """uint8 [N, c, h, w] array (+ labels) -> ImageData at the requested channels and size."""
    n, c, h, w = images.shape
    if c != channels or h != size or w != size:
        out = np.empty((n, channels, size, size), np.uint8)
        mode = "L" if channels == 1 else "RGB"
        for i in tqdm(range(n), desc=f"converting {name}", unit="img", disable=not progress):
            hwc = images[i, 0] if c == 1 else images[i].transpose(1, 2, 0)
            out[i] = _chw(_fit(Image.fromarray(np.ascontiguousarray(hwc)).convert(mode), size))
        images = out
    lab = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)), lab, name, hflip)


# ---------------------------------------------------------------- images: modes, size, arrays


def _to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Any PIL image -> mode "L" or "RGB": alpha dropped, palettes expanded, CMYK/YCbCr to RGB,
    16-bit scaled (65535 -> 255, not clipped), "F" taken on PIL's 0..255 scale and clipped."""
    if im.mode in _HIGH_DEPTH or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode != "F":
            a = a / 257
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if im.mode not in ("L", "RGB"):  # alpha dropped; P, PA, CMYK, YCbCr, LAB, ... -> RGB
        im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
    return im if im.mode == mode else im.convert(mode)


def _fit(im: Image.Image, size: int) -> Image.Image:
    """Centre square of side min(w, h), resized to size x size (short side -> size, centre crop)."""
    w, h = im.size
    m = min(w, h)
    box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
    if m == size:
        return im.crop(box) if (w, h) != (size, size) else im
    return im.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)


def _chw(im: Image.Image) -> np.ndarray:
    """PIL "L" or "RGB" image -> uint8 [C, H, W]."""
    a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


# ---------------------------------------------------------------- mnist


def _load_mnist() -> Tuple[np.ndarray, np.ndarray]:
    """The shipped subset: uint8 images [5000, 1, 28, 28] and labels [5000], in file order."""
    res = files("ddpm") / "assets" / "mnist5k.npz"
    try:
        with np.load(io.BytesIO(res.read_bytes()), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DDPMError(f"the embedded data set 'mnist' ({res}) is missing or damaged: {e}") from None
    return images[:, None], labels


# ---------------------------------------------------------------- folders of images


def _list_images(root: Path) -> List[Path]:
    """Image files under root, recursively, hidden files and folders skipped, sorted."""
    found = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [Path(d, x) for x in names if not x.startswith(".") and x.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def _load_folder(root: Path, name: str, channels: int, size: int, progress: bool) -> ImageData:
    paths = _list_images(root)
    if not paths:
        raise DDPMError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in folder {name}")
    out = np.empty((len(paths), channels, size, size), np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, p in enumerate(tqdm(paths, desc=f"loading {name}", unit="img", disable=not progress)):
        try:
            with Image.open(p) as im:
                im.load()  # decodes fully: a truncated or corrupt file raises here
                im = ImageOps.exif_transpose(im)
                out[i] = _chw(_fit(_to_mode(im, mode), size))
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise DDPMError(f"cannot read image {p}: {e}") from None
    return ImageData(torch.from_numpy(out), None, name, True)


# ---------------------------------------------------------------- CIFAR-10


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


def _read_cifar(path: Path) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """uint8 images [50000, 3, 32, 32] and labels from a CIFAR-10 archive or folder; None if
    ``path`` holds no CIFAR-10 batches (then it may be a folder of images)."""
    if path.is_dir():
        for d in (path, *(path / x for x in _CIFAR_DIRS)):
            blobs = {n: (d / n).read_bytes() for n in _PY_BATCHES + _BIN_BATCHES if (d / n).is_file()}
            if blobs:
                return _decode_cifar(str(d), blobs)
        return None
    return _decode_cifar(str(path), _read_tar(path))


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
                if m.isfile() and parts[-1] in _PY_BATCHES + _BIN_BATCHES and parts[-1] not in blobs:
                    blobs[parts[-1]] = tf.extractfile(m).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DDPMError(f"cannot read {path} as a CIFAR-10 archive: {e}") from None
    return blobs


def _decode_cifar(where: str, blobs: Dict[str, bytes]) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    if not blobs:
        return None
    names = _PY_BATCHES if any(n in blobs for n in _PY_BATCHES) else _BIN_BATCHES
    missing = [n for n in names if n not in blobs]
    if missing:
        raise DDPMError(f"CIFAR-10 data in {where} is missing {', '.join(missing)}")
    decode = _decode_py_batch if names is _PY_BATCHES else _decode_bin_batch
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
