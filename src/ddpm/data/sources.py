"""Data sources and the [0, 255] <-> [-1, 1] transforms.

``load_data(src, channels=C, image_size=S)`` turns any supported source into uint8 images [N, C, S, S]:

- ``"mnist"``: the 5,000-image MNIST subset shipped in ``ddpm/assets`` (see its README for the
  attribution), 500 images per digit, in interleaved class order: image K is a digit K % 10; in memory;
- a folder of images (png, jpg, jpeg, bmp, webp, tif; searched recursively, hidden entries skipped), labelled
  by its subfolders when every image lies in one (``root/cat/*.png``: the ImageFolder convention);
- CIFAR-10 from a local file or folder in either official format (the python pickles or the binary
  records, as the ``.tar.gz`` or extracted): the 50,000 training images, or with ``:test`` after the
  path (``cifar-10-python.tar.gz:test``) the 10,000 test images;
- an LMDB (LSUN's ``bedroom_train_lmdb/``: keys -> webp/jpeg/png bytes), a zip of images (labels from class
  folders inside it or EDM's ``dataset.json``), a Hugging Face dataset (parquet file(s), a folder of them, or a
  ``save_to_disk`` folder; an image column and optionally a label column), an ``.npz``/``.npy`` uint8 array
  [N, H, W, C] (``arr_1`` labels): see ``ddpm.data.formats``.

Everything but mnist is decoded once into the decoded cache (``ddpm.data.cache``) and memory-mapped from then
on, so memory does not grow with the data set. Every image goes through one conversion (``ddpm.data.images``);
``load_image(spec, size)`` reads one picture (a file, or ``mnist:K``) the same way. Bad input raises
``DDPMError``.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np
import torch

from ..config import RESIZES
from ..errors import DDPMError
from .cache import cache_key, cache_root, caches_of, open_cache
from .formats import Encoded, find_encoded
from .images import IMAGE_EXTENSIONS, Size, image_mode, list_images, norm_size
from .readers import MNIST_CLASSES, READERS, Reader, mnist_arrays
from .tables import MAX_CHANNELS

__all__ = ["ImageData", "Source", "find_source", "split_suffix", "load_data", "native_shape", "cache_info",
           "IMAGE_EXTENSIONS", "MNIST_CLASSES", "RESIZES", "SOURCES"]

SOURCES = ("'mnist', a folder of images, a CIFAR-10 archive/folder, an LMDB, a zip of images, a Hugging Face dataset "
           "(parquet or a save_to_disk folder) or an .npz/.npy array")

@dataclass
class ImageData:
    """A data set.

    ``images``: uint8 [N, C, H, W] in [0, 255], already at the requested channels and size (memory-mapped from
    the decoded cache for folders and CIFAR-10). ``labels``: int64 [N] class indices into ``classes`` when the
    source has labels (mnist, cifar10, a folder of class subfolders), else None. ``classes``: the class names
    (mnist "0".."9"; CIFAR-10's ten names; a folder's subfolder names, sorted). ``name``: "mnist", "cifar10"
    (or "cifar10:test"), or the folder's path. ``hflip``: whether random horizontal flips suit the data (not for
    digits). ``unlabelled``: why a source without labels has none. ``key``: what identifies the images (their
    cache key). ``skipped``: the unreadable files left out (``--skip-bad-images``).
    """

    images: torch.Tensor
    labels: Optional[torch.Tensor]
    name: str
    hflip: bool
    classes: Optional[Tuple[str, ...]] = None
    unlabelled: str = ""
    key: str = ""
    skipped: Tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.images.shape[0]

    def require_labels(self) -> Tuple[str, ...]:
        """The class names, or DDPMError saying why this source has no labels."""
        if self.labels is None or not self.classes:
            raise DDPMError(f"--class-cond needs class labels, and {self.name} has none: {self.unlabelled}")
        return self.classes


@dataclass
class Source:
    """A data source found on disk, not yet read: ``kind`` "mnist", "cifar10", "folder", "npz" or an encoded
    source's ("lmdb", "zip", "parquet", "arrow"), its path (and CIFAR-10 split), for a folder its image files,
    for an encoded source its reader (``formats.Encoded``)."""

    kind: str
    path: Optional[Path] = None
    split: str = "train"
    paths: Tuple[Path, ...] = ()
    encoded: Optional[Encoded] = None

    @property
    def at(self) -> Path:
        """Its path (every source but the shipped digits has one)."""
        if self.path is None:
            raise ValueError(f"the {self.kind} source has no path")
        return self.path

    @property
    def name(self) -> str:
        return {"mnist": "mnist", "cifar10": "cifar10" + (":test" if self.split == "test" else "")}.get(
            self.kind, str(self.path))

    @property
    def reader(self) -> Reader:
        """How a source of this kind is read (``readers.READERS``)."""
        return READERS[self.kind](self)

    def key(self) -> str:
        """The identity of the source's contents (not of its size or channels), for the cache: file names, sizes
        and modification times (an LMDB's entry count too), never a hash of the images."""
        return self.reader.key()


def find_source(src: str, *, image_column: str = "", label_column: str = "") -> Source:
    """What ``src`` names, checked: "mnist", a CIFAR-10 archive or folder (``PATH:test`` for its test split), an
    LMDB, a zip, a Hugging Face dataset (with ``image_column`` / ``label_column`` when they are not the obvious
    ones), an .npz/.npy array, or a folder of images (listed, not decoded)."""
    src, split = split_suffix(os.fspath(src))
    if src == "mnist":
        if split == "test":
            raise DDPMError("mnist:test: the shipped digits are 5,000 images of MNIST's training set and have no test "
                            "split; use mnist, or a folder or .npz of MNIST's test images")
        return Source("mnist")
    path = Path(src).expanduser()
    if not path.exists():
        raise DDPMError(f"data source {src!r} not found: expected {SOURCES}")
    if path.is_file() and path.suffix.lower() in (".npz", ".npy"):
        if split != "train":
            raise DDPMError(f"{src}:{split}: a split is a CIFAR-10 archive's, and {src} is an array")
        return Source("npz", path)
    encoded = find_encoded(path, image_column, label_column)
    if encoded is not None:
        if split != "train":
            raise DDPMError(f"{src}:{split}: a split is a CIFAR-10 archive's; give the split's own file or folder")
        return Source(encoded.kind, path, encoded=encoded)
    if image_column or label_column:
        raise DDPMError(f"--image-column and --label-column are for Hugging Face datasets (parquet, save_to_disk), "
                        f"and {src} is none")
    if path.is_file() and not tarfile.is_tarfile(path):
        raise DDPMError(f"data source {src}: a file of no format ddpm reads; --data takes {SOURCES}")
    if path.is_file() or _has_cifar_batches(path):
        return Source("cifar10", path, split)
    if split != "train":
        raise DDPMError(f"{src}:{split}: a split is a CIFAR-10 archive's, and {src} is a folder of images")
    paths = tuple(list_images(path))
    if not paths:
        raise DDPMError(f"no images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in folder {src}")
    return Source("folder", path, split, paths)


def resolve_source(src: str) -> str:
    """``src`` with its path made absolute (a split suffix such as ``:test`` kept), so that it names the same data
    from any folder; "mnist" as it is."""
    src = os.fspath(src)
    if src == "mnist":
        return src
    path, split = split_suffix(src)
    return str(Path(path).expanduser().resolve()) + (":" + split if path != src else "")


def split_suffix(src: str) -> Tuple[str, str]:
    """(the source, its split): ``PATH:test`` or ``PATH:train`` name a split unless a file is named so."""
    if src.endswith((":test", ":train")) and not Path(src).expanduser().exists():
        path, _, split = src.rpartition(":")
        return path, split
    return src, "train"


def _has_cifar_batches(path: Path) -> bool:
    return any((d / n).is_file() for d in (path, path / "cifar-10-batches-py", path / "cifar-10-batches-bin")
               for n in ("data_batch_1", "data_batch_1.bin", "test_batch", "test_batch.bin"))


def load_data(src: str, *, channels: int, image_size: Size, progress: bool = False, cache_dir=None,
              skip_bad: bool = False, resize: str = "center-crop", image_column: str = "",
              label_column: str = "") -> ImageData:
    """Load ``src`` (any of ``SOURCES``) as uint8 [N, channels, H, W] for ``image_size`` S (square) or (H, W).
    ``channels`` is 1 (gray) or 3 (RGB); ``resize`` one of ``RESIZES`` (the paper's center-crop by default).
    Everything but mnist comes from the decoded cache in ``cache_dir`` (see ``cache.cache_root``), built on first
    use; ``skip_bad`` leaves unreadable images out instead of stopping. ``image_column`` / ``label_column``: a
    Hugging Face dataset's."""
    if isinstance(channels, bool) or not isinstance(channels, int) or not 1 <= channels <= MAX_CHANNELS:
        raise DDPMError(f"channels must be an integer from 1 to {MAX_CHANNELS}, got {channels!r}")
    if not _valid_size(image_size):
        raise DDPMError(f"image_size must be a positive integer or a (height, width) pair, got {image_size!r}")
    image_size = norm_size(image_size)
    if resize not in RESIZES:
        raise DDPMError(f"unknown resize {resize!r}; expected one of {', '.join(RESIZES)}")
    source = find_source(src, image_column=image_column, label_column=label_column)
    if source.kind not in ("npz", "cifar10", "folder", "parquet", "arrow"):  # (multi-page images, array columns)
        image_mode(channels)
    if source.kind == "mnist":
        return _mnist(channels, image_size, resize)
    root, skey = cache_root(cache_dir), source.key()
    key = cache_key(skey, channels, image_size, resize)
    meta = {"key": key, "source_key": skey, "source": str(source.at.resolve()), "kind": source.kind,
            "split": source.split, "resize": resize}
    cached = open_cache(root, key) or source.reader.build(root, key, meta, channels, image_size, resize=resize,
                                                          skip_bad=skip_bad, progress=progress)
    skipped = tuple(cached.meta.get("skipped", ()))
    if skipped and not skip_bad:
        raise DDPMError(f"{len(skipped)} of the images in {source.path} cannot be read; the first: {skipped[0]}. "
                        "Pass --skip-bad-images to leave them out (a training run lists them in "
                        "RUN/skipped_images.txt)")
    classes = tuple(cached.meta["classes"]) if cached.meta.get("classes") else None
    return ImageData(torch.from_numpy(cached.images),
                     None if cached.labels is None else torch.from_numpy(cached.labels),
                     source.name, hflip=True, classes=classes, unlabelled=cached.meta.get("unlabelled", ""), key=key,
                     skipped=skipped)


def _valid_size(size: Any) -> bool:
    parts = [size] if not isinstance(size, (tuple, list)) else list(size) if len(size) == 2 else [None]
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in parts)


def native_shape(source: Source) -> Tuple[int, int]:
    """(channels, size) a source has of itself: mnist 1 x 28, CIFAR-10 3 x 32, an array its own, else its first
    image's (gray 1, anything else 3; its short side)."""
    return source.reader.shape()


def cache_info(src: str, *, channels: Optional[int] = None, image_size: Optional[Size] = None,
               preset: Optional[str] = None, cache_dir=None, resize: str = "center-crop", image_column: str = "",
               label_column: str = "") -> dict:
    """What a source holds and where its caches are, without decoding anything: at ``channels`` x ``image_size``
    (default: those of ``preset``, itself by default mnist for mnist and cifar10 otherwise)."""
    from ..config import PRESETS

    source = find_source(src, image_column=image_column, label_column=label_column)
    model = PRESETS[preset or ("mnist" if source.kind == "mnist" else "cifar10")].model
    channels, size = channels or model.in_channels, norm_size(image_size or model.image_size)
    info = {"source": source, "channels": channels, "size": size, "cache": None, "caches": [],
            **source.reader.info()}
    if source.kind == "mnist":
        return info
    root, skey = cache_root(cache_dir), source.key()
    path = root / cache_key(skey, channels, size, resize)
    return {**info, "cache": path, "built": (path / "meta.json").is_file(), "caches": caches_of(root, skey)}


# ---------------------------------------------------------------- mnist


def _mnist(channels: int, size: Size, resize: str = "center-crop") -> ImageData:
    from .images import convert_array

    images, labels = mnist_arrays()
    if (channels, size) != (1, 28):
        images = np.stack([convert_array(im, channels, size, resize) for im in images])
    key = hashlib.blake2b(images.tobytes(), digest_size=12).hexdigest()
    return ImageData(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), "mnist", False,
                     MNIST_CLASSES, "", key)
