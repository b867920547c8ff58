"""What the network predicts, and the conversions between the four choices, written once.

With abar_t the cumulative product of the alphas, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Eq. 4):

- ``eps``: the noise (the paper's choice, Eq. 11-12).
- ``x0``: the clean image (the official code's ``xstart``).
- ``v``: v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, "Progressive distillation", Sec. 4 and
  Appendix D), so x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v and eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.
- ``mu``: the posterior mean mu-tilde_t(x_t, x0) = c1_t x0 + c2_t x_t (Eq. 7; the official code's ``xprev``),
  so x0 = (mu - c2_t x_t) / c1_t.

With a learned variance the network has 2C output channels: the prediction, then the variance values (``learned``:
log sigma^2 itself, the paper's "learned diagonal Sigma"; ``learned-range``: v in [-1, 1] interpolating
log sigma^2 = (v + 1)/2 log beta_t + (1 - v)/2 log beta-tilde_t, Improved DDPM Eq. 15).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .schedule import NoiseSchedule
from .tables import extract

__all__ = ["PREDICTIONS", "LEARNED", "x0_from_eps", "eps_from_x0", "x0_from_v", "eps_from_v", "v_from", "mu_from",
           "x0_from_mu", "to_eps_x0", "target", "split_output"]

PREDICTIONS = ("eps", "x0", "mu", "v")
LEARNED = ("learned", "learned-range")


def x0_from_eps(s: NoiseSchedule, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Eq. 4 solved for x0: x0 = x_t / sqrt(abar_t) - sqrt(1 / abar_t - 1) eps."""
    return extract(s.sqrt_recip_alphas_cumprod, t, xt) * xt - extract(s.sqrt_recipm1_alphas_cumprod, t, xt) * eps


def eps_from_x0(s: NoiseSchedule, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """Eq. 4 solved for eps: eps = (x_t / sqrt(abar_t) - x0) / sqrt(1 / abar_t - 1)."""
    return (extract(s.sqrt_recip_alphas_cumprod, t, xt) * xt - x0) / extract(s.sqrt_recipm1_alphas_cumprod, t, xt)


def x0_from_v(s: NoiseSchedule, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v (Salimans & Ho 2022, Appendix D)."""
    return extract(s.sqrt_alphas_cumprod, t, xt) * xt - extract(s.sqrt_one_minus_alphas_cumprod, t, xt) * v


def eps_from_v(s: NoiseSchedule, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v (Salimans & Ho 2022, Appendix D)."""
    return extract(s.sqrt_one_minus_alphas_cumprod, t, xt) * xt + extract(s.sqrt_alphas_cumprod, t, xt) * v


def v_from(s: NoiseSchedule, t: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
    """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022, Sec. 4)."""
    return extract(s.sqrt_alphas_cumprod, t, x0) * eps - extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * x0


def mu_from(s: NoiseSchedule, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """The posterior mean mu-tilde_t(x_t, x0) = c1_t x0 + c2_t x_t (Eq. 7)."""
    return extract(s.posterior_mean_coef1, t, xt) * x0 + extract(s.posterior_mean_coef2, t, xt) * xt


def x0_from_mu(s: NoiseSchedule, xt: Tensor, t: Tensor, mu: Tensor) -> Tensor:
    """Eq. 7 solved for x0: x0 = (mu - c2_t x_t) / c1_t (c1_t > 0 for every t; at index 0, c1 = 1 and c2 = 0)."""
    return (mu - extract(s.posterior_mean_coef2, t, xt) * xt) / extract(s.posterior_mean_coef1, t, xt)


def to_eps_x0(s: NoiseSchedule, predict: str, xt: Tensor, t: Tensor, out: Tensor) -> Tuple[Tensor, Tensor]:
    """The network's prediction ``out`` (C channels) as (eps, x0)."""
    if predict == "eps":
        return out, x0_from_eps(s, xt, t, out)
    if predict == "x0":
        x0 = out
    elif predict == "v":
        x0 = x0_from_v(s, xt, t, out)
    elif predict == "mu":
        x0 = x0_from_mu(s, xt, t, out)
    else:
        raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")
    return eps_from_x0(s, xt, t, x0), x0


def target(s: NoiseSchedule, predict: str, x0: Tensor, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """What the network should output for (x0, x_t, eps): the regression target of L_simple in each
    parameterisation (mu: the paper's ||mu-tilde - mu_theta||^2 row of Table 2, unweighted)."""
    if predict == "eps":
        return eps
    if predict == "x0":
        return x0
    if predict == "v":
        return v_from(s, t, x0, eps)
    if predict == "mu":
        return mu_from(s, xt, t, x0)
    raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")


def split_output(out: Tensor, channels: int, learned: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """(prediction, variance values or None) of a network output of C or 2C channels."""
    expected = 2 * channels if learned else channels
    if out.shape[1] != expected:
        what = "2C (the prediction, then the variance)" if learned else "C"
        raise ValueError(f"the network returned {out.shape[1]} channels for {channels}-channel images; a "
                         f"{'learned' if learned else 'fixed'}-variance model returns {what}")
    return (out[:, :channels], out[:, channels:]) if learned else (out, None)
