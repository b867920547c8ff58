"""Reading files from outside the process without running anything in them, and with messages that say what the
file is: a ``.pt``/``.pth``/``.bin`` only as plain tensors (``torch.load(weights_only=True)``), an ``.npz`` only as
plain arrays. The loaders' own texts (which suggest turning the safety off) never reach the user."""

from __future__ import annotations

import os
import zipfile
from typing import Dict, Union

import numpy as np
import torch

from .errors import DDPMError

__all__ = ["load_tensors", "load_npz"]

PathLike = Union[str, os.PathLike]


def load_tensors(path: PathLike, what: str = "weights") -> Dict[str, torch.Tensor]:
    """A state dict of tensors from a PyTorch file, read with ``weights_only=True`` (a pickle may only hold tensors
    and plain containers, so nothing in it can run)."""
    import warnings

    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        if "Unsupported global" in text:  # a pickle that names classes or functions: refused, never run
            raise DDPMError(f"{path} holds Python objects besides tensors; ddpm reads {what} only as plain tensors, "
                            "so that loading a file never runs code in it: save its state dict (or .safetensors)") \
                from None
        raise DDPMError(f"{path} is not a PyTorch file of plain tensors ({what}: .pt, .pth, .bin) that can be read "
                        "without running code") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DDPMError(f"{path} is not a state dict of tensors ({what})")
    return state


def load_npz(path: PathLike, what: str = "arrays") -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` as plain data (no pickled objects)."""
    if not zipfile.is_zipfile(path):
        raise DDPMError(f"{path} is not an .npz file (a zip of .npy arrays, as np.savez writes) of {what}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DDPMError(f"{path} holds Python objects, not plain arrays of {what}; ddpm does not load those") \
                from None
        raise DDPMError(f"{path} is not a readable .npz of {what}") from None
    except (OSError, zipfile.BadZipFile, EOFError):
        raise DDPMError(f"{path} is not a readable .npz of {what}") from None
