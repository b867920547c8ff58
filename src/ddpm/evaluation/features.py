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
from ..runtime import exact_cuda_math
from ..data.sources import to_float
from .metrics import gaussian_stats

__all__ = ["DigitClassifier", "load_digit_classifier", "digit_classifier_heldout", "FEATURES", "get_features",
           "extract_features", "feature_batch", "reference_stats", "reference_features"]

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
        """Any [N, C, H, W] in [-1, 1] -> [N, 1, 28, 28] (mean over channels, antialiased resize)."""
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
        net.sha256 = file_sha256(p)  # what cached statistics are keyed by, as the Inception's file
    return net.eval()


FEATURES = ("auto", "digits", "inception")


def get_features(kind: str, *, channels: int, inception: Optional[str] = None) -> Tuple[str, nn.Module]:
    """(name, network) of a feature extractor. ``auto``: digits for 1-channel images, else inception."""
    if kind == "auto":
        kind = "digits" if channels == 1 else "inception"
    if kind == "digits":
        return "digits", load_digit_classifier()
    if kind == "inception":
        from .inception import load_inception

        return "inception", load_inception(inception)
    raise ValueError(f"unknown feature extractor {kind!r}; choose from {', '.join(FEATURES)}")


def feature_batch(device) -> int:
    """Images per feature batch: small on a CPU, where the Inception's activations then stay in cache (8: 27 img/s
    on 2 cores against 20 at 32, see BENCHMARKS.md), large on a GPU."""
    return 8 if torch.device(device or "cpu").type == "cpu" else 250


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, *, batch_size: Optional[int] = None, device=None,
                     progress: bool = False, desc: str = "features", with_probs: bool = False):
    """uint8 images [N, C, H, W] -> float64 features [N, D] from ``net.features`` (inputs mapped to [-1, 1]); with
    ``with_probs``, (features, class probabilities [N, K] from ``net.class_probs``). The network runs in
    channels-last layout (1.5x faster on a CPU; the features agree to 1e-6 relative), with TF32 off on a GPU
    (``runtime.exact_cuda_math``), so a device gives the CPU's features whatever ran before in the process."""
    from tqdm.auto import tqdm

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    device = torch.device(device or "cpu")
    batch_size = batch_size or feature_batch(device)
    net = net.to(device, memory_format=torch.channels_last).eval()
    feats, probs = [], []
    with exact_cuda_math(), tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(images), batch_size):
            f = net.features(to_float(images[i:i + batch_size].to(device)))
            feats.append(f.double().cpu())
            if with_probs:
                probs.append(net.class_probs(f).cpu())
            bar.update(len(f))
    f = torch.cat(feats).numpy()
    return (f, torch.cat(probs).numpy()) if with_probs else f


def _cache_file(cache_dir, kind: str, name: str, net: nn.Module, images: Tensor, key: str) -> Optional[Path]:
    """Where the cached ``kind`` (stats, feats) of real ``images`` under extractor ``name`` live: keyed by ``key`` (e.g.
    ``ImageData.key``, which holds the source's files and the size, channels and resize it was read at; else a hash
    of the images' bytes, read in blocks), their shape and the network's weights file (its sha256), so a changed
    set, size or network never meets stale data."""
    if cache_dir is None:
        return None
    if not key:
        h = hashlib.blake2b(digest_size=8)
        for i in range(0, len(images), 4096):  # in blocks: a memory-mapped data set is never copied whole
            h.update(images[i:i + 4096].contiguous().numpy().tobytes())
        key = h.hexdigest()
    shape = "x".join(map(str, images.shape[1:]))  # the size and channels the set was read at (and its resize, in key)
    digest = hashlib.blake2b((key + shape + getattr(net, "sha256", "")).encode(), digest_size=8).hexdigest()
    return Path(cache_dir) / f"ref_{kind}_{name}_{digest}.{'npz' if kind == 'stats' else 'npy'}"


def reference_features(net: nn.Module, name: str, images: Tensor, source: str, cache_dir: Optional[os.PathLike] = None,
                       key: str = "", **kw) -> np.ndarray:
    """The features of real ``images`` (float64 [N, D]), cached as float32 ``.npy`` in ``cache_dir`` (KID and
    precision/recall need them all, not only their mean and covariance)."""
    cache = _cache_file(cache_dir, "feats", name, net, images, key)
    if cache is not None and cache.is_file():
        return np.load(cache, allow_pickle=False).astype(np.float64)
    feats = extract_features(net, images, desc=f"{name} features of {source}", **kw)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp, open(tmp, "wb") as f:
            np.save(f, feats.astype(np.float32))
    return feats


def reference_stats(net: nn.Module, name: str, images: Tensor, source: str, cache_dir: Optional[os.PathLike] = None,
                    key: str = "", **kw) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of real ``images``, cached as ``.npz`` in ``cache_dir`` (pytorch-fid's
    format: ``mu``, ``sigma``; see ``_cache_file`` for the key)."""
    cache = _cache_file(cache_dir, "stats", name, net, images, key)
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["mu"], z["sigma"]
    mu, sigma = gaussian_stats(extract_features(net, images, desc=f"{name} features of real images", **kw))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, n=len(images), source=json.dumps(source), extractor=name,
                     device=torch.device(kw.get("device") or "cpu").type, dtype="float32 features, float64 statistics")
    return mu, sigma
