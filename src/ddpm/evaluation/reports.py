"""Measuring a trained run: the bits/dim bound over real images, and Fréchet distances of its samples.

``bpd_report`` and ``fd_report`` compute and return the numbers; ``write_bpd_report`` and ``write_fd_report`` then
write the report files into a folder (CSV, JSON, plots, atomically, listed as ddpm's), after the CLI has printed
the numbers, so a failed write never loses a result.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..atomic import atomic_write_text
from ..data.images import to_float
from ..data.sources import ImageData, load_data
from ..errors import DDPMError
from ..run.directory import IMPORTED_DATA
from ..runtime import exact_cuda_math, rank_world, resolve_precision
from ..sampling.generation import sample_checkpoint
from ..sampling.settings import SamplingSettings, weights
from ..viz import plot_bpd_terms, plot_fd_steps
from .features import feature_batch, reference_pass
from .metrics import frechet_distance
from .streaming import REF_N, feature_pass, reference_subset

__all__ = ["evaluate_bpd", "bpd_report", "write_bpd_report", "bpd_line", "fd_report", "write_fd_report", "fd_table",
           "check_report_folder", "REPORTS", "real_images", "held_out_images", "labels_like", "class_match",
           "write_metrics_report", "reference_moments", "fd_labels", "fd_of"]


def real_images(src: str, cfg, cache_dir=None, progress: bool = True, skip_bad: bool = False) -> ImageData:
    """The real images to measure a run of config ``cfg`` against: source ``src`` read as the run read its data (its
    channels, size and ``--resize``; its image and label columns when ``src`` is its own data), leaving out
    unreadable images if the run did or ``skip_bad``."""
    if src == IMPORTED_DATA:
        raise DDPMError("this run was imported and has no data of its own: pass --data SRC (e.g. a CIFAR-10 archive, "
                        "or its test split: cifar-10-python.tar.gz:test)")
    data = load_data(src, channels=cfg.model.in_channels, image_size=cfg.model.image_size, progress=progress,
                     cache_dir=cache_dir, skip_bad=cfg.train.skip_bad_images or skip_bad,
                     **cfg.train.data_options(src))
    if len(data) == 0:
        raise DDPMError(f"data source {src!r} has no images")
    return data


def held_out_images(data: ImageData, train) -> ImageData:
    """The images of ``data`` that a run of ``train`` (its TrainConfig) held out of training (``--val-fraction``)."""
    import dataclasses

    from ..data.batches import held_out_split

    if not train.val_fraction:
        raise DDPMError("--held-out: this run held no images out of training (--val-fraction 0); pass --data with "
                        "images it never saw")
    _, idx = held_out_split(len(data), train.val_fraction, train.seed)
    return dataclasses.replace(data, images=data.images[idx], labels=None if data.labels is None else data.labels[idx],
                               name=f"{data.name} (held out)", key=f"{data.key}:held-out-{train.seed}")


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
                 batch_size: int = 100, seed: int = 0, device=None, progress: bool = True,
                 rate_distortion: bool = False) -> Dict[str, np.ndarray]:
    """Eq. 5's bound for each of uint8 ``images`` [N, C, H, W], batched: total [N], prior [N], terms [N, T];
    ``labels`` (int64 [N]) are given to a class-conditional model.

    ``terms[:, 0]`` is the decoder's -log p(x_0|x_1), ``terms[:, t]`` the KL at step t+1 (0-based t);
    everything in bits/dim. Costs T model calls per batch; one progress bar over all of them. With
    ``rate_distortion`` also ``rate`` and ``rmse`` [N, T] (``GaussianDiffusion.rate_distortion``) of the same draws.
    """
    from tqdm.auto import tqdm

    device = torch.device(device or "cpu")
    model = model.to(device).eval()
    g = torch.Generator(device=device).manual_seed(seed)
    out: Dict[str, List[Tensor]] = {"total": [], "prior": [], "terms": [], **({"rate": [], "rmse": []}
                                                                              if rate_distortion else {})}
    n_batches = -(-len(images) // batch_size)
    what = "rate/distortion" if rate_distortion else "bits/dim"
    with exact_cuda_math(), tqdm(total=n_batches * diffusion.T, desc=f"{what} of {len(images)} images",
                                 unit="step", dynamic_ncols=True, disable=not progress) as bar:
        counting = _CountCalls(model, bar)
        for i in range(0, len(images), batch_size):
            x0 = to_float(images[i:i + batch_size].to(device))
            y = None if labels is None else labels[i:i + batch_size].to(device)
            res = diffusion.rate_distortion(counting, x0, y=y, generator=g) if rate_distortion else \
                diffusion.bits_per_dim(counting, x0, y=y, generator=g, return_terms=True)
            for k in out:
                out[k].append(res[k].cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def _csv_cell(v: Any) -> str:
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def _std_error(v: np.ndarray) -> float:
    return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


REPORTS = {"bpd": ("bpd_terms.csv", "bpd.json", "bpd_terms.png"), "fd": ("fd.csv", "fd_vs_steps.png"),
           "rd": ("rd.json", "rd.png"), "progressive": ("progressive.csv", "progressive.json", "progressive.png"),
           "metrics": ("metrics.json",)}


def check_report_folder(out: Path, metric: str, *, own: bool = False) -> None:
    """DDPMError unless ``metric``'s report files can be written into ``out`` (checked before any work): its parent
    is there and takes files, and every report file already in it was written there by ddpm (``own``: the folder
    is a run's own eval folder, all ddpm's)."""
    from ..run.directory import holds_run_config
    from ..run.ownership import foreign_entries
    from ..sampling.outputs import check_writable_folder

    if out.exists() and not out.is_dir():
        raise DDPMError(f"--out {out}: a file of that name is in the way of the report folder")
    if out.is_dir() and holds_run_config(out):
        raise DDPMError(f"--out {out} is a run directory, which eval does not write into; leave --out out (the "
                        f"reports go to {out / 'eval'}) or choose another folder")
    check_writable_folder(out if out.is_dir() else out.parent, out)
    if out.is_dir() and not own:
        theirs = sorted(set(foreign_entries(out)) & set(REPORTS[metric]))
        if theirs:
            raise DDPMError(f"--out {out}: {', '.join(theirs)} there were not written by ddpm; nothing was changed. "
                            "Choose another --out")


def _write_reports(out: Path, files: Dict[str, Any]) -> None:
    """Write report files (name -> text, or a function that writes the path) into ``out`` and list them as ddpm's."""
    from ..run.ownership import record_written

    out.mkdir(exist_ok=True)
    for name, what in files.items():
        atomic_write_text(out / name, what) if isinstance(what, str) else what(out / name)
    record_written(out, files)


def write_metrics_report(report: Dict[str, Any], out: Path) -> None:
    """``metrics.json``: the scores of ``ddpm eval --metrics fid,is,...`` with every setting that moves them, merged
    with the scores earlier evals gave these settings (``metrics-KEY.json`` keeps them per setting: samples,
    reference and feature network), so a fid-only eval after an is, kid and pr one loses nothing."""
    from ..run.ownership import is_marked, marked_json

    key = setting_key({k: report.get(k) for k in ("sampling", "ref", "features", "inception_sha256")})
    mine = out / f"metrics-{key}.json"
    if mine.exists() and not is_marked(mine):
        raise DDPMError(f"{mine} was not written by ddpm; nothing was changed. Choose another --out")
    earlier = json.loads(mine.read_text()) if mine.is_file() else {}
    merged = {**{k: v for k, v in earlier.items() if k != "written_by"}, **report}
    _write_reports(out, {"metrics.json": marked_json(merged), mine.name: marked_json(merged)})


def bpd_report(ckpt, data: ImageData, *, n: int = 100, seed: int = 0, ema: bool = True, batch_size: int = 100,
               device=None, progress: bool = True, rate_distortion: bool = False) -> Dict[str, Any]:
    """bits/dim of ``n`` images of ``data`` drawn with ``seed`` (a class-conditional run is given their true
    labels): the summary, with the per-image ``terms`` [n, T] and ``priors`` [n] arrays for ``write_bpd_report``;
    with ``rate_distortion`` also ``rates`` and ``rmses`` [n, T] of the same draws (``evaluation.rd``)."""
    n = min(n, len(data))
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    labels = _true_labels(ckpt.config.classes, data)
    res = evaluate_bpd(ckpt.diffusion, weights(ckpt, ema), data.images[pick],
                       labels=None if labels is None else labels[pick], batch_size=min(batch_size, n), seed=seed,
                       device=device, progress=progress, rate_distortion=rate_distortion)
    total, prior, terms = res["total"], res["prior"], res["terms"]
    extra = {"rates": res["rate"], "rmses": res["rmse"]} if rate_distortion else {}
    return {**extra, "step": ckpt.step, "data": data.name, "n": n, "ema": ema, "conditional": labels is not None,
            "bits_per_dim": float(total.mean()), "std_error": _std_error(total), "prior": float(prior.mean()),
            "decoder": float(terms[:, 0].mean()), "kl_terms": float(terms[:, 1:].sum(1).mean()),
            "terms": terms, "priors": prior, "totals": total}


def write_bpd_report(r: Dict[str, Any], out: Path, title: str = "") -> None:
    """``bpd_terms.csv`` (every term with its standard error), ``bpd.json`` (the summary) and ``bpd_terms.png``."""
    terms, prior, total = r["terms"], r["priors"], r["totals"]
    T = terms.shape[1]
    lines = ["term,t,bits_per_dim,std_error", f"prior,{T},{prior.mean():.8g},{_std_error(prior):.4g}"]
    lines += [f"kl,{t + 1},{terms[:, t].mean():.8g},{_std_error(terms[:, t]):.4g}" for t in range(T - 1, 0, -1)]
    lines += [f"decoder,1,{terms[:, 0].mean():.8g},{_std_error(terms[:, 0]):.4g}",
              f"total,,{total.mean():.8g},{_std_error(total):.4g}"]
    summary = {k: v for k, v in r.items() if k not in ("terms", "priors", "totals", "rates", "rmses")}
    plot = lambda p: plot_bpd_terms(terms.mean(0), p, prior=float(prior.mean()),  # noqa: E731
                                    title=f"{title} (step {r['step']}): {r['bits_per_dim']:.3f} bits/dim on {r['n']} "
                                          f"images of {r['data']}")
    _write_reports(out, {"bpd_terms.csv": "\n".join(lines) + "\n",
                         "bpd.json": json.dumps(summary, indent=2) + "\n", "bpd_terms.png": plot})


def _true_labels(classes, data: ImageData) -> Optional[Tensor]:
    """The labels of ``data`` for a class-conditional run of ``classes`` (checked against them), else None."""
    if not classes:
        return None
    if tuple(data.require_labels()) != tuple(classes):
        raise DDPMError(f"the run's classes ({', '.join(classes)}) are not the data's "
                        f"({', '.join(data.classes or ())})")
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
    return {"class_match": hit.float().mean().item(),
            "confident_match": (hit & (p >= confidence)).float().mean().item()}


# ----------------------------------------------------------------------------- Fréchet distance
def fd_report(ckpt, data: ImageData, features, settings: SamplingSettings, *,
              steps: Sequence[Optional[int]] = (None,), samples: Optional[Tensor] = None,
              sample_labels: Optional[Tensor] = None, cache_dir: Optional[Path] = None,
              ref_n: Optional[int] = REF_N) -> List[Dict[str, Any]]:
    """Fréchet distance of ``features`` ((name, network)) between samples and the real images of ``data``: one
    row per entry of ``steps`` (the images of ``settings``, its steps replaced by the entry's), or one row for
    given ``samples``; the real images' statistics are cached in
    ``cache_dir`` (listed there as ddpm's), of a seeded subset of ``ref_n`` where ``data`` holds more. Returns the
    rows (with the features' dimension ``dims``: FD@n is strongly biased while n is small against it) for
    ``fd_table`` and ``write_fd_report``.

    A class-conditional run samples labels drawn like the data's (with ``settings.guidance``); where the
    features come with a classifier (``digits``), each row also holds the share of samples it labels as their
    requested class (``class_match``, ``confident_match``) where the run's classes are the classifier's (the
    digits 0-9); given ``samples`` are judged so with ``sample_labels``. Features that do not vary (a degenerate
    network) are refused: their FD would be a meaningless 0."""
    feat_name, net = features
    device, progress, n = settings.device, settings.progress, settings.n or 1000
    ref_count, mu_r, sig_r = reference_moments(data, features, cache_dir=cache_dir, ref_n=ref_n, device=device,
                                         progress=progress)
    digits = feat_name == "digits" and tuple(ckpt.config.classes or ()) == tuple(str(d) for d in range(10))
    labels = sample_labels if samples is not None else fd_labels(ckpt.config.classes, data, n, settings.seed)
    sets = [("file", 0, samples, float("nan"))] if samples is not None else []
    for k in ([] if samples is not None else steps):
        t0 = time.perf_counter()
        these = settings.replace(steps=k, n=n)
        used = these.make_sampler(ckpt.diffusion)
        images = sample_checkpoint(ckpt, these, labels=labels, sampler=used)
        sets.append((settings.sampler, used.steps, images, time.perf_counter() - t0))
    rows = []
    for name, k, images, seconds in sets:
        fd = fd_of(images, features, mu_r, sig_r, device=device, progress=progress)
        rows.append({"dims": len(mu_r), "step": ckpt.step, "weights": settings.weights_name,
                     "precision": resolve_precision(settings.precision, settings.torch_device),
                     "spacing": settings.spacing or "uniform", "seed": settings.seed,
                     "data": data.name, "ref_n": ref_count, "sampler": name, "steps": k, "n": len(images),
                     "seconds": seconds,
                     "eta": (settings.eta or 0.0) if name == "ddim" else None,
                     "guidance": settings.guidance if labels is not None else None,
                     "seconds_per_image": seconds / len(images), "fd": fd,
                     "features": feat_name,
                     **(class_match(net, images, labels, device=device) if labels is not None and digits else {})})
    return rows


def reference_moments(data: ImageData, features, *, cache_dir: Optional[Path] = None, ref_n: Optional[int] = REF_N,
                      device=None, progress: bool = False) -> Tuple[int, np.ndarray, np.ndarray]:
    """The number of real images scored (a seeded subset of ``ref_n`` where ``data`` holds more) and the mean and
    covariance of their ``features``, cached in ``cache_dir`` (listed there as ddpm's). Under torchrun every process
    calls it (they share the work); rank 0 gets the moments."""
    from ..run.ownership import record_written

    feat_name, net = features
    before = set(Path(cache_dir).glob("ref_stats_*.npz")) if cache_dir is not None else set()
    ref = reference_pass(net, feat_name, data.images, data.name, indices=reference_subset(len(data), ref_n),
                         cache_dir=cache_dir, key=data.key, device=device, progress=progress)
    if rank_world()[0] != 0:
        return ref.n, np.zeros(0), np.zeros((0, 0))
    mu_r, sig_r = ref.moments()
    if cache_dir is not None and set(Path(cache_dir).glob("ref_stats_*.npz")) - before:
        record_written(cache_dir, [p.name for p in set(Path(cache_dir).glob("ref_stats_*.npz")) - before])
    _check_varies(sig_r, f"{feat_name} features of the real images")
    return ref.n, mu_r, sig_r


def fd_labels(classes, data: ImageData, n: int, seed: int) -> Optional[Tensor]:
    """The classes a class-conditional run's FD samples ask for: ``n`` drawn like the data's labels (seeded), so that
    the samples' class mix is the reference's; None for an unconditional run."""
    true = _true_labels(classes, data)
    return None if true is None else labels_like(true, n, seed)


def fd_of(images: Tensor, features, mu_r: np.ndarray, sig_r: np.ndarray, *, device=None,
          progress: bool = False) -> float:
    """The Fréchet distance of uint8 ``images``' features to the moments (mu_r, sig_r), in this process alone."""
    feat_name, net = features
    mine = feature_pass(net, images, device=device, progress=progress, batch_size=feature_batch(device),
                        desc=f"{feat_name} features of samples", share=False)
    mu, sig = mine.moments()
    _check_varies(sig, f"{feat_name} features of the samples")
    return frechet_distance(mu, sig, mu_r, sig_r)


def _check_varies(sigma: np.ndarray, what: str) -> None:
    if not np.trace(np.atleast_2d(sigma)) > 0:
        raise DDPMError(f"the {what} do not vary (zero covariance): the feature network is degenerate, and its FD "
                        "would mean nothing")


FD_COLUMNS = ["sampler", "steps", "eta", "guidance", "n", "seconds", "seconds_per_image", "fd", "features",
              "class_match", "confident_match", "step", "weights", "precision", "spacing", "seed", "data", "ref_n"]
FD_MEASURED = ("seconds", "seconds_per_image", "fd", "class_match", "confident_match")
_FD_ROW = ("sampler", "steps", "eta")  # what tells the rows of one setting apart


def write_fd_report(rows: List[Dict[str, Any]], out: Path, title: str = "", step: int = 0) -> None:
    """``fd.csv`` (this run's rows, a row per sampler setting) and, for several rows, ``fd_vs_steps.png`` (an
    earlier one of ddpm's goes with a one-row report); and ``fd-KEY.csv``, the rows of every run with this run's
    other settings (checkpoint, weights, precision, spacing, seed, n, guidance, features, data), merged: a later
    run replaces the rows of its samplers and steps and keeps the others."""
    from ..run.ownership import is_marked

    files: Dict[str, Any] = {"fd.csv": _fd_csv(rows)}
    if len(rows) > 1:
        files["fd_vs_steps.png"] = lambda p: plot_fd_steps(
            rows, p, title=f"{title} (step {step}), FD@{rows[0]['n']}, {rows[0]['features']} features")
    elif (out / "fd_vs_steps.png").is_file() and is_marked(out / "fd_vs_steps.png"):  # an earlier run's plot
        (out / "fd_vs_steps.png").unlink()
    key = setting_key({c: rows[0].get(c) for c in FD_COLUMNS if c not in FD_MEASURED and c not in _FD_ROW})
    merged = {tuple(str(r.get(c)) for c in _FD_ROW): r for r in _read_fd_csv(out / f"fd-{key}.csv") + rows}
    files[f"fd-{key}.csv"] = _fd_csv(list(merged.values()))
    _write_reports(out, files)


def setting_key(settings: Dict[str, Any]) -> str:
    """12 hex digits naming a setting (a report per setting: ``metrics-KEY.json``, ``fd-KEY.csv``)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _fd_csv(rows: List[Dict[str, Any]]) -> str:
    return "\n".join([",".join(FD_COLUMNS)] + [",".join(_csv_cell(r.get(c)) for c in FD_COLUMNS) for r in rows]) + "\n"


def _read_fd_csv(path: Path) -> List[Dict[str, Any]]:
    """The rows of an earlier ``fd-KEY.csv`` of ddpm's (as strings), [] if none."""
    import csv

    from ..run.ownership import foreign_entries, written_files

    if not path.is_file() or path.name not in written_files(path.parent) or path.name in foreign_entries(path.parent):
        return []
    with open(path, newline="") as f:
        return [{k: (v if v != "" else None) for k, v in r.items()} for r in csv.DictReader(f)]


def bpd_line(r: Dict[str, Any]) -> str:
    """The one-line summary of a ``bpd_report``."""
    return (f"bits/dim: {r['bits_per_dim']:.4f} +- {r['std_error']:.4f} (mean +- standard error over {r['n']} images "
            f"of {r['data']}; prior {r['prior']:.2g}, KL terms {r['kl_terms']:.4f}, decoder {r['decoder']:.4f})")


def fd_table(rows: List[Dict[str, Any]], real: ImageData) -> Tuple[List[str], str]:
    """The lines of an FD report (FD@n: it depends on n), and a note when n is small against the features'
    dimension (then FD is strongly biased upwards), else ""."""
    n, dims = rows[0]["n"], rows[0]["dims"]
    used = rows[0].get("ref_n") or len(real)
    lines = [f"Fréchet distance of {rows[0]['features']} features to {used:,} real images of {real.name}"
             + (f" (a seeded subset of its {len(real):,}; --ref-n)" if used < len(real) else "") + ":",
             f"{'sampler':>10} {'steps':>6} {'n':>6} {'seconds':>9} {'s/image':>9} {'FD@' + str(n):>10}"]
    for r in rows:
        match = f"   {100 * r['class_match']:.1f}% of the samples are their class" if "class_match" in r else ""
        lines.append(f"{r['sampler']:>10} {r['steps']:>6} {r['n']:>6} {r['seconds']:>9.1f} "
                     f"{r['seconds_per_image']:>9.4f} {r['fd']:>10.3f}{match}")
    note = (f"note: FD from {n} samples of {dims}-d features is biased upwards (it falls as n grows); compare FDs "
            "only at equal n") if n < 10 * dims else ""
    return lines, note
