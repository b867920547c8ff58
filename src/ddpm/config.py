"""Typed run configuration: the one source of truth, saved as RUN/config.json, and the source of CLI flags.

A run is ``RunConfig(model=UNetConfig, diffusion=DiffusionConfig, train=TrainConfig)``. Each preset
brings its own recipe: the paper's for ``cifar10`` / ``celebahq256`` (Appendix B), a CPU-tuned one
for the ``mnist`` demo, a smoke-test one for ``tiny``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

from .diffusion import VAR_TYPES, GaussianDiffusion
from .errors import DDPMError
from .schedule import NoiseSchedule
from .unet import PRESETS, UNetConfig

__all__ = ["DiffusionConfig", "TrainConfig", "RunConfig", "RECIPES", "make_run_config"]


def _opt(help: str, **kw) -> Any:
    """A dataclass field with CLI help text (``metadata['help']``) and optional ``choices``."""
    default = kw.pop("default")
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class DiffusionConfig:
    T: int = _opt("number of diffusion steps", default=1000)
    schedule: str = _opt("beta schedule: linear (the paper's) or cosine", default="linear", choices=("linear", "cosine"))
    beta_start: float = _opt("first beta of the linear schedule (scaled by 1000/T)", default=1e-4)
    beta_end: float = _opt("last beta of the linear schedule (scaled by 1000/T)", default=0.02)
    var_type: str = _opt("reverse-process variance", default="fixedlarge", choices=VAR_TYPES)

    def build(self) -> GaussianDiffusion:
        if self.schedule == "linear":
            s = NoiseSchedule.linear(self.T, self.beta_start, self.beta_end)
        elif self.schedule == "cosine":
            s = NoiseSchedule.cosine(self.T)
        else:
            raise ValueError(f"unknown schedule {self.schedule!r}; expected 'linear' or 'cosine'")
        return GaussianDiffusion(s, var_type=self.var_type)


@dataclass(frozen=True)
class TrainConfig:
    data: str = _opt("data source: 'mnist' (shipped), a folder of images, or a CIFAR-10 archive/folder", default="mnist")
    steps: int = _opt("total number of training steps (a resumed run continues up to this)", default=800_000)
    batch_size: int = _opt("global batch size (over all processes under torchrun)", default=128)
    grad_accum: int = _opt("split each process's share of the batch into this many micro-batches (same result, "
                           "less memory)", default=1)
    lr: float = _opt("Adam learning rate", default=2e-4)
    warmup: int = _opt("linear learning-rate warm-up steps", default=5000)
    lr_schedule: str = _opt("after warm-up: constant (the paper's) or cosine decay to 0 at --steps",
                            default="constant", choices=("constant", "cosine"))
    snr_gamma: float = _opt("min-SNR-gamma loss weighting (Hang et al. 2023): each example's L_simple times "
                            "min(SNR_t, gamma) / SNR_t, SNR_t = abar_t / (1 - abar_t); 0: off (the paper's L_simple)",
                            default=0.0)
    grad_clip: float = _opt("clip the gradient norm to this (0: off)", default=1.0)
    ema_decay: float = _opt("decay of the exponential moving average of the weights", default=0.9999)
    hflip: Optional[bool] = _opt("random horizontal flips (default: on for CIFAR-10 and folders, off for mnist)",
                                 default=None)
    seed: int = _opt("seed for initialisation, data order and every random draw", default=0)
    log_every: int = _opt("write a metrics.csv row every N steps", default=100)
    sample_every: int = _opt("write a grid of EMA samples every N steps (0: never)", default=10_000)
    save_every: int = _opt("write a checkpoint every N steps", default=5000)
    keep: int = _opt("keep the last K checkpoints", default=3)
    n_samples: int = _opt("number of images in the periodic sample grid", default=64)
    precision: str = _opt("training precision: fp32, or bf16 autocast with fp32 master weights; auto picks bf16 "
                          "where the hardware supports it", default="auto", choices=("auto", "fp32", "bf16"))
    skip_nonfinite: bool = _opt("skip a step whose loss or gradient is NaN/inf (counted in metrics.csv) "
                                "instead of stopping", default=False)
    compile: bool = _opt("compile the network with torch.compile (slow to start, then faster; the compiled "
                         "code is cached across runs)", default=False)
    time_limit: float = _opt("stop (with a checkpoint) after this many minutes (0: no limit)", default=0.0)

    def validate(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "log_every", "save_every", "keep", "n_samples")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DDPMError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        for name in ("warmup", "sample_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise DDPMError(f"--{name.replace('_', '-')} must be a non-negative integer, got {v!r}")
        if not (self.lr > 0):
            raise DDPMError(f"--lr must be positive, got {self.lr!r}")
        if not (0 <= self.ema_decay < 1):
            raise DDPMError(f"--ema-decay must lie in [0, 1), got {self.ema_decay!r}")
        if not (self.snr_gamma >= 0):
            raise DDPMError(f"--snr-gamma must be >= 0, got {self.snr_gamma!r}")
        if not (self.grad_clip >= 0):
            raise DDPMError(f"--grad-clip must be >= 0, got {self.grad_clip!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise DDPMError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise DDPMError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.grad_accum > self.batch_size:
            raise DDPMError(f"--grad-accum {self.grad_accum} is larger than --batch-size {self.batch_size}")
        if not (self.time_limit >= 0):
            raise DDPMError(f"--time-limit must be >= 0, got {self.time_limit!r}")


# Per-preset recipes: the fields of TrainConfig / DiffusionConfig that differ from the defaults above.
RECIPES: Dict[str, Dict[str, Dict[str, Any]]] = {
    # Appendix B: T=1000, linear 1e-4..0.02, Adam 2e-4, batch 128, warm-up 5000, clip 1, EMA 0.9999, 800k steps.
    "cifar10": {"train": {}, "diffusion": {}},
    # Appendix B: CelebA-HQ 256: lr 2e-5, batch 64, 0.5M steps.
    "celebahq256": {"train": {"lr": 2e-5, "batch_size": 64, "steps": 500_000}, "diffusion": {}},
    # The CPU demo: a short, faster schedule tuned for 2 cores (see README and benchmarks/demo_quality.py).
    # 4,800 steps (about 16 min on 2 cores) reach the demo's quality bar; `ddpm demo` trains as many of
    # them as fit in its time budget, with the cosine decay ending at that step.
    "mnist": {
        "train": {"steps": 4800, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine", "warmup": 100,
                  "ema_decay": 0.995, "precision": "auto", "log_every": 50, "sample_every": 0, "save_every": 500,
                  "n_samples": 64},
        "diffusion": {},
    },
    "tiny": {
        "train": {"steps": 200, "batch_size": 16, "lr": 1e-3, "warmup": 20, "ema_decay": 0.99, "precision": "fp32",
                  "log_every": 10, "sample_every": 0, "save_every": 100, "n_samples": 16},
        "diffusion": {"T": 100},
    },
}


@dataclass(frozen=True)
class RunConfig:
    preset: str
    model: UNetConfig
    diffusion: DiffusionConfig
    train: TrainConfig

    def to_dict(self) -> Dict[str, Any]:
        return {
            "preset": self.preset,
            "model": self.model.to_dict(),
            "diffusion": dataclasses.asdict(self.diffusion),
            "train": dataclasses.asdict(self.train),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        try:
            return cls(
                preset=str(d["preset"]),
                model=UNetConfig.from_dict(d["model"]),
                diffusion=_from_dict(DiffusionConfig, d["diffusion"]),
                train=_from_dict(TrainConfig, d["train"]),
            )
        except (KeyError, TypeError) as e:
            raise DDPMError(f"config is missing or has a malformed field: {e}") from None


def _from_dict(cls, d: Dict[str, Any]):
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise DDPMError(f"unknown {cls.__name__} field(s): {', '.join(sorted(unknown))}")
    return cls(**d)


def make_run_config(preset: str, *, train: Optional[Dict[str, Any]] = None,
                    diffusion: Optional[Dict[str, Any]] = None, model: Optional[Dict[str, Any]] = None) -> RunConfig:
    """The preset's architecture and recipe, with explicit overrides (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise DDPMError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    recipe = RECIPES[preset]

    def merged(base: Dict[str, Any], over: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        return {**base, **{k: v for k, v in (over or {}).items() if v is not None}}

    model_cfg = UNetConfig(**merged(dataclasses.asdict(PRESETS[preset]), model))
    cfg = RunConfig(
        preset=preset,
        model=model_cfg,
        diffusion=DiffusionConfig(**merged(recipe["diffusion"], diffusion)),
        train=TrainConfig(**merged(recipe["train"], train)),
    )
    cfg.train.validate()
    return cfg
