"""The metrics of image generation, computed from features (numpy, float64): the Fréchet distance (FID), the
Inception Score, the Kernel Inception Distance and precision/recall. Each function names the paper that defines
it; the features come from ``ddpm.evaluation.features``. scipy is imported only where used.
"""

from __future__ import annotations

import warnings
from typing import Tuple

import numpy as np

__all__ = ["gaussian_stats", "frechet_distance", "inception_score", "kernel_inception_distance", "precision_recall"]

BLOCK_BYTES = 1 << 28  # the most one block of precision/recall's distances takes (256 MiB of float32)


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
    if not all(np.isfinite(a).all() for a in (mu1, mu2, s1, s2)):
        raise ValueError("the Fréchet distance of statistics with NaN or infinite values is undefined")
    with warnings.catch_warnings():  # a near-singular product is common with few samples; handled below
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: regularise, as the reference FID code does
        eps = np.eye(s1.shape[0]) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def inception_score(probs: np.ndarray, splits: int = 10) -> Tuple[float, float]:
    """exp(E_x KL(p(y|x) || p(y))) in ``splits`` consecutive parts of the class probabilities [N, K]: their mean
    and standard deviation, as the original TF code computes them (Salimans et al. 2016, "Improved techniques for
    training GANs"; the DDPM paper's Table 1). p(y) is each part's mean prediction; 0 log 0 counts as 0."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or splits < 1 or len(p) < 2 * splits:
        raise ValueError(f"the Inception Score needs at least 2 images per split ({2 * splits} for {splits} splits), "
                         f"got {len(p)}")
    scores = []
    for i in range(splits):
        part = p[i * len(p) // splits:(i + 1) * len(p) // splits]
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_poly(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased estimate of MMD^2 between samples x [m, d] and y [m, d] with k(a, b) = (a.b / d + 1)^3."""
    m, d = len(x), x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> Tuple[float, float]:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased MMD^2 with the cubic polynomial kernel
    k(a, b) = (a.b / d + 1)^3 between the two feature sets, over ``subsets`` random subsets of ``subset_size``
    (fewer where a set is smaller) drawn without replacement; mean and standard deviation. Unbiased, so it is
    comparable across n, the metric to use when n is small; it can be slightly negative. Memory: two subsets'
    kernels, whatever the sets' sizes."""
    a, b = np.asarray(f1), np.asarray(f2)  # float32 features stay so: each subset is taken, then widened
    m = min(subset_size, len(a), len(b))
    if m < 2 or a.ndim != 2 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"KID needs at least 2 feature vectors of one dimension on each side, got {a.shape} and "
                         f"{b.shape}")
    rng = np.random.default_rng(seed)
    values = [_mmd2_poly(a[rng.choice(len(a), m, replace=False)].astype(np.float64),
                         b[rng.choice(len(b), m, replace=False)].astype(np.float64)) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def _kth_radii(f, k: int, batch: int):
    """Each vector's distance to its k-th nearest neighbour in its own set (itself excluded)."""
    import torch

    return torch.cat([torch.cdist(f[i:i + batch], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), batch)])


def _covered(points, centres, radii, batch: int):
    """For each point: whether it lies within the radius of some centre (in a k-NN ball of the other set)."""
    import torch

    return torch.cat([(torch.cdist(points[i:i + batch], centres) <= radii[None]).any(dim=1)
                      for i in range(0, len(points), batch)])


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, batch: int = 1000,
                     device=None) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
    its vectors reaching their k-th nearest neighbour; precision is the share of ``fake`` inside the real
    manifold, recall the share of ``real`` inside the fake one. Distances in float32 (on ``device``), in blocks
    of ``batch`` rows (fewer where a block of distances would pass ``BLOCK_BYTES``), as the reference code computes
    them."""
    import torch

    r = torch.as_tensor(np.asarray(real), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32, device=device)
    if min(len(r), len(f)) <= k or r.shape[1:] != f.shape[1:]:
        raise ValueError(f"precision/recall with k = {k} needs more than {k} feature vectors of one dimension on "
                         f"each side, got {tuple(r.shape)} and {tuple(f.shape)}")
    from ..runtime import exact_cuda_math

    batch = max(1, min(batch, BLOCK_BYTES // (4 * max(len(r), len(f)))))
    with exact_cuda_math():  # the distances' matmuls in full fp32 on a GPU too
        precision = _covered(f, r, _kth_radii(r, k, batch), batch).double().mean().item()
        recall = _covered(r, f, _kth_radii(f, k, batch), batch).double().mean().item()
    return precision, recall
