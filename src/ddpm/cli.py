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
from .runtime import keep_freed_memory

DEMO_DIR = "ddpm-demo"
DEMO_SAMPLES = 100
DEMO_BATCH = 256  # images per sampling batch
DEMO_SAMPLER = ("respaced", 500)  # Algorithm 2 over 500 of the 1000 steps: the best measured (README)

EPILOG = """examples:
  ddpm demo                                         # train on the shipped digits, write samples (CPU, minutes)
  ddpm train --data mnist --preset tiny --out runs/tiny --steps 200
  ddpm train --data ~/cifar-10-python.tar.gz --preset cifar10 --out runs/cifar10
  ddpm train --out runs/cifar10 --resume            # continue exactly where it stopped
  ddpm sample --run runs/cifar10 --n 64 --out grid.png
  ddpm eval --run ddpm-demo --metric bpd --n 100    # the paper's NLL bound, in bits/dim
  ddpm eval --run ddpm-demo --metric fd --sampler ddim --steps 10,50,100
  ddpm noise photo.jpg --out strip.png              # the forward process as a picture
  ddpm import ./ddpm-cifar10-32 --out runs/paper    # a diffusers DDPM pipeline directory -> a run
  ddpm export --run ddpm-demo --format diffusers --out demo-diffusers

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


def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def _positive_int_list(text: str) -> List[int]:
    values = _int_list(text)
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _add_sampler_flags(p: argparse.ArgumentParser, many: bool = False) -> None:
    from .samplers import SAMPLERS, SPACINGS

    p.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                   help="ancestral: Algorithm 2 over all T steps; respaced: Algorithm 2 over --steps of them; "
                        "ddim: DDIM over --steps with --eta")
    if many:
        p.add_argument("--steps", type=_positive_int_list, default=None,
                       help="network calls per image; a list such as 10,20,50 measures each (default: T)")
    else:
        p.add_argument("--steps", type=_positive_int, default=None, help="network calls per image (default: T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise: 0 deterministic, 1 DDPM-like")
    p.add_argument("--spacing", choices=SPACINGS, default="uniform", help="which of the T steps are kept")


def _add_generation_flags(p: argparse.ArgumentParser, *, seed: str, precision: str) -> None:
    """--seed, --batch-size, --ema and --precision: how a run's network is used to draw images."""
    p.add_argument("--seed", type=int, default=0, help=seed)
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images per batch")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32", help=precision)


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
                                   "EMA samples to RUN/samples.png and RUN/samples.npz. A new demo first times a few "
                                   "training steps and sampling calls on this machine, then trains as many steps as "
                                   "fit in --minutes (so the learning-rate schedule runs to its end). Running it "
                                   "again continues a run that was stopped early (e.g. by Ctrl-C); a finished run "
                                   "only draws its samples again.")
    p.add_argument("--out", default=DEMO_DIR, help="run directory")
    p.add_argument("--minutes", type=float, default=9.5,
                   help="time budget for the whole demo, training and sampling, in minutes: the demo times a few "
                        "steps on this machine and trains as many as fit (at most the recipe's)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="training steps, fixed (default: as many as fit in --minutes, at most the mnist recipe's)")
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
    _add_generation_flags(p, seed="seed of the sampling noise",
                          precision="network precision while sampling (bf16: autocast; auto: bf16 where the "
                                    "hardware has it)")
    p.add_argument("--trajectory", metavar="PNG", default=None,
                   help="also draw the reverse process of the first few samples: x_t and the predicted x_0 at "
                        "t = 1000, 800, ..., 1 (scaled to T)")
    p.add_argument("--gif", metavar="GIF", default=None, help="also animate the reverse process of the first few samples")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=cmd_sample)

    from .metrics import FEATURES

    p = sub.add_parser("eval", help="measure a run: bits/dim (the paper's NLL bound) or Fréchet distance",
                       formatter_class=_Formatter,
                       description="bpd: the variational bound of Eq. 5 (prior + T-1 KL terms + the discretised "
                                   "decoder) on --n real images, in bits/dim, with its standard error; writes the "
                                   "per-t terms (CSV) and their plot. T network calls per image.\n"
                                   "fd: draws --n samples and gives the Fréchet distance between features of the "
                                   "samples and of the real images (digits: the shipped digit classifier; "
                                   "inception: the FID network from --inception PATH). Several --steps give a "
                                   "table, a CSV and a plot of FD against steps and seconds.",
                       epilog="examples:\n  ddpm eval --run ddpm-demo --metric bpd --n 100\n"
                              "  ddpm eval --run ddpm-demo --metric fd --n 1000 --sampler respaced --steps 500\n"
                              "  ddpm eval --run ddpm-demo --metric fd --sampler ddim --steps 10,20,50,100\n"
                              "  ddpm eval --run runs/cifar10 --metric fd --n 50000 --inception "
                              "pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--metric", required=True, choices=["bpd", "fd"], help="what to measure")
    p.add_argument("--data", default=None, help="real images: a data source as for train (default: the run's)")
    p.add_argument("--n", type=_positive_int, default=None,
                   help="bpd: real images to evaluate (default 100); fd: samples to draw (default 1000)")
    p.add_argument("--out", default=None, help="folder for the CSV, plots and cached statistics (default: RUN/eval)")
    p.add_argument("--features", choices=FEATURES, default="auto",
                   help="fd features: digits (shipped classifier), inception (needs --inception); "
                        "auto: digits for 1-channel runs, else inception")
    p.add_argument("--inception", metavar="PATH", default=None,
                   help="the FID Inception weights file pt_inception-2015-12-05-6726825d.pth (never downloaded)")
    p.add_argument("--samples", metavar="NPZ", default=None,
                   help="fd of these samples (arr_0 uint8 [N, H, W, C], e.g. from ddpm sample) instead of drawing new ones")
    _add_sampler_flags(p, many=True)
    _add_generation_flags(p, seed="seed of the sampling noise (and of the bpd's noise)",
                          precision="network precision while sampling for fd (bpd always runs in fp32)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(func=cmd_eval)

    from .viz import NOISE_STEPS

    p = sub.add_parser("noise", help="draw the forward process: an image and its noised versions x_t",
                       formatter_class=_Formatter,
                       description="x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for one image at several t "
                                   "(one eps for all), as a labelled strip. t = 0 is the image itself, t = T is x_T.",
                       epilog="examples:\n  ddpm noise photo.jpg --out strip.png\n"
                              "  ddpm noise mnist:7 --out strip.png --schedule cosine\n"
                              "  ddpm noise photo.jpg --out strip.png --run runs/cifar10 --t 0,10,100,1000")
    p.add_argument("image", help="an image file, or mnist:K for the K-th shipped digit")
    p.add_argument("--out", required=True, help="the strip, a .png")
    p.add_argument("--t", type=_int_list, default=list(NOISE_STEPS), help="steps to show, separated by commas")
    p.add_argument("--size", type=_positive_int, default=128,
                   help="resize the short side to this and centre-crop to a square")
    p.add_argument("--seed", type=int, default=0, help="seed of eps")
    p.add_argument("--run", default=None, help="take the schedule from this run (else the flags below)")
    _add_config_flags(p, DiffusionConfig, skip=("var_type",))
    p.set_defaults(func=cmd_noise)

    p = sub.add_parser("import", help="turn a diffusers DDPM pipeline directory into a run (no diffusers needed)",
                       formatter_class=_Formatter,
                       description="Read a diffusers DDPM pipeline directory (model_index.json, unet/, scheduler/; "
                                   "or a bare unet/ folder) whose UNet2DModel is of the DDPM family, and write a "
                                   "run directory that `ddpm sample` and `ddpm eval` use like any other. Weights: "
                                   "safetensors, or a .bin read with torch.load(weights_only=True).",
                       epilog="example:\n  ddpm import ./ddpm-cifar10-32 --out runs/paper-cifar10\n"
                              "  ddpm sample --run runs/paper-cifar10 --n 64 --out grid.png --sampler ddim --steps 50")
    p.add_argument("dir", help="a diffusers pipeline directory, or its unet/ folder")
    p.add_argument("--out", required=True, help="the run directory to create (must not exist)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("export", help="write a run as a diffusers DDPMPipeline directory",
                       formatter_class=_Formatter,
                       description="Write RUN's weights (EMA by default) as a diffusers pipeline directory that "
                                   "DDPMPipeline.from_pretrained(DIR) loads.",
                       epilog="example:\n  ddpm export --run ddpm-demo --format diffusers --out ddpm-demo-diffusers")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", required=True, choices=["diffusers"], help="the output format")
    p.add_argument("--out", required=True, help="the directory to create (must not exist)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="export the EMA weights")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("schedule", help="plot beta_t, alpha-bar_t and the signal-to-noise ratio of the schedules",
                       formatter_class=_Formatter,
                       description="Plot the linear (the paper's) and cosine (improved DDPM) schedules side by side.",
                       epilog="example:\n  ddpm schedule --out schedule.png --T 1000")
    p.add_argument("--out", required=True, help="the plot, a .png")
    p.add_argument("--T", type=_positive_int, default=1000, help="number of diffusion steps")
    p.set_defaults(func=cmd_schedule)
    return parser


# ----------------------------------------------------------------------------- helpers
def _device(name: str):
    import os

    import torch

    if name == "auto":  # under torchrun each process takes the GPU of its local rank
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DDPMError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DDPMError(f"device {name!r} requested but CUDA is not available")
    return dev


def _fields(args: argparse.Namespace, cls) -> Dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


RESUMABLE = {"steps", "log_every", "sample_every", "save_every", "keep", "n_samples", "time_limit", "grad_accum",
             "compile", "skip_nonfinite"}


def _resume_config(run: Path, train_over: Dict[str, Any], diff_over: Dict[str, Any], preset: Optional[str]):
    from .checkpoint import read_config
    from .interop.diffusers import IMPORTED_DATA

    cfg = read_config(run)
    if cfg.train.data == IMPORTED_DATA:
        raise DDPMError(f"{run} holds weights imported from a diffusers pipeline, without the data, optimizer and "
                        "random states that a resumed run continues: sample, evaluate or export it")
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


def _init_distributed(device) -> int:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on GPUs, gloo on CPUs). Returns the rank."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0
    import torch.distributed as dist

    if not dist.is_initialized():
        if device.type == "cuda":
            import torch

            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank()


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def train_run(run: Path, cfg, *, resume: bool, device, progress: bool = True) -> str:
    """Build data, model and Trainer for ``cfg``, restore the last checkpoint if resuming, and fit.

    Under torchrun every process runs this; only rank 0 writes to the run directory.
    """
    import contextlib

    import torch

    from .checkpoint import list_checkpoints, load_checkpoint, run_lock, write_config
    from .data import load_data
    from .train import Trainer, dist_info
    from .unet import UNet

    rank, world = dist_info()
    main = rank == 0
    diffusion = cfg.diffusion.build()  # validate everything before touching the disk
    data = load_data(cfg.train.data, channels=cfg.model.in_channels, image_size=cfg.model.image_size,
                     progress=progress and main)
    if len(data) == 0:
        raise DDPMError(f"data source {cfg.train.data!r} has no images")
    torch.manual_seed(cfg.train.seed)
    model = UNet(cfg.model)
    trainer = Trainer(model, diffusion, data, cfg.train, device=device)
    with run_lock(run) if main else contextlib.nullcontext():  # a second trainer on this run is refused
        if resume and list_checkpoints(run):
            ckpt = load_checkpoint(run, with_optimizer=True)
            trainer.load(ckpt)
            if main:
                print(f"resuming {run} from step {ckpt.step}", file=sys.stderr)
        _barrier()  # every process has checked the run directory before rank 0 writes to it
        if main:
            write_config(run, cfg)
            n = model.num_parameters()
            where = f"{world} processes ({device.type})" if world > 1 else str(device)
            print(f"training {cfg.preset} ({n / 1e6:.2f}M parameters) on {data.name} ({len(data)} images) "
                  f"for {cfg.train.steps} steps of {cfg.train.batch_size} on {where}; run: {run}", file=sys.stderr)
        reason = trainer.fit(run, progress=progress, echo=lambda m: print(m, file=sys.stderr))
        _barrier()  # rank 0 has written the last checkpoint before anyone returns
    return reason


# ----------------------------------------------------------------------------- subcommands
def cmd_train(args: argparse.Namespace) -> int:
    from .config import DiffusionConfig, TrainConfig, make_run_config

    run = Path(args.out)
    train_over, diff_over = _fields(args, TrainConfig), _fields(args, DiffusionConfig)
    if args.resume and (run / "config.json").is_file():
        cfg = _resume_config(run, train_over, diff_over, args.preset)
    else:
        # a run killed before it wrote its config holds only its lock file: --resume starts it afresh
        leftovers = {".lock"} if args.resume else set()
        if run.exists() and (not run.is_dir() or any(p.name not in leftovers for p in run.iterdir())):
            raise DDPMError(f"{run} already exists; pass --resume to continue it, or choose another --out")
        if "data" not in train_over:
            raise DDPMError("--data is required for a new run: 'mnist', a folder of images, or a CIFAR-10 archive")
        preset = args.preset or ("mnist" if train_over["data"] == "mnist" else "cifar10")
        cfg = make_run_config(preset, train=train_over, diffusion=diff_over)
    device = _device(args.device)
    _init_distributed(device)
    try:
        train_run(run, cfg, resume=args.resume, device=device, progress=not args.quiet)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _demo_plan(cfg, *, budget_s: float, n: int, sampling_steps: int, device, calibrate: bool):
    """(training steps or None, training seconds, estimated sampling seconds) that fit ``budget_s``.

    Times a few training steps of a throw-away copy of the network (when ``calibrate``) and a few sampling
    forwards at the demo's batch size and precision on this machine, then gives training what is left of
    the budget after sampling (with a 25% margin on the sampling estimate and 10 s for writing files),
    planning 97% of the steps that fit.
    """
    import math
    import time

    import torch

    from .data import load_data
    from .train import Trainer, resolve_precision
    from .unet import UNet

    torch.manual_seed(cfg.train.seed)
    net = UNet(cfg.model).to(device)
    c, s = cfg.model.in_channels, cfg.model.image_size
    b = min(n, DEMO_BATCH)
    x, t = torch.randn(b, c, s, s, device=device), torch.zeros(b, dtype=torch.long, device=device)
    bf16 = resolve_precision("auto", device) == "bf16"
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for _ in range(7):  # the first calls are slow (kernel selection, allocation): the median of the last 5
            t0 = time.monotonic()
            net(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.monotonic() - t0)
    forward_s = sorted(times[2:])[2]
    sampling_s = math.ceil(n / DEMO_BATCH) * sampling_steps * forward_s
    train_s = budget_s - 1.25 * sampling_s - 10
    steps = None
    if calibrate and train_s >= 10:
        data = load_data(cfg.train.data, channels=c, image_size=s, progress=False)
        trainer = Trainer(net, cfg.diffusion.build(), data, cfg.train, device=device)
        for _ in range(3):
            trainer.train_step()
        t0 = time.monotonic()
        for _ in range(10):
            trainer.train_step()
        step_s = (time.monotonic() - t0) / 10
        train_s -= 16 * step_s  # the time this calibration took
        # a 3% margin for jitter; if the machine slows down more, the time limit stops training near the
        # end of the cosine decay, where the learning rate is already small
        steps = min(cfg.train.steps, int(0.97 * train_s / step_s))
    if train_s < 10 or (steps is not None and steps < 1):
        raise DDPMError(f"--minutes {budget_s / 60:g} leaves no time to train on this machine: drawing the samples "
                        f"alone takes about {sampling_s:.0f} s; give more minutes, or fewer --n / --sampling-steps")
    return steps, train_s, sampling_s


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from .checkpoint import checkpoint_step, list_checkpoints, load_checkpoint
    from .config import RECIPES, make_run_config

    run = Path(args.out)
    if args.minutes <= 0:
        raise DDPMError(f"--minutes must be positive, got {args.minutes}")
    t0 = time.monotonic()
    device = _device(args.device)
    resume = (run / "config.json").is_file()
    if not resume and run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise DDPMError(f"{run} exists and is not a ddpm run; choose another --out")
    cfg = make_run_config("mnist", train={"data": "mnist", **({"steps": args.steps} if args.steps else {})})
    steps, train_s, sampling_s = _demo_plan(cfg, budget_s=args.minutes * 60 - 5, n=args.n,
                                            sampling_steps=args.sampling_steps, device=device,
                                            calibrate=not resume and not args.steps)
    if steps is not None:  # timed on this machine: a new run without --steps
        print(f"this machine fits {steps} training steps (the recipe's most: {cfg.train.steps}) in "
              f"{train_s / 60:.1f} min, leaving about {sampling_s:.0f} s for sampling within --minutes "
              f"{args.minutes:g}", file=sys.stderr)
    steps = args.steps or steps
    over = {"time_limit": train_s / 60, **({"steps": steps} if steps else {})}
    if resume:
        cfg = _resume_config(run, over, {}, "mnist")
        done = max((checkpoint_step(p) for p in list_checkpoints(run)), default=0)
        if done >= cfg.train.steps:
            print(f"the demo run in {run} has finished its {cfg.train.steps} steps: drawing its samples again (for "
                  f"a longer run: ddpm demo --out NEW --minutes M, or ddpm train --data mnist --out RUN, the full "
                  f"{RECIPES['mnist']['train']['steps']}-step recipe)", file=sys.stderr)
        else:
            print(f"continuing the demo run in {run} from step {done} of {cfg.train.steps}", file=sys.stderr)
    else:
        cfg = make_run_config("mnist", train={"data": "mnist", **over})
    train_run(run, cfg, resume=True, device=device)
    ckpt = load_checkpoint(run, map_location=device)
    images = _generate(ckpt, args.n, seed=0, batch_size=DEMO_BATCH, ema=True, device=device, precision="auto",
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
              sampler: str = "ancestral", steps: Optional[int] = None, eta: float = 0.0, spacing: str = "uniform",
              callback=None):
    from .samplers import generate, make_sampler

    smp = make_sampler(sampler, ckpt.diffusion, steps=steps, eta=eta, spacing=spacing)
    model = ckpt.ema_model if ema else ckpt.model
    c, s = ckpt.config.model.in_channels, ckpt.config.model.image_size
    return generate(model, smp, n, (c, s, s), seed=seed, batch_size=batch_size, device=device, precision=precision,
                    callback=callback)


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
    for flag, suffix in (("trajectory", ".png"), ("gif", ".gif")):
        if getattr(args, flag):
            _png_out(getattr(args, flag), suffix)
    device = _device(args.device)
    ckpt = load_checkpoint(args.run, map_location=device)
    trajectory = None
    if args.trajectory or args.gif:
        from .samplers import make_sampler
        from .viz import Trajectory

        T = ckpt.diffusion.T
        indices = make_sampler(args.sampler, ckpt.diffusion, steps=args.steps, spacing=args.spacing).indices
        keep = [max(1, round(f * T)) for f in (1.0, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.0)]
        trajectory = Trajectory(indices, keep=keep, frames=40 if args.gif else 0, samples=min(4, args.n))
    images = _generate(ckpt, args.n, seed=args.seed, batch_size=args.batch_size, ema=args.ema, device=device,
                       precision=args.precision, sampler=args.sampler, steps=args.steps, eta=args.eta,
                       spacing=args.spacing, callback=trajectory)
    _write_images(images, out)
    print(f"wrote {args.n} samples from {args.run} (step {ckpt.step}, {'EMA' if args.ema else 'raw'} weights) "
          f"to {out}", file=sys.stderr)
    if trajectory is not None:
        if args.trajectory:
            trajectory.strip().save(args.trajectory)
            print(f"wrote the reverse process of {trajectory.samples} samples to {args.trajectory}", file=sys.stderr)
        if args.gif:
            trajectory.save_gif(args.gif)
            print(f"wrote its animation to {args.gif}", file=sys.stderr)
    return 0


def _png_out(path: str, suffix: str = ".png") -> Path:
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise DDPMError(f"{out} must end in {suffix}")
    if not out.parent.is_dir():
        raise DDPMError(f"cannot write {out}: folder {out.parent} does not exist")
    return out


def _load_image(spec: str, size: int):
    """An image file (or mnist:K) -> float [C, H, W] in [-1, 1], short side resized to ``size``, centre-cropped."""
    import torch
    from PIL import Image, ImageOps

    from .data import _chw, _fit, _to_mode, load_data, to_float

    if spec.startswith("mnist:") or spec == "mnist":
        digits = load_data("mnist", channels=1, image_size=28)
        k = spec.partition(":")[2] or "0"
        if not k.isdigit() or int(k) >= len(digits):
            raise DDPMError(f"{spec!r}: K must be an index from 0 to {len(digits) - 1}")
        im = Image.fromarray(digits.images[int(k), 0].numpy())
    else:
        path = Path(spec)
        if not path.is_file():
            raise DDPMError(f"image {path} not found")
        try:
            with Image.open(path) as f:
                f.load()
                im = ImageOps.exif_transpose(f)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
            raise DDPMError(f"cannot read image {path}: {e}") from None
    grey = im.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    arr = _chw(_fit(_to_mode(im, "L" if grey else "RGB"), size))
    return to_float(torch.from_numpy(arr.copy()))


def _diffusion_from(args: argparse.Namespace):
    from .checkpoint import read_config
    from .config import DiffusionConfig

    flags = _fields(args, DiffusionConfig)
    if args.run is not None:
        if flags:
            raise DDPMError(f"--run takes the schedule from the run; drop {', '.join(_flag(k) for k in flags)}")
        return read_config(args.run).diffusion.build()
    return DiffusionConfig(**flags).build()


def cmd_noise(args: argparse.Namespace) -> int:
    from .viz import noise_strip

    out = _png_out(args.out)
    diffusion = _diffusion_from(args)
    x0 = _load_image(args.image, args.size)
    noise_strip(diffusion, x0, args.t, seed=args.seed).save(out)
    print(f"wrote the forward process of {args.image} at t = {', '.join(map(str, args.t))} "
          f"(T = {diffusion.T}) to {out}", file=sys.stderr)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    from .schedule import NoiseSchedule
    from .viz import plot_schedule

    out = _png_out(args.out)
    plot_schedule({f"linear (T={args.T})": NoiseSchedule.linear(args.T),
                   f"cosine (T={args.T})": NoiseSchedule.cosine(args.T)}, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _new_dir(path: str) -> Path:
    out = Path(path)
    if out.exists():
        raise DDPMError(f"{out} already exists; choose another --out")
    if not out.parent.is_dir():
        raise DDPMError(f"cannot create {out}: folder {out.parent} does not exist")
    return out


def cmd_import(args: argparse.Namespace) -> int:
    from .interop.diffusers import import_diffusers

    out = _new_dir(args.out)
    import_diffusers(args.dir, out)
    from .checkpoint import read_config

    cfg = read_config(out)
    print(f"imported {args.dir} into {out}: {cfg.model.ch}-channel UNet, {cfg.model.image_size}x{cfg.model.image_size}"
          f"x{cfg.model.in_channels}, T={cfg.diffusion.T}, {cfg.diffusion.schedule} schedule, "
          f"{cfg.diffusion.var_type} variance", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .interop.diffusers import export_diffusers

    out = _new_dir(args.out)
    ckpt = load_checkpoint(args.run)
    export_diffusers(ckpt.ema_model if args.ema else ckpt.model, ckpt.config.diffusion, out)
    print(f"exported {args.run} (step {ckpt.step}, {'EMA' if args.ema else 'raw'} weights) to {out}; "
          f"load it with diffusers.DDPMPipeline.from_pretrained({str(out)!r})", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    out = Path(args.out) if args.out else Path(args.run) / "eval"
    if args.out and not out.parent.is_dir():
        raise DDPMError(f"cannot write into {out}: folder {out.parent} does not exist")
    if args.metric == "bpd":
        for flag, value in (("--samples", args.samples), ("--steps", args.steps), ("--inception", args.inception)):
            if value is not None:
                raise DDPMError(f"{flag} is for --metric fd")
    elif args.sampler == "ancestral" and args.steps is not None:
        raise DDPMError("--steps needs --sampler respaced or ddim (ancestral sampling takes all T steps)")
    if args.eta < 0:
        raise DDPMError(f"--eta must be >= 0, got {args.eta}")
    samples = _read_samples(args.samples) if args.samples else None
    device = _device(args.device)
    ckpt = load_checkpoint(args.run, map_location=device)
    cfg = ckpt.config
    if args.metric == "fd":
        from .metrics import get_features

        feat_name, feat_net = get_features(args.features, channels=cfg.model.in_channels, inception=args.inception)
    real = _eval_data(args.data or cfg.train.data, cfg)
    if samples is not None and samples.shape[1:] != real.images.shape[1:]:
        raise DDPMError(f"{args.samples}: samples are {tuple(samples.shape[1:])} (C, H, W) but the real images "
                        f"{tuple(real.images.shape[1:])}")
    out.mkdir(exist_ok=True)
    if args.metric == "bpd":
        return _eval_bpd(args, ckpt, real, out, device)
    return _eval_fd(args, ckpt, real, out, device, feat_name, feat_net, samples)


def _eval_data(src: str, cfg):
    from .data import load_data
    from .interop.diffusers import IMPORTED_DATA

    if src == IMPORTED_DATA:
        raise DDPMError("this run was imported and has no data of its own: pass --data SRC (e.g. a CIFAR-10 archive)")
    data = load_data(src, channels=cfg.model.in_channels, image_size=cfg.model.image_size, progress=True)
    if len(data) == 0:
        raise DDPMError(f"data source {src!r} has no images")
    return data


def _eval_bpd(args, ckpt, data, out: Path, device) -> int:
    import json

    import numpy as np
    import torch

    from .checkpoint import atomic_write_text
    from .metrics import evaluate_bpd
    from .viz import plot_bpd_terms

    n = min(args.n or 100, len(data))
    pick = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed))[:n]
    images = data.images[pick.sort().values]
    model = ckpt.ema_model if args.ema else ckpt.model
    res = evaluate_bpd(ckpt.diffusion, model, images, batch_size=min(args.batch_size, n), seed=args.seed,
                       device=device)
    total, prior, terms = res["total"], res["prior"], res["terms"]
    T = terms.shape[1]

    def se(v):
        return float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")

    lines = ["term,t,bits_per_dim,std_error", f"prior,{T},{prior.mean():.8g},{se(prior):.4g}"]
    lines += [f"kl,{t + 1},{terms[:, t].mean():.8g},{se(terms[:, t]):.4g}" for t in range(T - 1, 0, -1)]
    lines += [f"decoder,1,{terms[:, 0].mean():.8g},{se(terms[:, 0]):.4g}", f"total,,{total.mean():.8g},{se(total):.4g}"]
    atomic_write_text(out / "bpd_terms.csv", "\n".join(lines) + "\n")
    summary = {"run": str(args.run), "step": ckpt.step, "data": data.name, "n": n, "ema": args.ema,
               "bits_per_dim": float(total.mean()), "std_error": se(total), "prior": float(prior.mean()),
               "decoder": float(terms[:, 0].mean()), "kl_terms": float(terms[:, 1:].sum(1).mean())}
    atomic_write_text(out / "bpd.json", json.dumps(summary, indent=2) + "\n")
    plot_bpd_terms(terms.mean(0), out / "bpd_terms.png", prior=float(prior.mean()),
                   title=f"{args.run} (step {ckpt.step}): {total.mean():.3f} bits/dim on {n} images of {data.name}")
    print(f"bits/dim: {total.mean():.4f} +- {se(total):.4f} (mean +- standard error over {n} images of {data.name}; "
          f"prior {prior.mean():.2g}, KL terms {summary['kl_terms']:.4f}, decoder {summary['decoder']:.4f})")
    print(f"per-t terms: {out / 'bpd_terms.csv'}, plot: {out / 'bpd_terms.png'}", file=sys.stderr)
    return 0


def _eval_fd(args, ckpt, data, out: Path, device, feat_name: str, feat_net, samples=None) -> int:
    import time

    import numpy as np
    import torch

    from .checkpoint import atomic_write_text
    from .metrics import extract_features, frechet_distance, gaussian_stats, reference_stats
    from .viz import plot_fd_steps

    mu_r, sig_r = reference_stats(feat_net, feat_name, data.images, data.name, cache_dir=out, device=device,
                                  progress=True)
    rows = []
    sets = [] if samples is None else [("file", 0, samples, float("nan"))]
    n = args.n or 1000
    for steps in ([] if samples is not None else (args.steps or [None])):
        t0 = time.perf_counter()
        images = _generate(ckpt, n, seed=args.seed, batch_size=args.batch_size, ema=args.ema, device=device,
                           precision=args.precision, sampler=args.sampler, steps=steps, eta=args.eta,
                           spacing=args.spacing)
        seconds = time.perf_counter() - t0
        sets.append((args.sampler, steps or ckpt.diffusion.T, images, seconds))
    print(f"Fréchet distance of {feat_name} features to {len(data)} real images of {data.name}:")
    print(f"{'sampler':>10} {'steps':>6} {'n':>6} {'seconds':>9} {'s/image':>9} {'FD':>10}")
    for name, steps, images, seconds in sets:
        mu, sig = gaussian_stats(extract_features(feat_net, images, device=device, progress=True,
                                                  desc=f"{feat_name} features of samples"))
        fd = frechet_distance(mu, sig, mu_r, sig_r)
        row = {"sampler": name, "steps": steps, "n": len(images), "seconds": seconds,
               "seconds_per_image": seconds / len(images), "fd": fd}
        rows.append(row)
        print(f"{name:>10} {steps:>6} {len(images):>6} {seconds:>9.1f} {row['seconds_per_image']:>9.4f} {fd:>10.3f}",
              flush=True)
    header = "sampler,steps,eta,n,seconds,seconds_per_image,fd,features"
    lines = [header] + [f"{r['sampler']},{r['steps']},{args.eta if r['sampler'] == 'ddim' else ''},{r['n']},"
                        f"{r['seconds']:.3f},{r['seconds_per_image']:.6f},{r['fd']:.6g},{feat_name}" for r in rows]
    atomic_write_text(out / "fd.csv", "\n".join(lines) + "\n")
    if len(rows) > 1:
        plot_fd_steps(rows, out / "fd_vs_steps.png", title=f"{args.run} (step {ckpt.step}), {rows[0]['n']} samples, "
                                                        f"{feat_name} features")
        print(f"table: {out / 'fd.csv'}, plot: {out / 'fd_vs_steps.png'}", file=sys.stderr)
    else:
        print(f"table: {out / 'fd.csv'}", file=sys.stderr)
    return 0


def _read_samples(path: str):
    import numpy as np
    import torch

    p = Path(path)
    if not p.is_file():
        raise DDPMError(f"samples file {p} not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            arr = z["arr_0"]
    except (ValueError, KeyError, OSError) as e:
        raise DDPMError(f"{p} is not an .npz with arr_0 uint8 [N, H, W, C]: {e}") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or len(arr) < 2:
        raise DDPMError(f"{p}: arr_0 must be uint8 [N, H, W, C] with N >= 2, got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    keep_freed_memory()  # reuse freed activations instead of faulting them in again each step (runtime.py)
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
