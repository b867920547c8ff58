"""Samples drawn during training by every process of a torchrun job: each draws its share of the seeds and the
shares are gathered, so that no process waits in a collective while another samples."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..diffusion.gaussian import GaussianDiffusion
from ..runtime import rank_world, shares
from ..sampling.generation import generate
from ..sampling.settings import SamplingSettings

__all__ = ["draw_shared"]


@torch.no_grad()
def draw_shared(model: nn.Module, diffusion: GaussianDiffusion, shape: Sequence[int], settings: SamplingSettings, *,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The images (uint8 [N, C, H, W]) of ``settings``' seeds, sampler and device, in every process. On a CPU in
    fp32 they are those of one process, bit for bit (``generate``)."""
    rank, world = rank_world()
    seeds, shape = list(settings.seeds), tuple(shape)
    n, mine = len(seeds), shares(len(seeds), world)[rank]
    device = settings.torch_device
    images = generate(model, settings.make_sampler(diffusion), shape, settings, seeds=seeds[mine.start:mine.stop],
                      labels=None if labels is None else labels[mine.start:mine.stop]) if len(mine) else \
        torch.zeros((0, *shape), dtype=torch.uint8)
    if world == 1:
        return images
    import torch.distributed as dist

    size = -(-n // world)
    padded = torch.zeros((size, *shape), dtype=torch.uint8, device=device)
    padded[:len(mine)] = images.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:len(r)] for p, r in zip(parts, shares(n, world))]).cpu()
