"""Scores of progressive generation (Fig. 10 of Ho et al. 2020): a sampling job that kept x0_hat at chosen reverse
steps (``sampling.progressive``) is scored once per step, the same metrics as its samples, from the same chains."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..sampling.progressive import PREFIX
from ..viz import plot_progressive

__all__ = ["progressive_sets", "score_progressive", "progressive_lines", "write_progressive_report"]

SCALARS = ("fid", "fd", "is", "kid", "precision", "recall")  # the scores plotted (is and kid as their means)


def _scalar(v: Any) -> float:
    return float(v[0] if isinstance(v, (list, tuple)) else v)


def progressive_sets(path: Path) -> Dict[int, Tensor]:
    """The x0_hat sets of a progressive job's .npz: reverse step -> uint8 [N, C, H, W]."""
    with np.load(path, allow_pickle=False) as z:
        return {int(k[len(PREFIX):]): torch.from_numpy(z[k]).permute(0, 3, 1, 2).contiguous()
                for k in sorted(z.files) if k.startswith(PREFIX)}


def score_progressive(path: Path, score_one: Callable[[int, Tensor], Optional[Dict[str, Any]]]) -> List[Dict[str, Any]]:
    """One row per kept reverse step (ascending): ``reverse_step`` and the scalar scores ``score_one(step, images)``
    gives (fid, fd, is and kid as their means, precision, recall); under torchrun every process scores (they
    share the work) and rank 0, whose ``score_one`` returns the values, gets the rows ([] on the others)."""
    rows = []
    for k, images in progressive_sets(path).items():
        values = score_one(k, images)
        if values is not None:
            rows.append({"reverse_step": k, **{name: _scalar(v) for name, v in values.items() if name in SCALARS}})
    return rows


def progressive_lines(rows: List[Dict[str, Any]], final: Dict[str, Any], n: int) -> List[str]:
    """The printed table: a row per reverse step, then the samples themselves."""
    names = [m for m in rows[0] if m != "reverse_step"] if rows else []
    lines = [f"progressive generation: x0 predicted at each reverse step of the same {n:,} chains",
             f"{'reverse step':>12} " + " ".join(f"{m:>10}" for m in names)]
    lines += [f"{r['reverse_step']:>12} " + " ".join(f"{r[m]:>10.4g}" for m in names) for r in rows]
    scalar = {m: _scalar(v) for m, v in final.items() if m in names}
    lines.append(f"{'samples':>12} " + " ".join(f"{scalar[m]:>10.4g}" for m in names if m in scalar))
    return lines


def write_progressive_report(rows: List[Dict[str, Any]], out: Path, title: str = "") -> None:
    """``progressive.csv`` and ``progressive.png`` (each score against the reverse step: Fig. 10)."""
    from .reports import _write_reports

    names = list(rows[0])
    csv = "\n".join([",".join(names)] + [",".join(f"{r[m]:.8g}" for m in names) for r in rows]) + "\n"
    _write_reports(out, {"progressive.csv": csv, "progressive.json": json.dumps(rows, indent=1) + "\n",
                         "progressive.png": lambda p: plot_progressive(rows, p, title=title)})
