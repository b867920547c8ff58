"""One reader per kind of source, registered in ``READERS``: what identifies its contents (``key``), the shape
its images have of themselves (``shape``), what it holds without decoding anything (``info``), and how it fills
the decoded cache (``build``). Adding a format is one new ``Reader`` subclass and its kind in ``READERS`` (and, for
``find_source``, a test of what a path of that kind looks like).
"""

from __future__ import annotations

import io
import zlib
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, Tuple, Type

import numpy as np
from PIL import Image

from ..errors import DDPMError
from .cache import Cached, build_array_cache, build_encoded_cache, build_folder_cache, source_key
from .cifar10 import CIFAR10_CLASSES, read_cifar10
from .images import Size, folder_classes, is_gray
from .tables import Arrays

__all__ = ["Reader", "READERS", "MNIST_CLASSES", "mnist_arrays"]

MNIST_CLASSES = tuple(str(d) for d in range(10))


class Reader:
    """How a source of one kind is read. ``info()`` gives ``images`` (how many), ``classes`` (names, or None) and
    ``unlabelled`` (why there are none); ``build`` decodes every image once into the cache at ``root``/``key``."""

    def __init__(self, source: Any):  # a sources.Source (which imports this module)
        self.source = source

    def key(self) -> str:
        """The identity of the source's contents (not of its size or channels), for the cache: file names, sizes
        and modification times, never a hash of the images."""
        raise NotImplementedError

    def shape(self) -> Tuple[int, int]:
        """(channels, size) the source has of itself."""
        raise NotImplementedError

    def info(self) -> Dict[str, Any]:
        raise NotImplementedError

    def build(self, root: Path, key: str, meta: Dict[str, Any], channels: int, size: Size, *, resize: str,
              skip_bad: bool, progress: bool) -> Cached:
        raise NotImplementedError


def _first_image_shape(opened: Image.Image, name: str) -> Tuple[int, int]:
    """A source's shape from its first image: gray 1 channel, anything else 3; its short side."""
    try:
        with opened as im:
            return (1 if is_gray(im.mode) else 3), min(im.size)
    except OSError as e:
        raise DDPMError(f"cannot read the first image of {name}: {e}") from None


class MnistReader(Reader):
    """The 5,000 digits shipped in the package (read in memory, never cached)."""

    def key(self) -> str:
        return "mnist"

    def shape(self) -> Tuple[int, int]:
        return 1, 28

    def info(self) -> Dict[str, Any]:
        return {"images": 5000, "classes": MNIST_CLASSES}


class FolderReader(Reader):
    """A folder of image files, labelled by its subfolders when every image lies in one."""

    def key(self) -> str:
        return source_key("folder", self.source.paths, self.source.path)

    def shape(self) -> Tuple[int, int]:
        return _first_image_shape(Image.open(self.source.paths[0]), self.source.name)

    def info(self) -> Dict[str, Any]:
        classes, _, why = folder_classes(self.source.at, self.source.paths)
        return {"images": len(self.source.paths), "classes": classes, "unlabelled": why}

    def build(self, root: Path, key: str, meta: Dict[str, Any], channels: int, size: Size, *, resize: str,
              skip_bad: bool, progress: bool) -> Cached:
        return build_folder_cache(root, key, meta, self.source.at, self.source.paths, channels, size, resize=resize,
                                  skip_bad=skip_bad, progress=progress)


class EncodedReader(Reader):
    """Images kept inside other files (an LMDB, a zip, parquet or arrow files): ``formats.Encoded`` reads them."""

    @property
    def encoded(self) -> Any:
        if self.source.encoded is None:
            raise ValueError(f"the {self.source.kind} source has no reader of its files")
        return self.source.encoded

    def key(self) -> str:
        return source_key(self.source.kind, self.encoded.key_files(), **self.encoded.key_extra())

    def shape(self) -> Tuple[int, int]:
        _, data = self.encoded.first()
        if isinstance(data, np.ndarray):  # an array image: its own channels and short side
            return data.shape[0], min(data.shape[1:])
        return _first_image_shape(Image.open(io.BytesIO(data or b"")), self.source.name)

    def info(self) -> Dict[str, Any]:
        classes, _, why = self.encoded.labels()
        out = {"images": self.encoded.count(), "classes": classes, "unlabelled": why}
        if self.encoded.image_column:
            out["columns"] = (self.encoded.image_column, self.encoded.label_column)
        return out

    def build(self, root: Path, key: str, meta: Dict[str, Any], channels: int, size: Size, *, resize: str,
              skip_bad: bool, progress: bool) -> Cached:
        return build_encoded_cache(root, key, meta, self.encoded, channels, size, resize=resize, skip_bad=skip_bad,
                                   progress=progress)


class ArrayReader(Reader):
    """An ``.npz``/``.npy`` uint8 array [N, H, W, C] (``arr_1``: labels), read whole."""

    def key(self) -> str:
        return source_key("npz", [self.source.at])

    def shape(self) -> Tuple[int, int]:
        arr = Arrays(self.source.at).load()[0]
        return arr.shape[1], min(arr.shape[2:])

    def info(self) -> Dict[str, Any]:
        arrays = Arrays(self.source.at)
        images, labels = arrays.load()
        return {"images": len(images), "classes": arrays.classes(labels) if labels is not None else None,
                "unlabelled": "" if labels is not None else "the array has no labels (arr_1)"}

    def build(self, root: Path, key: str, meta: Dict[str, Any], channels: int, size: Size, *, resize: str,
              skip_bad: bool, progress: bool) -> Cached:
        arrays = Arrays(self.source.at)
        return build_array_cache(root, key, meta, arrays.load, arrays.classes, channels, size, resize=resize,
                                 progress=progress, unlabelled=f"{self.source.path} has no labels (arr_1)")


class Cifar10Reader(Reader):
    """CIFAR-10 in either official format (python pickles or binary records, archived or extracted), one split."""

    def key(self) -> str:
        at = self.source.at
        found = list(at.rglob("*")) if at.is_dir() else [at]
        return source_key("cifar10", [f for f in found if f.is_file()], at if at.is_dir() else None,
                          split=self.source.split)

    def shape(self) -> Tuple[int, int]:
        return 3, 32

    def info(self) -> Dict[str, Any]:
        return {"images": 10000 if self.source.split == "test" else 50000, "classes": CIFAR10_CLASSES}

    def read(self) -> Tuple[np.ndarray, np.ndarray]:
        found = read_cifar10(self.source.at, self.source.split)
        if found is None:
            raise DDPMError(f"{self.source.path}: not a CIFAR-10 archive (no data_batch_1..5 inside); expected "
                            "'mnist', a folder of images, or a CIFAR-10 archive/folder")
        return found

    def build(self, root: Path, key: str, meta: Dict[str, Any], channels: int, size: Size, *, resize: str,
              skip_bad: bool, progress: bool) -> Cached:
        return build_array_cache(root, key, meta, self.read, CIFAR10_CLASSES, channels, size, resize=resize,
                                 progress=progress)


READERS: Dict[str, Type[Reader]] = {"mnist": MnistReader, "folder": FolderReader, "cifar10": Cifar10Reader,
                                    "npz": ArrayReader, "lmdb": EncodedReader, "zip": EncodedReader,
                                    "parquet": EncodedReader, "arrow": EncodedReader}


def mnist_arrays() -> Tuple[np.ndarray, np.ndarray]:
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

