"""One image set scored against another, the way papers report it (``ddpm metrics``): FID, the Inception Score,
KID and precision/recall, with everything that moves the number in the result.

A set is an ``.npz`` of samples (``arr_0`` uint8 [N, H, W, C], as ``ddpm sample`` and guided-diffusion's
reference batches write), a folder of images or any data source of ``train`` (``mnist``, a CIFAR-10 archive or
folder, ``...:test``), or a statistics file (an ``.npz`` with ``mu`` and ``sigma``: pytorch-fid's and TTUR's
format, e.g. ``fid_stats_cifar10_train.npz``), which serves FID only. Every image goes through the same
features: the FID Inception (resized bilinearly to 299 x 299 from [-1, 1], as pytorch-fid does) or, for
1-channel images by default, the shipped digit classifier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import DDPMError
from ..runtime import rank_world
from .features import feature_batch, reference_pass
from .metrics import frechet_distance, inception_score, kernel_inception_distance, precision_recall
from .streaming import REF_N, REF_SUBSET_SEED, FeaturePass, feature_pass, reference_subset

__all__ = ["METRICS", "MIN_IMAGES", "ImageSet", "Scores", "read_set", "read_samples", "parse_metrics", "score",
           "metric_lines", "stats_arrays", "RESIZE"]

METRICS = ("fid", "is", "kid", "pr")
RESIZE = "bilinear to 299x299 from [-1, 1], no antialiasing (pytorch-fid)"
IS_SPLITS, PR_K = 10, 3
MIN_IMAGES = {"is": 2 * IS_SPLITS, "fid": 2, "kid": 2, "pr": PR_K + 1}  # the fewest images each metric is defined on


@dataclass(frozen=True)
class Scores:
    """What ``score`` measured. ``values`` holds the keys of ``ddpm metrics --json``: fid; is and kid as
    [mean, std]; precision and recall; n, ref_n (ref_total and ref_subset_seed for a subset), features and
    feature_dim, and for the Inception its sha256 and the resize. ``mu`` and ``sigma`` are the samples' feature
    moments (float64) where they were computed, else None."""

    values: Dict[str, Any]
    mu: Optional[np.ndarray] = None
    sigma: Optional[np.ndarray] = None


@dataclass
class ImageSet:
    """Images (uint8 [N, C, H, W]) or, from a statistics file, only their features' mean and covariance."""

    name: str
    images: Optional[Tensor] = None
    stats: Optional[Tuple[np.ndarray, np.ndarray]] = None
    n: int = 0
    key: str = ""  # what identifies a data source's images (its cache key), for cached statistics
    feature_sha256: str = ""  # a statistics file's feature network, where the file says

    @property
    def shape(self) -> Optional[Tuple[int, ...]]:
        return None if self.images is None else tuple(self.images.shape[1:])


def parse_metrics(text: str, allowed: Sequence[str] = METRICS) -> Tuple[str, ...]:
    """``"fid,is"`` -> ("fid", "is"), each checked."""
    names = tuple(dict.fromkeys(m.strip().lower() for m in text.split(",") if m.strip()))
    bad = [m for m in names if m not in allowed]
    if bad or not names:
        raise DDPMError(f"unknown metric {bad[0] if bad else text!r}; choose from {', '.join(allowed)} "
                        "(a comma-separated list)")
    return names


def read_samples(path) -> Tuple[Tensor, Optional[Tensor]]:
    """uint8 [N, C, H, W] from an ``.npz`` whose ``arr_0`` is uint8 [N, H, W, C] (ddpm sample's) or [N, H, W]
    (gray) with N >= 2, and its ``arr_1`` (each image's requested class) when it has one."""
    from ..safeload import load_npz

    p = Path(path)
    if not p.is_file():
        raise DDPMError(f"samples file {p} not found")
    return _samples_of(load_npz(p, "samples (arr_0 uint8 [N, H, W, C])"), p)


def _samples_of(z: Dict[str, np.ndarray], p: Path) -> Tuple[Tensor, Optional[Tensor]]:
    if "arr_0" not in z:
        raise DDPMError(f"{p} has no arr_0 (it holds {', '.join(z) or 'nothing'}); samples are arr_0 uint8 "
                        "[N, H, W, C], statistics are mu and sigma")
    arr = z["arr_0"]
    if arr.ndim == 3 and arr.dtype == np.uint8:  # gray images [N, H, W], as a data source's .npz may hold them
        arr = arr[..., None]
    labels = z["arr_1"].astype(np.int64) if "arr_1" in z else None
    if arr.ndim == 4 and arr.shape[1] in (1, 3) and arr.shape[3] not in (1, 3):
        raise DDPMError(f"{p}: arr_0 has shape {arr.shape}, which looks like N, C, H, W; samples are N, H, W, C "
                        "(e.g. np.savez(path, arr_0=images.transpose(0, 2, 3, 1)))")
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) < 2:
        raise DDPMError(f"{p}: arr_0 must be uint8 [N, H, W, C] with N >= 2, got {arr.dtype} {arr.shape}")
    if labels is not None and labels.shape != (len(arr),):
        raise DDPMError(f"{p}: arr_1 must hold one class per image, got shape {labels.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), None if labels is None else torch.from_numpy(labels)


def _native_shape(spec: str) -> Tuple[int, int]:
    """(channels, size) a data source has of itself (``sources.native_shape``)."""
    from ..data.sources import find_source, native_shape

    return native_shape(find_source(spec))


def read_set(spec: str, *, shape: Optional[Tuple[int, ...]] = None, cache_dir=None, progress: bool = False,
             skip_bad: bool = False) -> ImageSet:
    """The set ``spec`` names (see the module's text). A data source is read at ``shape`` (C, H, W; square), the
    other set's, else at its own size."""
    from ..data.sources import load_data
    from ..safeload import load_npz

    p = Path(os.fspath(spec)).expanduser()
    if p.suffix.lower() == ".npz" and p.is_file():
        z = load_npz(p, "samples (arr_0) or statistics (mu, sigma)")
        if "mu" in z and "sigma" in z:
            mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
            if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
                raise DDPMError(f"{p}: mu must be [D] and sigma [D, D], got {mu.shape} and {sigma.shape}")
            if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                raise DDPMError(f"{p}: mu or sigma holds NaN or infinite values, so no distance can be computed from "
                                "it; write the statistics again (ddpm metrics IMAGES --save-stats OUT.npz)")
            n = int(z["n"].reshape(-1)[0]) if "n" in z and z["n"].size == 1 and z["n"].dtype.kind in "iu" else 0
            held = z.get("feature_sha256")
            sha = str(held.reshape(-1)[0]) if held is not None and held.size == 1 and held.dtype.kind == "U" else ""
            return ImageSet(str(spec), stats=(mu, sigma), n=n, feature_sha256=sha)
        images, _ = _samples_of(z, p)
        return ImageSet(str(spec), images=images, n=len(images))
    from ..run.directory import holds_run_config

    if p.is_dir() and holds_run_config(p):  # its loss plot and sample grids are not a set of samples
        raise DDPMError(f"{spec} is a ddpm run, not a set of images: score its samples with ddpm eval --run {spec} "
                        f"--metrics fid, or draw them first (ddpm sample --run {spec} --n 10000 --out samples.npz)")
    channels, size = (shape[0], (shape[1], shape[2])) if shape is not None else _native_shape(spec)
    data = load_data(spec, channels=channels, image_size=size, progress=progress, cache_dir=cache_dir,
                     skip_bad=skip_bad)
    if len(data) < 2:
        raise DDPMError(f"{spec} has {len(data)} image(s); a set needs at least 2")
    return ImageSet(data.name, images=data.images, n=len(data), key=data.key)


def _check(samples: ImageSet, ref: Optional[ImageSet], metrics: Sequence[str], classifier: bool,
           ref_n: Optional[int] = None) -> None:
    """One clear line for what cannot be computed, before any features are."""
    if any(m != "is" for m in metrics) and ref is None:
        raise DDPMError(f"{', '.join(m for m in metrics if m != 'is')} compare two sets: pass --ref (a data source, "
                        "images or a statistics file); without it, only is")
    for s, which in ((samples, "SAMPLES"), (ref, "REF")):
        if s is not None and s.stats is not None:
            other = [m for m in metrics if m in ("kid", "pr") or (m == "is" and which == "SAMPLES")]
            if other or (which == "SAMPLES" and ref is not None and ref.stats is not None):
                raise DDPMError(f"{which} {s.name} is a statistics file (mu, sigma): it serves FID only, not "
                                f"{', '.join(other) or 'FID against another statistics file'}; give images")
    if ref is not None and samples.shape and ref.shape and samples.shape != ref.shape:
        raise DDPMError(f"the sets differ: SAMPLES are {samples.shape} (C, H, W), REF {ref.shape}")
    for s, which in ((samples, "SAMPLES"), (ref, "REF")):
        if s is None or s.images is None:
            continue
        total = len(s.images)
        count = min(total, ref_n or total) if which == "REF" else total
        for m in metrics:
            if count < MIN_IMAGES[m] and (m != "is" or which == "SAMPLES"):
                raise DDPMError(f"{which} has {count} images" + (" (--ref-n)" if count < total else "")
                                + f"; {m} needs at least {MIN_IMAGES[m]}")
    if "is" in metrics and not classifier:
        raise DDPMError("the Inception Score needs the Inception's classifier layer, which this file lacks: pass "
                        "--inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's)")


def score(samples: ImageSet, ref: Optional[ImageSet], metrics: Sequence[str], features: Tuple[str, Any], *,
          batch_size: Optional[int] = None, device=None, cache_dir=None, seed: int = 0, progress: bool = False,
          moments: bool = False, ref_n: Optional[int] = REF_N) -> Optional[Scores]:
    """The ``metrics`` of ``samples`` (against ``ref``) with ``features`` ((name, network)), as ``Scores``; their
    ``mu`` and ``sigma`` are the samples' feature moments where FID needed them or ``moments`` asks for them.
    ``seed`` draws KID's subsets and the order of the Inception Score's splits (``is_split_seed``): a class-
    conditional job writes its samples class by class, and splits of that order would each hold one class.

    A reference of more than ``ref_n`` images (None: no limit) is scored by a seeded subset of ``ref_n``
    (``streaming.reference_subset``; the report's ``ref_n``, ``ref_total`` and ``ref_subset_seed``). FID's
    statistics accumulate streaming; features are held (float32) only for KID and precision/recall. Under torchrun
    every process calls this and takes its share of the features; the scores come back on rank 0, None on the
    others."""
    name, net = features
    _check(samples, ref, metrics, getattr(net, "has_classifier", True), ref_n)
    kw = dict(batch_size=batch_size or feature_batch(device), device=device, progress=progress)
    held = "kid" in metrics or "pr" in metrics  # the metrics that need every feature vector, not their moments
    mine = FeaturePass(samples.n, *samples.stats) if samples.stats is not None else FeaturePass(samples.n)
    if samples.images is not None:
        mine = feature_pass(net, samples.images, moments="fid" in metrics or moments, keep=held,
                            with_probs="is" in metrics, desc=f"{name} features of SAMPLES", **kw)
    theirs, subset = FeaturePass(0), None
    if ref is not None and ref.stats is not None:
        theirs = FeaturePass(ref.n, *ref.stats)
    elif ref is not None and ref.images is not None and ("fid" in metrics or held):
        subset = reference_subset(ref.n, ref_n)
        theirs = reference_pass(net, name, ref.images, ref.name, indices=subset, keep=held, key=ref.key,
                                cache_dir=cache_dir, **kw)
    if rank_world()[0] != 0:
        return None
    out: Dict[str, Any] = {"n": samples.n}
    if "is" in metrics:  # splits of a seeded shuffle: never of the order the samples were written in (by class)
        probs = mine.probs
        assert probs is not None  # asked for with_probs
        order = np.random.default_rng(seed).permutation(len(probs))
        out["is"], out["is_split_seed"] = list(inception_score(probs[order], IS_SPLITS)), seed
    if ref is not None:
        out["ref_n"] = ref.n if subset is None else len(subset)
        if subset is not None:
            out.update(ref_total=ref.n, ref_subset_seed=REF_SUBSET_SEED)
        if "fid" in metrics:
            _check_stats(samples, ref, mine.moments(), theirs.moments(), name, net)
            out["fid"] = frechet_distance(*mine.moments(), *theirs.moments())
        if "kid" in metrics:
            out["kid"] = list(kernel_inception_distance(mine.kept(), theirs.kept(), seed=seed))
        if "pr" in metrics:
            out["precision"], out["recall"] = precision_recall(theirs.kept(), mine.kept(), k=PR_K, device=device)
    out["features"] = name
    if mine.mu is not None:
        out["feature_dim"] = int(len(mine.mu))
    if name == "inception":
        out.update(inception_sha256=net.sha256, resize=RESIZE)
    return Scores(out, mine.mu, mine.sigma)


def _check_stats(samples: ImageSet, ref: ImageSet, mine, theirs, name: str, net) -> None:
    """A statistics file's network and dimension against this one's, before a distance that would mean nothing."""
    for s, which in ((ref, "REF"), (samples, "SAMPLES")):
        if s.stats is not None and s.feature_sha256 and getattr(net, "sha256", "") and s.feature_sha256 != net.sha256:
            raise DDPMError(f"{which} {s.name} holds statistics of another {name} network (sha256 "
                            f"{s.feature_sha256[:12]}..., this one {net.sha256[:12]}...): their FID would "
                            "mean nothing; pass the --inception file they were made with")
    if len(mine[0]) != len(theirs[0]):
        s, which = (ref, "REF") if ref.stats is not None else (samples, "SAMPLES")
        raise DDPMError(f"{which} {s.name} holds statistics of {len((theirs if s is ref else mine)[0])}-d "
                        f"features, the other set has {len((mine if s is ref else theirs)[0])}-d {name} "
                        "features (2048: the FID Inception, --features inception; 128: digits)")


def stats_arrays(mu: np.ndarray, sigma: np.ndarray, n: int, features: str = "",
                 feature_sha256: str = "") -> Dict[str, Tuple[Sequence[int], Any, Any]]:
    """A statistics file's arrays for ``outputs.write_npz``: pytorch-fid's keys ``mu`` and ``sigma``, and ``n``,
    the feature network's name and the sha256 of its weights (which a later FID against the file checks)."""
    text = {k: np.array([v]) for k, v in (("features", features), ("feature_sha256", feature_sha256)) if v}
    return {"mu": (mu.shape, np.float64, [mu]), "sigma": (sigma.shape, np.float64, [sigma]),
            "n": ((1,), np.int64, [np.array([n], np.int64)]),
            **{k: ((1,), v.dtype, [v]) for k, v in text.items()}}


def metric_lines(r: Dict[str, Any], samples: str, ref: Optional[str]) -> Tuple[list, str]:
    """The lines of a ``score`` result, each naming what moves its number (FID on the Inception's features, FD on
    others), and the notes ("" if none): n below the 50,000 samples published FIDs use (FID falls as n grows), n
    no more than the features' dimensions (a rank-deficient covariance)."""
    n, against = r["n"], f" against {ref} ({r['ref_n']:,} images)" if ref and r.get("ref_n") else f" against {ref}"
    if ref and r.get("ref_total"):
        against = (f" against {ref} ({r['ref_n']:,} of its {r['ref_total']:,} images, a subset of seed "
                   f"{r['ref_subset_seed']}; --ref-n)")
    what = f"{n:,} images of {samples}" if n else samples
    lines = []
    fid = "FID" if r["features"] == "inception" else "FD"  # the Fréchet *Inception* distance is the Inception's
    if "fid" in r:
        lines.append(f"{fid} {max(r['fid'], 0.0):.4f}  ({what}{against}; {fid}@{n:,}"
                     + (f", {r['features']} features)" if fid == "FD" else ")"))
    if "is" in r:
        lines.append(f"IS {r['is'][0]:.4f} +- {r['is'][1]:.4f}  ({what}; {IS_SPLITS} splits of a shuffle, seed "
                     f"{r['is_split_seed']})")
    if "kid" in r:
        lines.append(f"KID {r['kid'][0]:.6f} +- {r['kid'][1]:.6f}  ({what}{against}; subsets of "
                     f"{min(1000, n, r.get('ref_n') or n):,})")
    if "precision" in r:
        lines.append(f"precision {r['precision']:.4f}, recall {r['recall']:.4f}  ({what}{against}; k = {PR_K})")
    feats = f"features: {r['features']}" + (f" (Inception sha256 {r['inception_sha256'][:16]}..., resized "
                                             f"{r['resize']})" if "inception_sha256" in r else "")
    lines.append(feats)
    notes = []
    dim = r.get("feature_dim", 0)
    if "fid" in r and n and dim and min(n, r.get("ref_n") or n) <= dim:
        notes.append(f"note: {min(n, r.get('ref_n') or n):,} images are no more than the features' {dim:,} dimensions, "
                     f"so the covariance is rank-deficient and {fid} is biased upward and noisy; use more than {dim:,}")
    if "fid" in r and n and n < 50000 and fid == "FID":
        notes.append(f"note: published FIDs use 50,000 samples; FID falls as n grows, so compare FID@{n:,} only at "
                     "equal n")
    return lines, "\n".join(notes)
