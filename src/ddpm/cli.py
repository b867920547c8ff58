"""The `ddpm` command line: thin subcommands over the library.

Every subcommand parses, builds the library objects, and calls one library function. Bad input
raises DDPMError (or ValueError/OSError) and becomes one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import __version__
from .errors import DDPMError

DEMO_DIR = "ddpm-demo"
DEMO_SAMPLES = 100
DEMO_SAMPLER = ("respaced", 500)  # Algorithm 2 over 500 of the 1000 steps: the best measured (README)

EPILOG = """examples:
  ddpm demo                                         # train on the shipped digits, write samples (CPU, minutes)
  ddpm train --data mnist --preset tiny --out runs/tiny --steps 200
  ddpm train --data ~/cifar-10-python.tar.gz --preset cifar10 --out runs/cifar10
  ddpm train --out runs/cifar10 --resume            # continue exactly where it stopped
  ddpm sample --run runs/cifar10 --n 64 --out grid.png

Run `ddpm COMMAND --help` for each command's options."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default where there is one to show (not for None/False, which mean "unset"/"off")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One CLI flag per dataclass field: the config is the one source of truth for names and help."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kw: Dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        if f.metadata.get("choices"):
            kw["choices"] = f.metadata["choices"]
        if f.type in ("Optional[bool]", "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
            if f.name != "data":
                kw["help"] += f" (default: the preset's recipe; else {f.default!r})"
        parser.add_argument(_flag(f.name), **kw)


def _add_sampler_flags(p: argparse.ArgumentParser) -> None:
    from .samplers import SAMPLERS, SPACINGS

    p.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                   help="ancestral: Algorithm 2 over all T steps; respaced: Algorithm 2 over --steps of them; "
                        "ddim: DDIM over --steps with --eta")
    p.add_argument("--steps", type=_positive_int, default=None, help="network calls per image (default: T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform", help="which of the T steps are kept")


def build_parser() -> argparse.ArgumentParser:
    from .config import DiffusionConfig, TrainConfig
    from .unet import PRESETS

    parser = _Parser(
        prog="ddpm",
        description="Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020): train, sample, measure.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="train on the shipped MNIST digits and write samples (a few minutes on a CPU)",
                       formatter_class=_Formatter,
                       description="Train the 'mnist' preset on the 5,000 digits shipped in the package, then write "
                                   "EMA samples to RUN/samples.png and RUN/samples.npz. Running it "
                                   "again continues the same run (e.g. after Ctrl-C).")
    p.add_argument("--out", default=DEMO_DIR, help="run directory")
    p.add_argument("--minutes", type=float, default=8.5, help="upper bound on training time, in minutes")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the mnist recipe's)")
    p.add_argument("--n", type=_positive_int, default=DEMO_SAMPLES, help="number of samples to draw")
    p.add_argument("--sampling-steps", type=_positive_int, default=DEMO_SAMPLER[1],
                   help=f"network calls per sample ({DEMO_SAMPLER[0]} sampler; 1000 = the full Algorithm 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model (the paper's recipe by default)", formatter_class=_Formatter,
                       description="Train eps_theta with Algorithm 1. A new run needs --data and --out; "
                                   "`--out RUN --resume` continues an existing run bit-exactly. Unset options "
                                   "come from the preset's recipe (the paper's for cifar10 and celebahq256).",
                       epilog="examples:\n  ddpm train --data mnist --preset tiny --out runs/tiny --steps 200\n"
                              "  ddpm train --data ./my_images --preset cifar10 --out runs/mine --batch-size 32\n"
                              "  ddpm train --out runs/mine --resume --steps 100000")
    p.add_argument("--out", required=True, help="run directory (must not exist unless --resume)")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="network and recipe (default: mnist for --data mnist, else cifar10)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_config_flags(p, TrainConfig)
    g = p.add_argument_group("diffusion (fixed for the life of a run)")
    _add_config_flags(g, DiffusionConfig)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images from a trained run (Algorithm 2)", formatter_class=_Formatter,
                       description="Generate images with the run's EMA weights. --out decides the format: "
                                   "FILE.png a grid, FILE.npz a uint8 array arr_0 [N, H, W, C], DIR/ one PNG per image.",
                       epilog="examples:\n  ddpm sample --run ddpm-demo --n 64 --out grid.png\n"
                              "  ddpm sample --run runs/cifar10 --n 50000 --out samples.npz --batch-size 500")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--n", type=_positive_int, default=64, help="number of images")
    p.add_argument("--out", required=True, help="FILE.png, FILE.npz or a folder")
    _add_sampler_flags(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="network precision while sampling (bf16: autocast; auto: bf16 where the hardware has it)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=cmd_sample)
    return parser


# ----------------------------------------------------------------------------- helpers
def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DDPMError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DDPMError(f"device {name!r} requested but CUDA is not available")
    return dev


def _fields(args: argparse.Namespace, cls) -> Dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


RESUMABLE = {"steps", "log_every", "sample_every", "save_every", "keep", "n_samples", "time_limit"}


def _resume_config(run: Path, train_over: Dict[str, Any], diff_over: Dict[str, Any], preset: Optional[str]):
    from .checkpoint import read_config

    cfg = read_config(run)
    fixed = {**{k: v for k, v in train_over.items() if k not in RESUMABLE}, **diff_over}
    if preset is not None:
        fixed["preset"] = preset
    current = {**dataclasses.asdict(cfg.train), **dataclasses.asdict(cfg.diffusion), "preset": cfg.preset}
    for k, v in fixed.items():
        if current.get(k) != v:
            raise DDPMError(f"{run} was trained with {_flag(k)} {current.get(k)!r}; a resumed run cannot change it "
                            f"(only {', '.join(sorted(_flag(r) for r in RESUMABLE))} can)")
    new_train = dataclasses.replace(cfg.train, **{k: v for k, v in train_over.items() if k in RESUMABLE})
    new_train.validate()
    return dataclasses.replace(cfg, train=new_train)


def train_run(run: Path, cfg, *, resume: bool, device, progress: bool = True) -> str:
    """Build data, model and Trainer for ``cfg``, restore the last checkpoint if resuming, and fit."""
    import torch

    from .checkpoint import list_checkpoints, load_checkpoint, write_config
    from .data import load_data
    from .train import Trainer
    from .unet import UNet

    diffusion = cfg.diffusion.build()  # validate everything before touching the disk
    data = load_data(cfg.train.data, channels=cfg.model.in_channels, image_size=cfg.model.image_size,
                     progress=progress)
    if len(data) == 0:
        raise DDPMError(f"data source {cfg.train.data!r} has no images")
    torch.manual_seed(cfg.train.seed)
    model = UNet(cfg.model)
    trainer = Trainer(model, diffusion, data, cfg.train, device=device)
    if resume and list_checkpoints(run):
        ckpt = load_checkpoint(run, with_optimizer=True)
        trainer.load(ckpt)
        print(f"resuming {run} from step {ckpt.step}", file=sys.stderr)
    run.mkdir(parents=True, exist_ok=True)
    write_config(run, cfg)
    n = model.num_parameters()
    print(f"training {cfg.preset} ({n / 1e6:.2f}M parameters) on {data.name} ({len(data)} images) "
          f"for {cfg.train.steps} steps of {cfg.train.batch_size} on {device}; run: {run}", file=sys.stderr)
    return trainer.fit(run, progress=progress, echo=lambda m: print(m, file=sys.stderr))


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args: argparse.Namespace) -> int:
    from .config import DiffusionConfig, TrainConfig, make_run_config

    run = Path(args.out)
    train_over, diff_over = _fields(args, TrainConfig), _fields(args, DiffusionConfig)
    if args.resume and (run / "config.json").is_file():
        cfg = _resume_config(run, train_over, diff_over, args.preset)
    else:
        if run.exists() and (not run.is_dir() or any(run.iterdir())):
            raise DDPMError(f"{run} already exists; pass --resume to continue it, or choose another --out")
        if "data" not in train_over:
            raise DDPMError("--data is required for a new run: 'mnist', a folder of images, or a CIFAR-10 archive")
        preset = args.preset or ("mnist" if train_over["data"] == "mnist" else "cifar10")
        cfg = make_run_config(preset, train=train_over, diffusion=diff_over)
    train_run(run, cfg, resume=args.resume, device=_device(args.device), progress=not args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .checkpoint import load_checkpoint
    from .config import make_run_config

    run = Path(args.out)
    if args.minutes <= 0:
        raise DDPMError(f"--minutes must be positive, got {args.minutes}")
    t0 = time.monotonic()
    over = {"time_limit": args.minutes, **({"steps": args.steps} if args.steps else {})}
    if (run / "config.json").is_file():
        cfg = _resume_config(run, over, {}, "mnist")
        print(f"continuing the demo run in {run}", file=sys.stderr)
    elif run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise DDPMError(f"{run} exists and is not a ddpm run; choose another --out")
    else:
        cfg = make_run_config("mnist", train={"data": "mnist", **over})
    device = _device(args.device)
    train_run(run, cfg, resume=True, device=device)
    ckpt = load_checkpoint(run, map_location=device)
    images = _generate(ckpt, args.n, seed=0, batch_size=256, ema=True, device=device, precision="auto",
                       sampler=DEMO_SAMPLER[0], steps=min(args.sampling_steps, ckpt.diffusion.T))
    _write_images(images, run / "samples.png")
    _write_images(images, run / "samples.npz")
    minutes = (time.monotonic() - t0) / 60
    print(f"demo finished in {minutes:.1f} min after {ckpt.step} steps:\n"
          f"  {run / 'samples.png'}   a grid of {args.n} generated digits\n"
          f"  {run / 'samples.npz'}   the same as uint8 arr_0 [N, H, W, C]\n"
          f"  {run / 'loss.png'}      the loss curve; metrics in {run / 'metrics.csv'}")
    return 0


def _generate(ckpt, n: int, *, seed: int, batch_size: int, ema: bool, device, precision: str = "fp32",
              sampler: str = "ancestral", steps: Optional[int] = None, eta: float = 0.0, spacing: str = "uniform"):
    from .samplers import generate, make_sampler

    smp = make_sampler(sampler, ckpt.diffusion, steps=steps, eta=eta, spacing=spacing)
    model = ckpt.ema_model if ema else ckpt.model
    c, s = ckpt.config.model.in_channels, ckpt.config.model.image_size
    return generate(model, smp, n, (c, s, s), seed=seed, batch_size=batch_size, device=device, precision=precision)


def _output_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".png":
        kind = "png"
    elif suffix == ".npz":
        kind = "npz"
    elif suffix == "" or out.is_dir():
        kind = "dir"
    else:
        raise DDPMError(f"unknown output type {out.suffix!r} for {out}: use FILE.png, FILE.npz or a folder")
    if not out.parent.is_dir():
        raise DDPMError(f"cannot write {out}: folder {out.parent} does not exist")
    return kind


def _write_images(images, out: Path) -> None:
    """uint8 [N, C, H, W] -> a .png grid, a .npz (arr_0 [N, H, W, C]) or a folder of PNGs."""
    import numpy as np
    from PIL import Image

    from .viz import save_grid

    kind = _output_kind(out)
    if kind == "png":
        save_grid(images, out, scale=2 if images.shape[-1] < 64 else 1)
    elif kind == "npz":
        np.savez(out, arr_0=images.permute(0, 2, 3, 1).numpy())
    else:
        out.mkdir(exist_ok=True)
        arr = images.permute(0, 2, 3, 1).numpy()
        for i, a in enumerate(arr):
            Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).save(out / f"{i:06d}.png")


def cmd_sample(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    out = Path(args.out)
    _output_kind(out)  # fail before loading anything
    if args.sampler == "ancestral" and args.steps is not None:
        raise DDPMError("--steps needs --sampler respaced or ddim (ancestral sampling takes all T steps)")
    if args.eta < 0:
        raise DDPMError(f"--eta must be >= 0, got {args.eta}")
    device = _device(args.device)
    ckpt = load_checkpoint(args.run, map_location=device)
    images = _generate(ckpt, args.n, seed=args.seed, batch_size=args.batch_size, ema=args.ema, device=device,
                       precision=args.precision, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       spacing=args.spacing)
    _write_images(images, out)
    print(f"wrote {args.n} samples from {args.run} (step {ckpt.step}, {'EMA' if args.ema else 'raw'} weights) "
          f"to {out}", file=sys.stderr)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ddpm: interrupted", file=sys.stderr)
        return 130
    except (DDPMError, ValueError, OSError) as e:
        if args.traceback:
            raise
        print(f"ddpm: error: {e}", file=sys.stderr)
        return 1
