"""Measuring models: Fréchet distance and the feature extractors it uses.

``DigitClassifier`` is a small CNN trained on the shipped MNIST digits by
``scripts/train_digit_classifier.py``; its weights ship in ``ddpm/assets`` (safetensors), so the
Fréchet distance works out of the box on the ``mnist`` data set. scipy is imported only where used.
"""

from __future__ import annotations

from importlib import resources
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DigitClassifier", "load_digit_classifier", "frechet_distance", "gaussian_stats"]

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
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
