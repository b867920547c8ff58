"""Quality while training (``ddpm train --eval-every N``): every N steps, the Fréchet distance of samples of the EMA
weights to the run's data, measured as ``ddpm eval --metrics fd`` measures it, so that ``ddpm eval --checkpoint
STEP --metrics fd --n K --sampler S --steps K`` gives the logged number again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from ..config import RunConfig
from ..runtime import rank_world
from ..sampling.settings import SamplingSettings
from .features import get_features
from .reports import fd_labels, fd_of, reference_moments
from .streaming import REF_N

__all__ = ["FDWatch"]


class FDWatch:
    """``Trainer.fit``'s ``evaluate``: draws ``eval_n`` samples from the EMA weights (seeds 0 .. n-1, the
    ``eval_sampler`` with ``eval_steps`` network calls, fp32, batches of 256, as ``ddpm eval`` draws them; under
    torchrun each process draws its share) and returns, in rank 0, their Fréchet distance to the run's data: the
    shipped digit classifier's features for 1-channel images, the FID Inception for RGB (found at construction,
    or a DDPMError there: before training starts). The reference statistics are computed at the first evaluation
    and cached in ``RUN/eval``, where ``ddpm eval`` finds them."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, device: Any = None, inception: Optional[str] = None,
                 cache_dir: Any = None):
        t = cfg.train
        self.cfg, self.out = cfg, Path(run_dir) / "eval"
        self.features = get_features("auto", channels=cfg.model.in_channels, inception=inception, cache_dir=cache_dir,
                                     hw=cfg.model.hw)
        self.settings = SamplingSettings(sampler=t.eval_sampler, steps=t.eval_steps or None, n=t.eval_n, seed=0,
                                         device=device, progress=False)
        self.settings.make_sampler(cfg.diffusion.build())  # a bad sampler setting is refused before training
        self.reference: Optional[Tuple[int, np.ndarray, np.ndarray]] = None

    def __call__(self, trainer) -> Optional[float]:
        settings = self.settings.replace(device=trainer.device)
        if self.reference is None:  # every process: they share the pass
            self.out.mkdir(parents=True, exist_ok=True)
            self.reference = reference_moments(trainer.data, self.features, cache_dir=self.out, ref_n=REF_N,
                                               device=trainer.device)
        labels = fd_labels(self.cfg.classes, trainer.data, len(settings.seeds), settings.seed)
        images = trainer.draw(settings, labels=labels)
        if rank_world()[0] != 0:
            return None
        _, mu_r, sig_r = self.reference
        return fd_of(images, self.features, mu_r, sig_r, device=trainer.device)
