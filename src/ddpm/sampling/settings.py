"""How images are drawn from a run, in one object: ``SamplingSettings`` (the sampler and its steps, guidance and
classes, which weights, precision, batch size, device, seeds), built once from a command's flags and handed to
``generate``, ``sample_checkpoint``, ``sample_job``, the editors and the evaluation; ``key`` is what identifies the
images it draws (two sample sets with equal keys hold the same images).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..diffusion.gaussian import Device, GaussianDiffusion
from ..nn.unet import UNet
from .samplers import Sampler, make_sampler

__all__ = ["SamplingSettings", "weights"]


def weights(ckpt: Any, ema: bool = True) -> UNet:
    """A loaded run's network: its EMA weights (the paper samples with them), or the raw ones with ``ema=False``."""
    net: UNet = ckpt.ema_model if ema else ckpt.model
    return net


@dataclass(frozen=True)
class SamplingSettings:
    """Everything but the model that decides how images are drawn.

    ``sampler``, ``steps``, ``eta`` and ``spacing`` name the sampler (``make_sampler``); ``guidance`` is the
    classifier-free guidance weight and ``classes`` the requested classes (``class_labels``: None, "all", "7",
    "0,1,2" or names); ``ema`` picks the weights; ``precision`` the network's ("fp32", "bf16", "fp16", "auto");
    the images are those of seeds ``seed`` .. ``seed + n - 1``, drawn ``batch_size`` at a time on ``device``;
    ``progress`` shows a bar; ``named``: the name of named weights (``ddpm ema``'s) loaded in the EMA's place."""

    sampler: str = "ancestral"
    steps: Optional[int] = None
    eta: Optional[float] = None
    spacing: Optional[str] = None
    guidance: float = 0.0
    classes: Optional[str] = None
    ema: bool = True
    precision: str = "fp32"
    batch_size: int = 256
    device: Device = None
    seed: int = 0
    n: Optional[int] = None
    progress: bool = True
    named: Optional[str] = None  # the run's named weights in use (``--weights``, loaded as the EMA), for reports

    @property
    def seeds(self) -> range:
        """The seeds of the images: ``seed`` .. ``seed + n - 1``."""
        if self.n is None:
            raise ValueError("these sampling settings have no n: give n or the seeds")
        return range(self.seed, self.seed + self.n)

    @property
    def weights_name(self) -> str:
        """"EMA", "raw" or the named weights' name, as reports say it."""
        return self.named or ("EMA" if self.ema else "raw")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device or "cpu")

    def replace(self, **changes: Any) -> "SamplingSettings":
        return dataclasses.replace(self, **changes)

    def make_sampler(self, diffusion: GaussianDiffusion) -> Sampler:
        return make_sampler(self.sampler, diffusion, steps=self.steps, eta=self.eta, spacing=self.spacing)

    def weights(self, ckpt: Any) -> UNet:
        """The network of ``ckpt`` these settings sample with."""
        return weights(ckpt, self.ema)

    def key(self, ckpt: Any, sampler: Optional[Sampler] = None) -> Dict[str, Any]:
        """What decides the images of these settings from ``ckpt``: the run, its checkpoint and the sha256 of the
        weights used, the network and the diffusion, the sampler's settings (``sampler``, default the one these
        settings make), the precision as resolved on the device, guidance and classes, the seeds, n, the device
        type (its generators) and the noise scheme. Two sets with equal keys hold the same images; eval's
        metrics.json records the key and names its samples file by a hash of it."""
        import json

        from ..rng import NOISE_SCHEME
        from ..runtime import resolve_precision

        sampler = sampler or self.make_sampler(ckpt.diffusion)
        file = "ema.safetensors" if self.ema else "model.safetensors"
        try:
            sha = json.loads((Path(ckpt.path) / "manifest.json").read_text())[file]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            sha = None
        return {"run": str(Path(ckpt.path).resolve().parents[1]), "step": ckpt.step, "weights": self.weights_name,
                "weights_sha256": sha, "network": ckpt.config.model.to_dict(),
                "diffusion": dataclasses.asdict(ckpt.config.diffusion), "sampler": sampler.name,
                "steps": sampler.steps, "eta": getattr(sampler, "eta", None), "spacing": sampler.spacing,
                "precision": resolve_precision(self.precision, self.torch_device), "guidance": self.guidance,
                "classes": self.classes, "first_seed": self.seed, "n": self.n, "device": self.torch_device.type,
                "noise": NOISE_SCHEME}
