"""Reading the schedule's float64 tables at a batch of steps, on the batch's device and in its dtype."""

from __future__ import annotations

from typing import Dict, Optional, Union

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["on_device", "extract"]


# table -> {device: its copy there}; keyed by the table's identity and dropped with it (a tensor's == is elementwise)
_COPIES: WeakIdKeyDictionary = WeakIdKeyDictionary()


def on_device(table: Tensor, device: Union[str, torch.device]) -> Tensor:
    """``table`` on ``device``, copied there once and kept while the table lives: a sampler's tables would
    otherwise cross from host to GPU (a synchronising copy) several times per step."""
    device = torch.device(device)
    if table.device == device:
        return table
    copies: Optional[Dict[torch.device, Tensor]] = _COPIES.get(table)  # type: ignore[no-untyped-call]
    if copies is None:  # a table's first copy anywhere: entered once, not on every call of every step
        copies = _COPIES[table] = {}
    if device not in copies:  # MPS has no float64: the table goes there as float32
        copies[device] = table.to(device, torch.float32 if device.type == "mps" and table.is_floating_point() else None)
    return copies[device]


def extract(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """table[t] cast to ``like``'s dtype/device and shaped [B, 1, 1, ...] to broadcast over ``like``."""
    out = on_device(table, like.device)[t.to(like.device).long()].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))
