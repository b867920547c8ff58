"""Images from files: listing a folder, decoding and converting one image, and the cache builder's worker.

Every image goes through one conversion: to gray ("L") or RGB, then to S x S (or H x W) by the chosen ``resize``:
the paper's ``center-crop`` (the default: the largest centred box of the wanted aspect ratio resized, bicubic;
LSUN as the paper: centre crop, then resize), ``pad`` (resized to fit inside, the rest black, centred) or
``stretch`` (both sides resized, the aspect ratio not kept). This module needs only numpy and Pillow (not torch),
so that the worker processes that decode a large folder start fast and share nothing with the trainer.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DDPMError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "CONVERSION", "TASK", "list_images", "classes_of_parts", "folder_classes",
           "open_image", "is_gray", "to_mode", "fit", "chw", "decode", "decode_bytes", "convert_array", "decode_into",
           "hw", "Size", "norm_size", "image_mode", "MODES"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CONVERSION = "short-side-bicubic-centre-crop-v1"  # part of every cache key: change it when the conversion changes
TASK = 128  # images per cache-building worker task
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
    return classes_of_parts([p.relative_to(root).parts for p in paths], str(root))


def classes_of_parts(first: Sequence[Sequence[str]], root: str
                     ) -> Tuple[Optional[Tuple[str, ...]], Optional[List[int]], str]:
    """``folder_classes`` for paths given as their parts below ``root`` (a folder, or the inside of a zip)."""
    loose = sum(len(parts) == 1 for parts in first)
    if loose == len(first):
        return None, None, (f"its images are not in class subfolders (put each class's images in a subfolder of "
                            f"its own: {root}/cat/*.png, {root}/dog/*.png)")
    if loose:
        return None, None, f"{loose} of its images lie outside the class subfolders"
    classes = tuple(sorted({parts[0] for parts in first}))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[parts[0]] for parts in first], ""


# The most pixels an image may have: above it an image is refused before it is decoded (a 164 KB PNG of 13,000 x
# 13,000 pixels decodes into 1.1 GB per worker). 2**26 is 8,192 x 8,192, far above any data set ddpm trains on.
MAX_PIXELS = 1 << 26


def _opened(source, name) -> Image.Image:
    """``Image.open(source)``, refused in one line (before any decoding) above MAX_PIXELS; Pillow's own
    decompression-bomb warning and error give way to that line."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except Image.DecompressionBombError:
            im = None
    if im is None or im.size[0] * im.size[1] > MAX_PIXELS:
        size = "it has" if im is None else f"{im.size[0]} x {im.size[1]} pixels is"
        raise DDPMError(f"cannot read image {name}: {size} more than the {MAX_PIXELS:,} pixels ddpm decodes (a "
                        "decompression bomb, or an image far larger than any network's input)")
    return im


def open_image(path: Path) -> Image.Image:
    """A fully decoded, EXIF-rotated image; DDPMError for a missing, truncated, corrupt or too large file."""
    if not path.is_file():
        raise DDPMError(f"image {path} not found")
    try:
        with _opened(path, path) as im:
            im.load()  # decodes fully: a truncated or corrupt file raises here
            return ImageOps.exif_transpose(im)
    except DDPMError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DDPMError(f"cannot read image {path}: {e}") from None


def is_gray(mode: str) -> bool:
    """Whether a PIL mode is a gray one (1-bit, 8-bit, float or 16-bit; with or without alpha)."""
    return mode in ("1", "L", "LA", "F") or mode in HIGH_DEPTH


def to_mode(im: Image.Image, mode: str) -> Image.Image:
    """Any PIL image -> mode "L" or "RGB": alpha dropped (not composited: the colours stay as stored), palettes
    expanded, CMYK/YCbCr to RGB, 16-bit scaled (65535 -> 255, not clipped), "F" taken on PIL's 0..255 scale and
    clipped; or -> "LA" or "RGBA", alpha kept (255 where the image has none)."""
    if im.mode in HIGH_DEPTH or im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if im.mode != "F":
            a = a / 257
        im = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8))
    if mode in ("LA", "RGBA"):
        return im if im.mode == mode else im.convert("RGBA").convert(mode) if im.mode == "P" else im.convert(mode)
    if im.mode not in ("L", "RGB"):  # alpha dropped; P, PA, CMYK, YCbCr, LAB, ... -> RGB
        im = im.convert("L" if im.mode in ("1", "LA") else "RGB")
    return im if im.mode == mode else im.convert(mode)


Size = Union[int, Tuple[int, int]]  # S (square) or (H, W)


def hw(size: Size) -> Tuple[int, int]:
    """(height, width) of an image size given as S (square) or (H, W)."""
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def norm_size(size: Size) -> Size:
    """A size as the rest of ddpm keeps it: S for a square (so that (16, 16) and 16 are one), else (H, W)."""
    h, w = hw(size)
    return h if h == w else (h, w)


def fit(im: Image.Image, size: Size, resize: str = "center-crop") -> Image.Image:
    """``im`` at ``size`` (S, or (H, W)): center-crop (the largest centred box of the wanted aspect ratio, resized;
    for a square, the centre square of side min(w, h)), pad (resized to fit inside, centred on black) or stretch
    (resized, aspect not kept)."""
    w, h = im.size
    H, W = hw(size)
    if resize == "stretch":
        return im if (w, h) == (W, H) else im.resize((W, H), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if resize == "pad":
        if w * H == h * W:
            return fit(im, size)
        scale = min(W / w, H / h)
        inner = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC,
                          reducing_gap=3.0)
        out = Image.new(im.mode, (W, H))
        out.paste(inner, ((W - inner.size[0]) // 2, (H - inner.size[1]) // 2))
        return out
    if resize != "center-crop":
        raise DDPMError(f"unknown resize {resize!r}")  # the choices are checked before, where they are known
    cw, ch = (round(h * W / H), h) if w * H >= h * W else (w, round(w * H / W))  # the wanted aspect, inside im
    box = ((w - cw) // 2, (h - ch) // 2, (w - cw) // 2 + cw, (h - ch) // 2 + ch)
    if (cw, ch) == (W, H):
        return im.crop(box) if (w, h) != (W, H) else im
    return im.resize((W, H), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def chw(im: Image.Image) -> np.ndarray:
    """PIL "L", "LA", "RGB" or "RGBA" image -> uint8 [C, H, W]."""
    a = np.asarray(im)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(path: Path, channels: int, size: Size, resize: str = "center-crop") -> np.ndarray:
    """An image file -> uint8 [channels, H, W] of ``size``; DDPMError for an unreadable one. More than 4 channels
    come from the pages of a multi-page image (a TIFF stack: one gray page a channel)."""
    if channels not in MODES:
        return _pages(path, channels, size, resize)
    return chw(fit(to_mode(open_image(path), image_mode(channels)), size, resize))


def _pages(path: Path, channels: int, size: Size, resize: str) -> np.ndarray:
    """The ``channels`` pages of a multi-page image, each as gray, one channel each."""
    if not path.is_file():
        raise DDPMError(f"image {path} not found")
    try:
        with _opened(path, path) as im:
            n = getattr(im, "n_frames", 1)
            if n != channels:
                raise DDPMError(f"cannot read image {path} as {channels} channels: it has {n} page(s); more than 4 "
                                "channels come from multi-page images (one page a channel) or from arrays")
            planes = []
            for i in range(n):
                im.seek(i)
                planes.append(chw(fit(to_mode(im.copy(), "L"), size, resize))[0])
    except DDPMError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise DDPMError(f"cannot read image {path}: {e}") from None
    return np.stack(planes)


def decode_bytes(data: bytes, name: str, channels: int, size: Size, resize: str = "center-crop") -> np.ndarray:
    """An encoded image (png, jpeg, webp, ... bytes; ``name`` says where it came from) -> uint8 [channels, H, W] of
    ``size``; DDPMError for an unreadable one."""
    try:
        with _opened(io.BytesIO(data), name) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except DDPMError:
        raise
    except UnidentifiedImageError:
        raise DDPMError(f"cannot read image {name}: no image format reads its {len(data)} bytes") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad bytes
        raise DDPMError(f"cannot read image {name}: {e}") from None
    return chw(fit(to_mode(im, image_mode(channels)), size, resize))


MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}  # what an image file decodes to, by --channels


def image_mode(channels: int) -> str:
    """The PIL mode images are decoded to for ``channels``: L, LA (gray and alpha), RGB or RGBA (alpha kept; opaque
    where the image has none). More channels come from multi-page images in a folder, or from arrays."""
    if channels not in MODES:
        raise DDPMError(f"images decode to 1 (gray), 2 (gray and alpha), 3 (RGB) or 4 (RGBA) channels, not "
                        f"{channels}; more channels come from a folder of multi-page images (a TIFF stack: a page a "
                        "channel) or from arrays (.npz/.npy [N, H, W, C])")
    return MODES[channels]


def convert_array(image: np.ndarray, channels: int, size: Size, resize: str = "center-crop") -> np.ndarray:
    """uint8 [c, h, w] -> uint8 [channels, H, W] of ``size`` by the same conversion: between 1 and 3 channels (and to
    2 or 4, alpha opaque) as an image's; any other count only as it is, each channel resized on its own."""
    c = image.shape[0]
    if c == channels and c not in (1, 3):
        return np.stack([chw(fit(Image.fromarray(np.ascontiguousarray(plane)), size, resize))[0] for plane in image])
    if c not in MODES:
        raise DDPMError(f"the array's images have {c} channels; they are read at {c} (--channels {c}), not {channels}")
    hwc = image[0] if c == 1 else image.transpose(1, 2, 0)
    return chw(fit(Image.fromarray(np.ascontiguousarray(hwc), mode=None).convert(image_mode(channels)), size, resize))


def decode_into(task: Tuple[str, int, Sequence[str], int, int, str]) -> List[Tuple[int, str, str]]:
    """The cache builder's worker: decode ``paths`` into rows ``start ..`` of the .npy at ``npy`` (opened in place).
    Returns (row, path, message) of each image it could not read; those rows are left as they were."""
    npy, start, paths, channels, size, resize = task
    out = np.load(npy, mmap_mode="r+")
    bad = []
    for j, p in enumerate(paths):
        try:
            out[start + j] = decode(Path(p), channels, size, resize)
        except DDPMError as e:
            bad.append((start + j, p, str(e)))
    out.flush()
    return bad


# The pixel transforms (tensor methods only: the cache's decoding processes import this module and no torch)
def to_float(x: Tensor) -> Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1] (``x / 255 * 2 - 1``), any shape."""
    return x.float() / 255 * 2 - 1


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [-1, 1] -> uint8 [0, 255], rounded and clipped; exact inverse of ``to_float``."""
    return ((x.float() + 1) / 2 * 255).round().clamp(0, 255).byte()
