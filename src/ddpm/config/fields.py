"""The typed configs of a run: the network (``UNetConfig``), the diffusion (``DiffusionConfig``) and training
(``TrainConfig``), each field with its flag's help text, checked when made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple, Union

from ..diffusion.gaussian import OBJECTIVES, VAR_TYPES, GaussianDiffusion
from ..diffusion.parameterisation import PREDICTIONS
from ..diffusion.schedule import NoiseSchedule
from ..errors import DDPMError

__all__ = ["UNetConfig", "DiffusionConfig", "TrainConfig", "DATA_OPTIONS", "RESIZES", "PRECISIONS", "flag",
           "TRAIN_GROUPS", "EVAL_SAMPLERS", "profiles", "from_dict"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
LOSSES = ("l2", "l1")
T_SAMPLINGS = ("uniform", "importance")
LOGS = ("csv", "tensorboard")
INIT_WEIGHTS = ("ema", "raw")
LR_SCHEDULES = ("constant", "cosine")
DATA_OPTIONS = ("resize", "image_column", "label_column")  # the fields of TrainConfig that say how data is read
RESIZES = ("center-crop", "pad", "stretch")  # how an image becomes square (data.images.fit); the first: default


def flag(name: str) -> str:
    """The CLI flag of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _opt(help: str, **kw) -> Any:
    """A dataclass field with CLI help text (``metadata['help']``) and optional ``choices``."""
    default = kw.pop("default")
    return field(default=default, metadata={"help": help, **kw})


def from_dict(cls, d: Dict[str, Any], what: str):
    unknown = set(d) - {f.name for f in fields(cls)}
    if unknown:
        raise DDPMError(f"unknown {what} field(s): {', '.join(sorted(unknown))}")
    return cls(**d)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`ddpm.UNet`. ``image_size``: S for square images, or (H, W); ``attn_resolutions``
    are feature-map sizes in pixels (of the shorter side)."""

    in_channels: int = 3
    out_channels: Optional[int] = None  # None: same as in_channels
    image_size: Union[int, Tuple[int, int]] = 32
    ch: int = 128
    ch_mult: Tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    num_classes: int = 0  # > 0: class-conditional, with one more embedding row, index num_classes, for "no class"

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        size = self.image_size
        if isinstance(size, (list, tuple)) and len(size) == 2 and all(_positive_int(v) for v in size):
            object.__setattr__(self, "image_size", int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1])))
        elif not _positive_int(size):
            raise ValueError(f"UNet image_size must be a positive integer or a (height, width) pair, got {size!r}")
        for name in ("in_channels", "ch", "num_res_blocks", "num_groups"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"UNet {name} must be a positive integer, got {v!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"UNet num_classes must be a non-negative integer, got {self.num_classes!r}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"UNet out_channels must be positive, got {self.out_channels!r}")
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(f"UNet ch_mult must be a non-empty tuple of positive integers, got {self.ch_mult!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNet dropout must lie in [0, 1), got {self.dropout!r}")
        for c in {self.ch * m for m in self.ch_mult}:
            if c % self.num_groups:
                raise ValueError(f"UNet width {c} is not divisible by num_groups={self.num_groups}")
        k = 2 ** (len(self.ch_mult) - 1)
        if self.height % k or self.width % k:
            near = _nearest(self.hw, k)
            raise ValueError(f"UNet image_size={self.size_text} must be divisible by 2**{len(self.ch_mult) - 1} = {k} "
                             f"on each side (one halving per level after the first); the nearest sizes that work: "
                             f"{near}")

    @property
    def hw(self) -> Tuple[int, int]:
        """(height, width) of the images."""
        s = self.image_size
        return (s, s) if isinstance(s, int) else (s[0], s[1])

    @property
    def height(self) -> int:
        return self.hw[0]

    @property
    def width(self) -> int:
        return self.hw[1]

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(C, H, W) of the network's images."""
        return (self.in_channels, self.height, self.width)

    @property
    def size_text(self) -> str:
        """"32" for a square, "64x128" (H x W) otherwise, as --image-size takes it."""
        return str(self.image_size) if isinstance(self.image_size, int) else f"{self.height}x{self.width}"

    @property
    def resolutions(self) -> List[int]:
        """Feature-map size (of the shorter side) at each level, top to bottom."""
        return [min(self.hw) // 2**i for i in range(len(self.ch_mult))]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        if not isinstance(self.image_size, int):
            d["image_size"] = list(self.image_size)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "UNetConfig":
        return from_dict(cls, d, "UNet config")


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = _opt("number of diffusion steps", default=1000)
    schedule: str = _opt("beta schedule: linear (the paper's) or cosine", default="linear",
                         choices=("linear", "cosine"))
    beta_start: float = _opt("first beta of the linear schedule (scaled by 1000/T)", default=1e-4)
    beta_end: float = _opt("last beta of the linear schedule (scaled by 1000/T)", default=0.02)
    var_type: str = _opt("reverse-process variance: fixedlarge (beta_t, the paper's CIFAR-10), fixedsmall "
                         "(beta-tilde_t), learned (the network outputs log sigma^2), learned-range (Improved "
                         "DDPM's interpolation between log beta_t and log beta-tilde_t); the learned ones need 2C "
                         "output channels and --objective vlb or hybrid", default="fixedlarge", choices=VAR_TYPES)
    predict: str = _opt("what the network predicts: eps (the paper's), x0, mu (the posterior mean, the official "
                        "code's xprev) or v (Salimans & Ho 2022)", default="eps", choices=PREDICTIONS)

    def build(self) -> GaussianDiffusion:
        if self.schedule not in ("linear", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}; expected 'linear' or 'cosine'")
        s = NoiseSchedule.linear(self.T, self.beta_start, self.beta_end) if self.schedule == "linear" else \
            NoiseSchedule.cosine(self.T)
        return GaussianDiffusion(s, var_type=self.var_type, predict=self.predict)


# TrainConfig's fields by what they are about (config.json keeps them flat; `ddpm train --help` shows these groups)
TRAIN_GROUPS: Dict[str, Tuple[str, ...]] = {
    "data": ("data", "resize", "image_column", "label_column", "hflip", "class_cond", "p_uncond", "skip_bad_images",
             "val_fraction"),
    "optimisation": ("steps", "batch_size", "grad_accum", "grad_checkpointing", "lr", "warmup", "lr_schedule",
                     "grad_clip", "ema_decay", "ema_warmup", "precision", "compile", "skip_nonfinite", "seed"),
    "objective": ("loss", "objective", "vlb_weight", "t_sampling", "snr_gamma"),
    "logging and checkpoints": ("log_every", "sample_every", "save_every", "save_minutes", "keep", "keep_every",
                                "n_samples", "log", "time_limit", "fit_steps"),
    "fine-tuning": ("init_from", "init_weights"),
    "evaluation": ("eval_every", "eval_n", "eval_sampler", "eval_steps", "ema_profiles", "ema_snapshot_every"),
}
EVAL_SAMPLERS = ("ancestral", "respaced", "ddim", "dpm++", "sde-dpm++")  # what --eval-sampler may name


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains: its data, the optimisation, the objective, logging and checkpoints, and fine-tuning
    (``TRAIN_GROUPS``), one flat set of fields, each with its flag's help; checked when made."""

    data: str = _opt("data source: 'mnist' (shipped), a folder of images, a CIFAR-10 archive/folder, an LMDB, a zip, "
                     "a Hugging Face dataset (parquet or save_to_disk) or an .npz/.npy array (see 'data sources' "
                     "above)", default="mnist")
    resize: str = _opt("how images become square at the network's size: center-crop (the paper's: short side "
                       "resized, bicubic, centre crop), pad (long side resized, black borders) or stretch",
                       default="center-crop", choices=RESIZES)
    image_column: str = _opt("a Hugging Face dataset's image column (default: its Image feature, else 'image', ...)",
                             default="")
    label_column: str = _opt("a Hugging Face dataset's label column (default: its ClassLabel, else 'label', ...)",
                             default="")
    steps: int = _opt("total number of training steps (a resumed run continues up to this)", default=800_000)
    batch_size: int = _opt("global batch size (over all processes under torchrun)", default=128)
    grad_accum: int = _opt("split each process's share of the batch into this many micro-batches (same result, "
                           "less memory)", default=1)
    grad_checkpointing: bool = _opt("keep only each UNet block's input and recompute its activations in the backward "
                                    "pass: the same gradients in far less activation memory, for about one more "
                                    "forward pass per step; for a batch that does not fit otherwise (see --dry-run)",
                                    default=False)
    lr: float = _opt("Adam learning rate", default=2e-4)
    warmup: int = _opt("linear learning-rate warm-up steps", default=5000)
    lr_schedule: str = _opt("after warm-up: constant (the paper's) or cosine decay to 0 at --steps",
                            default="constant", choices=LR_SCHEDULES)
    snr_gamma: float = _opt("min-SNR-gamma loss weighting (Hang et al. 2023): each example's L_simple times "
                            "min(SNR_t, gamma) / SNR_t, SNR_t = abar_t / (1 - abar_t); 0: off (the paper's L_simple)",
                            default=0.0)
    grad_clip: float = _opt("clip the gradient norm to this (0: off)", default=1.0)
    ema_decay: float = _opt("decay of the exponential moving average of the weights", default=0.9999)
    ema_warmup: bool = _opt("let the EMA decay grow as min(decay, (1 + n) / (10 + n)) over its first n updates, so "
                            "that early samples are not of the initial weights (the paper's code: off)", default=False)
    loss: str = _opt("l2: the paper's ||eps - eps_theta||^2 (in the --predict target); l1: |eps - eps_theta|",
                     default="l2", choices=LOSSES)
    objective: str = _opt("simple: L_simple (Algorithm 1); vlb: the true bound L (the per-t KL terms and the "
                          "decoder, in bits/dim); hybrid: L_simple + --vlb-weight T L_t with the mean's gradient "
                          "stopped, so the bound trains a learned variance only (Improved DDPM)", default="simple",
                          choices=OBJECTIVES)
    vlb_weight: float = _opt("lambda of the hybrid objective", default=0.001)
    t_sampling: str = _opt("uniform t, or importance: t drawn by the root mean square of its last 10 losses, each "
                           "loss weighted by 1 / (T p_t) (Improved DDPM; uniform until every t has 10)",
                           default="uniform", choices=T_SAMPLINGS)
    val_fraction: float = _opt("keep this share of the images (at most 1,000) out of training and log L_simple on "
                               "them at fixed (t, eps) every --log-every steps (0: off)", default=0.01)
    hflip: Optional[bool] = _opt("random horizontal flips (default: on for CIFAR-10 and folders, off for mnist)",
                                 default=None)
    class_cond: bool = _opt("train a class-conditional model on the data's labels (mnist, CIFAR-10, a folder of "
                            "class subfolders), with a null class for classifier-free guidance", default=False)
    p_uncond: float = _opt("with --class-cond: the share of training examples whose label is replaced by the null "
                           "class (what classifier-free guidance needs)", default=0.1)
    skip_bad_images: bool = _opt("leave unreadable images out of the data (listed in RUN/skipped_images.txt) instead "
                                 "of stopping at the first", default=False)
    seed: int = _opt("seed for initialisation, data order and every random draw", default=0)
    log_every: int = _opt("write a metrics.csv row every N steps", default=100)
    sample_every: int = _opt("write a grid of EMA samples every N steps (0: never)", default=10_000)
    save_every: int = _opt("write a checkpoint every N steps", default=5000)
    save_minutes: float = _opt("also write one at least every M minutes of wall clock, so that a preemption loses "
                               "at most M minutes at any speed (0: off)", default=0.0)
    keep: int = _opt("keep the last K checkpoints", default=3)
    keep_every: int = _opt("also keep every checkpoint whose step is a multiple of N: milestones (0: none)",
                           default=0)
    n_samples: int = _opt("number of images in the periodic sample grid", default=64)
    precision: str = _opt("training precision: fp32; bf16 autocast with fp32 master weights; fp16 autocast with a "
                          "gradient scaler (for GPUs without bf16: T4, V100); auto: bf16 where the hardware has it "
                          "natively (recent CPUs, GPUs of compute capability 8.0 on), else fp16 on an older GPU, "
                          "else fp32", default="auto", choices=PRECISIONS)
    skip_nonfinite: bool = _opt("skip a step whose loss or gradient is NaN/inf (counted in metrics.csv) "
                                "instead of stopping", default=False)
    compile: bool = _opt("compile the network with torch.compile (slow to start, then faster; the compiled "
                         "code is cached across runs)", default=False)
    time_limit: float = _opt("stop (with a checkpoint) after this many minutes (0: no limit)", default=0.0)
    fit_steps: bool = _opt("with --time-limit: fit --steps to it from the step time measured in the warm-up, so that a "
                           "cosine decay ends when the time does", default=False)
    log: str = _opt("csv: metrics.csv and loss.png; tensorboard: also event files in RUN/tensorboard/ (needs the "
                    "tensorboard package)", default="csv", choices=LOGS)
    init_from: str = _opt("fine-tuning: start a new run from the weights of another run or of a diffusers pipeline "
                          "directory, with its network (and, unless given, its diffusion and preset)", default="",
                          metavar="RUN_OR_DIFFUSERS_DIR")
    init_weights: str = _opt("with --init-from: its EMA weights or its raw ones", default="ema", choices=INIT_WEIGHTS)
    eval_every: int = _opt("every N steps log the Fréchet distance of --eval-n EMA samples to the run's data (fd in "
                           "metrics.csv; digit-classifier features for 1 channel, the FID Inception's for RGB) and "
                           "keep the checkpoint of the lowest as 'best' (0: off)", default=0)
    eval_n: int = _opt("samples per evaluation (FD@n: compare only at equal n)", default=1000)
    eval_sampler: str = _opt("the evaluation's sampler", default="sde-dpm++", choices=EVAL_SAMPLERS)
    eval_steps: int = _opt("the evaluation's network calls per image (0: the sampler's default)", default=20)
    ema_profiles: str = _opt("post-hoc EMA: track power-function EMAs of these lengths sigma_rel (EDM2's: 0.05,0.10) "
                             "and snapshot them, for 'ddpm ema' (empty: off)", default="", metavar="SIGMA_RELS")
    ema_snapshot_every: int = _opt("steps between EMA snapshots (0: --save-every)", default=0)

    def data_options(self, src: Optional[str] = None) -> Dict[str, Any]:
        """``load_data``'s options for this run's data (``src``: another source, read with the run's resize)."""
        same = src is None or src == self.data
        return {k: getattr(self, k) if same or k == "resize" else "" for k in DATA_OPTIONS}

    def __post_init__(self) -> None:
        """Every field checked when the config is made (or replaced): a bad value is a DDPMError naming its flag."""
        for name in ("steps", "batch_size", "grad_accum", "log_every", "save_every", "keep", "n_samples", "eval_n"):
            _check_int(name, getattr(self, name), 1, "a positive")
        for name in ("warmup", "sample_every", "seed", "keep_every", "eval_every", "eval_steps", "ema_snapshot_every"):
            _check_int(name, getattr(self, name), 0, "a non-negative")
        checks = [("lr", self.lr > 0, "must be positive"), ("ema_decay", 0 <= self.ema_decay < 1, "must lie in [0, 1)"),
                  *((k, getattr(self, k) >= 0, "must be >= 0")
                    for k in ("snr_gamma", "grad_clip", "time_limit", "save_minutes")),
                  ("eval_n", self.eval_n >= 2 or not self.eval_every, "must be >= 2 (one sample has no covariance)"),
                  ("fit_steps", self.time_limit > 0 or not self.fit_steps, "needs --time-limit"),
                  ("p_uncond", 0 <= self.p_uncond < 1, "must lie in [0, 1)"),
                  ("val_fraction", 0 <= self.val_fraction < 1, "must lie in [0, 1)"),
                  ("vlb_weight", self.vlb_weight > 0, "must be positive"),
                  ("init_weights", self.init_weights in INIT_WEIGHTS and (self.init_from or self.init_weights == "ema"),
                   f"is for --init-from ({' or '.join(INIT_WEIGHTS)})")]
        checks += [(f.name, getattr(self, f.name) in f.metadata["choices"],
                    f"must be one of {', '.join(f.metadata['choices'])}") for f in fields(self)
                   if f.metadata.get("choices") and f.name != "init_weights"]
        for name, ok, what in checks:
            if not ok:
                raise DDPMError(f"{flag(name)} {what}, got {getattr(self, name)!r}")
        profiles(self.ema_profiles)  # a bad list is refused here
        if self.grad_accum > self.batch_size:
            raise DDPMError(f"--grad-accum {self.grad_accum} is larger than --batch-size {self.batch_size}")


def profiles(text: str, flag_name: str = "--ema-profiles") -> Tuple[float, ...]:
    """``--ema-profiles`` (e.g. "0.05,0.10"; () when empty); each in (0, 0.28): sigma_rel >= 0.2887 has no EMA."""
    try:
        values = tuple(float(v) for v in text.split(",")) if text.strip() else ()
    except ValueError:
        values = (-1.0,)
    if any(not 0 < v < 0.28 for v in values) or len(set(values)) != len(values):
        raise DDPMError(f"{flag_name} takes distinct lengths in (0, 0.28) such as 0.05,0.10, got {text!r}")
    return values


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _nearest(hw: Tuple[int, int], k: int) -> str:
    """The sizes nearest (h, w) whose sides are multiples of k: each side rounded down and up."""
    sides = [sorted({max(k, v // k * k), -(-v // k) * k}) for v in hw]
    return " or ".join(f"{h}x{w}" if h != w else str(h) for h in sides[0] for w in sides[1])


def _check_int(name: str, v: Any, low: int, what: str) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise DDPMError(f"{flag(name)} must be {what} integer, got {v!r}")
