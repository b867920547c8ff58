"""Images from a sampler: ``generate`` draws the images of given seeds in batches, each from its own generator
(an image depends on its seed and the sampler's settings only), and ``sample_checkpoint`` does it for a loaded run.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..data.sources import to_uint8
from ..diffusion.gaussian import Device
from ..rng import ImageGenerators
from ..runtime import autocast, fast_cuda_math
from .guidance import Guided
from .samplers import Callback, Sampler, make_sampler

__all__ = ["generate", "sample_checkpoint"]


@torch.no_grad()
def generate(model: nn.Module, sampler: Sampler, n: Optional[int], image_shape: Sequence[int], *, seed: int = 0,
             seeds: Optional[Sequence[int]] = None, batch_size: int = 256, labels: Optional[Tensor] = None,
             guidance: float = 0.0, device: Device = None, precision: str = "fp32", progress: bool = True,
             callback: Callback = None, bar: Any = None, inputs: Optional[Dict[str, Tensor]] = None) -> Tensor:
    """Images as uint8 [N, C, H, W]: those of ``seeds`` (default ``seed, seed + 1, ..., seed + n - 1``), drawn in
    batches of ``batch_size``, each image from its own generator: image i is a function of its seed and the
    sampler's settings only (on a CPU in fp32, bit for bit whatever the batch size; see ``UNet``).

    ``labels`` (int64, one per image) asks a class-conditional UNet for these classes, with guidance weight
    ``guidance``; without labels such a network samples its null class (the unconditional model).
    ``callback(t, x, pred_x0)``, if given, sees every step of the first batch (e.g. a ``viz.Trajectory``).
    ``precision`` "bf16" runs the network under bf16 autocast ("auto": where the hardware has it). The progress
    bar counts images (``bar``: a tqdm bar to advance instead of a new one). ``inputs``: tensors of one row per
    image that the sampler takes as keywords, each batch its rows (an editor's ``known`` images and ``mask``).
    """
    from tqdm.auto import tqdm

    if seeds is None and n is None:
        raise ValueError("give n or seeds")
    seeds = list(range(seed, seed + (n or 0))) if seeds is None else [int(s) for s in seeds]
    n = len(seeds)
    device = torch.device(device or "cpu")
    fast_cuda_math(device)
    model = model.to(device).eval()
    null_class = getattr(getattr(model, "config", None), "num_classes", 0)
    if labels is not None and (not null_class or len(labels) != n):
        raise ValueError("labels need a class-conditional network and one label per image")
    if guidance and labels is None:
        raise ValueError("guidance needs requested classes (--class)")
    own = bar is None
    bar = bar or tqdm(total=n, desc=f"sampling ({sampler.name}, {sampler.steps} steps)", unit="img",
                      dynamic_ncols=True, disable=not progress)
    out = []
    try:
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)

            step_done = _Progress(bar, b, max(sampler.calls, 1), callback if i == 0 else None)
            net = model if labels is None else Guided(model, labels[i:i + b], null_class, guidance)
            rows = {k: v[i:i + b].to(device) for k, v in (inputs or {}).items()}
            call: Callable[..., Tensor] = sampler  # an editor's takes its rows as keywords
            with autocast(device, precision):
                x = call(net, (b, *image_shape), generator=ImageGenerators(seeds[i:i + b], device),
                         device=device, callback=step_done, **rows)
            if not sampler.calls:  # nothing to call (an edit of strength 0): the batch in one go
                bar.update(b)
            out.append(to_uint8(x).cpu())
    finally:
        if own:
            bar.close()
    return torch.cat(out)


class _Progress:
    """A batch's step callback: advances ``bar`` by whole images (the share of the batch's ``b`` images that each
    of ``calls`` network calls completes) and passes each step on to ``callback``."""

    def __init__(self, bar: Any, b: int, calls: int, callback: Callback):
        self.bar, self.b, self.calls, self.callback, self.done = bar, b, calls, callback, 0

    def __call__(self, t: int, x: Tensor, pred_x0: Tensor) -> None:
        self.done += 1
        self.bar.update(self.done * self.b // self.calls - (self.done - 1) * self.b // self.calls)
        if self.callback is not None:
            self.callback(t, x, pred_x0)


def sample_checkpoint(ckpt: Any, n: Optional[int], *, sampler: Union[str, Sampler] = "ancestral",
                      steps: Optional[int] = None,
                      eta: Optional[float] = None, spacing: Optional[str] = None, ema: bool = True,
                      **kw: Any) -> Tensor:
    """``n`` images (uint8 [N, C, H, W]) from a loaded run (``ddpm.load_checkpoint``): its EMA weights unless
    ``ema=False``; ``sampler`` a Sampler, or a name with ``steps``/``eta``/``spacing`` (see ``make_sampler``);
    other keywords go to :func:`generate`."""
    if isinstance(sampler, str):
        sampler = make_sampler(sampler, ckpt.diffusion, steps=steps, eta=eta, spacing=spacing)
    c, s = ckpt.config.model.in_channels, ckpt.config.model.image_size
    return generate(ckpt.ema_model if ema else ckpt.model, sampler, n, (c, s, s), **kw)
