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
    def __init__(self, T: int, seed: int = 0):
        self.T, self.seed = T, seed
        self.history = torch.zeros(T, HISTORY, dtype=torch.float64)
        self.count = torch.zeros(T, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self.count == HISTORY).all())

    def probabilities(self) -> Tensor:
        """p_t, float64 [T]: uniform during the warm-up, then sqrt(E[loss_t^2]) normalised and mixed with uniform."""
        if not self.warmed_up():
            return torch.full((self.T,), 1.0 / self.T, dtype=torch.float64)
        w = self.history.pow(2).mean(dim=1).sqrt()
        w = w / w.sum()
        return w * (1 - UNIFORM_SHARE) + UNIFORM_SHARE / self.T

    def draw(self, step: int, batch_size: int) -> Tuple[Tensor, Tensor]:
        """The global batch's t (int64 [B]) and loss weights 1 / (T p_t) (float32 [B]) for ``step``, on the CPU."""
        p = self.probabilities()
        u = torch.rand(batch_size, dtype=torch.float64, generator=generator(self.seed, "timesteps", step))
        cdf = p.cumsum(0)
        t = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp(max=self.T - 1)
        return t, (1.0 / (self.T * p[t])).float()

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Add the global batch's per-example losses (in position order) to each t's history of the last 10."""
        for ti, loss in zip(t.tolist(), losses.double().tolist()):
            n = int(self.count[ti])
            if n == HISTORY:
                self.history[ti, :-1] = self.history[ti, 1:].clone()
                self.history[ti, -1] = loss
            else:
                self.history[ti, n] = loss
                self.count[ti] = n + 1

    def state(self) -> Dict[str, Any]:
        return {"history": self.history.tolist(), "count": self.count.tolist()}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.history = torch.tensor(state["history"], dtype=torch.float64).reshape(self.T, HISTORY)
        self.count = torch.tensor(state["count"], dtype=torch.long).reshape(self.T)
