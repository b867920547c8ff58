"""Conditioning a class-conditional network: the requested classes of a job's images, and classifier-free guidance
as the samplers see it, a model ``(x_t, t) -> eps``."""

from __future__ import annotations

import logging
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from ..diffusion.gaussian import Model

__all__ = ["Guided", "class_labels", "check_guidance"]

log = logging.getLogger(__name__)


class Guided:
    """A class-conditional model as a sampler calls it, ``(x_t, t) -> output``, for labels ``y`` [B] with
    classifier-free guidance weight ``w`` (Ho & Salimans 2022): eps = (1 + w) eps(x, t, y) - w eps(x, t, null), the
    conditional and the null halves in one batched forward; w = 0 is the plain conditional model. The same mix of
    x0, v or mu predictions is the mix of their eps (each is affine in eps with the same x_t terms)."""

    def __init__(self, model: Model, y: Tensor, null_class: int, guidance: float = 0.0):
        if not guidance >= 0:
            raise ValueError(f"the guidance weight must be >= 0, got {guidance!r}")
        self.model, self.y, self.null_class, self.w = model, y, null_class, float(guidance)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.y.device != x.device:  # moved once, not at every step
            self.y = self.y.to(x.device)
        y = self.y
        if self.w == 0:
            return self.model(x, t, y)
        cond, uncond = self.model(torch.cat([x, x]), torch.cat([t, t]),
                                  torch.cat([y, torch.full_like(y, self.null_class)])).chunk(2)
        c = x.shape[1]  # a learned variance's channels (after the first C) are the conditional model's, as GLIDE's
        cond, uncond = cond.float(), uncond.float()  # mixed in fp32: under bf16 autocast the outputs are bf16
        guided = (1 + self.w) * cond[:, :c] - self.w * uncond[:, :c]
        return guided if cond.shape[1] == c else torch.cat([guided, cond[:, c:]], 1)


def check_guidance(guidance: float, classes: Optional[Sequence[str]], spec: Optional[str]) -> None:
    """ValueError unless a guidance weight fits the run and the request: guidance needs a class-conditional run
    and requested classes."""
    if not guidance:
        return
    if not guidance > 0:
        raise ValueError(f"--guidance must be >= 0, got {guidance:g}")
    if not classes:
        raise ValueError("--guidance needs a class-conditional run (trained with --class-cond); this one is not")
    if spec is None:
        raise ValueError("--guidance steers samples toward requested classes: add --class (e.g. --class all)")


def class_labels(spec: Optional[str], classes: Optional[Sequence[str]], n: int,
                 span: Optional[range] = None, *, warn: bool = False) -> Optional[Tensor]:
    """The requested class of each of ``n`` images: ``spec`` a class ("7", "dog"), a list ("0,1,2") or "all", in
    equal numbers, class by class (int64 [n]; only the images of ``span``, if given); None for no spec. A token is a
    class name, else an index 0..K-1: a name wins, so with class folders ``1, 2, 10`` ``--class 1`` is the folder
    ``1`` (index 0); with ``warn`` such a token is logged as a warning when it is also another class's index."""
    if spec is None:
        return None
    if not classes:
        raise ValueError("--class needs a class-conditional run (trained with --class-cond); this one is not")
    names = list(classes)
    tokens = [tok.strip() for tok in spec.split(",") if tok.strip()] if spec != "all" else []
    wanted = list(range(len(names))) if spec == "all" else [_class_index(tok, names) for tok in tokens]
    for tok in tokens if warn else []:
        if tok in names and tok.isdigit() and int(tok) < len(names) and names.index(tok) != int(tok):
            log.warning("--class %s is the class named %r (index %d), not index %s (class %r): names win over "
                        "indices", tok, tok, names.index(tok), tok, names[int(tok)])
    if not wanted:
        raise ValueError(f"--class {spec!r} names no class")
    if n % len(wanted):
        lo, hi = n // len(wanted) * len(wanted), (n // len(wanted) + 1) * len(wanted)
        raise ValueError(f"--class {spec} asks for equal numbers of {len(wanted)} classes: --n {n} is not a multiple "
                         f"of {len(wanted)} (try --n {lo or hi} or {hi})")
    span = range(n) if span is None else span
    return torch.tensor(wanted, dtype=torch.long)[torch.arange(span.start, span.stop) // (n // len(wanted))]


def _class_index(token: str, names: List[str]) -> int:
    if token in names:
        return names.index(token)
    if token.isdigit():
        if int(token) < len(names):
            return int(token)
        raise ValueError(f"--class {token}: the run has {len(names)} classes, 0-{len(names) - 1}")
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    raise ValueError(f"unknown class {token!r}; the run's classes: {shown}")
