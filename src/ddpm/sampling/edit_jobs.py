"""Editing many images: ``inpaint`` and ``sdedit`` (the library's calls), and ``Edit``, what a sampling job needs to
draw edits instead of samples (resumable, shared under torchrun, like ``sample``).

The outputs of an edit of N inputs with E editors (SDEdit's strengths; one for inpainting) and n completions each
are ordered input by input, editor by editor: output j is completion j % n of input j // (E n) by editor
(j // n) % E, drawn from seed ``seed + j`` (its own generator, as a sample is). SDEdit's x_t of input i comes from
seed ``seed + i`` in a stream of its own, so that all completions of one input share their x_t at each strength,
and the strengths their noise (the paper's Fig. 7).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..data.images import to_float, to_uint8
from ..diffusion.gaussian import Device, GaussianDiffusion
from .editing import RePaint, SDEdit
from .settings import SamplingSettings

__all__ = ["Edit", "inpaint", "sdedit"]


class Edit:
    """``editors`` (RePaint, or SDEdit at each strength) applied to ``images`` (uint8 [N, C, H, W]), ``n``
    completions each; ``mask`` (float [N, 1 or C, H, W], 1 keep) for RePaint. ``about`` names the inputs and the
    mask as the user gave them (it goes into the job's record with a hash of the pixels)."""

    def __init__(self, editors: Sequence[Any], images: Tensor, n: int = 1, mask: Optional[Tensor] = None,
                 seed: int = 0, about: str = ""):
        if not editors:
            raise ValueError("an edit needs at least one editor")
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError("the images to edit must be uint8 [N, C, H, W]")
        if isinstance(editors[0], RePaint) and mask is None:
            raise ValueError("inpainting needs a mask")
        if mask is not None and (mask.ndim != 4 or mask.shape[0] != len(images) or mask.shape[-2:] != images.shape[-2:]
                                 or mask.shape[1] not in (1, images.shape[1])):
            raise ValueError(f"the mask {tuple(mask.shape)} does not fit the images {tuple(images.shape)}")
        self.editors, self.images, self.n, self.mask, self.seed = list(editors), images, int(n), mask, int(seed)
        self.about = about
        first = self.editors[0]
        self.name = "repaint" if isinstance(first, RePaint) else f"sdedit-{first.name}"
        self.steps, self.spacing = first.steps, first.spacing
        self.eta = getattr(getattr(first, "sampler", first), "eta", None)
        self.calls = max(e.calls for e in self.editors)

    def __len__(self) -> int:
        return len(self.images) * len(self.editors) * self.n

    def describe(self) -> str:
        """What decides the edit's images (for a job's record): the kind, the editors' settings, hashes of the
        inputs and of the mask, n."""
        digest = hashlib.blake2b(self.images.numpy().tobytes(), digest_size=12)
        if self.mask is not None:
            digest.update(self.mask.numpy().tobytes())
        what = [repr(e) for e in self.editors]
        return json.dumps({"editors": what, "inputs": len(self.images), "n": self.n, "seed": self.seed,
                           "pixels": digest.hexdigest(), "about": self.about}, sort_keys=True)

    def parts(self, j: int) -> Tuple[int, int]:
        """(input, editor) of output j."""
        return j // (len(self.editors) * self.n), (j // self.n) % len(self.editors)

    def calls_text(self) -> str:
        """The network calls per output: "10 network calls each", or by strength: "network calls: 2 at strength
        0.2, 10 at strength 1"."""
        calls = [e.calls for e in self.editors]
        if len(set(calls)) == 1:
            return f"{calls[0]} network calls each"
        return "network calls: " + ", ".join(f"{e.calls} at strength {e.strength:g}" for e in self.editors)

    def records(self) -> Dict[str, Any]:
        """What each output is, for an ``.npz`` beside its images: ``input`` (the index of its input image) and,
        for SDEdit, ``strength`` (int64 [N], float64 [N])."""
        import numpy as np

        j = np.arange(len(self))
        out: Dict[str, Any] = {"input": j // (len(self.editors) * self.n)}
        if not isinstance(self.editors[0], RePaint):
            strengths = np.array([e.strength for e in self.editors], np.float64)
            out["strength"] = strengths[(j // self.n) % len(self.editors)]
        return out

    def draw(self, model: nn.Module, span: range, settings: SamplingSettings = SamplingSettings(progress=False), *,
             labels: Optional[Tensor] = None, bar: Any = None, callback: Any = None) -> Tensor:
        """The uint8 outputs ``span`` (output j from seed ``seed + j``), editor by editor, drawn with ``settings``'
        guidance, batch size, device and precision (its sampler and seeds are the edit's)."""
        from .generation import generate

        out = torch.empty((len(span), *self.images.shape[1:]), dtype=torch.uint8)
        for e, editor in enumerate(self.editors):
            js = [j for j in span if self.parts(j)[1] == e]
            if not js:
                continue
            inputs = [self.parts(j)[0] for j in js]
            rows = {"known": to_float(self.images[inputs])}
            if isinstance(editor, RePaint):
                assert self.mask is not None  # RePaint's (checked when made)
                rows["mask"] = self.mask[inputs]
            else:
                rows["noise_seeds"] = torch.tensor([self.seed + i for i in inputs], dtype=torch.long)
            where = torch.tensor([j - span.start for j in js])
            out[where] = generate(model, editor, tuple(self.images.shape[1:]), settings,
                                  seeds=[self.seed + j for j in js], labels=None if labels is None else labels[where],
                                  bar=bar, callback=callback, inputs=rows)
        return out

    def figure(self, outputs: Tensor, device: Device = None) -> Tensor:
        """One row per input and editor: the input, what the model starts from (the input with the part to fill
        in gray; SDEdit's x_t, its noise drawn on ``device`` as the outputs' was), then the n completions (uint8
        [rows * (n + 2), C, H, W])."""
        device = torch.device(device or "cpu")
        tiles = []
        for i in range(len(self.images)):
            for e, editor in enumerate(self.editors):
                x0 = to_float(self.images[i:i + 1])
                if isinstance(editor, RePaint):
                    assert self.mask is not None
                    start = x0 * self.mask[i:i + 1]  # the part to fill in: 0, mid-gray
                else:
                    start = editor.noised(x0.to(device), noise_seeds=torch.tensor([self.seed + i])).clamp(-1, 1).cpu()
                j = (i * len(self.editors) + e) * self.n
                tiles += [self.images[i:i + 1], to_uint8(start), outputs[j:j + self.n]]
        return torch.cat(tiles)


def inpaint(model: nn.Module, diffusion: GaussianDiffusion, images: Tensor, mask: Tensor, *, n: int = 1,
            steps: Optional[int] = None,
            spacing: str = "uniform", jump: int = 10, resample: int = 10, seed: int = 0,
            labels: Optional[Tensor] = None, callback: Any = None, **kw: Any) -> Tensor:
    """``n`` RePaint completions of each of ``images`` (uint8 [N, C, H, W]) where ``mask`` (float [N or 1, 1 or C,
    H, W], 1 keep) is 0: uint8 [N n, C, H, W], input by input. Algorithm 2 over ``steps`` of the T steps (all by
    default). ``labels`` and ``callback`` as for ``Edit.draw``; other keywords (guidance, device, precision,
    batch_size, progress) are ``SamplingSettings``'."""
    mask = mask.expand(len(images), -1, -1, -1) if mask.shape[0] == 1 else mask
    edit = Edit([RePaint(diffusion, steps, spacing, jump, resample)], images, n, mask.float(), seed)
    return edit.draw(model, range(len(edit)), SamplingSettings(**{"progress": False, **kw}), labels=labels,
                     callback=callback)


def sdedit(model: nn.Module, sampler: Any, images: Tensor, strengths: Sequence[float], *, n: int = 1, seed: int = 0,
           labels: Optional[Tensor] = None, callback: Any = None, **kw: Any) -> Tensor:
    """``n`` SDEdit edits of each of ``images`` (uint8 [N, C, H, W]) at each of ``strengths`` (one number or
    several) with ``sampler``: uint8 [N S n, C, H, W], input by input, strength by strength; the completions of one
    input share their x_t. Other keywords as for ``inpaint``."""
    strengths = [strengths] if isinstance(strengths, (int, float)) else list(strengths)
    edit = Edit([SDEdit(sampler, s) for s in strengths], images, n, None, seed)
    return edit.draw(model, range(len(edit)), SamplingSettings(**{"progress": False, **kw}), labels=labels,
                     callback=callback)
