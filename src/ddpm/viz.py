"""Pictures: image grids and the loss curve. matplotlib is imported only inside the plotting functions."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image

__all__ = ["make_grid", "save_grid", "plot_loss"]

PathLike = Union[str, os.PathLike]


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [H', W', C] grid of ``nrow`` images per row (default: about square)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"make_grid expects uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    grid = np.full((pad + rows * (h + pad), pad + nrow * (w + pad), c), pad_value, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).cpu().numpy()
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: PathLike, nrow: Optional[int] = None, scale: int = 1) -> None:
    """Save uint8 [N, C, H, W] as one PNG grid, optionally enlarged ``scale`` times (nearest)."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


def plot_loss(metrics_csv: PathLike, out_png: PathLike) -> bool:
    """Draw the training loss (and learning rate) from metrics.csv. Returns False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps, loss, lr = [], [], []
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            steps.append(int(row["step"]))
            loss.append(float(row["loss"]))
            lr.append(float(row["lr"]))
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="#1f77b4", lw=1.2, label="loss (L_simple)")
    if len(loss) >= 10:  # a running mean makes the trend readable through the noise
        k = max(3, len(loss) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="#d62728", lw=2, label=f"running mean ({k} points)")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax2 = ax.twinx()
    ax2.plot(steps, lr, color="#7f7f7f", lw=1, ls="--", label="learning rate")
    ax2.set_ylabel("learning rate", color="#7f7f7f")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title("training loss")
    fig.tight_layout()
    tmp = Path(out_png).with_name(f".{Path(out_png).name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_png)
    return True

