"""Measuring a trained run: the bits/dim bound over real images, and Fréchet distances of its samples.

``bpd_report`` and ``fd_report`` compute, write their report files into a folder (CSV, JSON, plots, all
atomically) and return the numbers; printing them is the CLI's business.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from .atomic import atomic_write_text
from .data import ImageData, load_data, to_float
from .errors import DDPMError
from .metrics import extract_features, frechet_distance, gaussian_stats, reference_stats
from .run import IMPORTED_DATA
from .sampling import sample_checkpoint
from .viz import plot_bpd_terms, plot_fd_steps

__all__ = ["evaluate_bpd", "bpd_report", "bpd_line", "fd_report", "fd_table", "real_images", "read_samples", "labels_like", "class_match"]


def real_images(src: str, cfg, cache_dir=None) -> ImageData:
    """The real images to measure a run of config ``cfg`` against: source ``src`` at the run's channels and size."""
    if src == IMPORTED_DATA:
        raise DDPMError("this run was imported and has no data of its own: pass --data SRC (e.g. a CIFAR-10 archive, "
                        "or its test split: cifar-10-python.tar.gz:test)")
    data = load_data(src, channels=cfg.model.in_channels, image_size=cfg.model.image_size, progress=True,
                     cache_dir=cache_dir, skip_bad=cfg.train.skip_bad_images)
    if len(data) == 0:
        raise DDPMError(f"data source {src!r} has no images")
    return data


def read_samples(path) -> Tuple[Tensor, Optional[Tensor]]:
    """uint8 [N, C, H, W] from an ``.npz`` whose ``arr_0`` is uint8 [N, H, W, C] with N >= 2 (ddpm sample's), and
    its ``arr_1`` (each image's requested class) when it has one."""
    p = Path(path)
    if not p.is_file():
        raise DDPMError(f"samples file {p} not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            arr = z["arr_0"]
            labels = z["arr_1"].astype(np.int64) if "arr_1" in z.files else None
    except (ValueError, KeyError, OSError) as e:
        raise DDPMError(f"{p} is not an .npz with arr_0 uint8 [N, H, W, C]: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) < 2:
        raise DDPMError(f"{p}: arr_0 must be uint8 [N, H, W, C] with N >= 2, got {arr.dtype} {arr.shape}")
    if labels is not None and labels.shape != (len(arr),):
        raise DDPMError(f"{p}: arr_1 must hold one class per image, got shape {labels.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), None if labels is None else torch.from_numpy(labels)


# ----------------------------------------------------------------------------- bits/dim
class _CountCalls:
    """Wraps a model so that each call advances a progress bar by one."""

    def __init__(self, model, bar):
        self.model, self.bar = model, bar

    def __call__(self, *args):
        out = self.model(*args)
        self.bar.update(1)
        return out


def evaluate_bpd(diffusion, model: nn.Module, images: Tensor, *, labels: Optional[Tensor] = None,
                 batch_size: int = 100, seed: int = 0, device=None, progress: bool = True) -> Dict[str, np.ndarray]:
    """Eq. 5's bound for each of uint8 ``images`` [N, C, H, W], batched: total [N], prior [N], terms [N, T];
    ``labels`` (int64 [N]) are given to a class-conditional model.

    ``terms[:, 0]`` is the decoder's -log p(x_0|x_1), ``terms[:, t]`` the KL at step t+1 (0-based t);
    everything in bits/dim. Costs T model calls per batch; one progress bar over all of them.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    out: Dict[str, List[Tensor]] = {"total": [], "prior": [], "terms": []}
    n_batches = -(-len(images) // batch_size)
    with tqdm(total=n_batches * diffusion.T, desc=f"bits/dim of {len(images)} images", unit="step",
              dynamic_ncols=True, disable=not progress) as bar:
        counting = _CountCalls(model, bar)
        for i in range(0, len(images), batch_size):
            x0 = to_float(images[i:i + batch_size].to(device))
            y = None if labels is None else labels[i:i + batch_size].to(device)
            res = diffusion.bits_per_dim(counting, x0, y=y, generator=g, return_terms=True)
            for k in out:
                out[k].append(res[k].cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def _csv_cell(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def _std_error(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def bpd_report(ckpt, data: ImageData, out: Path, *, n: int = 100, seed: int = 0, ema: bool = True,
               batch_size: int = 100, device=None, title: str = "") -> Dict[str, Any]:
    """bits/dim of ``n`` images of ``data`` drawn with ``seed`` (a class-conditional run is given their true
    labels); writes ``bpd_terms.csv`` (every term with its standard error), ``bpd.json`` (the summary, returned)
    and ``bpd_terms.png`` into ``out``."""
    n = min(n, len(data))
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    labels = _true_labels(ckpt, data)
    res = evaluate_bpd(ckpt.diffusion, ckpt.ema_model if ema else ckpt.model, data.images[pick],
                       labels=None if labels is None else labels[pick], batch_size=min(batch_size, n), seed=seed,
                       device=device)
    total, prior, terms = res["total"], res["prior"], res["terms"]
    T = terms.shape[1]
    lines = ["term,t,bits_per_dim,std_error", f"prior,{T},{prior.mean():.8g},{_std_error(prior):.4g}"]
    lines += [f"kl,{t + 1},{terms[:, t].mean():.8g},{_std_error(terms[:, t]):.4g}" for t in range(T - 1, 0, -1)]
    lines += [f"decoder,1,{terms[:, 0].mean():.8g},{_std_error(terms[:, 0]):.4g}",
              f"total,,{total.mean():.8g},{_std_error(total):.4g}"]
    atomic_write_text(out / "bpd_terms.csv", "\n".join(lines) + "\n")
    summary = {"step": ckpt.step, "data": data.name, "n": n, "ema": ema, "conditional": labels is not None,
               "bits_per_dim": float(total.mean()),
               "std_error": _std_error(total), "prior": float(prior.mean()), "decoder": float(terms[:, 0].mean()),
               "kl_terms": float(terms[:, 1:].sum(1).mean())}
    atomic_write_text(out / "bpd.json", json.dumps(summary, indent=2) + "\n")
    plot_bpd_terms(terms.mean(0), out / "bpd_terms.png", prior=float(prior.mean()),
                   title=f"{title} (step {ckpt.step}): {total.mean():.3f} bits/dim on {n} images of {data.name}")
    return summary


def _true_labels(ckpt, data: ImageData) -> Optional[Tensor]:
    """The labels of ``data`` for a class-conditional run (checked against the run's classes), else None."""
    if not ckpt.config.classes:
        return None
    if tuple(data.require_labels()) != tuple(ckpt.config.classes):
        raise DDPMError(f"the run's classes ({', '.join(ckpt.config.classes)}) are not the data's "
                        f"({', '.join(data.classes)})")
    return data.labels


def labels_like(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """``n`` labels drawn like the data's: a random subset of ``labels`` (with replacement where n exceeds them)."""
    g = torch.Generator().manual_seed(seed)
    if n <= len(labels):
        return labels[torch.randperm(len(labels), generator=g)[:n]]
    return labels[torch.randint(0, len(labels), (n,), generator=g)]


def class_match(classifier: nn.Module, images: Tensor, labels: Tensor, confidence: float = 0.9,
                device=None) -> Dict[str, float]:
    """How many of ``images`` a classifier labels as their requested class: the share (``class_match``) and the
    share labelled so with probability >= ``confidence`` (``confident_match``)."""
    with torch.no_grad():
        probs = torch.cat([classifier(to_float(images[i:i + 500].to(device))).softmax(1).cpu()
                           for i in range(0, len(images), 500)])
    p, pred = probs.max(1)
    hit = pred == labels.cpu()
    return {"class_match": hit.float().mean().item(), "confident_match": (hit & (p >= confidence)).float().mean().item()}


# ----------------------------------------------------------------------------- Fréchet distance
def fd_report(ckpt, data: ImageData, out: Path, features, *, n: int = 1000, sampler: str = "ancestral",
              steps: Sequence[Optional[int]] = (None,), samples: Optional[Tensor] = None,
              sample_labels: Optional[Tensor] = None, title: str = "", **sampling) -> List[Dict[str, Any]]:
    """Fréchet distance of ``features`` ((name, network)) between samples and the real images of ``data``: one
    row per entry of ``steps`` (``n`` samples each drawn with ``sampler``; ``sampling`` keywords go to
    ``sampling.sample_checkpoint``), or one row for given ``samples``. Writes ``fd.csv`` (and, for several rows,
    ``fd_vs_steps.png``) into ``out``; the real images' statistics are cached there. Returns the rows (with the
    features' dimension ``dims``: FD@n is strongly biased while n is small against it).

    A class-conditional run samples labels drawn like the data's (with ``guidance`` from ``sampling``); where the
    features come with a classifier (``digits``), each row also holds the share of samples it labels as their
    requested class (``class_match``, ``confident_match``); given ``samples`` are judged so with ``sample_labels``."""
    feat_name, net = features
    device = sampling.get("device")
    mu_r, sig_r = reference_stats(net, feat_name, data.images, data.name, cache_dir=out, key=data.key, device=device,
                                  progress=True)
    true = _true_labels(ckpt, data)
    labels = sample_labels if samples is not None else None if true is None else labels_like(true, n, sampling.get("seed", 0))
    sets = [("file", 0, samples, float("nan"))] if samples is not None else []
    for k in ([] if samples is not None else steps):
        t0 = time.perf_counter()
        images = sample_checkpoint(ckpt, n, sampler=sampler, steps=k, labels=labels, **sampling)
        sets.append((sampler, k or ckpt.diffusion.T, images, time.perf_counter() - t0))
    rows = []
    for name, k, images, seconds in sets:
        mu, sig = gaussian_stats(extract_features(net, images, device=device, progress=True,
                                                  desc=f"{feat_name} features of samples"))
        rows.append({"dims": len(mu), "sampler": name, "steps": k, "n": len(images), "seconds": seconds,
                     "eta": (sampling.get("eta") or 0.0) if name == "ddim" else None,
                     "guidance": sampling.get("guidance", 0.0) if labels is not None else None,
                     "seconds_per_image": seconds / len(images), "fd": frechet_distance(mu, sig, mu_r, sig_r),
                     "features": feat_name,
                     **(class_match(net, images, labels, device=device) if labels is not None and feat_name == "digits"
                        else {})})
    columns = ["sampler", "steps", "eta", "guidance", "n", "seconds", "seconds_per_image", "fd", "features",
               "class_match", "confident_match"]
    lines = [",".join(columns)] + [",".join(_csv_cell(r.get(c)) for c in columns) for r in rows]
    atomic_write_text(out / "fd.csv", "\n".join(lines) + "\n")
    if len(rows) > 1:
        plot_fd_steps(rows, out / "fd_vs_steps.png",
                      title=f"{title} (step {ckpt.step}), FD@{rows[0]['n']}, {feat_name} features")
    return rows


def bpd_line(r: Dict[str, Any]) -> str:
    """The one-line summary of a ``bpd_report``."""
    return (f"bits/dim: {r['bits_per_dim']:.4f} +- {r['std_error']:.4f} (mean +- standard error over {r['n']} images "
            f"of {r['data']}; prior {r['prior']:.2g}, KL terms {r['kl_terms']:.4f}, decoder {r['decoder']:.4f})")


def fd_table(rows: List[Dict[str, Any]], real: ImageData) -> Tuple[List[str], str]:
    """The lines of an FD report (FD@n: it depends on n), and a note when n is small against the features'
    dimension (then FD is strongly biased upwards), else ""."""
    n, dims = rows[0]["n"], rows[0]["dims"]
    lines = [f"Fréchet distance of {rows[0]['features']} features to {len(real)} real images of {real.name}:",
             f"{'sampler':>10} {'steps':>6} {'n':>6} {'seconds':>9} {'s/image':>9} {'FD@' + str(n):>10}"]
    for r in rows:
        match = f"   {100 * r['class_match']:.1f}% of the samples are their class" if "class_match" in r else ""
        lines.append(f"{r['sampler']:>10} {r['steps']:>6} {r['n']:>6} {r['seconds']:>9.1f} "
                     f"{r['seconds_per_image']:>9.4f} {r['fd']:>10.3f}{match}")
    note = (f"note: FD from {n} samples of {dims}-d features is biased upwards (it falls as n grows); compare FDs "
            "only at equal n") if n < 10 * dims else ""
    return lines, note
