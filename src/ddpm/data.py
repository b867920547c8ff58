"""Data sources and the [0, 255] <-> [-1, 1] transforms.

``load_data(src, channels=C, image_size=S)`` turns any supported source into one uint8 tensor
[N, C, S, S] held in memory (the data sets this tool trains on fit easily):

- ``"mnist"``: the 5,000-image MNIST subset shipped in ``ddpm/assets`` (see its README for the
  attribution), 500 images per digit, in interleaved class order: image K is a digit K % 10;
- a folder of images (png, jpg, jpeg, bmp, webp; searched recursively, hidden entries skipped), labelled
  by its subfolders when every image lies in one (``root/cat/*.png``: the ImageFolder convention);
- CIFAR-10 from a local file or folder in either official format (the python pickles or the binary
  records, as the ``.tar.gz`` or extracted): the 50,000 training images of ``data_batch_1..5``.

Every image goes through one conversion path: to gray ("L") or RGB, short side resized to S,
centre-cropped to S x S. ``load_image(spec, size)`` reads one picture (a file, or ``mnist:K``) the same
way. Bad input raises ``DDPMError``.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .cifar10 import CIFAR10_CLASSES, read_cifar10
from .errors import DDPMError

__all__ = ["ImageData", "load_data", "load_image", "to_float", "to_uint8", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MNIST_CLASSES = tuple(str(d) for d in range(10))
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
    ``labels``: int64 [N] class indices into ``classes`` when the source has labels (mnist, cifar10, a
    folder of class subfolders), else None. ``classes``: the class names (mnist "0".."9"; CIFAR-10's ten
    names; a folder's subfolder names, sorted). ``name``: "mnist", "cifar10", or the folder's path.
    ``hflip``: whether random horizontal flips suit the data (not for digits). ``unlabelled``: why a source
    without labels has none (for the error a conditional run gives).
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str
    hflip: bool
    classes: Optional[Tuple[str, ...]] = None
    unlabelled: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    def require_labels(self) -> Tuple[str, ...]:
        """The class names, or DDPMError saying why this source has no labels."""
        if self.labels is None or not self.classes:
            raise DDPMError(f"--class-cond needs class labels, and {self.name} has none: {self.unlabelled}")
        return self.classes


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
        return _make(images, labels, "mnist", False, channels, image_size, progress, MNIST_CLASSES)
    path = Path(src).expanduser()
    if not path.exists():
        raise DDPMError(
            f"data source {src!r} not found: expected 'mnist', a folder of images, or a CIFAR-10 archive/folder"
        )
    cifar = read_cifar10(path)
    if cifar is not None:
        return _make(*cifar, "cifar10", True, channels, image_size, progress, CIFAR10_CLASSES)
    if path.is_file():
        raise DDPMError(f"{src}: not a CIFAR-10 archive (no data_batch_1..5 inside); expected 'mnist', "
                        "a folder of images, or a CIFAR-10 archive/folder")
    return _load_folder(path, src, channels, image_size, progress)


def _make(images: np.ndarray, labels: Optional[np.ndarray], name: str, hflip: bool,
          channels: int, size: int, progress: bool, classes: Tuple[str, ...]) -> ImageData:
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
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)), lab, name, hflip, classes)


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
    """The shipped subset: uint8 images [5000, 1, 28, 28] and labels [5000], interleaved by class (the file is
    sorted by class): image K is the (K // 10)-th image of digit K % 10."""
    res = files("ddpm") / "assets" / "mnist5k.npz"
    try:
        with np.load(io.BytesIO(res.read_bytes()), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"].astype(np.int64)
    except (OSError, KeyError, ValueError, zlib.error) as e:
        raise DDPMError(f"the embedded data set 'mnist' ({res}) is missing or damaged: {e}") from None
    rank = np.empty(len(labels), np.int64)  # each image's position among the images of its class
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    order = np.lexsort((labels, rank))
    return images[order, None], labels[order]


def load_image(spec: str, size: int, channels: Optional[int] = None) -> torch.Tensor:
    """One picture as float [C, size, size] in [-1, 1]: an image file (gray stays gray, anything else is RGB) or
    ``mnist:K``, image K of the shipped digits (a digit K % 10: ``mnist:7`` is a seven). Short side resized to
    ``size``, centre-cropped; converted to ``channels`` (1 or 3) when given."""
    if spec == "mnist" or spec.startswith("mnist:"):
        images, _ = _load_mnist()
        k = spec.partition(":")[2] or "0"
        if not k.isdigit() or int(k) >= len(images):
            raise DDPMError(f"{spec!r}: K must be an index from 0 to {len(images) - 1}")
        im = Image.fromarray(images[int(k), 0])
    else:
        im = _open_image(Path(spec))
    grey = im.mode in ("1", "L", "LA", "F") or im.mode in _HIGH_DEPTH if channels is None else channels == 1
    return to_float(torch.from_numpy(_chw(_fit(_to_mode(im, "L" if grey else "RGB"), size)).copy()))


def _open_image(path: Path) -> Image.Image:
    """A fully decoded, EXIF-rotated image; DDPMError for a missing, truncated or corrupt file."""
    if not path.is_file():
        raise DDPMError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: a truncated or corrupt file raises here
            return ImageOps.exif_transpose(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DDPMError(f"cannot read image {path}: {e}") from None


# ---------------------------------------------------------------- folders of images


def _list_images(root: Path) -> List[Path]:
    """Image files under root, recursively, hidden files and folders skipped, sorted."""
    found = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [Path(d, x) for x in names if not x.startswith(".") and x.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(found)


def folder_classes(root: Path, paths: List[Path]) -> Tuple[Optional[Tuple[str, ...]], Optional[List[int]], str]:
    """The ImageFolder convention: ``root/<class>/**/*.png``, classes the first-level subfolder names (those
    with images), sorted. Returns (classes, one label per path, ""), or (None, None, why there are no labels)."""
    first = [p.relative_to(root).parts for p in paths]
    loose = sum(len(parts) == 1 for parts in first)
    if loose == len(paths):
        return None, None, (f"its images are not in class subfolders (put each class's images in a subfolder of "
                            f"its own: {root}/cat/*.png, {root}/dog/*.png)")
    if loose:
        return None, None, f"{loose} of its images lie outside the class subfolders"
    classes = tuple(sorted({parts[0] for parts in first}))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[parts[0]] for parts in first], ""


def _load_folder(root: Path, name: str, channels: int, size: int, progress: bool) -> ImageData:
    paths = _list_images(root)
    if not paths:
        raise DDPMError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in folder {name}")
    out = np.empty((len(paths), channels, size, size), np.uint8)
    mode = "L" if channels == 1 else "RGB"
    for i, p in enumerate(tqdm(paths, desc=f"loading {name}", unit="img", disable=not progress)):
        out[i] = _chw(_fit(_to_mode(_open_image(p), mode), size))
    classes, labels, why = folder_classes(root, paths)
    return ImageData(torch.from_numpy(out), None if labels is None else torch.tensor(labels, dtype=torch.int64),
                     name, True, classes, why)


