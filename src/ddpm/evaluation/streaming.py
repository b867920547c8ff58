"""The features of an image set of any size, in one pass that keeps only what the metrics need.

A reference can hold millions of images (LSUN bedroom: 3M). FID needs only the features' mean and covariance,
which accumulate batch by batch (``Moments``: float64 accumulators, O(D^2) memory whatever the set's size); the
features themselves are kept (float32) only for KID and precision/recall, and then of at most ``REF_N`` reference
images, a seeded subset (``reference_subset``). Under torchrun every process extracts its share of the images
(``feature_pass``): the moments are combined exactly across processes and the kept rows gathered in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..data.images import to_float
from ..runtime import exact_cuda_math, rank_world, shares

__all__ = ["REF_N", "REF_SUBSET_SEED", "Moments", "FeaturePass", "feature_pass", "reference_subset"]

REF_N = 50000  # reference images scored by default: the published protocol's 50,000 (all of CIFAR-10's train)
REF_SUBSET_SEED = 0  # which REF_N of a larger reference: fixed, so that every model meets the same subset
_BLOCK_ROWS = 2048  # feature rows gathered before they are merged into the moments (32 MiB at 2048-d)


class Moments:
    """The mean and covariance of feature vectors added in batches: float64 accumulators updated blockwise by the
    pairwise rule of Chan, Golub and LeVeque (1979), which is as exact as ``np.cov`` of all rows at once. Rows wait
    in a block of ``_BLOCK_ROWS`` before they are merged, so the O(D^2) merge runs once a block, not once a batch."""

    def __init__(self, dim: int, device="cpu"):
        self.n = 0
        self.mean = torch.zeros(dim, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        self._pending: List[Tensor] = []
        self._rows = 0

    def add(self, features: Tensor) -> None:
        self._pending.append(features.detach().to(self.mean.device, torch.float64))
        self._rows += len(features)
        if self._rows >= _BLOCK_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        f = torch.cat(self._pending)
        self._pending, self._rows = [], 0
        mean = f.mean(dim=0)
        c = f - mean
        self._merge(len(f), mean, c.T @ c)

    def _merge(self, n: int, mean: Tensor, m2: Tensor) -> None:
        total = self.n + n
        d = mean - self.mean
        self.m2 += m2 + torch.outer(d, d) * (self.n * n / total)
        self.mean += d * (n / total)
        self.n = total

    def reduce(self, device) -> "Moments":
        """Every process's moments combined (in every process): the means gathered, then each process's scatter
        about the common mean summed."""
        import torch.distributed as dist

        self._flush()
        world = rank_world()[1]
        if world == 1:
            return self
        counts = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
        means = [torch.zeros_like(self.mean, device=device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([float(self.n)], dtype=torch.float64, device=device))
        dist.all_gather(means, self.mean.to(device))
        ns = torch.cat(counts)
        total = float(ns.sum())
        mean = (torch.stack(means) * ns[:, None]).sum(dim=0) / total
        d = self.mean.to(device) - mean
        m2 = self.m2.to(device) + torch.outer(d, d) * self.n
        dist.all_reduce(m2)
        self.n, self.mean, self.m2 = int(total), mean.to(self.mean.device), m2.to(self.m2.device)
        return self

    def stats(self) -> Tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D], float64 (``metrics.gaussian_stats`` of all the rows)."""
        self._flush()
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors, got {self.n}")
        return self.mean.cpu().numpy(), (self.m2 / (self.n - 1)).cpu().numpy()


@dataclass
class FeaturePass:
    """What one pass over a set gives: ``n`` images; ``mu`` and ``sigma`` (with ``moments``); ``features`` float32
    [n, D] and ``probs`` float64 [n, K] (when asked for) in the set's order."""

    n: int
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    probs: Optional[np.ndarray] = None

    def moments(self) -> Tuple[np.ndarray, np.ndarray]:
        """(mu, sigma); ValueError for a pass made without ``moments``."""
        if self.mu is None or self.sigma is None:
            raise ValueError("this pass accumulated no moments")
        return self.mu, self.sigma

    def kept(self) -> np.ndarray:
        """The features; ValueError for a pass made without ``keep``."""
        if self.features is None:
            raise ValueError("this pass kept no features")
        return self.features


def reference_subset(total: int, ref_n: Optional[int], seed: int = REF_SUBSET_SEED) -> Optional[np.ndarray]:
    """The indices (sorted) of the ``ref_n`` reference images scored out of ``total``, a seeded choice without
    replacement; None for all of them (``ref_n`` None, or not below ``total``)."""
    if ref_n is None or ref_n >= total:
        return None
    return np.sort(np.random.default_rng(seed).choice(total, ref_n, replace=False))


def _gather_rows(rows: Tensor, device) -> Tensor:
    """This process's rows followed by the next process's, and so on (padded to one length for the collective)."""
    import torch.distributed as dist

    world = rank_world()[1]
    if world == 1:
        return rows
    mine = torch.tensor([len(rows), rows.shape[1] if rows.ndim == 2 else 0], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(sizes, mine)  # a process with no rows does not know the width: the others tell it
    counts = [int(c[0]) for c in sizes]
    padded = torch.zeros((max(counts), max(int(c[1]) for c in sizes)), dtype=rows.dtype, device=device)
    padded[:len(rows)] = rows.reshape(len(rows), -1).to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).cpu()


def _batches(order: Optional[np.ndarray], start: int, stop: int, batch: int):
    for i in range(start, stop, batch):
        j = min(i + batch, stop)
        yield slice(i, j) if order is None else torch.from_numpy(order[i:j])


@torch.no_grad()
def feature_pass(net: nn.Module, images: Any, *, indices: Optional[np.ndarray] = None, moments: bool = True,
                 keep: bool = False, with_probs: bool = False, batch_size: int = 8, device=None, progress: bool = False,
                 desc: str = "features", share: bool = True) -> FeaturePass:
    """One pass of ``net.features`` over uint8 ``images`` [N, C, H, W] (a tensor, memory-mapped or not, or any
    object indexed by a slice or an index tensor; only ``indices`` of them when given). With ``share``, under
    torchrun, each process takes its contiguous share and every process gets the whole result. The network runs
    in channels-last layout with TF32 off (``runtime.exact_cuda_math``); moments accumulate where float64 is
    fast and exists (a CUDA device, else the CPU)."""
    from tqdm.auto import tqdm

    device = torch.device(device or "cpu")
    rank, world = rank_world() if share else (0, 1)
    total = len(images) if indices is None else len(indices)
    part = shares(total, world)[rank]
    net = net.to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    acc: Optional[Moments] = None
    kept: List[Tensor] = []
    probs: List[Tensor] = []
    with exact_cuda_math(), tqdm(total=len(part), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for which in _batches(indices, part.start, part.stop, batch_size):
            x = images[which]
            if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
                raise ValueError(f"expected uint8 images [N, C, H, W], got {getattr(x, 'dtype', type(x))} "
                                 f"{tuple(getattr(x, 'shape', ()))}")
            f: Tensor = net.features(to_float(x.to(device)))  # type: ignore[operator]
            if moments:
                if acc is None:
                    acc = Moments(f.shape[1], device if device.type == "cuda" else "cpu")
                acc.add(f)
            if keep:
                kept.append(f.float().cpu())
            if with_probs:
                probs.append(net.class_probs(f).double().cpu())  # type: ignore[operator]
            bar.update(len(f))
    return _combine(total, acc, kept, probs, moments, keep, with_probs, device if share else None)


def _combine(total: int, acc: Optional[Moments], kept: Sequence[Tensor], probs: Sequence[Tensor], moments: bool,
             keep: bool, with_probs: bool, device) -> FeaturePass:
    """Each process's part of a pass made whole (``device``: where the collectives run; None outside them)."""
    out = FeaturePass(total)
    comm = device is not None and rank_world()[1] > 1
    if moments:
        if comm:  # a process with no rows still takes part, with empty moments of the right size
            dim = torch.tensor([acc.mean.shape[0] if acc is not None else 0], device=device)
            torch.distributed.all_reduce(dim, op=torch.distributed.ReduceOp.MAX)
            acc = acc or Moments(int(dim), device if torch.device(device).type == "cuda" else "cpu")
            acc.reduce(device)
        out.mu, out.sigma = acc.stats() if acc is not None else (None, None)
    for want, rows, attr, empty in ((keep, kept, "features", torch.float32), (with_probs, probs, "probs",
                                                                           torch.float64)):
        if want:
            t = torch.cat(list(rows)) if rows else torch.zeros(0, dtype=empty)
            if comm:
                t = _gather_rows(t, device)
            setattr(out, attr, t.numpy())
    return out
