"""The pieces every command's parser is built from: one-line usage errors, help that shows defaults, value
types, the flags a config dataclass defines, the sampler's flags, and ``Commands`` (the subparsers with the
options all commands share)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, List, Optional


def fields_of(args: argparse.Namespace, cls) -> Dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def early_threads(argv: List[str]) -> Optional[int]:
    """--threads N (or --threads=N), read before the parser (and torch) is imported; a bad value is left for the
    parser to report."""
    for i, a in enumerate(argv):
        value = (argv[i + 1] if a == "--threads" and i + 1 < len(argv)
                 else a[10:] if a.startswith("--threads=") else None)
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return None


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (and exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows a default where there is one to show (not for None/False, which mean "unset"/"off")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not any(action.default is v for v in (None, False, argparse.SUPPRESS)) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def count_or_all(text: str) -> Optional[int]:
    """A positive integer, or ``all`` (None: no limit)."""
    return None if text.strip().lower() == "all" else positive_int(text)


def non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return v


def int_list(text: str, low: Optional[int] = None) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or (low is not None and min(values) < low):
        raise argparse.ArgumentTypeError(f"expected integers >= {low} separated by commas, got {text!r}")
    return values


def config_flags(parser, cls, skip=(), by_preset: bool = False) -> None:
    """One CLI flag per dataclass field: the config is the one source of truth for names and help. Flags are
    unset (None) unless given; ``by_preset`` shows each preset's default. All of TrainConfig's flags are shown in
    its groups (``TRAIN_GROUPS``)."""
    from ..config import PRESETS, TRAIN_GROUPS, TrainConfig, flag

    part = "train" if cls is TrainConfig else "diffusion"
    where: Dict[str, Any] = {}  # a field's argument group, if any
    if cls is TrainConfig and not skip and hasattr(parser, "add_argument_group"):
        for title, names in TRAIN_GROUPS.items():
            where.update(dict.fromkeys(names, parser.add_argument_group(title)))
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kw: Dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata.get("help", "")}
        for key in ("choices", "metavar"):
            if f.metadata.get(key):
                kw[key] = f.metadata[key]
        if f.type in ("Optional[bool]", "bool"):
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {"int": int, "float": float, "str": str}[str(f.type)]
        values = {p: getattr(x, part).get(f.name, f.default) for p, x in PRESETS.items()} if by_preset else {}
        if f.name != "data" and f.default not in (None, ""):
            kw["help"] += (f" (default: {f.default!r})" if len(set(values.values())) <= 1 else
                           " (default: " + ", ".join(f"{p} {v!r}" for p, v in values.items()) + ")")
        where.get(f.name, parser).add_argument(flag(f.name), **kw)


SAMPLER_HELP = {"ancestral": "Algorithm 2 over all T steps", "respaced": "Algorithm 2 over --steps of them",
                "ddim": "DDIM over --steps with --eta", "dpm++": "DPM-Solver++(2M)",
                "sde-dpm++": "its stochastic twin, as good as Algorithm 2 in 20 steps"}


def sampler_flags(p, many: bool = False, samplers=None, default: str = "ancestral", steps_help: str = "") -> None:
    """--sampler (``samplers``, default all), --steps, --eta (with ddim), --spacing, and the flags every way of
    sampling shares: --seed, --batch-size, --ema, --precision, --guidance."""
    from ..sampling.samplers import SAMPLERS, SPACINGS

    samplers = samplers or SAMPLERS
    p.add_argument("--sampler", choices=samplers, default=default,
                   help="; ".join(f"{k}: {SAMPLER_HELP[k]}" for k in samplers))
    p.add_argument("--steps", type=(lambda s: int_list(s, 1)) if many else positive_int, default=None,
                   help=steps_help or "network calls per image (respaced, ddim: default T; dpm++, sde-dpm++: default "
                                      "20)" + ("; a list such as 10,20,50 measures each" if many else ""))
    if "ddim" in samplers:
        p.add_argument("--eta", type=float, default=None, help="DDIM noise: 0 deterministic (default), 1 DDPM-like")
    p.add_argument("--spacing", choices=SPACINGS, default=None, help="which of the T steps respaced, ddim and the "
                                                                     "dpm++ samplers keep (default: uniform; "
                                                                     "quadratic for sde-dpm++)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per batch")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    checkpoint_flags(p)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32",
                   help="network precision while sampling (bf16: autocast; auto: bf16 where the hardware has it)")
    p.add_argument("--guidance", type=non_negative_float, default=0.0,
                   help="classifier-free guidance weight W of a class-conditional run: eps = (1 + W) eps(x, y) - W "
                        "eps(x, null); 0 is the plain conditional model")


def sampling_settings(args: argparse.Namespace, device: Any, **changes: Any):
    """The ``SamplingSettings`` of ``sampler_flags`` (and --class, --n where the command has them), built once
    per command; ``changes`` replace what a command decides itself (e.g. eval's n)."""
    from ..sampling.settings import SamplingSettings

    steps = args.steps[0] if isinstance(args.steps, list) else args.steps
    values = dict(sampler=args.sampler, steps=steps, eta=getattr(args, "eta", None), spacing=args.spacing,
                  guidance=args.guidance, classes=getattr(args, "class_", None), ema=args.ema,
                  precision=args.precision, batch_size=args.batch_size, device=device, seed=args.seed,
                  n=getattr(args, "n", None), progress=not args.quiet, named=getattr(args, "weights", None))
    return SamplingSettings(**{**values, **changes})


def checkpoint_flags(p, named: bool = True) -> None:
    """--checkpoint best|latest|STEP and (``named``) --weights NAME: which of a run's weights a command uses."""
    from ..run.weights import checkpoint_spec

    def spec(text: str):
        try:
            return checkpoint_spec(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).replace("--checkpoint ", "")) from None

    p.add_argument("--checkpoint", type=spec, default="latest", metavar="best|latest|STEP",
                   help="which checkpoint: the latest (default), the best (the lowest FD logged while training with "
                        "--eval-every) or the one of a step")
    if named:
        p.add_argument("--weights", default=None, metavar="NAME",
                       help="the run's named weights in place of a checkpoint's EMA, e.g. ema-0.07 (made by ddpm ema "
                            "from the snapshots of --ema-profiles)")


def load_run_of(args: argparse.Namespace, device: Any = "cpu"):
    """The checkpoint (or named weights) that --run, --checkpoint and --weights name."""
    from ..errors import DDPMError
    from ..run.weights import load_run

    if getattr(args, "weights", None) and not getattr(args, "ema", True):
        raise DDPMError("--weights replaces the EMA weights: drop --no-ema")
    return load_run(args.run, checkpoint=args.checkpoint, weights=getattr(args, "weights", None),
                    map_location=device)


def job_flags(p, also: str = "", per_class: str = "") -> None:
    """--out, --overwrite, --chunk and --class: the flags of a command that writes images as a resumable
    job (sample, inpaint, edit)."""
    p.add_argument("--out", required=True, help="FILE.png, FILE.npz or a folder")
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace an existing --out {also + ' ' if also else ''}or a job of other settings in the way: "
                        "only what ddpm wrote; a folder holding anything else, a run, . or home is refused")
    p.add_argument("--chunk", type=positive_int, default=None,
                   help="images per resumable chunk (default: 1000, fewer for small jobs)")
    p.add_argument("--class", dest="class_", metavar="CLASS", default=None,
                   help="a class-conditional run's class: an index or a name (7, dog), a list (0,1,2) or all, in "
                        f"equal numbers{per_class} (default: the unconditional model, the null class)")


class Commands:
    """The subparsers: each command with its help, description, examples and the shared options."""

    def __init__(self, parser: argparse.ArgumentParser, handlers: Dict[str, Any]):
        self.sub: Any = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
        self.handlers = handlers
        self.common = argparse.ArgumentParser(add_help=False)
        self.common.add_argument("--quiet", action="store_true", help="no progress bars")
        self.common.add_argument("--threads", type=positive_int, default=None,
                                 help="CPU threads (default: the cores this process may use; OpenMP waits passively "
                                      "when other processes keep the cores busy)")
        self.device = argparse.ArgumentParser(add_help=False)
        self.device.add_argument("--device", default="auto",
                                 help="auto (a GPU if there is one), cpu, cuda, cuda:1, ... "
                                 "(under torchrun: the GPU of each local rank); on CUDA fp32 uses TF32 tensor cores")
        from ..runtime import DIST_TIMEOUT_MIN

        self.device.add_argument("--dist-timeout", type=float, default=DIST_TIMEOUT_MIN, metavar="MINUTES",
                                 help="under torchrun: how long a process waits for the others before failing")

    def add(self, name: str, help: str, description: str, examples: str, device: bool = True) -> Any:
        p = self.sub.add_parser(name, help=help, description=description, formatter_class=Formatter,
                                epilog="examples:\n  " + examples.replace("; ", "\n  "),
                                parents=[self.common, self.device] if device else [self.common])
        p.set_defaults(func=self.handlers[name])
        return p


def image_size_arg(text: str):
    """--image-size: "S" -> S, "HxW" -> (H, W)."""
    import argparse

    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise argparse.ArgumentTypeError(f"expected S or HxW (positive integers, e.g. 32 or 64x128), got {text!r}")
    return values[0] if len(values) == 1 or values[0] == values[1] else (values[0], values[1])


def data_flags(p) -> None:
    """--image-size, --channels and --cache-dir: what the decoded cache is built at, and where."""
    p.add_argument("--image-size", type=image_size_arg, default=None, metavar="S|HxW",
                   help="the network's image size: S for S x S, or HxW (height x width, e.g. 64x128; each side "
                        "divisible by the network's downsampling) (default: the preset's; e.g. the cifar10 network at "
                        "64, which adds a level so that its lowest resolution stays 4 x 4)")
    p.add_argument("--channels", type=positive_int, default=None,
                   help="1 gray, 3 RGB (default: the preset's); image files also 2 (gray and alpha) and 4 (RGBA: "
                        "alpha kept; with 1 or 3 it is dropped, not composited); more from multi-page images (a TIFF "
                        "stack: a page a channel) or arrays (.npz/.npy, a dataset's array column; up to 16, as they "
                        "are). Pictures show the first 3 channels (1 of 2)")
    cache_dir_flag(p)


def cache_dir_flag(p) -> None:
    p.add_argument("--cache-dir", default=None,
                   help="where decoded data is cached (default: $DDPM_CACHE_DIR, else ~/.cache/ddpm)")
