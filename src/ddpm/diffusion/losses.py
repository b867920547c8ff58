"""The likelihood pieces of the variational bound (Eq. 5): Gaussian KL, the discretised decoder, bits.

Everything here is elementwise and in float64 where precision matters; nothing knows about models.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["normal_kl", "discretized_gaussian_log_likelihood", "mean_bits_per_dim"]

LN2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor,
                                        dtype: torch.dtype = torch.float64) -> Tensor:
    """log P(x) for x on the 256-level grid of [-1, 1] under N(mean, exp(log_scale)^2) integrated over
    the bin of width 2/255 around x, with open-ended edge bins at -1 and 1 (exact normal CDF), in nats, computed
    in ``dtype`` (float64 for bits/dim; training takes float32, which every device has at full speed)."""
    x, mean, log_scale = x.to(dtype), mean.to(dtype), log_scale.to(dtype)
    inv_std = torch.exp(-log_scale)
    upper, lower = inv_std * (x - mean + 1.0 / 255), inv_std * (x - mean - 1.0 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X < x + 1/255)
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X > x - 1/255)
    # log(Phi(u) - Phi(l)), evaluated on whichever side of the mean keeps it accurate; each side is given harmless
    # arguments where it is not used, so that its gradient there is 0, not NaN (training on the bound needs it)
    right = lower > 0
    u_r, l_r = torch.where(right, upper, 2.0), torch.where(right, lower, 1.0)
    u_l, l_l = torch.where(right, 0.0, upper), torch.where(right, -1.0, lower)
    sf_l = torch.special.log_ndtr(-l_r)
    cdf_u = torch.special.log_ndtr(u_l)
    mid = torch.where(right, sf_l + torch.log1p(-torch.exp(torch.special.log_ndtr(-u_r) - sf_l)),
                      cdf_u + torch.log1p(-torch.exp(torch.special.log_ndtr(l_l) - cdf_u)))
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mid))


def mean_bits_per_dim(nats: Tensor) -> Tensor:
    """Per-element nats [B, ...] -> the per-image mean in bits [B]."""
    return nats.flatten(1).mean(1) / LN2
