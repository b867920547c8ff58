"""Editing with a trained model: inpainting by RePaint and image-guided editing by SDEdit.

Both are samplers with the common call, ``editor(model, shape, *, generator, progress, callback, device, known,
...)``, given the images they start from (``known``, [B, C, H, W] in [-1, 1]), so that ``generate`` draws them
as it draws samples: image i from its own seed, in any batch, with classifier-free guidance.

- ``RePaint`` (Lugmayr et al. 2022, Algorithm 1) on Algorithm 2, over all T steps or respaced: at each step the
  kept pixels come from q(x_{t-1} | x_0), the free ones from p_theta(x_{t-1} | x_t); with ``jump`` j and
  ``resample`` r, each stretch of j steps is walked r times, going back up by the forward process between the
  walks, so that the two parts agree (the paper's j = 10, r = 10). The free part draws from the image's stream,
  exactly as Algorithm 2 does; the kept part and the walks back up from a sibling stream. So with nothing kept and
  r = 1 inpainting is sampling (the same images), and with everything kept the result is the input.
- ``SDEdit`` (Meng et al. 2022): x_t = q(x_t | x_0) of the input at t = strength T, then any sampler's reverse
  process from there. Strength 0 returns the input; 1 starts from (nearly) pure noise.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.images import hw
from ..diffusion.gaussian import Device, GaussianDiffusion, Model, Noise, draw_normal
from ..errors import DDPMError
from ..rng import ImageGenerators, derive_seed
from ..rng import generator as named_generator
from .samplers import Callback, Respaced, Sampler

__all__ = ["MASKS", "RePaint", "SDEdit", "repaint_levels", "make_mask", "sdedit_start"]

# The named masks (white = keep): the part named is the part to fill in.
MASKS = ("right", "left", "bottom", "top", "centre", "strokes")


def repaint_levels(K: int, jump: int = 10, resample: int = 10) -> List[int]:
    """The noise levels a RePaint chain of K steps visits, from K (x_T) down to 0 (the image): level L - 1 after
    L is a step of Algorithm 2, L + 1 after L one of the forward process. On reaching level j + 1 for j = 0, jump,
    2 jump, ... < K - jump, it goes back up ``jump`` levels, ``resample - 1`` times (RePaint's get_schedule_jump:
    ``K + (resample - 1) * jump * len(...)`` network calls)."""
    if jump < 1 or resample < 1:
        raise ValueError(f"jump and resample must be >= 1, got {jump} and {resample}")
    left = {j + 1: resample - 1 for j in range(0, K - jump, jump)} if resample > 1 else {}
    level, levels = K, [K]
    while level > 0:
        level -= 1
        levels.append(level)
        if left.get(level, 0) > 0:
            left[level] -= 1
            for _ in range(jump):
                level += 1
                levels.append(level)
    return levels


def _known_stream(generator: Noise) -> Noise:
    """Where the kept pixels' noise comes from: a stream of the image's seeds other than the one Algorithm 2
    draws from (for a torch.Generator, one seeded from it; for none, the global generator)."""
    if generator is None:
        return None
    if hasattr(generator, "sibling"):
        return generator.sibling("known")
    return named_generator("known", generator.initial_seed(), device=generator.device)


class RePaint:
    """RePaint on Algorithm 2 over ``steps`` of the T steps (all: the paper's sampler), with ``jump``/``resample``.
    Called with ``known`` (the images) and ``mask`` (1 keep, 0 fill; [B or 1, 1 or C, H, W])."""

    name = "repaint"

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform",
                 jump: int = 10, resample: int = 10):
        self.chain = Respaced(diffusion, steps, spacing)
        self.diffusion, self.steps, self.spacing = diffusion, self.chain.steps, spacing
        self.indices, self.jump, self.resample = self.chain.indices, int(jump), int(resample)
        if self.resample > 1 and self.jump >= self.steps:
            raise ValueError(f"--jump {self.jump} is not below the chain's {self.steps} steps, so no stretch would be "
                             f"walked again and --resample {self.resample} would do nothing: give --jump below "
                             f"{self.steps}, or --resample 1")
        self.levels = repaint_levels(len(self.indices), self.jump, self.resample)
        self.calls = sum(b < a for a, b in zip(self.levels, self.levels[1:]))

    def __repr__(self) -> str:
        return f"RePaint(steps={self.steps}, jump={self.jump}, resample={self.resample}, calls={self.calls})"

    @torch.no_grad()
    def __call__(self, model: Model, shape: Sequence[int], *, known: Tensor, mask: Tensor, generator: Noise = None,
                 progress: bool = False, callback: Callback = None, device: Device = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        x = draw_normal(tuple(shape), generator, torch.empty(0, device=device, dtype=dtype))  # x_T ~ N(0, I)
        x0, keep = known.to(x), mask.to(x)
        other = _known_stream(generator)
        process = self.chain.process
        moves = list(zip(self.levels, self.levels[1:]))
        if progress:
            from tqdm.auto import tqdm

            moves = tqdm(moves, desc="inpainting (RePaint)", unit="move", leave=False)
        for level, nxt in moves:
            if nxt > level:  # back up one step of the (respaced) forward process: q(x_L | x_{L-1})
                beta = float(process.schedule.betas[level])
                x = math.sqrt(1 - beta) * x + math.sqrt(beta) * draw_normal(x.shape, other, x)
                continue
            free, pred_x0 = self.chain.step(model, x, nxt, generator)  # p_theta(x_{L-1} | x_L)
            if nxt == 0:
                kept = x0
            else:  # q(x_{L-1} | x_0): kept index L - 2 of the chain
                t = torch.full((x.shape[0],), nxt - 1, dtype=torch.long, device=x.device)
                kept = process.q_sample(x0, t, draw_normal(x.shape, other, x))
            x = keep * kept + (1 - keep) * free
            if callback is not None:
                callback(self.indices[nxt], x, pred_x0)
        return x.clamp(-1.0, 1.0)


def sdedit_start(sampler: Sampler, strength: float) -> Optional[int]:
    """The kept index SDEdit starts ``sampler``'s chain from at ``strength``: the last of its steps at or below
    t = strength T (None for strength 0, or below the chain's first step: nothing to do)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"the strength must be in [0, 1], got {strength:g}")
    t = math.ceil(strength * sampler.diffusion.T - 1e-9) - 1  # the 0-based step index of t = strength T
    ks = [k for k, tau in enumerate(sampler.indices) if tau <= t]
    return ks[-1] if ks else None


class SDEdit:
    """SDEdit at ``strength`` with ``sampler`` (any of them): called with ``known`` (the images) and optionally
    ``noise_seeds`` (one per image, int64): then x_t's noise comes from these seeds' own stream, so images of one
    seed share their x_t (the paper's Fig. 7); else from the image's stream, before its sampling noise."""

    def __init__(self, sampler: Sampler, strength: float):
        self.sampler, self.strength = sampler, float(strength)
        self.diffusion, self.steps, self.spacing = sampler.diffusion, sampler.steps, sampler.spacing
        self.indices, self.start = sampler.indices, sdedit_start(sampler, self.strength)
        self.name = sampler.name
        self.t = None if self.start is None else sampler.indices[self.start]
        self.calls = 0 if self.start is None else self.start + 1

    def __repr__(self) -> str:
        return f"SDEdit({self.sampler!r}, strength={self.strength:g}, t={self.t})"

    def noised(self, known: Tensor, generator: Noise = None, noise_seeds: Optional[Tensor] = None) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at the start (the input itself at strength 0)."""
        if self.start is None:
            return known
        if noise_seeds is not None:  # on the device of the images' own generators (CPU and CUDA ones differ)
            where = generator.device if generator is not None else known.device
            generator = ImageGenerators(noise_seeds.tolist(), where, stream="sdedit")
        assert self.t is not None  # set with start
        t = torch.full((known.shape[0],), self.t, dtype=torch.long, device=known.device)
        return self.diffusion.q_sample(known, t, draw_normal(known.shape, generator, known))

    @torch.no_grad()
    def __call__(self, model: Model, shape: Sequence[int], *, known: Tensor, noise_seeds: Optional[Tensor] = None,
                 generator: Noise = None, progress: bool = False, callback: Callback = None, device: Device = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
        device = device or (generator.device if generator is not None else known.device)
        x0 = known.to(device=device, dtype=dtype)
        if self.start is None:
            return x0
        x = self.noised(x0, generator, noise_seeds)
        return self.sampler.run(model, x, self.start, generator=generator, progress=progress, callback=callback)


# ----------------------------------------------------------------------------- masks
def named_mask(name: str, size: Any, seed: int = 0) -> np.ndarray:
    """A named mask, float [H, W] for ``size`` S or (H, W), 1 keep, 0 fill: ``right``/``left``/``bottom``/``top``
    (that half to fill), ``centre`` (a box of half each side to fill), ``strokes`` (a few thick random strokes to
    fill, drawn from ``seed``)."""
    H, W = hw(size)
    m = np.ones((H, W), np.float32)
    if name == "right":
        m[:, W // 2:] = 0
    elif name == "left":
        m[:, :W - W // 2] = 0
    elif name == "bottom":
        m[H // 2:, :] = 0
    elif name == "top":
        m[:H - H // 2, :] = 0
    elif name == "centre":
        m[H // 4:H // 4 + H // 2, W // 4:W // 4 + W // 2] = 0
    elif name == "strokes":
        from PIL import Image, ImageDraw

        rng = np.random.default_rng(derive_seed("strokes", seed))
        im = Image.new("L", (W, H), 255)
        draw = ImageDraw.Draw(im)
        side = min(H, W)
        for _ in range(int(rng.integers(2, 5))):
            points = [(float(rng.uniform(0, W)), float(rng.uniform(0, H)))]
            for _ in range(int(rng.integers(2, 5))):
                angle, step = rng.uniform(0, 2 * math.pi), rng.uniform(side / 6, side / 3)
                x, y = points[-1]
                points.append((float(np.clip(x + step * math.cos(angle), 0, W)),
                               float(np.clip(y + step * math.sin(angle), 0, H))))
            draw.line(points, fill=0, width=max(1, round(side / rng.uniform(6, 10))), joint="curve")
        m = (np.asarray(im) >= 128).astype(np.float32)
    else:
        raise DDPMError(f"unknown mask {name!r}: give an image (white = keep) or one of {', '.join(MASKS)}")
    return m


def make_mask(spec: str, n: int, channels: int, size: Any, seed: int = 0) -> Tensor:
    """The mask of ``n`` images, float [n, 1 or channels, H, W] for ``size`` S or (H, W) (1 keep, 0 fill): a named
    mask (``strokes`` different for each image, from ``seed`` and its index), or an image file of that size (W x H
    pixels), white (>= 128) keep,
    gray, or with as many channels as the images (equal channels count as gray). Anything else is refused."""
    if spec in MASKS:
        return torch.from_numpy(np.stack([named_mask(spec, size, seed=derive_seed(seed, i) if spec == "strokes" else 0)
                                          for i in range(n)]))[:, None]
    from pathlib import Path

    from ..data.images import open_image

    if not Path(spec).is_file():
        looks_like_a_file = Path(spec).suffix or "/" in spec or "\\" in spec
        what = f"mask file {spec} not found" if looks_like_a_file else f"unknown mask {spec!r}"
        raise DDPMError(f"{what}: give an image file (white = keep) or one of {', '.join(MASKS)}")
    im = open_image(Path(spec))
    H, W = hw(size)
    if im.size != (W, H):
        raise DDPMError(f"mask {spec} is {im.size[1]}x{im.size[0]} (height x width); the run's images are {H}x{W}")
    a = np.asarray(im.convert("L") if im.mode in ("1", "L", "LA", "P", "I", "I;16", "F") else im.convert("RGB"))
    a = a[..., None] if a.ndim == 2 else a
    if a.shape[2] == 3 and (a == a[..., :1]).all():
        a = a[..., :1]
    if a.shape[2] not in (1, channels):
        raise DDPMError(f"mask {spec} has {a.shape[2]} different channels; the run's images have {channels}: give a "
                        "gray mask (white = keep)")
    m = torch.from_numpy((a >= 128).astype(np.float32)).permute(2, 0, 1)
    return m[None].expand(n, -1, -1, -1).contiguous()
