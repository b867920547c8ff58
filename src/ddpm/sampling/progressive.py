"""Progressive generation (Sec. 4.3, Figs. 6 and 10 of Ho et al. 2020): the prediction
x0_hat = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t) along the reverse chain, kept for every image at chosen
reverse steps.

Reverse step k (1..T) is the network call at x_t, t = T - k + 1 (index T - k): step 1 sees pure noise, step T sees
x_1. A sampler that takes fewer than T steps keeps the prediction of its step nearest to each one asked for, and
says which it took (``Progressive.reverse_steps``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.images import to_uint8
from ..errors import DDPMError

__all__ = ["Progressive", "default_reverse_steps", "parse_reverse_steps", "progressive_key", "progressive_strip"]

PREFIX = "x0hat_"  # the arrays of a progressive job's .npz: x0hat_0100 [N, H, W, C] beside arr_0


def default_reverse_steps(T: int) -> List[int]:
    """Every tenth of the chain: 100, 200, ..., 1000 for T = 1000 (Table 4's points)."""
    return sorted({max(1, round(T * j / 10)) for j in range(1, 11)})


def parse_reverse_steps(text: str, T: int, flag: str = "--at") -> List[int]:
    """``"1000,750,500"`` -> [500, 750, 1000], each checked to lie in 1..T."""
    try:
        steps = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise DDPMError(f"{flag} {text!r}: expected reverse steps such as 250,500,750,{T} (integers)") from None
    bad = [k for k in steps if not 1 <= k <= T]
    if bad or not steps:
        raise DDPMError(f"{flag} {text!r}: reverse steps lie in 1..{T} (T = {T}: step {T} is the last, from x_1)")
    return steps


def progressive_key(steps: Optional[Sequence[int]]) -> Optional[str]:
    """How a job records the reverse steps it keeps ("100,200"), None for none."""
    return None if not steps else ",".join(str(k) for k in steps)


class Progressive:
    """A sampler callback (``generate(..., collect=...)``) that keeps x0_hat (uint8) of every image at the
    reverse steps ``at`` (1..T), batch after batch, in image order.

    ``reverse_steps``: the steps kept, those of the sampler's calls nearest to ``at`` (all of them for a sampler of
    T steps), ascending; ``images()``: reverse step -> uint8 [N, C, H, W]."""

    def __init__(self, indices: Sequence[int], T: int, at: Sequence[int]):
        taken = {min(indices, key=lambda i: abs((T - i) - k)) for k in at}
        self.wanted = {i: T - i for i in taken}  # original index -> its reverse step
        self.reverse_steps = sorted(self.wanted.values())
        self._kept: Dict[int, List[Tensor]] = {k: [] for k in self.reverse_steps}

    def __call__(self, t: int, x: Tensor, pred_x0: Tensor) -> None:
        if t in self.wanted:
            self._kept[self.wanted[t]].append(to_uint8(pred_x0.detach().float()).cpu())

    def images(self) -> Dict[int, Tensor]:
        return {k: torch.cat(v) for k, v in self._kept.items() if v}

    def arrays(self) -> Dict[str, np.ndarray]:
        """The kept images as the arrays of an .npz: ``x0hat_KKKK`` uint8 [N, H, W, C]."""
        return {f"{PREFIX}{k:04d}": v.permute(0, 2, 3, 1).numpy() for k, v in self.images().items()}


def progressive_strip(kept: Dict[int, Tensor], final: Tensor) -> Any:
    """Fig. 6: a row per image, x0_hat at each kept reverse step k, then the sample itself (a PIL image)."""
    from ..viz import _scale_for, labelled_grid

    steps = sorted(kept)
    rows = [[kept[k][i].permute(1, 2, 0).numpy() for k in steps] + [final[i].permute(1, 2, 0).numpy()]
            for i in range(len(final))]
    return labelled_grid(rows, [f"k={k}" for k in steps] + ["sample"], scale=_scale_for(final.shape[-1]))


def progressive_picture(ckpt: Any, settings: Any, *, seeds: Sequence[int], at: Sequence[int],
                        path: Any) -> List[int]:
    """Fig. 6 for the images of ``seeds`` (the first of ``settings.seeds``: the same images as a sampling job's of
    those seeds) written to ``path``; returns the reverse steps shown."""
    from ..viz import save_picture
    from .generation import sample_checkpoint
    from .guidance import class_labels

    sampler = settings.make_sampler(ckpt.diffusion)
    kept = Progressive(sampler.indices, ckpt.diffusion.T, at)
    labels = class_labels(settings.classes, ckpt.config.classes, len(settings.seeds), range(len(seeds)))
    final = sample_checkpoint(ckpt, settings.replace(progress=False), seeds=seeds, labels=labels, sampler=sampler,
                              collect=kept)
    save_picture(progressive_strip(kept.images(), final), path)
    return kept.reverse_steps
