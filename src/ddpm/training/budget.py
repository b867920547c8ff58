"""``--time-limit M --fit-steps``: a run that fits its length to the time it is given, so that a cosine
learning-rate decay ends when the time does instead of being cut off half-way."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Optional

from ..config import RunConfig
from ..run.directory import write_config
from ..runtime import rank_world

__all__ = ["FitSteps"]

log = logging.getLogger(__name__)


class FitSteps:
    """An ``on_step`` for ``Trainer.fit``: at the end of the warm-up (no learning rate depends on the total before
    then), from the time of the steps since the 5th, sets the run's steps to what fits in ``time_limit`` minutes
    since ``started`` (at most the configured steps, 3% kept for what else the run does) and rewrites config.json,
    so that a resumed run ends there too. Under torchrun rank 0's figure is every process's. ``then`` is called
    after it on every step (e.g. the progress projection)."""

    def __init__(self, run: Path, cfg: RunConfig, started: float, then: Optional[Callable] = None):
        self.run, self.cfg, self.then = Path(run), cfg, then
        self.deadline = started + cfg.train.time_limit * 60
        self.at = max(2, min(cfg.train.warmup, cfg.train.steps - 1))
        self.start = max(1, min(5, self.at // 2))
        self.t0: Optional[float] = None
        self.s0 = 0

    def __call__(self, trainer) -> None:
        if self.t0 is None and trainer.step >= self.start:
            self.t0, self.s0 = time.monotonic(), trainer.step
        if trainer.step == self.at and self.t0 is not None and trainer.step > self.s0:
            step_s = (time.monotonic() - self.t0) / (trainer.step - self.s0)
            fit = trainer.step + int(0.97 * (self.deadline - time.monotonic()) / step_s)
            steps = _agreed(max(trainer.step + 1, min(self.cfg.train.steps, fit)), trainer.device)
            trainer.set_steps(steps)
            if rank_world()[0] == 0:
                write_config(self.run, dataclasses.replace(self.cfg, train=trainer.config))
                log.info("at step %d: %.3f s per step, so %d steps fit in --time-limit %g (the decay now ends there)",
                         trainer.step, step_s, steps, self.cfg.train.time_limit)
        if self.then is not None:
            self.then(trainer)


def _agreed(value: int, device) -> int:
    """Rank 0's ``value`` in every process (itself outside torchrun)."""
    if rank_world()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())
