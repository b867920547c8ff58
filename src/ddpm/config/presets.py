"""The one table of presets (each a network, a training recipe and diffusion defaults) and a run's config made
from one: ``RunConfig``, ``make_run_config`` and the rules for changing a run's config."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from ..diffusion.parameterisation import LEARNED
from ..errors import DDPMError
from .fields import DiffusionConfig, TrainConfig, UNetConfig, from_dict

__all__ = ["Preset", "PRESETS", "RunConfig", "make_run_config", "with_classes", "overlay", "check_outputs", "at_size",
           "levels_note"]


@dataclass(frozen=True)
class Preset:
    """A network, the TrainConfig / DiffusionConfig fields that differ from their defaults, and a summary."""

    model: UNetConfig
    train: Dict[str, Any]
    diffusion: Dict[str, Any]
    summary: str


PRESETS: Dict[str, Preset] = {
    # Appendix B: T=1000, linear 1e-4..0.02, Adam 2e-4, batch 128, warm-up 5000, clip 1, EMA 0.9999, 800k steps.
    # The network has 35.7M parameters (diffusers' google/ddpm-cifar10-32 port: 35,746,307).
    # Paper presets train on every image (no held-out share) with the EMA at 0.9999 from step 1, as the paper.
    "cifar10": Preset(UNetConfig(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                                 attn_resolutions=(16,), dropout=0.1), {"val_fraction": 0.0}, {},
                      "the paper's 35.7M UNet for 32x32 RGB and its CIFAR-10 recipe"),
    # Appendix B: CelebA-HQ / LSUN 256: lr 2e-5, batch 64, 0.5M steps; ~114M parameters.
    "celebahq256": Preset(UNetConfig(in_channels=3, image_size=256, ch=128, ch_mult=(1, 1, 2, 2, 4, 4),
                                     num_res_blocks=2, attn_resolutions=(16,), dropout=0.0),
                          {"lr": 2e-5, "batch_size": 64, "steps": 500_000, "val_fraction": 0.0}, {},
                          "the paper's 114M UNet for 256x256 RGB and its CelebA-HQ recipe"),
    # The CPU demo: 0.69M parameters for 28x28 digits, chosen by measured sample quality per minute of CPU time;
    # 4,800 steps (about 16 min on 2 cores); min-SNR-5 reaches the demo's quality bar in 700 (BENCHMARKS.md).
    "mnist": Preset(UNetConfig(in_channels=1, image_size=28, ch=16, ch_mult=(1, 2, 4), num_res_blocks=1,
                               attn_resolutions=(7,), dropout=0.0, num_groups=8),
                    {"steps": 4800, "batch_size": 64, "lr": 2e-3, "lr_schedule": "cosine", "warmup": 100,
                     "snr_gamma": 5.0, "ema_decay": 0.995, "ema_warmup": True, "log_every": 50, "sample_every": 0,
                     "save_every": 500}, {},
                    "0.69M UNet for 28x28 gray, a 16-minute CPU recipe (the demo's)"),
    # A few thousand parameters: for tests and smoke runs.
    "tiny": Preset(UNetConfig(in_channels=1, image_size=16, ch=4, ch_mult=(1, 2), num_res_blocks=1,
                              attn_resolutions=(), dropout=0.0, num_groups=2),
                   {"steps": 200, "batch_size": 16, "lr": 1e-3, "warmup": 20, "ema_decay": 0.99, "ema_warmup": True,
                    "precision": "fp32", "log_every": 10, "sample_every": 0, "save_every": 100, "n_samples": 16},
                   {"T": 100}, "11k-parameter UNet for 16x16 gray, for tests and smoke runs"),
}


@dataclass(frozen=True)
class RunConfig:
    """A run. ``classes``: the names of a class-conditional run's classes (``model.num_classes`` of them)."""

    preset: str
    model: UNetConfig
    diffusion: DiffusionConfig
    train: TrainConfig
    classes: Optional[Tuple[str, ...]] = None
    data_as_given: Optional[str] = None  # ``train.data`` as the user spelled it (``train.data`` is resolved)

    def __post_init__(self):
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))

    def to_dict(self) -> Dict[str, Any]:
        d = {"preset": self.preset, "model": self.model.to_dict(), "diffusion": asdict(self.diffusion),
             "train": asdict(self.train)}
        if self.classes is not None:
            d["classes"] = list(self.classes)
        if self.data_as_given is not None:
            d["data_as_given"] = self.data_as_given
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "RunConfig":
        try:
            return cls(preset=str(d["preset"]), model=UNetConfig.from_dict(d["model"]),
                       diffusion=from_dict(DiffusionConfig, d["diffusion"], "DiffusionConfig"),
                       train=from_dict(TrainConfig, d["train"], "TrainConfig"), classes=d.get("classes"),
                       data_as_given=d.get("data_as_given"))
        except (KeyError, TypeError) as e:
            raise DDPMError(f"config is missing or has a malformed field: {e}") from None


def with_classes(cfg: RunConfig, classes: Optional[Sequence[str]]) -> RunConfig:
    """``cfg`` for data with these class names: a class-conditional run (``train.class_cond``) gets one network
    class per name (and the names); an unconditional run stays as it is."""
    if not cfg.train.class_cond:
        return cfg
    classes = tuple(classes or ())
    if not classes:
        raise DDPMError("--class-cond needs class labels, and the data has none")
    if cfg.classes is not None and tuple(cfg.classes) != classes:
        raise DDPMError(f"the run was trained on the classes {', '.join(cfg.classes)}, the data has "
                        f"{', '.join(classes)}")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=len(classes)), classes=classes)


def overlay(under: Dict[str, Any], over: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """``over``'s settings (those not None) over ``under``'s."""
    return {**under, **{k: v for k, v in (over or {}).items() if v is not None}}


def make_run_config(preset: str, *, train: Optional[Dict[str, Any]] = None,
                    diffusion: Optional[Dict[str, Any]] = None, model: Optional[Dict[str, Any]] = None) -> RunConfig:
    """The preset's network, recipe and diffusion, with explicit overrides (``None`` values are ignored)."""
    if preset not in PRESETS:
        raise DDPMError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset]
    d = DiffusionConfig(**overlay(p.diffusion, diffusion))
    given = overlay({}, model)
    base = p.model if "ch_mult" in given else at_size(p.model, given.get("image_size", p.model.image_size))
    net = UNetConfig(**overlay(asdict(base), model))
    if d.var_type in LEARNED and net.out_channels is None:  # the prediction, then the variance
        net = dataclasses.replace(net, out_channels=2 * net.in_channels)
    cfg = RunConfig(preset=preset, model=net, diffusion=d, train=TrainConfig(**overlay(p.train, train)))
    check_outputs(cfg)
    return cfg


def at_size(net: UNetConfig, size: Any) -> UNetConfig:
    """A preset's network for images of ``size`` (S or (H, W)): larger by a factor of 2^k (the shorter side), it
    gets k more levels (the last channel multiplier again), so that the lowest resolution, where the middle block
    attends over every position, stays the one the preset was designed for (the tiny preset at 256 would otherwise
    attend over 128 x 128 = 16,384 positions: about 6.5 GB for a 2-image step); smaller or of another factor, its
    levels as they are."""
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    bottom = net.height // 2 ** (len(net.ch_mult) - 1)  # the presets are square
    mult = list(net.ch_mult)
    while min(h, w) > net.height and h % 2 ** len(mult) == 0 and w % 2 ** len(mult) == 0 and \
            min(h, w) // 2 ** len(mult) >= bottom:
        mult.append(mult[-1])
    return dataclasses.replace(net, ch_mult=tuple(mult), image_size=size) if len(mult) > len(net.ch_mult) else net


def levels_note(cfg: RunConfig) -> str:
    """What ``at_size`` did to the preset's network, in a line ("" when nothing)."""
    p = PRESETS.get(cfg.preset)
    added = len(cfg.model.ch_mult) - len(p.model.ch_mult) if p is not None else 0
    if p is None or added <= 0 or min(cfg.model.hw) <= p.model.height:
        return ""
    low = cfg.model.height // 2 ** (len(cfg.model.ch_mult) - 1), cfg.model.width // 2 ** (len(cfg.model.ch_mult) - 1)
    return (f"--image-size {cfg.model.size_text} with the {cfg.preset} preset (made for {p.model.image_size}): "
            f"{added} more level{'s' if added > 1 else ''} (ch_mult {','.join(map(str, cfg.model.ch_mult))}), so the "
            f"middle block attends over {low[0]} x {low[1]} positions as the preset does")


def check_outputs(cfg: RunConfig) -> None:
    """DDPMError unless the network's outputs fit the diffusion (C channels, 2C with a learned variance) and the
    objective trains them all."""
    c = cfg.model.in_channels
    want = 2 * c if cfg.diffusion.var_type in LEARNED else c
    if (cfg.model.out_channels or c) != want:
        raise DDPMError(f"--var-type {cfg.diffusion.var_type} needs a network with {want} output channels, this one "
                        f"has {cfg.model.out_channels or c}")
    try:
        cfg.diffusion.build().check_objective(cfg.train.objective)
    except ValueError as e:
        raise DDPMError(f"--objective {cfg.train.objective} with --var-type {cfg.diffusion.var_type}: {e}") from None
