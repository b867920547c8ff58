"""Pictures to edit or to show, each through the one conversion: ``load_image`` (one, as floats) and
``load_images`` (many, as uint8): image files, folders, arrays and the shipped digits (``mnist:K``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..errors import DDPMError
from .images import Size, chw, fit, hw, is_gray, list_images, open_image, to_float, to_mode
from .readers import mnist_arrays
from .tables import Arrays

__all__ = ["load_image", "load_images"]


def load_image(spec: str, size: Size, channels: Optional[int] = None) -> torch.Tensor:
    """One picture as float [C, H, W] of ``size`` (S or (H, W)) in [-1, 1]: an image file (gray stays gray, anything
    else is RGB) or ``mnist:K``, image K of the shipped digits (a digit K % 10: ``mnist:7`` is a seven), centre-
    cropped to the size's aspect ratio and resized; converted to ``channels`` (1 or 3) when given."""
    if spec == "mnist" or spec.startswith("mnist:"):
        images, _ = mnist_arrays()
        k = spec.partition(":")[2] or "0"
        if not k.isdigit() or int(k) >= len(images):
            raise DDPMError(f"{spec!r}: K must be an index from 0 to {len(images) - 1}")
        im = Image.fromarray(images[int(k), 0])
    else:
        im = open_image(Path(spec))
    grey = is_gray(im.mode) if channels is None else channels == 1
    return to_float(torch.from_numpy(chw(fit(to_mode(im, "L" if grey else "RGB"), size)).copy()))


def load_images(spec: str, size: Size, channels: int) -> torch.Tensor:
    """Images to edit, uint8 [N, channels, H, W] of ``size``, each through the one conversion: an image file, a
    folder of them (sorted by path), an ``.npz``/``.npy`` uint8 array [N, H, W, C] (``arr_0``, as ``ddpm sample``
    writes), or ``mnist:K`` / ``mnist:A-B`` (images A to B of the shipped digits)."""
    from .images import convert_array, decode

    if spec.startswith("mnist:"):
        images, _ = mnist_arrays()
        a, _, b = spec.partition(":")[2].partition("-")
        if not a.isdigit() or not (b or a).isdigit() or not int(a) <= int(b or a) < len(images):
            raise DDPMError(f"{spec!r}: expected mnist:K or mnist:A-B with 0 <= A <= B <= {len(images) - 1}")
        arrays = images[int(a):int(b or a) + 1]
    else:
        path = Path(spec)
        if path.is_dir():
            paths = list_images(path)
            if not paths:
                raise DDPMError(f"no images (png, jpg, jpeg, bmp, webp, tif) in {path}")
            return torch.from_numpy(np.stack([decode(p, channels, size) for p in paths]))
        if path.suffix.lower() not in (".npz", ".npy"):
            return torch.from_numpy(decode(path, channels, size)[None].copy())
        if not path.is_file():
            raise DDPMError(f"{path} not found")
        arrays = Arrays(path).load()[0]
    out = [a if a.shape == (channels, *hw(size)) else convert_array(a, channels, size) for a in arrays]
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))
