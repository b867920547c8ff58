"""What a training run reports while it trains: metrics.csv rows, the loss plot, TensorBoard events (``--log
tensorboard``) and the progress bar."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..errors import DDPMError
from ..run.metrics import MetricsLog, read_metrics
from ..viz import make_grid, plot_loss

__all__ = ["Reporter", "progress_bar", "tensorboard_writer", "check_log"]

_TB = {"val_loss": "held_out/loss", "fd": "eval/fd", "fd_seconds": "eval/seconds"}  # else train/<column>


def check_log(log: str) -> None:
    """Fail before training, not at its first row, when ``--log tensorboard`` cannot be served."""
    if log == "tensorboard":
        tensorboard_writer(None, 0)


def tensorboard_writer(log_dir, step: int):
    """A TensorBoard SummaryWriter in ``log_dir`` for a run at ``step``, which has TensorBoard drop the events of
    later steps written before (a resumed run logs them again); DDPMError saying how to install TensorBoard when
    it is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise DDPMError("--log tensorboard needs the tensorboard package: pip install 'ddpm-tool[tensorboard]' (or "
                        "pip install tensorboard)") from None
    return None if log_dir is None else SummaryWriter(str(log_dir), purge_step=step + 1 if step else None)


class Reporter:
    """metrics.csv rows (loss, lr, grad norm, images/s, the loss in each quarter of t, the held-out loss), the loss
    plot and, with ``log="tensorboard"``, the same as TensorBoard scalars plus every sample grid as an image, for a
    fitting Trainer (rank 0)."""

    def __init__(self, trainer, run_dir: Path):
        self.trainer, self.run_dir = trainer, run_dir
        self.metrics = MetricsLog(run_dir / "metrics.csv", trainer.step)
        self.start = self.last_t = self.last_plot = time.monotonic()
        self.last_step = trainer.step
        self.tb = tensorboard_writer(run_dir / "tensorboard", trainer.step) if trainer.config.log == "tensorboard" \
            else None

    def row(self, lr: float, val_loss: float = float("nan"), extra: Optional[Dict[str, float]] = None
            ) -> Dict[str, float]:
        """The row of this step (``extra``: e.g. the evaluation's fd), written to metrics.csv and TensorBoard."""
        tr, now = self.trainer, time.monotonic()
        acc = plain_log(tr.log_acc)
        n, q = acc["n"], acc["quarters"]
        row = {"step": tr.step, "loss": acc["loss"] / n if n else float("nan"), "lr": lr,
               "grad_norm": acc["grad_norm"] / n if n else float("nan"),
               "img_per_s": (tr.step - self.last_step) * tr.config.batch_size / max(now - self.last_t, 1e-9),
               "elapsed_s": now - self.start, "skipped": tr.skipped, "val_loss": val_loss,
               **{f"loss_q{i}": q[i] / q[4 + i] if q[4 + i] else float("nan") for i in range(4)}, **(extra or {})}
        self.metrics.append(row)
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("step", "elapsed_s") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(_TB.get(k, f"train/{k}"), v, tr.step)
        self.last_t, self.last_step = now, tr.step
        if now - self.last_plot > 30:  # drawing costs ~0.2 s: not every row
            self.plot()
        return row

    def grid(self, images: torch.Tensor) -> None:
        """A sample grid (uint8 [N, C, H, W]) as a TensorBoard image of this step."""
        if self.tb is not None:
            self.tb.add_image("samples", make_grid(images), self.trainer.step, dataformats="HWC")

    def plot(self) -> None:
        plot_loss(read_metrics(self.metrics.path), self.run_dir / "loss.png")
        self.last_plot = time.monotonic()

    def close(self) -> None:
        self.plot()
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def progress_bar(enabled: bool, **kw):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="training", unit="step", dynamic_ncols=True, **kw)


def plain_log(acc: Dict[str, Any]) -> Dict[str, Any]:
    """The accumulator in Python numbers (for a row, or a checkpoint's JSON)."""
    def num(v):
        return (v.tolist() if v.ndim else v.item()) if isinstance(v, torch.Tensor) else v

    return {k: num(v) for k, v in acc.items()}
