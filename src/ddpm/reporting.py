"""What a training run reports while it trains: metrics.csv rows, the loss plot and the progress bar."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict

from .run import MetricsLog, read_metrics
from .viz import plot_loss

__all__ = ["Reporter", "progress_bar"]


class Reporter:
    """metrics.csv rows and the loss plot of a fitting Trainer (rank 0)."""

    def __init__(self, trainer, run_dir: Path):
        self.trainer, self.run_dir = trainer, run_dir
        self.metrics = MetricsLog(run_dir / "metrics.csv", trainer.step)
        self.start = self.last_t = self.last_plot = time.monotonic()
        self.last_step = trainer.step

    def row(self, lr: float) -> Dict[str, float]:
        tr, now = self.trainer, time.monotonic()
        acc, n = tr.log_acc, tr.log_acc["n"]
        row = {"step": tr.step, "loss": acc["loss"] / n if n else float("nan"), "lr": lr,
               "grad_norm": acc["grad_norm"] / n if n else float("nan"),
               "img_per_s": (tr.step - self.last_step) * tr.config.batch_size / max(now - self.last_t, 1e-9),
               "elapsed_s": now - self.start, "skipped": tr.skipped}
        self.metrics.append(row)
        self.last_t, self.last_step = now, tr.step
        if now - self.last_plot > 30:  # drawing costs ~0.2 s: not every row
            self.plot()
        return row

    def plot(self) -> None:
        plot_loss(read_metrics(self.metrics.path), self.run_dir / "loss.png")
        self.last_plot = time.monotonic()


def progress_bar(enabled: bool, **kw):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="training", unit="step", dynamic_ncols=True, **kw)
