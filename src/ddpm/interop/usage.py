"""The README that ``ddpm export`` writes beside the weights: how diffusers samples them, as code that runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..config import UNetConfig

__all__ = ["usage"]


def usage(out: Path, cfg: UNetConfig, classes: Optional[Sequence[str]] = None) -> str:
    """The README of an exported directory: how diffusers samples it. ``DDPMPipeline`` passes no classes, so a
    class-conditional UNet gets the loop that gives them (``class_labels``; the null class ``K`` for the
    unconditional model, and classifier-free guidance)."""
    shape = f"({{n}}, {cfg.in_channels}, {cfg.height}, {cfg.width})"
    if not classes:
        return (f"# A DDPM exported by ddpm\n\n```python\nfrom diffusers import DDPMPipeline\n\n"
                f"pipe = DDPMPipeline.from_pretrained({str(out)!r})\n"
                "images = pipe(batch_size=4).images  # PIL images\n```\n")
    return f"""# A class-conditional DDPM exported by ddpm

Classes ({len(classes)}, in `classes.json`): {', '.join(classes[:20])}{', ...' if len(classes) > 20 else ''}.
`DDPMPipeline` cannot pass classes to the UNet; sample with `class_labels` like this (class index `{len(classes)}` is
the null class, the unconditional model; `w` is the classifier-free guidance weight):

```python
import json
import torch
from diffusers import DDPMScheduler, UNet2DModel

root = {str(out)!r}
unet = UNet2DModel.from_pretrained(root, subfolder="unet").eval()
scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
classes = json.load(open(f"{{root}}/classes.json"))
n, w = 4, 1.0
y = torch.full((n,), classes.index({classes[0]!r}))
null = torch.full((n,), len(classes))
x = torch.randn({shape.format(n="n")}, generator=torch.Generator().manual_seed(0))
scheduler.set_timesteps(scheduler.config.num_train_timesteps)
with torch.no_grad():
    for t in scheduler.timesteps:
        out = unet(x, t, class_labels=y).sample  # what the model predicts (and a learned variance after it)
        if w:
            c = x.shape[1]  # guidance mixes the predictions; a learned variance stays the conditional model's
            out[:, :c] = (1 + w) * out[:, :c] - w * unet(x, t, class_labels=null).sample[:, :c]
        x = scheduler.step(out, t, x).prev_sample
images = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [n, C, H, W]
```
"""
