"""Randomness that can be named: seeds derived from parts, and the process's RNG states as JSON.

Every random draw that must be reproducible (a training example, a sample image) takes a generator
seeded with ``derive_seed(seed, what, ...)``, so the draw depends on its name alone, never on how
the work was split or in which order it ran.
"""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

__all__ = ["derive_seed", "generator", "ImageGenerators", "NOISE_SCHEME", "block_steps", "rng_state", "set_rng_state",
           "seed_step"]


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
    alone, not on the batch it is drawn in. Image seed s seeds its generator with ``derive_seed("image", s)``.

    Each image draws its noise a block of ``block_steps(shape)`` draws at a time, in one call (the scheme
    ``NOISE_SCHEME``): a batch then makes one RNG call per image every block, not every step (on a GPU each call is
    a kernel launch). The block's length depends on the image's shape only, never on the batch.

    ``stream`` names an independent stream of the same seeds (``derive_seed(stream, s)``): editing draws the noise
    of its known pixels from ``sibling("known")``, so that the image's own stream is the one sampling draws."""

    def __init__(self, seeds, device="cpu", stream: str = "image"):
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.stream = stream
        self.generators = [generator(stream, s, device=self.device) for s in self.seeds]
        self._block: Optional[torch.Tensor] = None  # [B, K, ...] drawn ahead
        self._used = 0

    def __len__(self) -> int:
        return len(self.generators)

    def sibling(self, stream: str) -> "ImageGenerators":
        """The generators of the same seeds in another, independent stream."""
        return ImageGenerators(self.seeds, self.device, stream)

    def randn(self, shape, dtype=torch.float32) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} generators cannot draw a batch of {shape[0]}")
        one = tuple(shape[1:])
        b = self._block
        if b is None or b.shape[2:] != one or b.dtype != dtype or self._used == b.shape[1]:
            k = block_steps(one)
            self._block = b = torch.stack([torch.randn((k, *one), generator=g, device=self.device, dtype=dtype)
                                           for g in self.generators])
            self._used = 0
        self._used += 1
        return b[:, self._used - 1].contiguous()


NOISE_SCHEME = "per-image-blocks-v3"  # what ImageGenerators draws for a seed; recorded in sampling jobs
BLOCK_BYTES = 1 << 20  # the most one image's block of noise takes (v2 took 4 MiB: 1 GiB a stream at 256 x 256 x 256)


def block_steps(shape) -> int:
    """How many draws of one image's ``shape`` ImageGenerators makes in one call: up to 16, at most ``BLOCK_BYTES``
    of float32 per image (a batch of 256 images of 256 x 256 then holds 192 MiB of noise per stream, one step's;
    images of up to 64 x 64 x 3 draw 16 steps a call, as before)."""
    n = 1
    for d in shape:
        n *= int(d)
    return max(1, min(16, (BLOCK_BYTES // 4) // max(n, 1)))


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state() -> Dict[str, Any]:
    """The torch (CPU), numpy and python global RNG states, JSON-able."""
    np_state: Any = np.random.get_state()  # the legacy tuple (legacy=True, the default)
    py = random.getstate()
    state = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), *(v.item() if hasattr(v, "item") else v for v in np_state[2:])],
        "python": [py[0], list(py[1]), py[2]],
    }
    return state  # no CUDA state: training reseeds the device's generator every step (seed_step)


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    # an older checkpoint's "cuda" states (one per GPU visible then, rank 0's) are not restored: seed_step
    # derives the device's stream from the seed, the rank and the step instead


def seed_step(seed: int, rank: int, step: int, device) -> None:
    """Seed the global generator of ``device`` (what dropout draws from) for one training step of one process:
    each process has its own stream, and a resumed run the one it would have had, whatever GPUs are visible."""
    value = derive_seed(seed, "dropout", rank, step)
    if torch.device(device).type == "cuda":
        torch.cuda.manual_seed(value)  # this process's GPU only
    else:
        torch.default_generator.manual_seed(value)
