"""Rate and distortion along the reverse process (Sec. 4.3, Table 4): GaussianDiffusion.rate_distortion against the
closed form of an oracle model, and against bits_per_dim on the same draws."""

import numpy as np
import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from helpers import OracleEps, linear_schedule_np


def analytic_rate(x_star: np.ndarray, T: int, var_type: str) -> np.ndarray:
    """The cumulative rate in bits/dim after reverse steps 1..T for the exact eps of a one-image data set: the
    prior, then the variance-only KL terms L_{T-1} .. L_t (the means agree exactly), nothing for the decoder."""
    beta, abar, beta_tilde = linear_schedule_np(T)
    x = x_star.ravel()
    prior = 0.5 * (-1 - np.log(1 - abar[-1]) + (1 - abar[-1]) + abar[-1] * x**2).mean()
    model_var = beta if var_type == "fixedlarge" else beta_tilde
    kl = np.zeros(T)  # kl[i]: the term at index i (paper's L_i), none at index 0 (that is the decoder)
    kl[1:] = 0.5 * (-1 + np.log(model_var[1:]) - np.log(beta_tilde[1:]) + beta_tilde[1:] / model_var[1:])
    # reverse step k holds x_t with t = T - k + 1: the prior plus the terms of indices T-1 .. T-k+1
    sent = [prior + kl[T - k + 1:].sum() for k in range(1, T + 1)]
    return np.array(sent) / np.log(2)


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_an_oracle_model_gives_the_analytic_rate_and_no_distortion(var_type):
    T = 200
    d = GaussianDiffusion(NoiseSchedule.linear(T=T), var_type=var_type)
    g = torch.Generator().manual_seed(0)
    x_star = torch.randint(0, 256, (1, 3, 4, 4), generator=g).double() / 255 * 2 - 1
    rd = d.rate_distortion(OracleEps(d, x_star), x_star.expand(2, -1, -1, -1), generator=g)
    assert rd["rate"].shape == (2, T) and rd["rmse"].shape == (2, T) and rd["decoder_bpd"].shape == (2,)
    np.testing.assert_allclose(rd["rate"].numpy(), np.stack([analytic_rate(x_star.numpy(), T, var_type)] * 2),
                               rtol=1e-6, atol=1e-12)
    assert rd["rmse"].abs().max() < 1e-9  # x0_hat is x* exactly, from every x_t
    if var_type == "fixedlarge":  # the variance mismatch costs bits at every step: the rate grows strictly
        assert (rd["rate"].diff(dim=1)[:, :-1] > 0).all()


@pytest.mark.parametrize("predict,var_type", [("eps", "fixedlarge"), ("v", "learned-range"), ("x0", "fixedsmall")])
def test_the_last_rate_plus_the_decoder_is_bits_per_dim_on_the_same_draws(predict, var_type):
    T = 50
    d = GaussianDiffusion(NoiseSchedule.linear(T=T), var_type=var_type, predict=predict)
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2 if d.learned else 1, 3, padding=1).double()
    model = lambda xt, t: net(xt) * 0.3  # noqa: E731  # a poor model: every term is non-zero
    x0 = torch.randint(0, 256, (3, 1, 6, 6)).double() / 255 * 2 - 1
    rd = d.rate_distortion(model, x0, generator=torch.Generator().manual_seed(7))
    bpd = d.bits_per_dim(model, x0, generator=torch.Generator().manual_seed(7), return_terms=True)
    torch.testing.assert_close(rd["rate"][:, -1] + rd["decoder_bpd"], bpd["total"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rd["decoder_bpd"], bpd["terms"][:, 0])
    assert (rd["rate"].diff(dim=1) >= 0).all()  # KL terms are never negative
    torch.testing.assert_close(rd["rate"][:, 0], bpd["prior"])  # at reverse step 1 only x_T has been sent
    assert (rd["rmse"] > 0).all() and (rd["rmse"] <= 255).all()


def test_distortion_is_the_rmse_of_the_prediction_on_the_0_255_scale():
    T = 25
    d = GaussianDiffusion(NoiseSchedule.linear(T=T))
    x0 = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    # a model whose x0_hat is x0 + 0.1 everywhere: eps = (x_t - sqrt(abar) (x0 + 0.1)) / sqrt(1 - abar)
    oracle = OracleEps(d, x0 + 0.1)
    rd = d.rate_distortion(oracle, x0, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(rd["rmse"].numpy(), 0.1 * 127.5, rtol=1e-9)


def test_class_labels_reach_a_conditional_model():
    d = GaussianDiffusion(NoiseSchedule.linear(T=25))
    seen = []

    def model(xt, t, y):
        seen.append(y.tolist())
        return torch.zeros_like(xt)

    d.rate_distortion(model, torch.zeros(2, 1, 2, 2), y=torch.tensor([3, 4]))
    assert seen == [[3, 4]] * 25
