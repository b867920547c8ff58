"""Reading files from outside the process without running anything in them, and with messages that say what the
file is: a ``.pt``/``.pth``/``.bin`` only as plain tensors (``torch.load(weights_only=True)``), a TorchScript
archive only as its tensors (its code is never loaded), an ``.npz`` only as plain arrays. The loaders' own texts
(which suggest turning the safety off) never reach the user."""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, List, Tuple, Union

import numpy as np
import torch

from .errors import DDPMError

__all__ = ["load_tensors", "load_npz", "is_torchscript", "load_torchscript_tensors"]

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


def is_torchscript(path: PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``*/data.pkl`` and ``*/code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/data.pkl") for n in names) and any("/code/" in n for n in names)


_STORAGES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
             "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
             "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
             "BoolStorage": torch.bool}


class _Module:
    """Stands in for a scripted module: holds its attributes, runs nothing."""


def _rebuild_tensor(storage, offset, size, stride, *_):
    return storage.as_strided(tuple(size), tuple(stride), offset)


def _rebuild_parameter(data, *_):
    return data


def _first(value, *_):
    return value


class _TensorsOnly(pickle.Unpickler):
    """Unpickles a TorchScript ``data.pkl`` into plain objects: scripted modules become attribute holders and
    tensors are read from the archive; any other global is refused."""

    def __init__(self, file, archive: zipfile.ZipFile, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str):
        if module.startswith("__torch__."):
            return _Module
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist",
                                                      "build_tensorlist", "restore_type_tag"):
            return _first  # TorchScript's typed lists: the list itself
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"global {module}.{name} refused")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"persistent id {pid!r} refused")
        data = bytearray(self.archive.read(f"{self.root}/data/{key}"))
        return torch.frombuffer(data, dtype=dtype)[:numel] if numel else torch.empty(0, dtype=dtype)


def _tensors_of(obj: Any, prefix: str, out: List[Tuple[str, torch.Tensor]]) -> None:
    for name, value in (vars(obj).items() if isinstance(obj, _Module) else ()):
        if isinstance(value, torch.Tensor):
            out.append((prefix + name, value))
        elif isinstance(value, _Module):
            _tensors_of(value, f"{prefix}{name}.", out)


def load_torchscript_tensors(path: PathLike, what: str = "weights") -> List[Tuple[str, torch.Tensor]]:
    """The tensors of a TorchScript archive, (dotted name, tensor) in the order its modules hold them, read from
    its ``data.pkl`` with an unpickler that builds only tensors and attribute holders: the archive's code is never
    compiled or run."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1)
            with z.open(pkl) as f:
                root = _TensorsOnly(f, z, pkl.rsplit("/", 1)[0]).load()
    except (StopIteration, zipfile.BadZipFile, KeyError, OSError, EOFError, ValueError, TypeError,
            pickle.UnpicklingError):
        raise DDPMError(f"{path} is not a TorchScript archive of plain tensors ({what})") from None
    out: List[Tuple[str, torch.Tensor]] = []
    _tensors_of(root, "", out)
    if not out:
        raise DDPMError(f"{path} is a TorchScript archive without tensors ({what})")
    return out
