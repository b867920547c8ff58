"""Feature extractors: networks that map images in [-1, 1] to feature vectors (and class probabilities), the
features of an image set, and the cached statistics of real images.

- ``digits``: ``DigitClassifier``, a small CNN trained on the shipped MNIST digits by
  ``scripts/train_digit_classifier.py``; its weights ship in ``ddpm/assets`` (safetensors), so the
  metrics work out of the box on the ``mnist`` data set (128-d features, 10 classes);
- ``inception``: the FID Inception-v3 (``ddpm.evaluation.inception``), 2048-d pool features and, with the
  pt_inception file, the 1008-way classifier the Inception Score uses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import atomic_path, file_sha256
from ..errors import DDPMError
from ..runtime import rank0_flags, rank_world
from .streaming import FeaturePass, feature_pass

__all__ = ["DigitClassifier", "load_digit_classifier", "digit_classifier_heldout", "FEATURES", "get_features",
           "extract_features", "feature_batch", "reference_stats", "reference_features",
           "reference_pass"]

CLASSIFIER_FILE = "digit_classifier.safetensors"


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 digits in [-1, 1]. ``features`` gives the 128-d penultimate layer."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3x3
        )
        self.fc = nn.Linear(64 * 3 * 3, 128)
        self.head = nn.Linear(128, 10)

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """Any square [N, C, S, S] in [-1, 1] -> [N, 1, 28, 28] (mean over channels, antialiased resize); it reads
        digits, which are square: other shapes are refused (the FID Inception takes any)."""
        check_square(x.shape[-2], x.shape[-1])
        if x.shape[1] != 1:
            x = x.mean(dim=1, keepdim=True)
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        return x

    def features(self, x: Tensor) -> Tensor:
        return F.relu(self.fc(self.conv(self.prepare(x)).flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    has_classifier = True

    def class_probs(self, features: Tensor) -> Tensor:
        """The 10-way softmax of the digit classes, in float64 (the Inception Score of digits)."""
        return self.head(features.float()).double().softmax(dim=1)


def digit_classifier_heldout(n: int = 5000) -> Tensor:
    """Which images of the ``mnist`` source the shipped classifier was not trained on: every 10th image of each
    digit (image K with (K // 10) % 10 == 0; the source interleaves the classes), 500 of the 5,000."""
    return (torch.arange(n) // 10) % 10 == 0


def load_digit_classifier(path: Optional[str] = None) -> DigitClassifier:
    """The shipped digit classifier (eval mode), or one saved at ``path``."""
    from safetensors.torch import load_file

    net = DigitClassifier()
    with resources.as_file(resources.files("ddpm") / "assets" / CLASSIFIER_FILE) if path is None else \
            contextlib.nullcontext(Path(path)) as p:
        net.load_state_dict(load_file(str(p)))
        setattr(net, "sha256", file_sha256(p))  # what cached statistics are keyed by, as the Inception's file
    return net.eval()


FEATURES = ("auto", "digits", "inception")


def check_square(h: int, w: int) -> None:
    """DDPMError unless h == w: the digit classifier reads square digits."""
    if h != w:
        raise DDPMError(f"the digit classifier reads square images, and these are {h}x{w} (height x width): use "
                        "--features inception")


def get_features(kind: str, *, channels: int, inception: Optional[str] = None,
                 cache_dir=None, hw: Optional[Tuple[int, int]] = None) -> Tuple[str, nn.Module]:
    """(name, network) of a feature extractor. ``auto``: digits for 1-channel images, else inception (found as
    ``inception.find_inception`` says, the cache folder being ``cache_dir``'s). Both read 1 or 3 channels; images
    of other counts (gray and alpha, RGBA, multispectral) are refused: their scores would compare other things."""
    if channels not in (1, 3):
        raise DDPMError(f"the feature networks (digits, inception) read 1 or 3 channels, and these images have "
                        f"{channels}: FD, FID, IS, KID and precision/recall do not apply (bits/dim and rd do)")
    if kind == "auto":
        kind = "digits" if channels == 1 else "inception"
    if kind == "digits" and hw is not None:  # ``hw``: the images' (height, width), when known: refused before work
        check_square(*hw)
    if kind == "digits":
        return "digits", load_digit_classifier()
    if kind == "inception":
        from .inception import load_inception

        return "inception", load_inception(inception, cache_dir)
    raise ValueError(f"unknown feature extractor {kind!r}; choose from {', '.join(FEATURES)}")


def feature_batch(device) -> int:
    """Images per feature batch: small on a CPU, where the Inception's activations then stay in cache (8: 27 img/s
    on 2 cores against 20 at 32, see BENCHMARKS.md), large on a GPU."""
    return 8 if torch.device(device or "cpu").type == "cpu" else 250


def extract_features(net: nn.Module, images: Tensor, *, batch_size: Optional[int] = None, device=None,
                     progress: bool = False, desc: str = "features", with_probs: bool = False):
    """uint8 images [N, C, H, W] -> float64 features [N, D] from ``net.features`` (inputs mapped to [-1, 1]); with
    ``with_probs``, (features, class probabilities [N, K] from ``net.class_probs``), in this process alone. The
    network runs in channels-last layout (1.5x faster on a CPU; the features agree to 1e-6 relative), with TF32 off
    on a GPU (``runtime.exact_cuda_math``), so a device gives the CPU's features whatever ran before in the
    process. For sets too large to hold their features, ``streaming.feature_pass``."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    r = feature_pass(net, images, moments=False, keep=True, with_probs=with_probs, share=False, device=device,
                     batch_size=batch_size or feature_batch(device), progress=progress, desc=desc)
    f = r.kept().astype(np.float64)
    return (f, r.probs) if with_probs else f


def _cache_file(cache_dir, kind: str, name: str, net: nn.Module, images: Tensor, key: str,
                indices: Optional[np.ndarray] = None) -> Optional[Path]:
    """Where the cached ``kind`` (stats, feats) of real ``images`` under extractor ``name`` live: keyed by ``key`` (e.g.
    ``ImageData.key``, which holds the source's files and the size, channels and resize it was read at; else a hash
    of the images' bytes, read in blocks), their shape, the subset scored (``indices``) and the network's weights
    file (its sha256), so a changed set, subset, size or network never meets stale data."""
    if cache_dir is None:
        return None
    if not key:
        h = hashlib.blake2b(digest_size=8)
        for i in range(0, len(images), 4096):  # in blocks: a memory-mapped data set is never copied whole
            h.update(images[i:i + 4096].contiguous().numpy().tobytes())
        key = h.hexdigest()
    if indices is not None:
        key += f"|{len(indices)} of {len(images)}: " + hashlib.blake2b(indices.tobytes(), digest_size=8).hexdigest()
    shape = "x".join(map(str, images.shape[1:]))  # the size and channels the set was read at (and its resize, in key)
    digest = hashlib.blake2b((key + shape + getattr(net, "sha256", "")).encode(), digest_size=8).hexdigest()
    return Path(cache_dir) / f"ref_{kind}_{name}_{digest}.{'npz' if kind == 'stats' else 'npy'}"


def reference_pass(net: nn.Module, name: str, images: Tensor, source: str, *, indices: Optional[np.ndarray] = None,
                   keep: bool = False, cache_dir: Optional[os.PathLike] = None, key: str = "",
                   batch_size: Optional[int] = None, device=None, progress: bool = False) -> FeaturePass:
    """The mean and covariance (and with ``keep``, the float32 features) of real ``images`` (only ``indices`` of
    them when given), from the cache in ``cache_dir`` (statistics as ``.npz`` in pytorch-fid's format, features as
    ``.npy``; see ``_cache_file`` for the key) or from one ``streaming.feature_pass``, shared by the processes
    of a torchrun job, after which rank 0 writes the cache. Rank 0's listing of the cache decides for every
    process; where it holds all that is needed, rank 0 reads it and the others get only ``n``."""
    n = len(images) if indices is None else len(indices)
    stats_file, feats_file = (_cache_file(cache_dir, kind, name, net, images, key, indices)
                              for kind in ("stats", "feats"))
    there = rank0_flags([f is not None and f.is_file() for f in (stats_file, feats_file)], device or "cpu")
    rank = rank_world()[0]
    if there[0] and (there[1] or not keep):
        if rank != 0:
            return FeaturePass(n)
        assert stats_file is not None and feats_file is not None  # listed, so there is a cache folder
        with np.load(stats_file, allow_pickle=False) as z:
            out = FeaturePass(n, z["mu"], z["sigma"])
        if keep:
            out.features = np.load(feats_file, allow_pickle=False)
        return out
    out = feature_pass(net, images, indices=indices, keep=keep, batch_size=batch_size or feature_batch(device),
                       device=device, progress=progress, desc=f"{name} features of {source}")
    if rank == 0 and stats_file is not None and feats_file is not None:
        Path(stats_file).parent.mkdir(parents=True, exist_ok=True)
        mu, sigma = out.moments()
        with atomic_path(stats_file) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, n=n, source=json.dumps(source), extractor=name,
                     device=torch.device(device or "cpu").type, dtype="float32 features, float64 statistics")
        if keep:
            with atomic_path(feats_file) as tmp, open(tmp, "wb") as f:
                np.save(f, out.kept())
    return out


def reference_features(net: nn.Module, name: str, images: Tensor, source: str, cache_dir: Optional[os.PathLike] = None,
                       key: str = "", **kw) -> np.ndarray:
    """The features of real ``images`` (float64 [N, D]), cached as float32 ``.npy`` in ``cache_dir`` (KID and
    precision/recall need them all, not only their mean and covariance)."""
    return reference_pass(net, name, images, source, keep=True, cache_dir=cache_dir, key=key,
                          **kw).kept().astype(np.float64)


def reference_stats(net: nn.Module, name: str, images: Tensor, source: str, cache_dir: Optional[os.PathLike] = None,
                    key: str = "", **kw) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of real ``images``, accumulated streaming (any number of images in
    O(D^2) memory) and cached as ``.npz`` in ``cache_dir`` (pytorch-fid's format: ``mu``, ``sigma``)."""
    return reference_pass(net, name, images, source, cache_dir=cache_dir, key=key, **kw).moments()
