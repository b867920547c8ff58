"""The paper's protocol for a run (``ddpm eval --metrics fid,is,...``): draw the samples through the resumable,
torchrun-sharded sampling job (50,000 by default, the EMA weights, Algorithm 2 over all T steps), score them
against the run's data (the paper: the training set) or a given reference, and bits/dim on the train and the
test split side by side, as Table 1 shows them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..errors import DDPMError
from ..sampling.settings import SamplingSettings

__all__ = ["PAPER_N", "samples_file", "draw_samples", "bpd_splits", "balanced_n",
           "RunReport"]

PAPER_N = 50000  # the samples of the paper's (and every published) FID and IS


def balanced_n(n: int, classes: int, at_least: int = 1) -> int:
    """The number of samples nearest ``n`` that ``classes`` classes share equally (a class-conditional run draws
    every class in equal numbers), and no fewer than ``at_least``."""
    k = max(1, classes)
    balanced = max(k, round(n / k) * k)
    return balanced if balanced >= at_least else -(-at_least // k) * k


def samples_file(out: Path, settings: Dict[str, Any]) -> Path:
    """Where the samples of these settings (``SamplingSettings.key``) live in the report folder: a readable name
    with a hash of every setting, so that a run again with the same settings finds (or continues) them and any
    other setting draws its own."""
    import hashlib
    import json

    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    s = settings
    g = f"-guidance{s['guidance']:g}" if s["guidance"] else ""
    return out / (f"samples-step{s['step']}-{s['sampler']}{s['steps']}-{s['weights'].lower()}-seed{s['first_seed']}"
                  f"-n{s['n']}{g}-{key}.npz")


def draw_samples(out: Path, ckpt, settings: SamplingSettings, sampler=None,
                 progressive: Optional[List[int]] = None) -> Dict[str, Any]:
    """The samples of ``settings`` (its n and seeds; a class-conditional run draws every class in equal numbers)
    in ``out``: drawn by a sampling job (resumable, shared between torchrun's processes), or found there from an
    earlier run with exactly these settings (``SamplingSettings.key``). ``sampler`` replaces the one the settings
    make; ``progressive``: reverse steps whose x0_hat the file keeps too (``sampling.progressive``). Returns
    ``path``, ``drawn`` (this time), ``reused`` (from earlier runs) and ``settings`` (the key)."""
    from ..run.ownership import is_marked
    from ..runtime import rank0_flags
    from ..sampling.jobs import SampleJob, sample_job
    from ..sampling.progressive import progressive_key

    settings = settings.replace(classes="all" if ckpt.config.classes else None)
    sampler = sampler or settings.make_sampler(ckpt.diffusion)
    key, n = settings.key(ckpt, sampler), len(settings.seeds)
    if progressive:
        key["progressive"] = progressive_key(progressive)
    path = samples_file(out, key)
    found = path.is_file() and is_marked(path) and not SampleJob.parts_of(path).exists()
    if rank0_flags([found], settings.device or "cpu")[0]:  # rank 0's listing decides: a shared file system caches
        return {"path": path, "drawn": 0, "reused": n, "settings": key}
    _, done = sample_job(path, ckpt, settings, sampler=sampler, progressive=progressive)
    return {"path": path, "drawn": n - done, "reused": done, "settings": key}


def bpd_splits(ckpt, data: Optional[str], *, n: int, seed: int, ema: bool, batch_size: int, device=None,
               cache_dir=None, progress: bool = True, skip_bad: bool = False) -> Dict[str, Dict[str, Any]]:
    """bits/dim of ``n`` images of each split: a CIFAR-10 source's train and test splits (Table 1's two columns),
    else the one source given (or the run's)."""
    from ..data.sources import find_source
    from ..run.directory import IMPORTED_DATA
    from .reports import bpd_report, real_images

    src = data or ckpt.config.train.data
    splits = {"data": src}
    if data is None and src != IMPORTED_DATA:
        source = find_source(src)
        if source.kind == "cifar10" and source.split == "train":
            splits = {"train": src, "test": f"{source.path}:test"}
    out = {}
    for split, spec in splits.items():
        real = real_images(spec, ckpt.config, cache_dir, progress=progress, skip_bad=skip_bad)
        if len(real) < 2:
            raise DDPMError(f"bits/dim needs at least 2 images of {spec}")
        out[split] = bpd_report(ckpt, real, n=n, seed=seed, ema=ema, batch_size=batch_size, device=device,
                                progress=progress)
    return out


@dataclass
class RunReport:
    """What ``ddpm eval`` reports of a run's samples: the scores (``Scores.values``), bits/dim of the splits
    (``bpd_splits``) where asked for, and everything that decided them; ``to_json`` is metrics.json."""

    scores: Dict[str, Any]
    run: str
    step: int
    weights: str  # "EMA" or "raw"
    sampler: str
    steps: int
    guidance: float
    seed: int
    samples: str
    ref: str
    sampling: Dict[str, Any]  # SamplingSettings.key
    reused: int = 0  # samples drawn by an earlier run
    bpd: Optional[Dict[str, Dict[str, Any]]] = None

    def to_json(self) -> Dict[str, Any]:
        out = {**self.scores, "run": self.run, "step": self.step, "weights": self.weights, "sampler": self.sampler,
               "steps": self.steps, "guidance": self.guidance, "seed": self.seed, "samples": self.samples,
               "ref": self.ref, "sampling": self.sampling}
        if self.bpd is not None:
            out["bpd"] = {k: {f: r[f] for f in ("bits_per_dim", "std_error", "n", "data")} for k, r in self.bpd.items()}
        return out

    def heading(self) -> str:
        """What was scored: the run, its step and weights, the sampler and the samples' seeds."""
        n = self.scores["n"]
        earlier = f"; {self.reused:,} drawn by an earlier run" if self.reused else ""
        return (f"{self.run} at step {self.step}, {self.weights} weights, {self.sampler} sampler over {self.steps} "
                f"steps, {n:,} samples (seeds {self.seed}-{self.seed + n - 1}{earlier}):")

    def lines(self) -> Tuple[List[str], Optional[str]]:
        """The lines to print under the heading (one per metric, bits/dim) and a note for stderr, or None."""
        from .compare import metric_lines

        lines, note = metric_lines(self.scores, "the samples", self.ref)
        if self.bpd:
            first = next(iter(self.bpd.values()))
            lines.append("bits/dim " + ", ".join(f"{k} {r['bits_per_dim']:.4f} +- {r['std_error']:.4f}"
                                                 for k, r in self.bpd.items()) + f"  ({first['n']} images each)")
        return lines, note
