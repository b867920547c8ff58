"""Distances between image sets: the Fréchet distance and the feature extractors it is computed on.

Feature extractors map images in [-1, 1] to feature vectors:
- ``digits``: ``DigitClassifier``, a small CNN trained on the shipped MNIST digits by
  ``scripts/train_digit_classifier.py``; its weights ship in ``ddpm/assets`` (safetensors), so the
  Fréchet distance works out of the box on the ``mnist`` data set;
- ``inception``: the FID Inception-v3 (``ddpm.evaluation.inception``) with weights from a local file.
scipy is imported only where used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from importlib import resources
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import atomic_path
from ..data.sources import to_float

__all__ = ["DigitClassifier", "load_digit_classifier", "digit_classifier_heldout", "frechet_distance", "gaussian_stats", "FEATURES",
           "get_features", "extract_features", "reference_stats"]

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


def digit_classifier_heldout(n: int = 5000) -> Tensor:
    """Which images of the ``mnist`` source the shipped classifier was not trained on: every 10th image of each
    digit (image K with (K // 10) % 10 == 0; the source interleaves the classes), 500 of the 5,000."""
    return (torch.arange(n) // 10) % 10 == 0


def load_digit_classifier(path: Optional[str] = None) -> DigitClassifier:
    """The shipped digit classifier (eval mode), or one saved at ``path``."""
    from safetensors.torch import load_file

    net = DigitClassifier()
    if path is None:
        with resources.as_file(resources.files("ddpm") / "assets" / CLASSIFIER_FILE) as p:
            state = load_file(str(p))
    else:
        state = load_file(str(path))
    net.load_state_dict(state)
    return net.eval()


def gaussian_stats(features: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased) of features [N, D], in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors [N, D], got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): the Fréchet distance between two Gaussians."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"shape mismatch: means {mu1.shape} vs {mu2.shape}, covariances {s1.shape} vs {s2.shape}")
    with warnings.catch_warnings():  # a near-singular product is common with few samples; handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------- feature extractors
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


@torch.no_grad()
def extract_features(net: nn.Module, images: Tensor, *, batch_size: int = 100, device=None,
                     progress: bool = False, desc: str = "features") -> np.ndarray:
    """uint8 images [N, C, H, W] -> float64 features [N, D] from ``net.features`` (inputs mapped to [-1, 1])."""
    from tqdm.auto import tqdm

    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    device = torch.device(device or "cpu")
    net = net.to(device).eval()
    out = []
    for i in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", disable=not progress, leave=False):
        out.append(net.features(to_float(images[i:i + batch_size].to(device))).double().cpu())
    return torch.cat(out).numpy()


def reference_stats(net: nn.Module, name: str, images: Tensor, source: str, cache_dir: Optional[os.PathLike] = None,
                    key: str = "", **kw) -> Tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the features of real ``images``, cached as ``.npz`` in ``cache_dir``.

    The cache file is keyed by the extractor and the images (``key``, e.g. ``ImageData.key``; else a hash of
    their bytes, read in blocks), so a changed data set is never matched with stale statistics.
    """
    if not key:
        h = hashlib.blake2b(digest_size=8)
        for i in range(0, len(images), 4096):  # in blocks: a memory-mapped data set is never copied whole
            h.update(images[i:i + 4096].contiguous().numpy().tobytes())
        key = h.hexdigest()
    digest = hashlib.blake2b(key.encode(), digest_size=8).hexdigest()
    cache = Path(cache_dir) / f"ref_stats_{name}_{digest}.npz" if cache_dir is not None else None
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            return z["mu"], z["sigma"]
    mu, sigma = gaussian_stats(extract_features(net, images, desc=f"{name} features of real images", **kw))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            np.savez(tmp, mu=mu, sigma=sigma, n=len(images), source=json.dumps(source), extractor=name)
    return mu, sigma
