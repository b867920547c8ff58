"""What a training step will take in memory, estimated before a long job starts (``ddpm train --dry-run``).

- The state: weights, gradients, Adam's two moments and the EMA, 4 bytes each per parameter (and, under bf16 or
  fp16 autocast, a 2-byte copy of the weights made in the forward pass).
- The activations: the tensors autograd keeps for the backward pass, counted (``saved_tensors_hooks``) in one
  forward pass of the real network and loss at micro-batches of 1 and 2 images on the CPU, in the run's precision,
  and scaled to the micro-batch, plus the backward pass's working set: about two gradients of the largest block's
  activations. With ``--grad-checkpointing`` only what lies outside the UNet's blocks and the blocks' inputs are
  kept, and the largest block's activations are made again in the backward pass.

It is an estimate: the backward pass adds the gradients of one or two activations at a time, allocators round
and cache, and a GPU adds its context. tests/training/test_memory.py holds it against the peak resident memory
measured in a training process (within a factor of 2).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import Tensor, nn

__all__ = ["estimate_step_memory", "MiB"]

MiB = 2**20


class _SavedBytes:
    """Counts the bytes of the distinct tensors autograd saves for backward, inside each block and outside."""

    def __init__(self, params: List[Tensor]):
        self.params = {p.data_ptr() for p in params}
        self.seen: set = set()
        self.current: Any = None  # the block running now, if any
        self.outside = 0
        self.blocks: Dict[int, int] = {}
        self.inputs = 0  # what checkpointing keeps of each block: its input
        self.held: List[Tensor] = []  # every tensor counted, held so that no later one reuses its memory unseen

    def pack(self, t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.params and ptr not in self.seen:
            self.seen.add(ptr)
            self.held.append(t)
            n = t.untyped_storage().nbytes()
            if self.current is None:
                self.outside += n
            else:
                self.blocks[id(self.current)] = self.blocks.get(id(self.current), 0) + n
        return t

    def enter(self, unit: Any, args: Any) -> None:
        if self.current is None:
            self.current = unit
            for a in args:
                if isinstance(a, Tensor) and a.ndim == 4 and a.untyped_storage().data_ptr() not in self.seen:
                    self.seen.add(a.untyped_storage().data_ptr())
                    self.held.append(a)
                    self.inputs += a.untyped_storage().nbytes()

    def leave(self, unit: Any) -> None:
        if self.current is unit:
            self.current = None


def _count(model: nn.Module, diffusion: Any, b: int, shape, classes: int, dtype, train: Any) -> _SavedBytes:
    from ..nn.unet import AttnBlock, Downsample, ResBlock, Upsample

    counter = _SavedBytes(list(model.parameters()))
    # what checkpointing recomputes: each block, each resampling, and the output head (norm_out .. conv_out)
    units: List[Tuple[Any, Any]] = [(m, m) for m in model.modules()
                                    if isinstance(m, (ResBlock, AttnBlock, Downsample, Upsample))]
    units.append((model.norm_out, model.conv_out))
    hooks = []
    for first, last in units:
        key = (id(first), id(last))
        hooks.append(first.register_forward_pre_hook(lambda m, args, key=key: counter.enter(key, args)))
        hooks.append(last.register_forward_hook(lambda m, args, out, key=key: counter.leave(key)))
    x0 = torch.zeros(b, *shape)
    y = torch.zeros(b, dtype=torch.long) if classes else None
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), \
                torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            diffusion.training_loss(model, x0, y=y, generator=torch.Generator().manual_seed(0), loss=train.loss,
                                    objective=train.objective, vlb_weight=train.vlb_weight).mean()
    finally:
        for h in hooks:
            h.remove()
    return counter


def estimate_step_memory(cfg: Any, *, micro_batch: int, precision: str, checkpointing: bool) -> Dict[str, float]:
    """MiB of a training step of run config ``cfg`` at ``micro_batch`` images per forward pass on one process:
    ``state`` (weights, gradients, Adam, EMA), ``activations`` and ``total``; ``per_image`` (activations per image).
    ``precision``: as resolved on the device ("fp32", "bf16", "fp16")."""
    from ..nn.unet import UNet

    model = UNet(cfg.model).train()
    diffusion = cfg.diffusion.build()
    n = model.num_parameters()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.bfloat16}.get(precision)  # fp16's bytes are bf16's
    shape = cfg.model.shape
    counts = [_count(model, diffusion, b, shape, cfg.model.num_classes, dtype, cfg.train) for b in (1, 2)]

    def kept(c: _SavedBytes) -> int:  # what is kept, and the backward pass's working set: a block's activations
        largest = max(c.blocks.values(), default=0)  # recomputed (with checkpointing) and about two of its gradients
        return c.outside + c.inputs + 3 * largest if checkpointing else c.outside + sum(c.blocks.values()) + 2 * largest

    one, two = (kept(c) for c in counts)
    per_image = max(two - one, 0)
    activations = max(one - per_image, 0) + per_image * micro_batch
    state = n * (16 + 4 + (2 if dtype is not None else 0))
    return {"parameters": float(n), "state": state / MiB, "activations": activations / MiB,
            "per_image": per_image / MiB, "total": (state + activations) / MiB}
