"""What a resumed run may change (how long it runs, how it reports and how often it saves, never what it
computes), and the config of a resumed run: the saved one with those changes, any other difference refused."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict
from typing import Any, Dict, Optional

from ..config import RunConfig, flag
from ..data.images import norm_size
from ..errors import DDPMError

__all__ = ["RESUMABLE", "MODEL_FLAGS", "resume_config"]

# The network's fields a training run may set from the command line (``--image-size``, ``--channels``).
MODEL_FLAGS = {"image_size": "--image-size", "in_channels": "--channels"}

# What a resumed run may change: how long it runs, how it reports and how often it saves, never what it computes.
RESUMABLE = frozenset({"steps", "log_every", "sample_every", "save_every", "save_minutes", "keep", "keep_every",
                       "n_samples", "time_limit", "grad_accum", "compile", "skip_nonfinite", "log", "eval_every",
                       "eval_n", "eval_sampler", "eval_steps", "ema_snapshot_every", "fit_steps", "grad_checkpointing"})


def resume_config(saved: RunConfig, train: Dict[str, Any], diffusion: Dict[str, Any],
                  preset: Optional[str] = None, model: Optional[Dict[str, Any]] = None) -> RunConfig:
    """``saved`` with the RESUMABLE fields of ``train`` applied; any other field that differs is refused, in one
    line naming every such setting with its saved and its given value."""
    fixed = {**{k: v for k, v in train.items() if k not in RESUMABLE and v is not None},
             **{k: v for k, v in {**diffusion, **(model or {})}.items() if v is not None}}
    if "image_size" in fixed:  # 16, [16, 16] and (16, 16) are one size
        fixed["image_size"] = norm_size(fixed["image_size"])
    if preset is not None:
        fixed["preset"] = preset
    current = {**asdict(saved.train), **asdict(saved.diffusion), **asdict(saved.model), "preset": saved.preset}
    changed = [(MODEL_FLAGS.get(k, flag(k)), current.get(k), v) for k, v in fixed.items() if current.get(k) != v]
    if changed:
        can = ", ".join(sorted(flag(r) for r in RESUMABLE))
        raise DDPMError(f"the run was trained with {', '.join(f'{f} {old!r}' for f, old, _ in changed)}; a resumed "
                        f"run cannot change {'it' if len(changed) == 1 else 'them'} (given: "
                        f"{', '.join(f'{f} {new!r}' for f, _, new in changed)}; only {can} can change)")
    new = dataclasses.replace(saved.train, **{k: v for k, v in train.items() if k in RESUMABLE and v is not None})
    return dataclasses.replace(saved, train=new)
