"""Randomness that can be named: seeds derived from parts, and the process's RNG states as JSON.

Every random draw that must be reproducible (a training example, a sample image) takes a generator
seeded with ``derive_seed(seed, what, ...)``, so the draw depends on its name alone, never on how
the work was split or in which order it ran.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any, Dict

import numpy as np
import torch

__all__ = ["derive_seed", "generator", "ImageGenerators", "rng_state", "set_rng_state"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: Any, device="cpu") -> torch.Generator:
    """A torch generator seeded with ``derive_seed(*parts)``."""
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


class ImageGenerators:
    """One generator per image of a batch (NVlabs/edm's StackedRandomGenerator idea): ``randn`` of shape [B, ...]
    draws row j from image j's own generator, so an image's noise (x_T and every step's) depends on its seed
    alone, not on the batch it is drawn in. Image seed s seeds its generator with ``derive_seed("image", s)``."""

    def __init__(self, seeds, device="cpu"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [generator("image", s, device=self.device) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators cannot draw a batch of {shape[0]}")
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g, device=self.device, dtype=dtype)
                            for g in self.generators])


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> Dict[str, Any]:
    """The torch, numpy, python (and CUDA) global RNG states, JSON-able."""
    np_state = np.random.get_state()
    py = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), *(v.item() if hasattr(v, "item") else v for v in np_state[2:])],
        "python": [py[0], list(py[1]), py[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
