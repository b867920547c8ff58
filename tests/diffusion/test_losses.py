"""The likelihood: the discretised decoder (losses.py) and the bound of Eq. 5 (GaussianDiffusion.bits_per_dim)
against an analytic computation in numpy/scipy with an oracle model."""

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.diffusion.losses import discretized_gaussian_log_likelihood
from helpers import OracleEps, linear_schedule_np


def analytic_bpd(x_star: np.ndarray, T: int, var_type: str) -> float:
    """Prior + sum of KL terms + decoder NLL for the exact eps of a one-image data set, in bits/dim."""
    beta, abar, beta_tilde = linear_schedule_np(T)
    x = x_star.ravel()
    # prior: KL(N(sqrt(abar_T) x, 1 - abar_T) || N(0, 1)) per dimension
    prior = 0.5 * (-1 - np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * x**2).mean()
    # t >= 2 (index >= 1): the means agree exactly, only the variances can differ
    model_var = beta[1:] if var_type == "fixedlarge" else beta_tilde[1:]
    kl = 0.5 * (-1 + np.log(model_var) - np.log(beta_tilde[1:]) + beta_tilde[1:] / model_var)
    # decoder: N(x, beta_tilde_1) integrated over each pixel's bin
    s = np.sqrt(beta_tilde[1])
    p = norm.cdf((x + 1 / 255 - x) / s) - norm.cdf((x - 1 / 255 - x) / s)
    p = np.where(x < -0.999, norm.cdf(1 / 255 / s), np.where(x > 0.999, norm.sf(-1 / 255 / s), p))
    decoder = -np.log(p).mean()
    return (prior + kl.sum() + decoder) / np.log(2)


@pytest.mark.parametrize("T", [1000, 200])
@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_oracle_bits_per_dim_is_analytic(T, var_type):
    d = GaussianDiffusion(NoiseSchedule.linear(T=T), var_type=var_type)
    g = torch.Generator().manual_seed(0)
    x_star = torch.randint(0, 256, (1, 3, 4, 4), generator=g).double() / 255 * 2 - 1
    x_star[0, 0, 0, :2] = torch.tensor([-1.0, 1.0], dtype=torch.float64)  # both open-ended edge bins
    out = d.bits_per_dim(OracleEps(d, x_star), x_star.expand(2, -1, -1, -1), generator=g, return_terms=True)
    expected = analytic_bpd(x_star.numpy(), T, var_type)
    assert out["total"].shape == (2,) and out["terms"].shape == (2, T)
    np.testing.assert_allclose(out["total"].numpy(), expected, rtol=2e-3)
    np.testing.assert_allclose(out["total"].numpy(), expected, rtol=1e-6)  # in fact to rounding
    if var_type == "fixedsmall":
        assert out["terms"][:, 1:].abs().max() < 1e-9


def test_decoder_probabilities_sum_to_one():
    values = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    for mean, log_scale in [(0.0, -3.0), (0.97, -5.0), (-1.2, -1.0), (0.3, 1.0), (0.5, -9.0)]:
        lp = discretized_gaussian_log_likelihood(values, torch.full_like(values, mean),
                                                 torch.full_like(values, log_scale))
        assert lp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        assert torch.isfinite(lp).all()


def test_a_wrong_model_costs_more_bits():
    d = GaussianDiffusion(NoiseSchedule.linear(T=100))
    x = torch.randint(0, 256, (2, 1, 4, 4)).double() / 255 * 2 - 1
    oracle = OracleEps(d, x)
    zero = lambda xt, t: torch.zeros_like(xt)  # noqa: E731
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert (d.bits_per_dim(zero, x, generator=g()) > d.bits_per_dim(oracle, x, generator=g()) + 0.5).all()
