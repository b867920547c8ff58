"""RUN/metrics.csv: one row of training statistics every --log-every steps (and at every evaluation)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from ..atomic import atomic_write_text, named

PathLike = Union[str, os.PathLike]

__all__ = ["MetricsLog", "read_metrics", "METRICS"]

METRICS = ("step", "loss", "lr", "grad_norm", "img_per_s", "elapsed_s", "skipped", "loss_q0", "loss_q1", "loss_q2",
           "loss_q3", "val_loss", "fd", "fd_seconds")


class MetricsLog:
    """RUN/metrics.csv, one row every --log-every steps. Opening it for a run resumed at ``step`` first drops
    the rows logged after that step (they belong to steps that will be trained again)."""

    def __init__(self, path: PathLike, step: int, columns: Sequence[str] = METRICS):
        self.path, self.columns = Path(path), tuple(columns)
        rows = [r for r in read_metrics(self.path) if r["step"] <= step] if self.path.exists() else []
        lines = [",".join(self.columns)] + [",".join(_cell(r.get(k, "")) for k in self.columns) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def append(self, row: Dict[str, Any]) -> None:
        try:
            with open(self.path, "a") as f:
                f.write(",".join(_cell(row.get(k, "")) for k in self.columns) + "\n")
        except OSError as e:
            raise named(e, self.path) from None


def _cell(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def read_metrics(path: PathLike) -> List[Dict[str, float]]:
    """The rows of a metrics.csv as dicts of floats (``step`` an int). A row with too few cells (a write cut
    short by a kill) is skipped; empty cells are left out of their row."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if None in r.values() or None in r:
                continue
            try:
                row = {k: float(v) for k, v in r.items() if v != ""}
                row["step"] = int(r["step"])
            except (TypeError, ValueError, KeyError):
                continue
            rows.append(row)
    return rows
