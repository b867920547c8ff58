"""Tables of images: a Hugging Face dataset's columns (which holds the images, which the labels, and the class
names of a ``ClassLabel``), and numpy arrays (``.npz`` / ``.npy``, read whole, as ``ddpm sample`` writes them);
with the per-process handles the readers of ``formats`` share and ``require``, which names a missing extra.
pyarrow is imported only when a dataset is read."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..errors import DDPMError

__all__ = ["require", "Labels", "numbered", "handle", "stamp", "arrow_table", "with_columns", "column_labels", "Arrays"]

IMAGE_NAMES = ("image", "img", "images", "picture", "pixel_values")  # an image column's usual names, in order
LABEL_NAMES = ("label", "labels", "class", "target", "fine_label")


def require(module: str, extra: str):
    """Import ``module`` or say, in one line, which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DDPMError(f"reading this data source needs the '{module}' package: pip install 'ddpm-tool[{extra}]' "
                        f"(or pip install {module})") from None


Labels = Tuple[Optional[Tuple[str, ...]], Optional[np.ndarray], str]  # (class names, int64 [N], why none)


def numbered(labels: np.ndarray) -> Tuple[str, ...]:
    """Class names for labels that come without any: "0" .. str(max label)."""
    return tuple(str(i) for i in range(int(labels.max()) + 1 if len(labels) else 0))


_HANDLES: Dict[Any, Any] = {}  # per process: open databases, archives and memory-mapped tables


def handle(key, make):
    """One open handle per process and ``key``; a file's key holds its size and mtime, so a replaced file is
    opened anew."""
    if key not in _HANDLES:
        _HANDLES[key] = make()
    return _HANDLES[key]


def arrow_table(f: Path):
    pa = require("pyarrow", "hf")
    return handle(("arrow", *stamp(f)), lambda: pa.ipc.open_stream(pa.memory_map(str(f))).read_all())


def stamp(f: Path) -> Tuple[str, int, int]:
    st = os.stat(f)
    return str(f), st.st_size, st.st_mtime_ns


# ------------------------------------------------------------------ a dataset's columns


def _schema(src):
    if src.kind == "parquet":
        return require("pyarrow.parquet", "hf").read_schema(src.files[0])
    return arrow_table(src.files[0]).schema


def _features(src, schema) -> Dict[str, Any]:
    """The ``datasets`` features recorded with the data (schema metadata, or a save_to_disk folder's
    dataset_info.json): {column: {"_type": "Image" | "ClassLabel" | ..., "names": [...]}}."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        if meta:
            return json.loads(meta).get("info", {}).get("features", {}) or {}
        info = src.path / "dataset_info.json"
        if src.kind == "arrow" and info.is_file():
            return json.loads(info.read_text()).get("features", {}) or {}
    except (ValueError, AttributeError):
        pass
    return {}


def with_columns(src, image_column: str, label_column: str):
    pa = require("pyarrow", "hf")
    schema = _schema(src)
    names = list(schema.names)
    features = _features(src, schema)

    def is_image(c):
        t = schema.field(c).type
        return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_struct(t) and any(
            t.field(i).name == "bytes" for i in range(t.num_fields))

    def is_array(c):  # images as arrays: lists of lists (H x W) or of lists of lists (H x W x C) of integers
        t, depth = schema.field(c).type, 0
        while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
            t, depth = t.value_type, depth + 1
        return depth in (2, 3) and pa.types.is_integer(t)

    if image_column:
        if image_column not in names:
            raise DDPMError(f"{src.path} has no column {image_column!r} (its columns: {', '.join(names)})")
    else:
        typed = [c for c in names if isinstance(features.get(c), dict) and features[c].get("_type") == "Image"]
        usual = [c for n in IMAGE_NAMES for c in names if c == n and is_image(c)]
        image_column = (typed or usual or [c for c in names if is_image(c)] or [c for c in names if is_array(c)]
                        or [""])[0]
        if not image_column:
            raise DDPMError(f"{src.path} has no image column (its columns: {', '.join(names)}); name it with "
                            "--image-column")
    if label_column:
        if label_column not in names:
            raise DDPMError(f"{src.path} has no column {label_column!r} (its columns: {', '.join(names)})")
    else:
        typed = [c for c in names if isinstance(features.get(c), dict) and features[c].get("_type") == "ClassLabel"]
        usual = [c for n in LABEL_NAMES for c in names if c == n and pa.types.is_integer(schema.field(c).type)]
        label_column = (typed or usual or [""])[0]
    src.image_column, src.label_column = image_column, label_column
    return src


def column_labels(src) -> Labels:
    if not src.label_column:
        names = _schema(src).names
        return None, None, (f"it has no label column (its columns: {', '.join(names)}); name one with "
                            "--label-column")
    pa = require("pyarrow", "hf")
    if src.kind == "parquet":
        pq = require("pyarrow.parquet", "hf")
        column = pa.chunked_array([pq.read_table(f, columns=[src.label_column]).column(0) for f in src.files])
    else:
        column = pa.chunked_array([arrow_table(f).column(src.label_column) for f in src.files])
    if not pa.types.is_integer(column.type):
        raise DDPMError(f"{src.path}: the label column {src.label_column!r} holds {column.type}, not class indices")
    if column.null_count:
        raise DDPMError(f"{src.path}: the label column {src.label_column!r} has {column.null_count} empty values")
    labels = np.asarray(column.to_numpy(), np.int64)
    feature = _features(src, _schema(src)).get(src.label_column)
    names = feature.get("names") if isinstance(feature, dict) else None
    if len(labels) and labels.min() < 0:
        raise DDPMError(f"{src.path}: the label column {src.label_column!r} has {int((labels < 0).sum())} negative "
                        "values (-1: no label); these images cannot train a class-conditional model")
    top = int(labels.max()) + 1 if len(labels) else 0
    if names and top > len(names):
        raise DDPMError(f"{src.path}: the label column {src.label_column!r} has the value {top - 1}, and its "
                        f"ClassLabel names only {len(names)} classes")
    return tuple(map(str, names)) if names else numbered(labels), labels, ""


# ------------------------------------------------------------------ numpy arrays


MAX_CHANNELS = 16  # an array's channels at most: more, and [N, H, W, C] is likely [N, C, H, W] mistaken

@dataclass
class Arrays:
    """uint8 images [N, H, W, C] (C from 1 to MAX_CHANNELS; or [N, H, W] gray) in an ``.npy``, or ``arr_0`` of an
    ``.npz`` with its labels in ``arr_1`` (as ``ddpm sample`` writes), the class names in a ``classes.json`` beside it
    (``NAME.classes.json`` or ``classes.json``)."""

    path: Path

    def load(self) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """images uint8 [N, C, H, W] (a view; an .npy memory-mapped), labels int64 [N] or None."""
        labels = None
        try:
            if self.path.suffix.lower() == ".npy":
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(self.path, allow_pickle=False) as z:
                    if "arr_0" not in z:
                        raise DDPMError(f"{self.path} has no arr_0 (it holds {', '.join(z.files) or 'nothing'}); "
                                        "expected uint8 images arr_0 [N, H, W, C] and optional labels arr_1")
                    arr = z["arr_0"]
                    labels = z["arr_1"] if "arr_1" in z else None
        except (OSError, ValueError) as e:
            raise DDPMError(f"cannot read {self.path} as a numpy array: {e}") from None
        if arr.ndim == 3:
            arr = arr[..., None]
        if arr.dtype != np.uint8 or arr.ndim != 4 or not 1 <= arr.shape[-1] <= MAX_CHANNELS or not len(arr):
            raise DDPMError(f"{self.path} holds {arr.dtype} {tuple(arr.shape)}; expected uint8 images [N, H, W, C] "
                            f"with C from 1 to {MAX_CHANNELS} (channels last)")
        if labels is not None:
            if labels.ndim != 1 or len(labels) != len(arr) or labels.dtype.kind not in "iu" or (labels < 0).any():
                raise DDPMError(f"{self.path}: arr_1 ({labels.dtype} {tuple(labels.shape)}) is not one class index "
                                f">= 0 for each of its {len(arr)} images")
            labels = labels.astype(np.int64)
        return arr.transpose(0, 3, 1, 2), labels

    def classes(self, labels: np.ndarray) -> Tuple[str, ...]:
        top = int(labels.max()) + 1
        for f in (self.path.with_name(self.path.stem + ".classes.json"), self.path.with_name("classes.json")):
            if f.is_file():
                try:
                    names = json.loads(f.read_text())
                except ValueError as e:
                    raise DDPMError(f"{f} is not a JSON list of class names: {e}") from None
                if not isinstance(names, list) or len(names) < top:
                    raise DDPMError(f"{f}: {len(names) if isinstance(names, list) else 'no'} class names for labels "
                                    f"up to {top - 1} in {self.path}")
                return tuple(map(str, names))
        return numbered(labels)
