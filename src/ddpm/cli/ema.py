"""``ddpm ema``: post-hoc EMA (Karras et al. 2024): EMA weights of any length rebuilt from a run's snapshots (saved
while it trained with --ema-profiles) into the run as named weights, and with --sweep their FD against the length."""

from __future__ import annotations

import sys
from pathlib import Path

from .flags import Commands, cache_dir_flag, positive_int


def _sigmas(text: str):
    """--sigma-rel: the rule of --ema-profiles (``config.profiles``), as an argparse type; at least one."""
    import argparse

    from ..config import profiles
    from ..errors import DDPMError

    try:
        values = profiles(text, "--sigma-rel")
    except DDPMError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
        raise argparse.ArgumentTypeError("--sigma-rel takes at least one length, e.g. 0.07")
    return list(values)


def add_ema(c: Commands) -> None:
    from ..config import EVAL_SAMPLERS

    p = c.add("ema", "post-hoc EMA: build EMA weights of any length from a run's snapshots (EDM2)",
              "A run trained with --ema-profiles (two power-function EMAs, sigma_rel 0.05 and 0.10 by default) saved "
              "snapshots of them every --ema-snapshot-every steps. From those, an EMA of any relative length "
              "sigma_rel (its profile's standard deviation over the run's length) is rebuilt by least squares "
              "(Karras et al. 2024, Algorithm 3) and saved in the run as RUN/weights/ema-SIGMA, which sample, eval, "
              "inpaint, edit and export use with --weights ema-SIGMA. --sweep also measures each by FD (the settings "
              "of --eval-every: --n samples, --sampler, --steps) and plots FD against sigma_rel.",
              "ddpm ema --run RUN --sigma-rel 0.07; ddpm sample --run RUN --weights ema-0.07 --n 64 --out grid.png; "
              "ddpm ema --run RUN --sigma-rel 0.02,0.04,0.07,0.1,0.15,0.2 --sweep")
    p.add_argument("--run", required=True, help="run directory (trained with --ema-profiles)")
    p.add_argument("--sigma-rel", type=_sigmas, required=True, metavar="S[,S2,...]",
                   help="relative EMA lengths to build, e.g. 0.05 (short) .. 0.2 (long); EDM2's best lay near "
                        "0.05-0.15")
    p.add_argument("--step", type=positive_int, default=None,
                   help="as of this step: the snapshots up to it (default: all; the weights are those at the last)")
    p.add_argument("--sweep", action="store_true", help="score each length by FD and plot FD against sigma_rel "
                                                        "(RUN/eval/ema_sweep.csv, .png)")
    p.add_argument("--n", type=positive_int, default=None, help="--sweep: samples per length (default: the run's "
                                                                "--eval-n, 1000)")
    p.add_argument("--sampler", default=None, choices=EVAL_SAMPLERS,
                   help="--sweep: the sampler (default: the run's --eval-sampler)")
    p.add_argument("--steps", type=positive_int, default=None, help="--sweep: network calls per image (default: "
                                                                    "the run's --eval-steps)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="--sweep: images per batch")
    cache_dir_flag(p)


def cmd_ema(args) -> int:
    from ..errors import DDPMError
    from ..run.directory import read_config
    from ..run.weights import write_named
    from ..training.posthoc import reconstruct

    run = Path(args.run)
    cfg = read_config(run)
    if not args.sweep and any(v is not None for v in (args.n, args.sampler, args.steps)):
        raise DDPMError("--n, --sampler and --steps are for --sweep")
    states, info = reconstruct(run, args.sigma_rel, step=args.step)
    names: list = []
    for sigma, state in zip(args.sigma_rel, states):
        name = f"ema-{sigma:g}"
        write_named(run, name, state, {"sigma_rel": sigma, **{k: v for k, v in info.items() if k != "coefficients"},
                                       "coefficients": [row[len(names)] for row in info["coefficients"]]})
        names.append(name)
    print(f"built {', '.join(names)} from {info['snapshots']} snapshots of the profiles "
          f"{', '.join(f'{p:g}' for p in info['profiles'])} (step {info['step']}) into {run / 'weights'}; use them "
          f"with --weights {names[0]}", file=sys.stderr)
    if args.sweep:
        _sweep(args, run, cfg, names)
    return 0


def _sweep(args, run: Path, cfg, names) -> None:
    from ..evaluation.features import get_features
    from ..evaluation.reports import fd_report, real_images
    from ..run.ownership import record_written
    from ..run.weights import load_run
    from ..runtime import choose_device
    from ..sampling.settings import SamplingSettings
    from ..viz import plot_fd_sigma

    device = choose_device(args.device)
    t = cfg.train
    settings = SamplingSettings(sampler=args.sampler or t.eval_sampler, steps=args.steps or t.eval_steps or None,
                                n=args.n or t.eval_n, batch_size=args.batch_size, device=device,
                                progress=not args.quiet)
    features = get_features("auto", channels=cfg.model.in_channels, cache_dir=args.cache_dir, hw=cfg.model.hw)
    real = real_images(cfg.train.data, cfg, args.cache_dir, progress=not args.quiet)
    out = run / "eval"
    out.mkdir(exist_ok=True)
    rows = []
    for name, sigma in zip(names, args.sigma_rel):
        ckpt = load_run(run, weights=name, map_location=device)
        row = fd_report(ckpt, real, features, settings.replace(named=name), cache_dir=out)[0]
        rows.append({"sigma_rel": sigma, "weights": name, **{k: row[k] for k in ("fd", "n", "sampler", "steps")}})
        print(f"sigma_rel {sigma:<6g} FD@{row['n']} {row['fd']:.3f}", flush=True)
    best = min(rows, key=lambda r: r["fd"])
    lines = ["sigma_rel,weights,fd,n,sampler,steps"] + [",".join(str(r[k]) for k in ("sigma_rel", "weights", "fd", "n",
                                                                                   "sampler", "steps")) for r in rows]
    from ..atomic import atomic_write_text

    atomic_write_text(out / "ema_sweep.csv", "\n".join(lines) + "\n")
    plot_fd_sigma(rows, out / "ema_sweep.png", title=f"{run}: FD@{best['n']} against the EMA length")
    record_written(out, ["ema_sweep.csv", "ema_sweep.png"])
    print(f"lowest FD: {best['weights']} ({best['fd']:.3f}); table: {out / 'ema_sweep.csv'}, plot: "
          f"{out / 'ema_sweep.png'}", file=sys.stderr)
