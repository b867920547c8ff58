"""Images from a sampler: ``generate`` draws the images of given seeds in batches, each from its own generator
(an image depends on its seed and the sampler's settings only), and ``sample_checkpoint`` does it for a loaded run.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence

import torch
from torch import Tensor, nn

from ..data.images import to_uint8
from ..rng import ImageGenerators
from ..runtime import autocast, fast_cuda_math
from .guidance import Guided
from .samplers import Callback, Sampler
from .settings import SamplingSettings

__all__ = ["generate", "sample_checkpoint"]


@torch.no_grad()
def generate(model: nn.Module, sampler: Sampler, image_shape: Sequence[int],
             settings: SamplingSettings = SamplingSettings(), *, seeds: Optional[Sequence[int]] = None,
             labels: Optional[Tensor] = None, callback: Callback = None, bar: Any = None,
             inputs: Optional[Dict[str, Tensor]] = None, collect: Callback = None) -> Tensor:
    """Images as uint8 [N, C, H, W]: those of ``seeds`` (default ``settings.seeds``), drawn in batches of
    ``settings.batch_size`` on ``settings.device``, each image from its own generator: image i is a function of
    its seed and the sampler's settings only (on a CPU in fp32, bit for bit whatever the batch size; see ``UNet``).
    ``sampler`` is the one to run (``settings.make_sampler(diffusion)``, or an editor).

    ``labels`` (int64, one per image) asks a class-conditional UNet for these classes, with guidance weight
    ``settings.guidance``; without labels such a network samples its null class (the unconditional model).
    ``callback(t, x, pred_x0)``, if given, sees every step of the first batch (e.g. a ``viz.Trajectory``);
    ``collect``, the same call, sees every step of every batch (a ``progressive.Progressive``).
    ``settings.precision`` "bf16" runs the network under bf16 autocast ("auto": where the hardware has it). The
    progress bar counts images (``bar``: a tqdm bar to advance instead of a new one). ``inputs``: tensors of one row
    per image that the sampler takes as keywords, each batch its rows (an editor's ``known`` images and ``mask``).
    """
    from tqdm.auto import tqdm

    seeds = list(settings.seeds if seeds is None else [int(s) for s in seeds])
    n, batch_size, guidance, device = len(seeds), settings.batch_size, settings.guidance, settings.torch_device
    fast_cuda_math(device)
    model = model.to(device).eval()
    null_class = getattr(getattr(model, "config", None), "num_classes", 0)
    if labels is not None and (not null_class or len(labels) != n):
        raise ValueError("labels need a class-conditional network and one label per image")
    if guidance and labels is None:
        raise ValueError("guidance needs requested classes (--class)")
    own = bar is None
    bar = bar or tqdm(total=n, desc=f"sampling ({sampler.name}, {sampler.steps} steps)", unit="img",
                      dynamic_ncols=True, disable=not settings.progress)
    out = []
    try:
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)

            step_done = _Progress(bar, b, max(sampler.calls, 1), callback if i == 0 else None, collect)
            net = model if labels is None else Guided(model, labels[i:i + b], null_class, guidance)
            rows = {k: v[i:i + b].to(device) for k, v in (inputs or {}).items()}
            call: Callable[..., Tensor] = sampler  # an editor's takes its rows as keywords
            with autocast(device, settings.precision):
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
    of ``calls`` network calls completes) and passes each step on to ``callback`` and ``collect``."""

    def __init__(self, bar: Any, b: int, calls: int, callback: Callback, collect: Callback = None):
        self.bar, self.b, self.calls, self.done = bar, b, calls, 0
        self.callbacks = [c for c in (callback, collect) if c is not None]

    def __call__(self, t: int, x: Tensor, pred_x0: Tensor) -> None:
        self.done += 1
        self.bar.update(self.done * self.b // self.calls - (self.done - 1) * self.b // self.calls)
        for c in self.callbacks:
            c(t, x, pred_x0)


def sample_checkpoint(ckpt: Any, settings: SamplingSettings, *, seeds: Optional[Sequence[int]] = None,
                      labels: Optional[Tensor] = None, sampler: Optional[Sampler] = None,
                      callback: Callback = None, collect: Callback = None) -> Tensor:
    """The images (uint8 [N, C, H, W]) of ``settings`` from a loaded run (``ddpm.load_checkpoint``), e.g.
    ``sample_checkpoint(ckpt, SamplingSettings(sampler="ddim", steps=50, n=16))``: its EMA weights unless
    ``settings.ema`` is False, the classes of ``settings.classes`` unless ``labels`` are given (one per image),
    the seeds of ``settings`` unless ``seeds`` are given; ``sampler`` replaces the one the settings make."""
    from .guidance import class_labels

    seeds = list(settings.seeds if seeds is None else seeds)
    if labels is None and settings.classes is not None:
        labels = class_labels(settings.classes, ckpt.config.classes, len(seeds), range(len(seeds)))
    return generate(settings.weights(ckpt), sampler or settings.make_sampler(ckpt.diffusion), ckpt.config.model.shape,
                    settings, seeds=seeds, labels=labels, callback=callback, collect=collect)
