"""The training examples of every step, as pure functions of (seed, step, position in the global batch).

Example k = step * batch_size + position is image ``perm_epoch[k % N]`` of a fresh permutation every epoch,
flipped or not, with its own t and eps (and, for a class-conditional run, its label or, with probability
``p_uncond``, the null class), all drawn from generators named by (seed, step, position). So the
data position *is* the step (a resumed run sees exactly the examples a straight run would have), and the
examples of a batch do not depend on how it is split across processes or micro-batches.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple, cast

import torch
from torch import Tensor

from ..errors import DDPMError
from ..rng import generator
from .images import to_float
from .sources import ImageData

__all__ = ["Batches", "Prefetcher", "HeldOut", "held_out_split"]


class Batches:
    """The examples of ``data`` for a run with ``seed``, global ``batch_size`` and ``T`` diffusion steps.
    ``p_uncond`` not None: labelled examples (a class-conditional run), the null class ``len(data.classes)``
    in place of the label with that probability."""

    def __init__(self, data: ImageData, *, seed: int, batch_size: int, T: int, hflip: bool,
                 p_uncond: Optional[float] = None, index: Optional[Tensor] = None):
        self.data, self.seed, self.batch_size, self.T, self.hflip = data, seed, batch_size, T, hflip
        self.p_uncond = p_uncond
        self.null_class = len(data.require_labels()) if p_uncond is not None else None
        self.index = torch.arange(len(data)) if index is None else index  # the images it draws from (its split)
        self._perms: Dict[int, Tensor] = {}  # the permutation of the epoch last used

    def indices(self, step: int, positions: range) -> Tensor:
        """Dataset indices (int64) of the examples at ``positions`` of the global batch of ``step``."""
        n = len(self.index)
        out = []
        for j in positions:
            k = step * self.batch_size + j
            epoch = k // n
            if epoch not in self._perms:
                self._perms = {epoch: torch.randperm(n, generator=generator(self.seed, "epoch", epoch))}
            out.append(self.index[self._perms[epoch][k % n]])
        return torch.stack(out)

    def make(self, step: int, positions: Optional[range] = None,
             device=None) -> Tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        """(x0, t, noise, y) of ``positions`` (default: the whole batch) of ``step``: x0 float [B, C, H, W] in
        [-1, 1], t int64 [B] in [0, T-1], noise float [B, C, H, W], y int64 [B] labels (None: unconditional)."""
        positions = positions if positions is not None else range(self.batch_size)
        index = self.indices(step, positions)
        x0 = to_float(self.data.images[index])
        labels, p_uncond = self.data.labels, self.p_uncond
        y = None if p_uncond is None or labels is None else labels[index].clone()  # a conditional run's data has labels
        ts, noises = [], []
        for j, pos in enumerate(positions):
            g = generator(self.seed, "example", step, pos)
            ts.append(torch.randint(0, self.T, (1,), generator=g))
            flip = torch.rand((), generator=g) < 0.5
            noises.append(torch.randn(x0.shape[1:], generator=g))
            if self.hflip and flip:
                x0[j] = x0[j].flip(-1)
            if y is not None and p_uncond is not None and torch.rand((), generator=g) < p_uncond:  # drawn last
                y[j] = cast(int, self.null_class)
        t, noise = torch.cat(ts), torch.stack(noises)
        return x0.to(device), t.to(device), noise.to(device), None if y is None else y.to(device)


def held_out_split(n: int, fraction: float, seed: int, most: int = 1000) -> Tuple[Tensor, Tensor]:
    """(train, held-out) image indices, both sorted: a share ``fraction`` of ``n`` (at most ``most``, at least one
    when the share is positive) drawn with ``seed``, a pure function of (n, fraction, seed)."""
    k = min(most, max(1, round(fraction * n))) if fraction > 0 else 0
    if k >= n:
        raise DDPMError(f"--val-fraction {fraction} would hold out all {n} images; lower it (or 0 for none)")
    perm = torch.randperm(n, generator=generator(seed, "held-out"))
    return perm[k:].sort().values, perm[:k].sort().values


class HeldOut:
    """The held-out images with one fixed (t, eps) each (and their true labels), so that their loss, measured at
    different steps or in different runs of the same data and seed, is comparable and its curve smooth. The pairs
    are drawn again for each measurement from each image's own generator (a few random numbers against a network
    pass), so nothing but the indices is kept in memory."""

    def __init__(self, data: ImageData, index: Tensor, *, seed: int, T: int, labelled: bool):
        self.data, self.index, self.seed, self.T, self.labelled = data, index, seed, T, labelled

    def __len__(self) -> int:
        return len(self.index)

    def batches(self, size: int):
        """(x0, t, noise, y) in pieces of ``size``: float images in [-1, 1], int64 steps, eps, labels or None."""
        shape = tuple(self.data.images.shape[1:])
        for i in range(0, len(self), size):
            idx = self.index[i:i + size]
            gens = [generator(self.seed, "held-out", int(j)) for j in idx]
            t = torch.cat([torch.randint(0, self.T, (1,), generator=g) for g in gens])
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
            labels = self.data.labels
            yield (to_float(self.data.images[idx]), t, noise,
                   labels[idx].clone() if self.labelled and labels is not None else None)


class Prefetcher:
    """The micro-batches of a step. On a GPU they are assembled on a background thread while the step before
    trains, pinned and copied without blocking; on a CPU, where the step's OpenMP threads already hold every core
    and a thread beside them makes them wait for each other (measured: 12-30% slower training), in the call.
    ``get(step)`` returns what ``Batches.make`` would (the same tensors: the examples are pure functions of the
    step)."""

    def __init__(self, batches: Batches, micro: Sequence[range], device):
        self.batches, self.micro, self.device = batches, list(micro), torch.device(device)
        background = self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ddpm-batches") if background else None
        self._next: Optional[Tuple[int, Future]] = None  # (step, future)

    def _make(self, step: int) -> List[Tuple]:
        out = []
        for positions in self.micro:
            parts: Tuple[Optional[Tensor], ...] = self.batches.make(step, positions)
            if self.device.type == "cuda":
                parts = tuple(None if p is None else p.pin_memory().to(self.device, non_blocking=True) for p in parts)
            out.append(parts)
        return out

    def get(self, step: int) -> List[Tuple]:
        if self._pool is None:
            return self._make(step)
        pending, self._next = self._next, None
        ready: Optional[List[Tuple]] = pending[1].result() if pending is not None else None  # nothing runs beside
        batch = ready if ready is not None and pending is not None and pending[0] == step else self._make(step)
        self._next = (step + 1, self._pool.submit(self._make, step + 1))
        return batch

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._next = None
