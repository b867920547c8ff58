"""Images from files: listing a folder, decoding and converting one image, and the cache builder's worker.

Every image goes through one conversion: to gray ("L") or RGB, the short side resized to S (bicubic),
centre-cropped to S x S. This module needs only numpy and Pillow (not torch), so that the worker processes
that decode a large folder start fast and share nothing with the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps

from ..errors import DDPMError

__all__ = ["IMAGE_EXTENSIONS", "CONVERSION", "list_images", "folder_classes", "open_image", "to_mode", "fit", "chw",
           "decode", "convert_array", "decode_into"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
CONVERSION = "short-side-bicubic-centre-crop-v1"  # part of every cache key: change it when the conversion changes
HIGH_DEPTH = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit sources, scaled 0..65535 -> 0..255


def list_images(root: Path) -> List[Path]:
    """Image files under root, recursively, hidden files and folders skipped, sorted."""
    found = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        found += [os.path.join(d, x) for x in names if not x.startswith(".") and x.lower().endswith(IMAGE_EXTENSIONS)]
    found.sort(key=lambda f: f.split(os.sep))  # as Paths sort (part by part), without making 2 x N Paths to sort
    return [Path(f) for f in found]


def folder_classes(root: Path, paths: Sequence[Path]) -> Tuple[Optional[Tuple[str, ...]], Optional[List[int]], str]:
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


def open_image(path: Path) -> Image.Image:
    """A fully decoded, EXIF-rotated image; DDPMError for a missing, truncated or corrupt file."""
    if not path.is_file():
        raise DDPMError(f"image {path} not found")
    try:
        with Image.open(path) as im:
            im.load()  # decodes fully: a truncated or corrupt file raises here
            return ImageOps.exif_transpose(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DDPMError(f"cannot read image {path}: {e}") from None


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Any PIL image -> mode "L" or "RGB": alpha dropped, palettes expanded, CMYK/YCbCr to RGB,
    16-bit scaled (65535 -> 255, not clipped), "F" taken on PIL's 0..255 scale and clipped."""
    if im.mode in HIGH_DEPTH or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode != "F":
            a = a / 257
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if im.mode not in ("L", "RGB"):  # alpha dropped; P, PA, CMYK, YCbCr, LAB, ... -> RGB
        im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
    return im if im.mode == mode else im.convert(mode)


def fit(im: Image.Image, size: int) -> Image.Image:
    """Centre square of side min(w, h), resized to size x size (short side -> size, centre crop)."""
    w, h = im.size
    m = min(w, h)
    box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
    if m == size:
        return im.crop(box) if (w, h) != (size, size) else im
    return im.resize((size, size), Image.BICUBIC, box=box, reducing_gap=3.0)


def chw(im: Image.Image) -> np.ndarray:
    """PIL "L" or "RGB" image -> uint8 [C, H, W]."""
    a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(path: Path, channels: int, size: int) -> np.ndarray:
    """An image file -> uint8 [channels, size, size]; DDPMError for an unreadable one."""
    return chw(fit(to_mode(open_image(path), "L" if channels == 1 else "RGB"), size))


def convert_array(image: np.ndarray, channels: int, size: int) -> np.ndarray:
    """uint8 [c, h, w] -> uint8 [channels, size, size] by the same conversion."""
    hwc = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    return chw(fit(Image.fromarray(np.ascontiguousarray(hwc)).convert("L" if channels == 1 else "RGB"), size))


def decode_into(task: Tuple[str, int, Sequence[str], int, int]) -> List[Tuple[int, str]]:
    """The cache builder's worker: decode ``paths`` into rows ``start ..`` of the .npy at ``npy`` (opened in place).
    Returns (row, message) of each image it could not read; those rows are left as they were."""
    npy, start, paths, channels, size = task
    out = np.load(npy, mmap_mode="r+")
    bad = []
    for j, p in enumerate(paths):
        try:
            out[start + j] = decode(Path(p), channels, size)
        except DDPMError as e:
            bad.append((start + j, str(e)))
    out.flush()
    return bad
