"""The paper's protocol for a run (``ddpm eval --metric fid,is,...``): draw the samples through the resumable,
torchrun-sharded sampling job (50,000 by default, the EMA weights, Algorithm 2 over all T steps), score them
against the run's data (the paper: the training set) or a given reference, and bits/dim on the train and the
test split side by side, as Table 1 shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import DDPMError

__all__ = ["PAPER_N", "samples_file", "draw_samples", "bpd_splits"]

PAPER_N = 50000  # the samples of the paper's (and every published) FID and IS


def samples_file(out: Path, ckpt, sampler, *, n: int, seed: int, ema: bool, guidance: float) -> Path:
    """Where the samples of these settings live in the report folder: the name holds every setting, so a run again
    with the same ones finds (or continues) them and other settings never mix with them."""
    g = f"-guidance{guidance:g}" if guidance else ""
    return out / (f"samples-step{ckpt.step}-{sampler.name}{sampler.steps}-{'ema' if ema else 'raw'}-seed{seed}"
                  f"-n{n}{g}.npz")


def draw_samples(out: Path, ckpt, sampler, *, n: int, seed: int, ema: bool, guidance: float = 0.0,
                 precision: str = "fp32", batch_size: int = 256, device=None, progress: bool = True) -> Dict[str, Any]:
    """The samples of these settings in ``out``: drawn by a sampling job (resumable, shared between torchrun's
    processes; a class-conditional run draws every class in equal numbers), or found there from an earlier run.
    Returns ``path``, ``drawn`` (this time) and ``reused`` (from earlier runs)."""
    from ..run.ownership import is_marked
    from ..sampling.jobs import sample_job

    path = samples_file(out, ckpt, sampler, n=n, seed=seed, ema=ema, guidance=guidance)
    parts = path.with_name(path.name + ".parts")
    if path.is_file() and is_marked(path) and not parts.exists():
        return {"path": path, "drawn": 0, "reused": n}
    classes = "all" if ckpt.config.classes else None
    _, done = sample_job(path, ckpt, sampler, seeds=range(seed, seed + n), class_spec=classes, guidance=guidance,
                         ema=ema, precision=precision, batch_size=batch_size, device=device, progress=progress)
    return {"path": path, "drawn": n - done, "reused": done}


def bpd_splits(ckpt, data: Optional[str], *, n: int, seed: int, ema: bool, batch_size: int, device=None,
               cache_dir=None, progress: bool = True) -> Dict[str, Dict[str, Any]]:
    """bits/dim of ``n`` images of each split: a CIFAR-10 source's train and test splits (Table 1's two columns),
    else the one source given (or the run's)."""
    from ..data.sources import find_source
    from .reports import bpd_report, real_images

    from ..run.directory import IMPORTED_DATA

    src = data or ckpt.config.train.data
    splits = {"data": src}
    if data is None and src != IMPORTED_DATA:
        source = find_source(src)
        if source.kind == "cifar10" and source.split == "train":
            splits = {"train": src, "test": f"{source.path}:test"}
    out = {}
    for split, spec in splits.items():
        real = real_images(spec, ckpt.config, cache_dir, progress=progress)
        if len(real) < 2:
            raise DDPMError(f"bits/dim needs at least 2 images of {spec}")
        out[split] = bpd_report(ckpt, real, n=n, seed=seed, ema=ema, batch_size=batch_size, device=device,
                                progress=progress)
    return out
