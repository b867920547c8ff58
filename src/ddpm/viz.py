"""Pictures: image grids, the forward and reverse processes as strips and GIFs, and plots.

Strips and GIFs need only Pillow. The plots (loss, schedule, bits/dim terms, FD against steps) use
matplotlib, imported only inside the plotting functions (the ``plot`` extra).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path
from .data.images import to_uint8
from .errors import DDPMError
from .run.ownership import MARK, png_info

__all__ = ["make_grid", "save_grid", "save_picture", "plot_loss", "labelled_grid", "noise_strip", "Trajectory",
           "interpolation_strip", "plot_schedule",
           "plot_bpd_terms", "plot_fd_steps", "NOISE_STEPS"]

NOISE_STEPS = (0, 50, 100, 200, 400, 600, 800, 999)

PathLike = Union[str, os.PathLike]


def make_grid(images: torch.Tensor, nrow: Optional[int] = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 [N, C, H, W] -> uint8 [H', W', C] grid of ``nrow`` images per row (default: about square)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"make_grid expects uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    images = images[:, :shown_channels(images.shape[1])]
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


def shown_channels(c: int) -> int:
    """How many of ``c`` channels a picture shows: 1 (gray) or 3 (RGB) as they are, the first of 2 and the first 3 of
    more (an alpha channel, or bands beyond the third, are not drawn)."""
    return c if c in (1, 3) else 1 if c == 2 else 3


def save_grid(images: torch.Tensor, path: PathLike, nrow: Optional[int] = None, scale: int = 1) -> None:
    """Save uint8 [N, C, H, W] as one PNG grid, optionally enlarged ``scale`` times (nearest)."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    save_picture(img, path)


def save_picture(img: Image.Image, path: PathLike) -> None:
    """Save a PIL image (format by the name) aside and rename it into place."""
    suffix = Path(path).suffix.lower()
    mark = {".png": {"pnginfo": png_info()}, ".gif": {"comment": MARK.encode()}}.get(suffix, {})
    with atomic_path(path) as tmp:
        img.save(tmp, **mark)


def _pyplot(required: bool = True):
    """matplotlib's pyplot on the Agg backend; None (or, when ``required``, DDPMError) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        if not required:
            return None
        raise DDPMError("this plot needs matplotlib: pip install 'ddpm-tool[plot]'") from None
    return plt


def _save_fig(fig, out_png: PathLike) -> None:
    """Save a figure aside and rename it into place, so a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, metadata={"Software": MARK})
    plt.close(fig)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def labelled_grid(rows: Sequence[Sequence[np.ndarray]], col_labels: Sequence[str] = (),
                  row_labels: Sequence[str] = (), scale: int = 1, pad: int = 4) -> Image.Image:
    """Panels (uint8 [H, W, C] arrays, all one size) in rows, with a label under each column and
    left of each row; white background, enlarged ``scale`` times (nearest) so small images stay crisp."""
    h, w, c = rows[0][0].shape
    H, W = h * scale, w * scale
    font = _font(max(11, min(16, W // 5)))
    left = (max((font.getbbox(r)[2] for r in row_labels), default=0) + 2 * pad) if row_labels else 0
    below = (font.getbbox("Ag")[3] + 2 * pad) if col_labels else 0
    ncol = max(len(r) for r in rows)
    img = Image.new("RGB", (left + pad + ncol * (W + pad), pad + len(rows) * (H + pad) + below), "white")
    draw = ImageDraw.Draw(img)
    for i, row in enumerate(rows):
        y = pad + i * (H + pad)
        if i < len(row_labels):
            tw = font.getbbox(row_labels[i])[2]
            draw.text((left - pad - tw, y + H // 2), row_labels[i], fill="black", font=font, anchor="lm")
        for j, panel in enumerate(row):
            panel = panel[..., :shown_channels(panel.shape[2])]
            p = Image.fromarray(panel[..., 0] if panel.shape[2] == 1 else panel).convert("RGB")
            img.paste(p.resize((W, H), Image.Resampling.NEAREST), (left + pad + j * (W + pad), y))
    for j, lab in enumerate(col_labels):
        x = left + pad + j * (W + pad) + W // 2
        draw.text((x, pad + len(rows) * (H + pad) + pad), lab, fill="black", font=font, anchor="mt")
    return img


def _hwc(x: torch.Tensor) -> np.ndarray:
    """One image in [-1, 1], [C, H, W] -> uint8 [H, W, C]."""
    return to_uint8(x.detach().float().cpu()).permute(1, 2, 0).numpy()


def _scale_for(size: int) -> int:
    return max(1, 96 // size)


def noise_strip(diffusion, x0: torch.Tensor, steps: Sequence[int] = NOISE_STEPS, *, seed: int = 0) -> Image.Image:
    """The forward process as one labelled strip: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at ``steps``.

    ``x0``: one image in [-1, 1], [C, H, W]. Steps count as in the paper: t = 0 is x_0 itself, t = T the
    last, x_T; the same eps is used for every t, so the strip shows one image drowning in one noise.
    """
    T = diffusion.T
    bad = [t for t in steps if not 0 <= t <= T]
    if bad:
        raise ValueError(f"noise steps must lie in [0, {T}] (0 is x_0, {T} is x_T), got {bad}")
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(x0.shape, generator=g)
    abar = diffusion.schedule.alphas_cumprod
    panels, labels = [], []
    for t in steps:
        if t == 0:
            xt, a = x0, 1.0
        else:
            a = float(abar[t - 1])
            xt = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
        panels.append(_hwc(xt.clamp(-1, 1)))
        labels.append(f"t={t}" if t else "x_0")
    return labelled_grid([panels], labels, scale=_scale_for(x0.shape[-1]))


class Trajectory:
    """The reverse process, for pictures: a sampler ``callback`` that keeps x_{t-1} (the state after the
    step at t) and the predicted x_0 at a few steps, for a strip and a GIF.

    ``indices``: the sampler's 0-based step indices (``sampler.indices``); the step at index i is the
    paper's step t = i + 1. Kept: the taken steps nearest to each of ``keep`` (paper numbering; default
    T, 0.8 T, ..., 0.05 T and 1) and
    ``frames`` steps spread evenly over the chain for the GIF. Only those, and only the first
    ``samples`` images of the batch, are held in memory.
    """

    def __init__(self, indices: Sequence[int], keep: Optional[Sequence[int]] = None, frames: int = 0,
                 samples: int = 4):
        self.samples = samples
        steps = [i + 1 for i in indices]
        T = steps[-1]
        if keep is None:  # t = T, 0.8 T, ..., 0.05 T and 1
            keep = [max(1, round(f * T)) for f in (1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.0)]

        def nearest(w):
            return min(steps, key=lambda s: abs(s - w))

        self.strip_steps = sorted({nearest(min(max(int(k), 1), T)) for k in keep}, reverse=True)
        spread: Any = np.linspace(steps[-1], steps[0], frames).round().astype(int) if frames else []
        self.gif_steps = sorted({nearest(int(w)) for w in spread}, reverse=True)
        self._wanted = set(self.strip_steps) | set(self.gif_steps)
        self.kept: Dict[int, tuple] = {}

    def __call__(self, t: int, x: torch.Tensor, pred_x0: torch.Tensor) -> None:
        if t + 1 in self._wanted:
            k = self.samples
            self.kept[t + 1] = (x[:k].detach().float().cpu().clone(), pred_x0[:k].detach().float().cpu().clone())

    def _rows(self, step: int):
        x, px0 = self.kept[step]
        return [_hwc(im.clamp(-1, 1)) for im in x], [_hwc(im) for im in px0]

    def strip(self) -> Image.Image:
        """One row pair per sample (x_{t-1} after the step, then the predicted x_0); one column per kept t."""
        cols = [self._rows(s) for s in self.strip_steps]
        n = len(cols[0][0])
        rows, labels = [], []
        for b in range(n):
            rows += [[c[0][b] for c in cols], [c[1][b] for c in cols]]
            labels += ["x_{t-1}", "pred x_0"]
        size = self.kept[self.strip_steps[0]][0].shape[-1]
        return labelled_grid(rows, [f"t={s}" for s in self.strip_steps], labels, scale=_scale_for(size))

    def save_strip(self, path: PathLike) -> None:
        save_picture(self.strip(), path)

    def save_gif(self, path: PathLike, ms: int = 80) -> None:
        """Each frame: the samples' x_{t-1} over their predicted x_0 at one t; the last frame is held."""
        if not self.gif_steps:
            raise ValueError("Trajectory was made with frames=0; nothing to animate")
        size = self.kept[self.gif_steps[0]][0].shape[-1]
        images = []
        for s in self.gif_steps:
            xs, px0 = self._rows(s)
            images.append(labelled_grid([xs, px0], [f"t={s}"] + [""] * (len(xs) - 1), ["x_{t-1}", "pred x_0"],
                                        scale=_scale_for(size)))
        grey = self.kept[self.gif_steps[0]][0].shape[1] == 1
        images = [im.convert("L") if grey else im.quantize(256) for im in images]  # GIF frames are palette images
        durations = [ms] * (len(images) - 1) + [1500]
        with atomic_path(path) as tmp:
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=durations, loop=0,
                           comment=MARK.encode())


def interpolation_strip(xa: torch.Tensor, mixed: torch.Tensor, xb: torch.Tensor) -> Image.Image:
    """A, the decoded mixtures (uint8 [L, C, H, W], lambda = 0 .. 1) and B (each [C, H, W] in [-1, 1]), labelled."""
    panels = [_hwc(xa), *(m.permute(1, 2, 0).numpy() for m in mixed), _hwc(xb)]
    n = len(mixed)
    labels = ["A"] + [f"{i / max(n - 1, 1):.2f}" for i in range(n)] + ["B"]
    return labelled_grid([panels], labels, scale=_scale_for(xa.shape[-1]))


def plot_schedule(schedules: Dict[str, Any], out_png: PathLike) -> None:
    """beta_t, abar_t and the signal-to-noise ratio abar/(1-abar) against t for each named NoiseSchedule."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=110)
    for name, s in schedules.items():
        t = np.arange(1, s.T + 1)
        abar = s.alphas_cumprod.numpy()
        axes[0].plot(t, s.betas.numpy(), label=name, lw=1.6)
        axes[1].plot(t, abar, label=name, lw=1.6)
        axes[2].plot(t, abar / (1 - abar), label=name, lw=1.6)
    for ax, title in zip(axes, ["beta_t (noise added at step t)", "alpha-bar_t (signal left in x_t)",
                                "signal-to-noise ratio alpha-bar / (1 - alpha-bar)"]):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[2].set_yscale("log")
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_bpd_terms(terms: np.ndarray, out_png: PathLike, prior: float = 0.0, title: str = "") -> None:
    """Mean bits/dim of each term of Eq. 5 against t (terms[t-1] for t = 1..T; t = 1 is the decoder),
    and the rate: the bits/dim accumulated from t = T down to each t (with the prior)."""
    plt = _pyplot()
    T = len(terms)
    t = np.arange(1, T + 1)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    a1.plot(t[1:], terms[1:], lw=1.4, color="#1f77b4", label="KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))")
    a1.scatter([1], [terms[0]], color="#d62728", zorder=3, label=f"decoder -log p(x_0|x_1): {terms[0]:.3f}")
    a1.set_yscale("log")
    a1.set_xlabel("t")
    a1.set_ylabel("bits/dim")
    a1.set_title("each term of the bound", fontsize=10)
    a1.legend(fontsize=8)
    rate = prior + np.cumsum(terms[::-1])[::-1]
    a2.plot(t, rate, lw=1.6, color="#2ca02c")
    a2.set_xscale("log")
    a2.set_xlabel("t (the reverse process runs from right to left)")
    a2.set_ylabel("bits/dim")
    a2.set_title(f"bits/dim accumulated from t = T down to t (total {rate[0]:.3f})", fontsize=10)
    for ax in (a1, a2):
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_fd_steps(rows: Sequence[Dict[str, float]], out_png: PathLike, title: str = "") -> None:
    """Fréchet distance against network calls per image and against seconds per image, one line per sampler."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4), dpi=110)
    for name in dict.fromkeys(r["sampler"] for r in rows):
        rs = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["steps"])
        a1.plot([r["steps"] for r in rs], [r["fd"] for r in rs], "o-", label=name)
        a2.plot([r["seconds_per_image"] for r in rs], [r["fd"] for r in rs], "o-", label=name)
        for r in rs:
            a2.annotate(str(int(r["steps"])), (r["seconds_per_image"], r["fd"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    a1.set_xlabel("network calls per image")
    a2.set_xlabel("seconds per image")
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_yscale("log")  # FD spans orders of magnitude over a few steps
        ax.set_ylabel("Fréchet distance")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_fd_sigma(rows: Sequence[Dict[str, Any]], out_png: PathLike, title: str = "") -> None:
    """Fréchet distance against the relative EMA length sigma_rel (``ddpm ema --sweep``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    rs = sorted(rows, key=lambda r: r["sigma_rel"])
    ax.plot([r["sigma_rel"] for r in rs], [r["fd"] for r in rs], "o-")
    ax.set_xlabel("EMA length sigma_rel")
    ax.set_ylabel("Fréchet distance")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_rate_distortion(rate: np.ndarray, rmse: np.ndarray, out_png: PathLike, title: str = "",
                         paper: Optional[Dict[str, Sequence[float]]] = None) -> None:
    """Fig. 5 of the paper: rate (bits/dim) and distortion (RMSE, 0-255) against the reverse step 1..T, and
    distortion against rate; ``paper``: Table 4's points (reverse_steps, rate, rmse) drawn beside."""
    plt = _pyplot()
    k = np.arange(1, len(rate) + 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    for ax, (x, y, xl, yl) in zip(axes, [(k, rate, "reverse steps", "rate (bits/dim)"),
                                         (k, rmse, "reverse steps", "distortion (RMSE, 0-255)"),
                                         (rate, rmse, "rate (bits/dim)", "distortion (RMSE, 0-255)")]):
        ax.plot(x, y, lw=1.6, label="this run")
        ax.set(xlabel=xl, ylabel=yl)
        ax.grid(alpha=0.3)
    if paper is not None:
        p_k, p_rate, p_rmse = (np.asarray(paper[c]) for c in ("reverse_steps", "rate", "rmse"))
        for ax, x, y in zip(axes, (p_k, p_k, p_rate), (p_rate, p_rmse, p_rmse)):
            ax.plot(x, y, "o", ms=4, color="#d62728", label="the paper (CIFAR-10, Table 4)")
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_progressive(rows: Sequence[Dict[str, Any]], out_png: PathLike, title: str = "") -> None:
    """Fig. 10 of the paper: a score of x0_hat (FD, FID, IS, ...) against the reverse step it was predicted at."""
    plt = _pyplot()
    names = [m for m in rows[0] if m != "reverse_step"]
    fig, axes = plt.subplots(1, len(names), figsize=(max(8, 5 * len(names)), 4.5), dpi=110, squeeze=False)
    for ax, m in zip(axes[0], names):
        ax.plot([r["reverse_step"] for r in rows], [r[m] for r in rows], "o-")
        if m in ("fd", "fid", "kid") and min(r[m] for r in rows) > 0:
            ax.set_yscale("log")  # distances span orders of magnitude along the chain
        ax.set(xlabel="reverse steps", ylabel=m)
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title, fontsize=9, wrap=True)
    fig.tight_layout()
    _save_fig(fig, out_png)


def plot_loss(rows: Sequence[Dict[str, float]], out_png: PathLike) -> bool:
    """Draw the training loss (and learning rate) of metrics rows (``run.read_metrics``). Returns False, drawing
    nothing, without matplotlib or rows."""
    plt = _pyplot(required=False)
    rows = [r for r in rows if "loss" in r and "lr" in r]
    if plt is None or not rows:
        return False
    steps, loss, lr = [r["step"] for r in rows], [r["loss"] for r in rows], [r["lr"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(steps, loss, color="#1f77b4", lw=1.2, label="loss (L_simple)")
    held = [(r["step"], r["val_loss"]) for r in rows if math.isfinite(r.get("val_loss", float("nan")))]
    if held:
        ax.plot(*zip(*held), color="#2ca02c", lw=1.6, marker=".", label="held-out loss (fixed t, eps)")
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
    lines, lines2 = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    ax.set_title("training loss")
    fig.tight_layout()
    _save_fig(fig, out_png)
    return True
