"""Where generated images go: a PNG grid, an ``.npz`` array or a folder of PNGs, chosen by the name.

``check_output(path)`` says before any work starts whether ``path`` can be written (its kind known, its
folder there and writable, nothing in the way); ``write_images`` writes atomically, so an interrupted
job never leaves a half-written output.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..atomic import atomic_path, written_aside
from ..errors import DDPMError
from ..run.ownership import MARK, check_replaceable, png_info, record_written, remove_written

__all__ = ["output_kind", "check_output", "check_writable_folder", "check_picture_path", "check_new_folder",
           "write_images", "write_folder", "write_npz"]

PathLike = Union[str, "os.PathLike[str]"]


def output_kind(path: PathLike) -> str:
    """``png`` (a grid), ``npz`` (uint8 ``arr_0`` [N, H, W, C]) or ``dir`` (one PNG per image), by the name: a
    name without a suffix, ending in a slash, or of an existing folder is a folder."""
    folder = isinstance(path, str) and path.endswith(("/", os.sep))
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".png", ".npz") and not folder:
        return suffix[1:]
    if suffix == "" or folder or path.is_dir():
        return "dir"
    raise DDPMError(f"unknown output type {path.suffix!r} for {path}: use FILE.png, FILE.npz or a folder")


def check_writable_folder(folder: PathLike, what: PathLike) -> None:
    """DDPMError unless a file can be created in ``folder`` (tried for real: permission bits do not tell root)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DDPMError(f"cannot write {what}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".ddpm-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DDPMError(f"cannot write {what}: folder {folder} is not writable ({e.strerror})") from None


def check_picture_path(path: PathLike, suffix: str = ".png", *, overwrite: bool = False,
                       flag: str = "--out") -> Path:
    """A picture's path, checked before the work that draws it: the right suffix, a folder that takes files, and
    nothing in the way (an existing picture only with ``overwrite``, and only one that ddpm wrote)."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise DDPMError(f"{flag} {out} must end in {suffix}")
    check_writable_folder(out.parent, out)
    if out.is_dir():
        raise DDPMError(f"cannot write {out}: it is a folder")
    check_replaceable(out, overwrite=overwrite, flag=flag)
    return out


def check_new_folder(path: PathLike) -> Path:
    """A folder to create: it must not exist, and its parent must take files."""
    out = Path(path)
    if out.exists():
        raise DDPMError(f"{out} already exists; choose another --out")
    check_writable_folder(out.parent, out)
    return out


def check_output(path: PathLike, *, overwrite: bool = False, runs: Sequence[PathLike] = ()) -> str:
    """The kind of ``path`` (see :func:`output_kind`) after checking that it can be written: its folder exists
    and takes files, and nothing is in the way. With ``overwrite``, an existing output is replaced only when ddpm
    wrote it (a marked file, or a folder holding nothing else); the current folder, home, a run and the ``runs``
    being read never are (``ownership.check_replaceable``). Never a file where a folder goes or the other way."""
    kind = output_kind(path)
    path = Path(path)
    check_writable_folder(path.parent, path)
    if kind == "dir":
        if path.exists() and not path.is_dir():
            raise DDPMError(f"cannot write a folder of images at {path}: a file of that name is in the way")
    elif path.is_dir():
        raise DDPMError(f"cannot write {path}: it is a folder")
    check_replaceable(path, overwrite=overwrite, runs=runs)
    return kind


def write_images(images: torch.Tensor, path: PathLike, *, labels: Optional[torch.Tensor] = None,
                 nrow: Optional[int] = None, seeds: Optional[Sequence[int]] = None,
                 extra: Optional[Dict[str, np.ndarray]] = None) -> None:
    """uint8 [N, C, H, W] -> a PNG grid (``nrow`` per row), an ``.npz`` (``arr_0`` [N, H, W, C]; ``arr_1`` the
    labels when given; ``extra``: more arrays of N rows) or a folder of PNGs named by their seeds (``000000.png
    ...``, default 0..N-1); written aside and renamed into place (a folder replaces only what ddpm wrote there)."""
    from ..viz import save_grid

    kind = output_kind(path)
    path = Path(path)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    if kind == "png":
        save_grid(images, path, nrow=nrow, scale=2 if images.shape[-1] < 64 else 1)
    elif kind == "npz":
        arrays: Dict[str, Tuple[Sequence[int], Any, Iterable[Any]]] = {"arr_0": (arr.shape, arr.dtype, [arr])}
        if labels is not None:
            lab = labels.cpu().numpy().astype(np.int64)
            arrays["arr_1"] = (lab.shape, lab.dtype, [lab])
        arrays.update({k: (v.shape, v.dtype, [v]) for k, v in (extra or {}).items()})
        write_npz(path, arrays)
    else:
        write_folder(path, zip(range(len(arr)) if seeds is None else seeds, arr))


def write_folder(path: PathLike, named: Iterable[Tuple[int, np.ndarray]]) -> None:
    """A folder of PNGs ``{seed:06d}.png`` from (seed, uint8 [H, W, C]) pairs, with the list of what ddpm wrote
    there; written aside and renamed, replacing only what ddpm wrote at ``path`` before. Gray, gray and alpha, RGB
    and RGBA images are written as they are; of more channels, the first 3."""
    from PIL import Image

    with written_aside(path, replace=remove_written) as tmp:
        names = []
        for seed, a in named:
            names.append(f"{seed:06d}.png")
            a = a[..., :3] if a.shape[2] > 4 else a
            Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(tmp / names[-1], pnginfo=png_info())
        record_written(tmp, names)


NpzArrays = Mapping[str, Tuple[Sequence[int], Any, Iterable[Any]]]  # name: (shape, dtype, pieces)


def write_npz(path: PathLike, arrays: NpzArrays) -> None:
    """An ``.npz`` that ``np.load`` reads, written aside and renamed, streaming: each array is given as its shape,
    dtype and the pieces that make it up, in order along the first axis, so memory holds one piece at a time. The
    zip entries carry a fixed date, so the same arrays give the same bytes (``np.savez`` stamps the time)."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.comment = MARK.encode()
        for name, (shape, dtype, pieces) in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                         "fortran_order": False, "shape": tuple(shape)})
                written = 0
                for piece in pieces:
                    piece = np.ascontiguousarray(piece, dtype=dtype)
                    f.write(piece.tobytes())
                    written += len(piece)
                if written != shape[0]:
                    raise ValueError(f"{name}: {written} rows written, the header says {shape[0]}")
