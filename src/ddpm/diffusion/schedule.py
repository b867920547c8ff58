"""Beta schedules and the table of constants derived from them.

Everything here is pure float64 math (as in the official code: "use float64 for accuracy");
callers cast at the point of use. Index ``i`` in every table is the paper's step ``t = i + 1``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

__all__ = ["NoiseSchedule"]


def _check_betas(betas: torch.Tensor) -> None:
    if betas.ndim != 1 or betas.numel() < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
    if not torch.isfinite(betas).all():
        raise ValueError("betas must be finite")
    bad = (betas <= 0) | (betas >= 1)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"every beta must lie in (0, 1); beta[{i}] = {float(betas[i])!r}")


class NoiseSchedule:
    """The forward-process variances ``betas`` (length T) and every constant derived from them.

    All tensors are float64, shape [T], index i = paper's t = i+1:

    - ``betas`` (beta_t), ``alphas`` (1 - beta_t), ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev``
      (abar_{t-1}, with abar_0 = 1), ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``;
    - ``reciprocal_sqrt_alphas`` (1/sqrt(alpha_t)), ``remove_noise_coeff`` (beta_t / sqrt(1 - abar_t)),
      ``sigma`` (sqrt(beta_t)): the three numbers of Algorithm 2 / Eq. 11;
    - ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod``: x0 = a*x_t - b*eps (Eq. 4 inverted);
    - ``posterior_variance`` (beta-tilde, Eq. 7), ``posterior_log_variance_clipped`` (its log, with
      index 0 replaced by index 1 to stay finite), ``posterior_mean_coef1`` / ``posterior_mean_coef2``
      (mu-tilde = coef1 * x0 + coef2 * x_t, Eq. 7).

    Build one with :meth:`linear` (the paper's) or :meth:`cosine` (improved DDPM), or pass any betas.
    """

    def __init__(self, betas: Any, *, spec: Optional[Dict[str, Any]] = None):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().clone().cpu()
        _check_betas(betas)
        self.spec: Dict[str, Any] = dict(spec) if spec else {"kind": "custom", "betas": betas.tolist()}
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.reciprocal_sqrt_alphas = self.alphas.rsqrt()
        self.remove_noise_coeff = betas / self.sqrt_one_minus_alphas_cumprod
        self.sigma = betas.sqrt()
        self.sqrt_recip_alphas_cumprod = self.alphas_cumprod.rsqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        # Eq. 7: q(x_{t-1} | x_t, x_0) = N(coef1 * x0 + coef2 * x_t, beta-tilde_t I)
        one_minus = 1.0 - self.alphas_cumprod
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / one_minus
        first = self.posterior_variance[1:2] if len(betas) > 1 else betas[:1]
        self.posterior_log_variance_clipped = torch.cat([first, self.posterior_variance[1:]]).log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / one_minus
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / one_minus

    # ----------------------------------------------------------------------------- constructors
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "NoiseSchedule":
        """The paper's schedule: betas linear from ``beta_start`` to ``beta_end`` over T steps.

        For ``T != 1000`` both ends are scaled by ``1000 / T`` (as the seed tutorial's code does), so
        that the total noise added stays comparable to the T = 1000 schedule.
        """
        T = _check_T(T)
        if not (0 < beta_start < 1):
            raise ValueError(f"beta_start must lie in (0, 1), got {beta_start!r}")
        if not (0 < beta_end < 1):
            raise ValueError(f"beta_end must lie in (0, 1), got {beta_end!r}")
        if beta_start > beta_end:
            raise ValueError(f"beta_start ({beta_start!r}) must not exceed beta_end ({beta_end!r})")
        scale = 1000.0 / T
        lo, hi = beta_start * scale, beta_end * scale
        if hi >= 1:
            smallest = math.floor(beta_end * 1000) + 1  # the first T with beta_end * 1000 / T < 1
            raise ValueError(f"T={T} scales beta_end={beta_end!r} to {hi:g} (x1000/T), which is not below 1; "
                             f"the smallest T that works is {smallest}")
        betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        return cls(betas, spec={"kind": "linear", "T": T, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "NoiseSchedule":
        """Nichol & Dhariwal's cosine schedule: abar(t) = cos^2((t/T + s)/(1 + s) * pi/2), betas capped."""
        T = _check_T(T)
        if not (s >= 0):
            raise ValueError(f"s must be >= 0, got {s!r}")
        if not (0 < max_beta < 1):
            raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")

        def abar(u: float) -> float:
            return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

        betas = [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]
        spec = {"kind": "cosine", "T": T, "s": s, "max_beta": max_beta}
        return cls(torch.tensor(betas, dtype=torch.float64), spec=spec)

    @classmethod
    def from_spec(cls, spec: Dict[str, Any]) -> "NoiseSchedule":
        """Rebuild a schedule from :attr:`spec` (what run directories store in JSON)."""
        spec = dict(spec)
        kind = spec.pop("kind", None)
        if kind == "linear":
            return cls.linear(**spec)
        if kind == "cosine":
            return cls.cosine(**spec)
        if kind == "custom":
            return cls(spec["betas"])
        raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear', 'cosine' or 'custom'")

    # ----------------------------------------------------------------------------- properties
    @property
    def T(self) -> int:
        """Number of diffusion steps."""
        return int(self.betas.numel())

    def __len__(self) -> int:
        return self.T

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec.items() if k not in ("kind", "betas"))
        return f"NoiseSchedule.{self.spec.get('kind', 'custom')}({args})"


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    return T
