"""Interpolation in the latent x_t (the paper's Sec. 4.3 and Fig. 8): encode two images with the forward process
to step t with the same noise, mix the two latents, and decode each mixture with the reverse process.

Decoding uses the same noise for every mixture (one generator per row, all seeded alike), so the mixture at
lambda = 0 is exactly the reconstruction of the first image and lambda = 1 that of the second.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.images import to_uint8
from ..diffusion.gaussian import Device, GaussianDiffusion, Model
from ..rng import ImageGenerators, generator

__all__ = ["MIXES", "mix_latents", "reconstruct", "interpolate"]

MIXES = ("linear", "slerp")


def mix_latents(a: Tensor, b: Tensor, lambdas: Sequence[float], mix: str = "linear") -> Tensor:
    """[L, C, H, W] mixtures of two latents [C, H, W]: ``linear`` (1 - l) a + l b (the paper's), or ``slerp``,
    along the great circle between them, which keeps the norm of the noise that linear mixing shrinks (on the demo
    model 61% of slerp mixtures were clear digits against 51% of linear ones: BENCHMARKS.md)."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {', '.join(MIXES)}, got {mix!r}")
    lambdas = [float(v) for v in lambdas]
    theta = 0.0
    if mix == "slerp":
        cos = float((a * b).sum() / (a.norm() * b.norm()))
        theta = math.acos(max(-1.0, min(1.0, cos)))
    out = []
    for lam in lambdas:
        if theta < 1e-6 or lam in (0.0, 1.0):  # linear (and slerp's own limit, and its exact ends)
            wa, wb = 1.0 - lam, lam
        else:
            wa, wb = math.sin((1 - lam) * theta) / math.sin(theta), math.sin(lam * theta) / math.sin(theta)
        out.append(a if lam == 0.0 else b if lam == 1.0 else wa * a + wb * b)
    return torch.stack(out)


@torch.no_grad()
def _decode(model: Model, diffusion: GaussianDiffusion, xt: Tensor, t: int, seed: int,
            progress: bool = False) -> Tensor:
    """The reverse process from step t (1..T) to 0 for each row of ``xt``, every row with the same noise."""
    from tqdm.auto import tqdm

    gens = ImageGenerators([seed] * xt.shape[0], xt.device)
    x = xt
    for i in tqdm(range(t - 1, -1, -1), desc=f"decoding {xt.shape[0]} latents", unit="step", disable=not progress,
                  dynamic_ncols=True):
        x, _ = diffusion.p_sample(model, x, torch.full((x.shape[0],), i, dtype=torch.long, device=x.device),
                                  generator=gens)
    return x.clamp(-1, 1)


def _encode(diffusion: GaussianDiffusion, x0: Tensor, t: int, seed: int) -> Tensor:
    """x_t of an image [C, H, W] in [-1, 1] at step t, with the noise of ``seed``."""
    if not 1 <= t <= diffusion.T:
        raise ValueError(f"t must lie in [1, {diffusion.T}], got {t}")
    eps = torch.randn(x0.shape, generator=generator("encode", seed), dtype=x0.dtype)
    return diffusion.q_sample(x0[None], torch.tensor([t - 1]), eps[None])[0]


def reconstruct(model: nn.Module, diffusion: GaussianDiffusion, x0: Tensor, t: int, *, seed: int = 0,
                device: Device = None) -> Tensor:
    """An image [C, H, W] in [-1, 1] taken to step t and back: uint8 [1, C, H, W]."""
    device = torch.device(device or "cpu")
    xt = _encode(diffusion, x0.float(), t, seed).to(device)
    return to_uint8(_decode(model.to(device).eval(), diffusion, xt[None], t, seed)).cpu()


def interpolate(model: nn.Module, diffusion: GaussianDiffusion, xa: Tensor, xb: Tensor, t: int, *, n: int = 9,
                mix: str = "slerp", seed: int = 0, device: Device = None, lambdas: Optional[Sequence[float]] = None,
                progress: bool = False) -> Tensor:
    """Decoded mixtures of two images [C, H, W] in [-1, 1] encoded to step t with the same noise: uint8 [n, C, H, W],
    for lambda = 0, 1/(n-1), ..., 1 (or ``lambdas``); ``progress``: a bar over the t reverse steps."""
    if xa.shape != xb.shape:
        raise ValueError(f"the two images differ in shape: {tuple(xa.shape)} and {tuple(xb.shape)}")
    lambdas = [i / (n - 1) for i in range(n)] if lambdas is None else list(lambdas)
    device = torch.device(device or "cpu")
    a, b = _encode(diffusion, xa.float(), t, seed), _encode(diffusion, xb.float(), t, seed)
    mixed = mix_latents(a, b, lambdas, mix).to(device)
    return to_uint8(_decode(model.to(device).eval(), diffusion, mixed, t, seed, progress)).cpu()
