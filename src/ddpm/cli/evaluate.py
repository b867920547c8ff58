"""``ddpm eval``: measure a run (the paper's FID and IS with bits/dim, KID, precision/recall, or a quick FD): its
options and the functions that run it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .advice import say_if_long
from .flags import Commands, cache_dir_flag, load_run_of, positive_int, sampler_flags, sampling_settings
from .measure import _DEFINED, _feature_flags, _stats_cache

EVAL_METRICS = ("bpd", "rd", "fd", "fid", "is", "kid", "pr")
_LIKELIHOOD = {"bpd", "rd"}  # of real images, T network calls each: no sampler


def add_eval(c: Commands) -> None:
    p = c.add("eval", "measure a run: the paper's FID, IS and bits/dim, KID, precision/recall, or a quick FD",
              "fid,is,kid,pr: draws --n samples (default 50,000, the EMA weights, Algorithm 2 over all T steps: the "
              "paper's protocol) as a resumable job (a kill loses one chunk; under torchrun the processes share it) "
              "into the report folder, then scores them against the run's data (the paper: the training set) or "
              "--ref; the report names everything that moves the number. " + _DEFINED + "\nbpd: the variational "
              "bound of Eq. 5 (prior + T-1 KL terms + the discretised decoder) on --n real images (default 100), in "
              "bits/dim with its standard error; with fid/is, on a CIFAR-10 run's train and test splits side by side. "
              "T network calls per image.\nrd: rate and distortion along the reverse process (the paper's Sec. 4.3, "
              "Table 4, Fig. 5) on --n real images (default 100; a CIFAR-10 run: its test split, as the paper): the "
              "bits/dim sent up to each reverse step and the RMSE (0-255) of x0 predicted there; rd.json, rd.png and "
              "a ten-row table (the paper's beside for CIFAR-10). With bpd: the same images and noise.\n"
              "fd: the quick Fréchet distance: --n samples (default 1,000), FD@n against "
              "the real images; several --steps give a table and a plot of FD against steps.",
              "ddpm eval --run runs/cifar10 --metrics fid,is,bpd; "
              "ddpm eval --run ddpm-demo --metrics fid,kid,pr --n 2000 --sampler ddim --steps 50; "
              "ddpm eval --run ddpm-demo --metrics bpd --n 100; "
              "ddpm eval --run ddpm-demo --metrics rd,bpd --n 100 --held-out; "
              "ddpm eval --run ddpm-demo --metrics fd --sampler ddim --steps 10,20,50,100; "
              "torchrun --nproc_per_node=8 -m ddpm -- eval --run runs/cifar10 --metrics fid,is")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--metrics", "--metric", dest="metric", required=True, metavar="LIST",
                   help=f"any of {', '.join(EVAL_METRICS)}, comma-separated (fd not with fid, is, kid or pr); "
                        "--metric is the same flag")
    p.add_argument("--held-out", action="store_true",
                   help="bpd and rd: the run's held-out images (its --val-fraction share, never trained on) instead of "
                        "all of --data")
    p.add_argument("--data", default=None, help="bpd, rd and fd: real images, a data source as for train, e.g. "
                                                "cifar-10-python.tar.gz:test (default: the run's)")
    p.add_argument("--ref", default=None, help="fid, kid, pr: the reference (a data source, a folder, an .npz of "
                                               "images or of statistics; default: the run's data)")
    cache_dir_flag(p)
    p.add_argument("--n", type=positive_int, default=None,
                   help="samples to draw (fid/is/kid/pr: 50,000; fd: 1,000), or real images for bpd and rd (100)")
    p.add_argument("--bpd-n", type=positive_int, default=None, help="real images per split for bpd beside other "
                                                                    "metrics (default 100)")
    p.add_argument("--out", default=None, help="folder for the samples, reports and cached statistics "
                                               "(default: RUN/eval)")
    _feature_flags(p)
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave unreadable images of --data / --ref out instead of stopping at the first (a run "
                        "trained with --skip-bad-images does so by itself)")
    p.add_argument("--samples", metavar="NPZ", default=None,
                   help="fd of these samples (arr_0 uint8 [N, H, W, C], e.g. from ddpm sample) instead of new ones")
    p.add_argument("--progressive", metavar="K,K,...", default=None,
                   help="fd, fid, is, kid, pr: also score x0 as predicted at these reverse steps (1..T; T sees x_1) "
                        "from the same chains (the paper's Fig. 10), one sampling pass kept in the resumable job; "
                        "progressive.csv, .json and .png. E.g. 100,200,...,1000")
    sampler_flags(p, many=True)


# ----------------------------------------------------------------------------- ddpm eval
_PAPER = ("fid", "is", "kid", "pr")


def _check_eval_flags(args, metrics) -> None:
    from ..errors import DDPMError

    paper = [m for m in metrics if m in _PAPER]
    if "fd" in metrics and paper:
        raise DDPMError("fd is the quick Fréchet distance (a table over --steps); with is, kid or pr ask for fid")
    if set(metrics) <= _LIKELIHOOD:
        for name in ("samples", "steps", "inception", "eta", "spacing", "ref"):
            if getattr(args, name) is not None:
                raise DDPMError(f"--{name} is for the metrics of samples (fd, fid, is, kid, pr), not "
                                f"{' or '.join(metrics)}")
    if "rd" in metrics and (paper or "fd" in metrics):
        raise DDPMError("rd measures real images (T network calls each): run it on its own or with bpd "
                        "(ddpm eval --metrics rd,bpd), and the metrics of samples in another call")
    if args.progressive and (set(metrics) <= _LIKELIHOOD or args.samples is not None):
        raise DDPMError("--progressive scores the predictions along new sampling chains: it goes with fd, fid, is, "
                        "kid or pr, without --samples")
    if args.progressive and args.steps is not None and len(args.steps) > 1:
        raise DDPMError("--progressive follows one sampler setting: give one --steps value")
    if args.held_out and not _LIKELIHOOD & set(metrics):
        raise DDPMError("--held-out picks the real images of bpd and rd; the metrics of samples compare with --data")
    if paper and args.samples is not None:
        raise DDPMError(f"--samples is for fd; to score samples you have, run: ddpm metrics {args.samples} --ref DATA "
                        f"--metrics {','.join(paper)}")
    if paper and args.steps is not None and len(args.steps) > 1:
        raise DDPMError("--steps takes one value with fid, is, kid or pr (several are for fd's table)")
    if args.ref is not None and not paper:
        raise DDPMError("--ref is for fid, is, kid and pr; bpd and fd read --data")
    if "fd" in metrics and args.samples is None and args.n is not None and args.n < 2:
        raise DDPMError(f"--metrics fd needs --n >= 2 samples (a covariance of one sample is undefined), got {args.n}")
    if paper and args.n is not None:  # before any sample is drawn
        from ..evaluation.compare import MIN_IMAGES

        m = max(paper, key=lambda k: MIN_IMAGES[k])
        if args.n < MIN_IMAGES[m]:
            raise DDPMError(f"--metrics {m} needs --n >= {MIN_IMAGES[m]} samples, got {args.n}")
    if args.samples is not None:
        given = [f"--{k}" for k in ("steps", "eta", "spacing") if getattr(args, k) is not None]
        if given:
            raise DDPMError(f"--samples scores the samples given, so {', '.join(given)} would do nothing; drop them")


def cmd_eval(args) -> int:
    from ..evaluation.compare import parse_metrics
    from ..evaluation.reports import check_report_folder
    from ..runtime import choose_device

    metrics = parse_metrics(args.metric, EVAL_METRICS)
    _check_eval_flags(args, metrics)
    out = Path(args.out) if args.out else Path(args.run) / "eval"
    paper = any(m in _PAPER for m in metrics)
    reports = ["metrics"] if paper else [m for m in ("bpd", "fd", "rd") if m in metrics]
    for report in reports + (["progressive"] if args.progressive else []):  # what will be written
        check_report_folder(out, report, own=not args.out)
    device = choose_device(args.device)
    if paper:
        return _eval_paper(args, metrics, out, device)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun bpd and fd are rank 0's work: the others only leave
        return 0
    return _eval_quick(args, metrics, out, device)


def _eval_quick(args, metrics, out: Path, device) -> int:
    """bpd and the quick fd of a run (rank 0's work only)."""
    from ..errors import DDPMError
    from ..evaluation.compare import read_samples
    from ..evaluation.features import get_features
    from ..evaluation.reports import bpd_line, bpd_report, held_out_images, real_images, write_bpd_report
    from ..sampling.guidance import check_guidance
    from ..sampling.samplers import make_sampler

    samples, sample_labels = read_samples(args.samples) if args.samples else (None, None)
    ckpt = load_run_of(args, device)
    check_guidance(args.guidance, ckpt.config.classes, "all")
    if "fd" in metrics:
        for k in args.steps or [None]:  # every sampler setting is checked before any work
            make_sampler(args.sampler, ckpt.diffusion, steps=k, eta=args.eta, spacing=args.spacing)
        features = get_features(args.features, channels=ckpt.config.model.in_channels, inception=args.inception,
                                cache_dir=args.cache_dir, hw=ckpt.config.model.hw)
    real = real_images(_real_source(args, ckpt, metrics), ckpt.config, args.cache_dir, progress=not args.quiet,
                       skip_bad=args.skip_bad_images)
    if args.held_out:
        real = held_out_images(real, ckpt.config.train)
    if samples is not None and samples.shape[1:] != real.images.shape[1:]:
        raise DDPMError(f"{args.samples}: samples are {tuple(samples.shape[1:])} (C, H, W) but the real images "
                        f"{tuple(real.images.shape[1:])}")
    if _LIKELIHOOD & set(metrics):
        r = bpd_report(ckpt, real, n=(args.n if set(metrics) <= _LIKELIHOOD else args.bpd_n) or 100, seed=args.seed,
                       ema=args.ema, batch_size=args.batch_size, device=device, progress=not args.quiet,
                       rate_distortion="rd" in metrics)
        r["weights"] = args.weights or ("EMA" if args.ema else "raw")
        if "rd" in metrics:
            _report_rd(args, r, out)
        if "bpd" in metrics:
            print(bpd_line(r), flush=True)
            write_bpd_report(r, out, title=str(args.run))
            print(f"per-t terms: {out / 'bpd_terms.csv'}, plot: {out / 'bpd_terms.png'}", file=sys.stderr)
    if "fd" in metrics and args.progressive:
        _eval_fd_progressive(args, ckpt, real, features, out, device)
    elif "fd" in metrics:
        _eval_fd(args, ckpt, real, features, samples, sample_labels, out, device)
    return 0


def _real_source(args, ckpt, metrics) -> str:
    """The real images of bpd, rd and fd: --data, else the run's; rd (and bpd beside it) on a CIFAR-10 run's test
    split, as the paper's Table 4."""
    from ..data.sources import find_source
    from ..run.directory import IMPORTED_DATA

    src = args.data or ckpt.config.train.data
    if args.data is None and "rd" in metrics and src != IMPORTED_DATA and not args.held_out:
        source = find_source(src)
        if source.kind == "cifar10" and source.split == "train":
            return f"{source.path}:test"
    return src


def _report_rd(args, r, out: Path) -> None:
    from ..evaluation.rd import rd_summary, rd_table, write_rd_report

    summary = rd_summary(r, paper=str(r["data"]).startswith("cifar10"))  # Table 4 beside a CIFAR-10 run's figures
    print("\n".join(rd_table(summary)), flush=True)
    write_rd_report(summary, out, title=str(args.run))
    print(f"rate and distortion: {out / 'rd.json'}, plot: {out / 'rd.png'}", file=sys.stderr)


def _eval_fd(args, ckpt, real, features, samples, sample_labels, out: Path, device) -> None:
    from ..evaluation.reports import fd_report, fd_table, write_fd_report

    out.mkdir(exist_ok=True)  # the real images' statistics are cached there
    rows = fd_report(ckpt, real, features, sampling_settings(args, device, n=args.n or 1000),
                     steps=args.steps or [None], samples=samples, sample_labels=sample_labels, cache_dir=out,
                     ref_n=args.ref_n)
    lines, note = fd_table(rows, real)
    print("\n".join(lines), flush=True)
    if note:
        print(note, file=sys.stderr)
    write_fd_report(rows, out, title=str(args.run), step=ckpt.step)
    print(f"table: {out / 'fd.csv'}" + (f", plot: {out / 'fd_vs_steps.png'}" if len(rows) > 1 else ""),
          file=sys.stderr)


def _eval_fd_progressive(args, ckpt, real, features, out: Path, device) -> None:
    """fd of the samples and of x0 predicted along their chains at --progressive's reverse steps (Fig. 10)."""
    from ..evaluation.compare import read_samples
    from ..evaluation.progressive import progressive_lines, score_progressive, write_progressive_report
    from ..evaluation.protocol import draw_samples
    from ..evaluation.reports import fd_of, reference_moments
    from ..sampling.progressive import parse_reverse_steps

    at = parse_reverse_steps(args.progressive, ckpt.diffusion.T, "--progressive")
    settings = sampling_settings(args, device, n=args.n or 1000).replace(
        steps=args.steps[0] if args.steps else None, classes="all" if ckpt.config.classes else None)
    out.mkdir(exist_ok=True)
    _, mu_r, sig_r = reference_moments(real, features, cache_dir=out, ref_n=args.ref_n, device=device,
                                       progress=not args.quiet)
    drawn = draw_samples(out, ckpt, settings, progressive=at)
    final = {"fd": fd_of(read_samples(drawn["path"])[0], features, mu_r, sig_r, device=device)}
    rows = score_progressive(drawn["path"], lambda k, images: {"fd": fd_of(images, features, mu_r, sig_r,
                                                                            device=device)})
    print("\n".join(progressive_lines(rows, final, len(settings.seeds))), flush=True)
    write_progressive_report(rows, out, title=f"{args.run} (step {ckpt.step}): FD@{len(settings.seeds)} of x0 "
                                              f"predicted along the chains, {features[0]} features")
    print(f"progressive: {out / 'progressive.csv'}, plot: {out / 'progressive.png'}; samples: {drawn['path']}",
          file=sys.stderr)


def _eval_paper(args, metrics, out: Path, device) -> int:
    """fid/is/kid/pr (and bpd beside them): samples drawn by every process, scored by rank 0."""
    from ..evaluation.features import get_features
    from ..evaluation.protocol import draw_samples
    from ..runtime import barrier, distributed
    from ..sampling.guidance import check_guidance
    from ..sampling.progressive import parse_reverse_steps

    with distributed(device, args.dist_timeout) as rank:
        ckpt = load_run_of(args, device)
        check_guidance(args.guidance, ckpt.config.classes, "all")
        settings = sampling_settings(args, device, n=_balanced(args, metrics, ckpt, rank))
        sampler = settings.make_sampler(ckpt.diffusion)
        at = parse_reverse_steps(args.progressive, ckpt.diffusion.T, "--progressive") if args.progressive else None
        features = get_features(args.features, channels=ckpt.config.model.in_channels, inception=args.inception,
                                cache_dir=args.cache_dir, hw=ckpt.config.model.hw)
        if rank == 0:
            out.mkdir(exist_ok=True)
            say_if_long(settings, ckpt, sampler)
        barrier()
        drawn = draw_samples(out, ckpt, settings, sampler, progressive=at)
        try:  # every process takes its share of the features, of the samples and of the reference
            scores, ref_spec, rows = _score_samples(args, metrics, device, ckpt, features, drawn, rank)
        except KeyboardInterrupt as e:
            from ..errors import Interrupted, stopped_by

            raise Interrupted(f"stopped by {stopped_by(e)} while scoring; the {drawn['drawn'] + drawn['reused']:,} "
                              f"samples in {drawn['path']} are kept", stopped_by(e), resumable=True) from None
    if rank == 0:
        _report(args, metrics, out, settings, ckpt, sampler, drawn, scores, ref_spec, rows)
    return 0


def _balanced(args, metrics, ckpt, rank: int) -> int:
    """--n (default 50,000), or for a class-conditional run the nearest number its classes share equally."""
    from ..evaluation.compare import MIN_IMAGES
    from ..evaluation.protocol import PAPER_N, balanced_n

    n = args.n or PAPER_N
    if not ckpt.config.classes:
        return n
    k = len(ckpt.config.classes)
    balanced = balanced_n(n, k, max(MIN_IMAGES[m] for m in metrics if m in MIN_IMAGES))
    if balanced != n and rank == 0:
        print(f"note: drawing {balanced:,} samples, not {n:,}: the run's {k} classes are drawn in equal numbers "
              f"({balanced // k:,} each), and {balanced:,} is the nearest such number", file=sys.stderr)
    return balanced


def _reference(spec: str, cfg, shape, args, progress: bool):
    """eval's reference: a file of samples or statistics as it is, a data source read as the run read its data."""
    from ..evaluation.compare import ImageSet, read_set
    from ..evaluation.reports import real_images

    if Path(spec).expanduser().suffix.lower() == ".npz" and Path(spec).expanduser().is_file():
        return read_set(spec, shape=shape, cache_dir=args.cache_dir, progress=progress)
    data = real_images(spec, cfg, args.cache_dir, progress=progress, skip_bad=args.skip_bad_images)
    return ImageSet(data.name, images=data.images, n=len(data), key=data.key)


def _score_samples(args, metrics, device, ckpt, features, drawn, rank: int):
    """The scores of a run's samples (rank 0's; None in the others), the reference's name and, for a progressive
    job, the scores of x0 predicted at each kept reverse step (rank 0's rows)."""
    from ..errors import DDPMError
    from ..evaluation.compare import ImageSet, read_set, score
    from ..evaluation.progressive import score_progressive
    from ..run.directory import IMPORTED_DATA

    ref_spec = args.ref or ckpt.config.train.data
    if ref_spec == IMPORTED_DATA:
        raise DDPMError("this run was imported and has no data of its own: pass --ref (a data source or a statistics "
                        "file such as fid_stats_cifar10_train.npz)")
    samples = read_set(drawn["path"])
    ref = _reference(ref_spec, ckpt.config, samples.shape, args, progress=not args.quiet and rank == 0)
    kw = dict(device=device, cache_dir=_stats_cache(args), seed=args.seed, progress=not args.quiet and rank == 0,
              ref_n=args.ref_n)
    wanted = [m for m in metrics if m in _PAPER]
    scores = score(samples, ref, wanted, features, **kw)

    def score_one(k, images):
        found = score(ImageSet(f"x0 predicted at reverse step {k}", images=images, n=len(images)), ref, wanted,
                      features, **kw)
        return None if found is None else found.values

    return scores, ref_spec, score_progressive(drawn["path"], score_one) if args.progressive else []


def _report(args, metrics, out: Path, settings, ckpt, sampler, drawn, scores, ref_spec, rows) -> None:
    """Rank 0: the scores printed and written (metrics.json), bits/dim beside them when asked for."""
    from ..evaluation.protocol import RunReport, bpd_splits
    from ..evaluation.reports import write_metrics_report

    report = RunReport(scores.values, run=str(args.run), step=ckpt.step, weights=settings.weights_name,
                       sampler=sampler.name, steps=sampler.steps, guidance=settings.guidance, seed=settings.seed,
                       samples=str(drawn["path"]), ref=str(ref_spec), sampling=drawn["settings"],
                       reused=drawn["reused"])
    print(report.heading(), flush=True)
    if "bpd" in metrics:
        report.bpd = bpd_splits(ckpt, args.data, n=args.bpd_n or 100, seed=settings.seed, ema=settings.ema,
                                batch_size=settings.batch_size, device=settings.device, cache_dir=args.cache_dir,
                                progress=not args.quiet, skip_bad=args.skip_bad_images)
    lines, note = report.lines()
    print("\n".join(lines), flush=True)
    if note:
        print(note, file=sys.stderr)
    write_metrics_report({**report.to_json(), **({"progressive": rows} if rows else {})}, out)
    print(f"report: {out / 'metrics.json'}; samples: {drawn['path']}", file=sys.stderr)
    if rows:
        from ..evaluation.progressive import progressive_lines, write_progressive_report

        print("\n".join(progressive_lines(rows, scores.values, len(settings.seeds))), flush=True)
        write_progressive_report(rows, out, title=f"{args.run} (step {ckpt.step}): x0 predicted along the chains")
        print(f"progressive: {out / 'progressive.csv'}, plot: {out / 'progressive.png'}", file=sys.stderr)
