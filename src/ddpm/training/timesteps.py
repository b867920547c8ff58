"""Importance sampling of t (Improved DDPM, Sec. 3.3: the loss-second-moment resampler): t is drawn with
probability proportional to the root mean square of its last 10 losses (mixed with 0.1% uniform), and each
example's loss is weighted by 1 / (T p_t), so the weighted loss is an unbiased estimate of the uniform-t mean.
Until every t has 10 losses, t is uniform (the warm-up).

The draw of a step is a function of (seed, step, position in the global batch) and of the loss history, which
every process updates with the whole global batch's losses in position order: processes agree, and a resumed
run (the history is in each checkpoint) continues exactly."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from ..rng import generator

__all__ = ["ImportanceSampler", "HISTORY", "UNIFORM_SHARE"]

HISTORY = 10
UNIFORM_SHARE = 0.001


class ImportanceSampler:
    """The loss history of every t and the draws it decides, kept on ``device``: a step draws, weights and
    updates without waiting for the device (the trainer's one host sync per step stays the only one). The history
    is float64 where the device has it (float32 on MPS)."""

    def __init__(self, T: int, seed: int = 0, device="cpu"):
        from ..runtime import accumulator_dtype

        self.T, self.seed, self.device = T, seed, torch.device(device)
        self.dtype = accumulator_dtype(self.device)
        self.history = torch.zeros(T, HISTORY, dtype=self.dtype, device=self.device)
        self.count = torch.zeros(T, dtype=torch.long, device=self.device)

    def warmed_up(self) -> bool:
        return bool((self.count == HISTORY).all())

    def probabilities(self) -> Tensor:
        """p_t [T]: uniform during the warm-up, then sqrt(E[loss_t^2]) normalised and mixed with uniform (chosen on
        the device: no host sync)."""
        w = self.history.pow(2).mean(dim=1).sqrt()
        w = w / w.sum().clamp(min=torch.finfo(self.dtype).tiny)
        uniform = torch.full_like(w, 1.0 / self.T)
        return torch.where((self.count == HISTORY).all(), w * (1 - UNIFORM_SHARE) + UNIFORM_SHARE / self.T, uniform)

    def draw(self, step: int, batch_size: int) -> Tuple[Tensor, Tensor]:
        """The global batch's t (int64 [B]) and loss weights 1 / (T p_t) (float32 [B]) for ``step``, on the device.
        The uniform numbers come from the step's CPU generator (every process and device draws alike), copied
        without blocking."""
        p = self.probabilities()
        u = torch.rand(batch_size, dtype=torch.float64, generator=generator(self.seed, "timesteps", step))
        if self.device.type == "cuda":
            u = u.pin_memory()
        u = u.to(self.device, self.dtype, non_blocking=True)
        cdf = p.cumsum(0)
        t = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.T - 1)
        return t, (1.0 / (self.T * p[t])).float()

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Add the global batch's per-example losses (in position order) to each t's history of the last 10; a batch
        with a non-finite loss changes nothing. Vectorised on the device: each loss goes to its place in its t's
        window, ``count[t] + (how many of the batch's earlier examples had that t)``, shifted by what falls out."""
        t, losses = t.to(self.device).long(), losses.to(self.device, self.dtype)
        b = len(t)
        order = torch.argsort(t * b + torch.arange(b, device=self.device))  # by t, then by position
        ts, ls = t[order], losses[order]
        k = torch.bincount(t, minlength=self.T)
        rank = torch.arange(b, device=self.device) - (k.cumsum(0) - k)[ts]  # each example's place among its t's
        shift = (self.count + k - HISTORY).clamp(min=0)  # entries that fall out of each window
        src = torch.arange(HISTORY, device=self.device)[None] + shift[:, None]
        kept = self.history.gather(1, src.clamp(max=HISTORY - 1))
        history = torch.where(src < self.count[:, None], kept, torch.zeros_like(kept))
        place = self.count[ts] + rank - shift[ts]  # < 0: pushed out by later losses of the same batch
        history = torch.cat([history, torch.zeros_like(history[:, :1])], dim=1)  # a spare column for those
        history = history.index_put((ts, torch.where(place >= 0, place, HISTORY)), ls)[:, :HISTORY]
        ok = torch.isfinite(losses).all()
        self.history = torch.where(ok, history, self.history)
        self.count = torch.where(ok, (self.count + k).clamp(max=HISTORY), self.count)

    def state(self) -> Dict[str, Any]:
        return {"history": self.history.double().cpu().tolist(), "count": self.count.cpu().tolist()}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.history = torch.tensor(state["history"], dtype=torch.float64).reshape(self.T, HISTORY).to(
            self.device, self.dtype)
        self.count = torch.tensor(state["count"], dtype=torch.long).reshape(self.T).to(self.device)
