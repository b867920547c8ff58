"""The paper's noise-prediction network eps_theta(x_t, t) (Ho et al. 2020, Appendix B).

A PixelCNN++-style UNet: wide-ResNet blocks with GroupNorm and swish, a sinusoidal embedding of
t added in every residual block, single-head self-attention at the chosen resolutions and in the
middle, ``num_res_blocks`` blocks per resolution on the way down and ``num_res_blocks + 1`` on the
way up (with skip connections), strided-conv down-sampling, nearest + conv up-sampling, and
zero-initialised output layers. The network never sees beta: ``UNet(x_t, t) -> eps``.

Class-conditional (``num_classes`` K > 0): an embedding of the label, K + 1 rows with row K the "null"
class of classifier-free guidance (Ho & Salimans 2022), is added to the time embedding before it enters
the residual blocks, as in improved-diffusion's ``label_emb`` and diffusers' ``UNet2DModel(num_class_embeds)``:
``UNet(x_t, t, y) -> eps``.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import PRESETS, UNetConfig

__all__ = ["UNet", "UNetConfig", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of t, as in the paper's code: [sin(t w_k), cos(t w_k)], w_k = P^(-k/(half-1))."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * steps / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([rowwise(torch.sin, args), rowwise(torch.cos, args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    setattr(module, "zero_init", True)  # _init_weights leaves it alone
    return module


class Dropout(nn.Dropout):
    """Inverted dropout with a cheaper mask on CPUs: 16 random bits per element, four to each 64-bit draw of the
    generator, against ``nn.Dropout``'s ``bernoulli_`` (one draw per element, 2-4x slower; profiled at 5% of a
    cifar10 training step). The drop probability is ``p`` rounded to a multiple of 1/65536 (0.1 -> 0.100006)."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return F.dropout(x, self.p, True)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= _int16_threshold(self.p)
        return torch.where(keep, x * (1.0 / (1.0 - self.p)), 0.0)


def _int16_threshold(p: float) -> int:
    """Uniform int16 values at or above this are kept: a share 1 - round(65536 p) / 65536 of them."""
    return -32768 + round(p * 65536)


# ----------------------------------------------------------------------------- one image, whatever its batch
# At inference an image's eps must not depend on the batch it is computed in (``sampling.generate``: image i is a
# function of its seed). Three things in a CPU forward make it depend on the batch, each measured here:
# - a matrix product over all B*H*W rows (a 1x1 convolution, a Linear on [B, L, C]) lets the BLAS pick its
#   blocking, and so its rounding, by B: computed as one product per image (a batched product, the weight
#   shared, not copied), it does not;
# - an elementwise op (sin, cos, SiLU) runs vectorised except for the elements left at the end of each thread's
#   share of the tensor, which take a scalar path that rounds differently, and those shares are cut by the
#   length of the whole tensor: padded to a length that every thread's share divides into whole vectors, every
#   element takes the vectorised path;
# - oneDNN convolves a batch of one another way: ``UNet.forward`` computes it as a batch of two.
# Training keeps the plain (faster) kernels.
_GRAIN = 32768  # PyTorch's elementwise kernels split a tensor between threads in shares of at least this many
_VECTOR = 64  # elements: a multiple of every vector length (x 2, the unrolled loop) of the CPU kernels


def invariant_length(n: int, threads: int) -> int:
    """The smallest length >= n that PyTorch's elementwise kernels cut, on ``threads`` threads, into shares whose
    lengths are all multiples of 64 (shares: ceil(m / k) for k = min(threads, ceil(m / 32768)) threads)."""
    m = max(n, 1)
    while True:
        k = max(1, min(threads, -(-m // _GRAIN)))
        step = _VECTOR * k
        aligned = -(-m // step) * step
        if aligned == m:
            return m
        m = aligned


def rowwise(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``fn`` (elementwise) of ``x`` with every element through the vectorised kernel (see above): the flat tensor
    padded to ``invariant_length``. Then an element's value does not depend on the size of the batch."""
    flat = x.reshape(-1)
    pad = invariant_length(flat.numel(), torch.get_num_threads()) - flat.numel()
    return fn(F.pad(flat, (0, pad)) if pad else flat)[: flat.numel()].view_as(x)


def row_silu(x: Tensor) -> Tensor:
    return rowwise(F.silu, x)


def silu(x: Tensor) -> Tensor:
    """SiLU (swish); at inference on a CPU, the batch-invariant way (``rowwise``)."""
    if torch.is_grad_enabled() or x.is_cuda:
        return F.silu(x)
    return row_silu(x)


class RowLinear(nn.Linear):
    """``nn.Linear`` whose result for one row of a [B, F] input or one image of a [B, L, F] input does not depend
    on B at inference on a CPU: one product per row or image (see above)."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.is_cuda:  # training: the plain kernel (the per-row one cost 3-6%)
            return super().forward(x)
        if x.ndim == 2:
            return torch.baddbmm(self.bias[None, None], x[:, None], self.weight.t().expand(x.shape[0], -1, -1))[:, 0]
        if x.ndim == 3:
            return torch.baddbmm(self.bias[None, None], x, self.weight.t().expand(x.shape[0], -1, -1))
        return super().forward(x)


class Conv1x1(nn.Conv2d):
    """A 1x1 convolution (the residual blocks' skip projection) computed at inference as one matrix product per
    image (see above; measured: a batch below 16 rounded otherwise with one thread). The weights are an
    ``nn.Conv2d``'s."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() or x.ndim != 4 or x.is_cuda:
            return super().forward(x)
        b, c, h, w = x.shape
        assert self.bias is not None  # built with one
        out = torch.baddbmm(self.bias[None, :, None], self.weight[None, :, :, 0, 0].expand(b, -1, -1),
                            x.reshape(b, c, h * w))
        return out.view(b, -1, h, w)


class ResBlock(nn.Module):
    """Wide-ResNet block: GN-swish-conv, + dense(swish(temb)), GN-swish-dropout-conv(zero), + skip."""

    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = RowLinear(temb_ch, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=1e-6)
        self.dropout = Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = Conv1x1(in_ch, out_ch) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor, skip: Optional[Tensor] = None) -> Tensor:
        if skip is not None:  # the up path's skip connection, joined here (so checkpointing keeps no joined copy)
            x = torch.cat([x, skip], dim=1)
        h: Tensor = self.conv1(silu(self.norm1(x)))
        h = h + self.temb_proj(silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(silu(self.norm2(h))))
        shortcut: Tensor = self.skip(x)
        return shortcut + h


def attend(q: Tensor, k: Tensor, v: Tensor, fused: bool) -> Tensor:
    """softmax(q k^T / sqrt(C)) v for one head, q, k, v (B, L, C). ``fused``: PyTorch's fused kernel, given
    [B, heads, L, C] (its flash and memory-efficient CUDA kernels take only 4-D input); else two matmuls, which
    on CPUs are faster than the fused kernel (1.2-4x, measured forward and backward)."""
    if fused:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
    return torch.softmax((q @ k.transpose(1, 2)) * q.shape[-1] ** -0.5, dim=-1) @ v  # (B, L, L) @ (B, L, C)


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, residual, zero-initialised output projection."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.qkv = RowLinear(ch, 3 * ch)
        self.proj_out = _zero(RowLinear(ch, ch))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        hs = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(hs).chunk(3, dim=-1)  # each (B, HW, C)
        out: Tensor = self.proj_out(attend(q, k, v, fused=x.is_cuda))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    """3x3 conv with stride 2 and TensorFlow 'SAME' padding (pad right/bottom by one), as in the paper."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.pad(x, (0, 1, 0, 1)))
        return out


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return out


class Level(nn.Module):
    """One resolution of the UNet: residual blocks, optional attention after each, optional resampling."""

    def __init__(self, blocks: List[ResBlock], attn: bool, groups: int, resample: Optional[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attns = nn.ModuleList([AttnBlock(b.norm2.num_channels, groups) for b in blocks] if attn else [])
        self.resample = resample


def _direct(block: Callable[..., Tensor], *args: Tensor) -> Tensor:
    out: Tensor = block(*args)
    return out


def _checkpointed(block: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """``block(*args)`` keeping only its inputs for the backward pass, which computes the rest again."""
    from torch.utils.checkpoint import checkpoint

    out: Tensor = checkpoint(block, *args, use_reentrant=False)
    return out


class _RowSiLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return silu(x)


class UNet(nn.Module):
    """eps_theta(x_t, t): x_t float [B, C, H, W] in any scale, t int64 [B] indices 0..T-1 -> eps [B, C, H, W].

    Build with keyword arguments of :class:`UNetConfig`, a config, or :meth:`from_preset`. With
    ``grad_checkpointing`` set (not part of the architecture: the trainer's ``--grad-checkpointing``), training
    keeps only each block's input and recomputes its activations in the backward pass (``torch.utils.checkpoint``,
    non-reentrant; the RNG state is restored, so dropout is replayed exactly): the same gradients in far less
    memory, for about one more forward pass of time.
    """

    grad_checkpointing = False

    def __init__(self, config: Optional[UNetConfig] = None, **kwargs: Any):
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a UNetConfig or keyword arguments, not both")
        self.config = cfg = config
        ch, groups, temb_ch = cfg.ch, cfg.num_groups, 4 * cfg.ch
        self.temb = nn.Sequential(RowLinear(ch, temb_ch), _RowSiLU(), RowLinear(temb_ch, temb_ch))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, temb_ch) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        def block(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, temb_ch, cfg.dropout, groups)

        n_levels, res = len(cfg.ch_mult), cfg.resolutions
        skip_chs, cur = [ch], ch
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(block(cur, ch * mult))
                cur = ch * mult
                skip_chs.append(cur)
            last = i == n_levels - 1
            self.down.append(Level(blocks, res[i] in cfg.attn_resolutions, groups, None if last else Downsample(cur)))
            if not last:
                skip_chs.append(cur)

        self.mid_block1, self.mid_attn, self.mid_block2 = block(cur, cur), AttnBlock(cur, groups), block(cur, cur)

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.ch_mult))):
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(block(cur + skip_chs.pop(), ch * mult))
                cur = ch * mult
            self.up.append(Level(blocks, res[i] in cfg.attn_resolutions, groups, Upsample(cur) if i else None))

        self.norm_out = nn.GroupNorm(groups, cur, eps=1e-6)
        self.conv_out = _zero(nn.Conv2d(cur, cfg.out_channels or cfg.in_channels, 3, padding=1))
        self._init_weights()

    def _init_weights(self) -> None:
        # The official code's default: variance scaling (fan_avg, uniform) = Xavier-uniform, zero bias;
        # layers marked zero-init above stay zero.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not getattr(m, "zero_init", False):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "UNet":
        """A preset architecture: 'cifar10', 'celebahq256' (the paper's), 'mnist' (CPU demo), 'tiny' (tests)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        cfg = PRESETS[name].model
        if overrides:
            cfg = UNetConfig(**{**asdict(cfg), **overrides})
        return cls(cfg)

    def forward(self, x: Tensor, t: Tensor, y: Optional[Tensor] = None) -> Tensor:
        """x float [B, C, H, W]; t int64 [B] (or a scalar) indices 0..T-1; y int64 [B] labels in 0..num_classes of a
        class-conditional net, num_classes (and y=None) meaning the null class -> eps [B, C, H, W]."""
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if x.shape[0] == 1 and not torch.is_grad_enabled():
            # oneDNN convolves a batch of one another way, which rounds differently: computed as a batch of two,
            # an image's eps does not depend on the size of the batch it is sampled in
            return self.forward(x.expand(2, -1, -1, -1), t.expand(2), None if y is None else y.expand(2))[:1]
        emb = self.temb(timestep_embedding(t, self.config.ch).to(x.dtype))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.config.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(y).to(emb.dtype)
        elif y is not None:
            raise ValueError("this UNet is unconditional (num_classes=0); it takes no labels")
        run = _checkpointed if self.grad_checkpointing and torch.is_grad_enabled() else _direct
        h: Tensor = self.conv_in(x)
        hs = [h]
        level: Level
        for level in self.down:  # type: ignore[assignment]  # a ModuleList of Levels
            for j, blk in enumerate(level.blocks):
                h = run(blk, h, emb)
                if level.attns:
                    h = run(level.attns[j], h)
                hs.append(h)
            if level.resample is not None:
                h = run(level.resample, h)
                hs.append(h)
        h = run(self.mid_block2, run(self.mid_attn, run(self.mid_block1, h, emb)), emb)
        for level in self.up:  # type: ignore[assignment]
            for j, blk in enumerate(level.blocks):
                h = run(blk, h, emb, hs.pop())
                if level.attns:
                    h = run(level.attns[j], h)
            if level.resample is not None:
                h = run(level.resample, h)
        out: Tensor = run(self._head, h)
        return out

    def _head(self, h: Tensor) -> Tensor:
        """GroupNorm, swish and the output convolution: the last layers, at full resolution."""
        out: Tensor = self.conv_out(silu(self.norm_out(h)))
        return out

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
