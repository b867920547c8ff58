"""GaussianDiffusion against diffusers, the paper's formulas, the Markov chain and an oracle model."""

import numpy as np
import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from helpers import OracleEps

SCHEDULES = {
    "T1000": (lambda: NoiseSchedule.linear(), dict(num_train_timesteps=1000)),
    "T250": (lambda: NoiseSchedule.linear(T=250), dict(num_train_timesteps=250, beta_start=4e-4, beta_end=0.08)),
}


def diffusers_scheduler(kw, variance_type="fixed_small", float64=False):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule="linear", variance_type=variance_type, clip_sample=True, **kw)
    if float64:  # rebuild its tables in float64 from its own linspace, so float32 rounding does not dominate
        lo, hi, T = ref.config.beta_start, ref.config.beta_end, ref.config.num_train_timesteps
        ref.betas = torch.linspace(lo, hi, T, dtype=torch.float64)
        ref.alphas = 1.0 - ref.betas
        ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
        ref.one = torch.tensor(1.0, dtype=torch.float64)
    return ref


def assert_close_scaled(a, b, tol=1e-5):
    """|a - b| <= tol * max(1, max|b|): diffusers' float32 tables limit agreement at large magnitudes."""
    assert a.shape == b.shape
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol * max(1.0, b.abs().max().item()), err


@pytest.mark.parametrize("key", SCHEDULES)
def test_q_sample_matches_diffusers_add_noise(key):
    make, kw = SCHEDULES[key]
    d, ref = GaussianDiffusion(make()), diffusers_scheduler(kw)
    x0 = torch.rand(6, 3, 8, 8) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 1, 17, d.T // 2, d.T - 2, d.T - 1])
    torch.testing.assert_close(d.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", SCHEDULES)
def test_q_posterior_matches_paper_eq7(key):
    d = GaussianDiffusion(SCHEDULES[key][0]())
    x0, xt = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randn(5, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 1, 9, d.T // 3, d.T - 1])
    beta = np.linspace(1e-4, 0.02, d.T) * 1000 / d.T
    abar = np.cumprod(1 - beta)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    mean, var, log_var = d.q_posterior(x0, xt, t)
    for b, i in enumerate(t.tolist()):
        mu = (np.sqrt(abar_prev[i]) * beta[i] / (1 - abar[i]) * x0[b].numpy()
              + np.sqrt(1 - beta[i]) * (1 - abar_prev[i]) / (1 - abar[i]) * xt[b].numpy())
        np.testing.assert_allclose(mean[b].numpy(), mu, rtol=1e-10, atol=1e-12)
        bt = (1 - abar_prev[i]) / (1 - abar[i]) * beta[i]
        assert var[b].item() == pytest.approx(bt, rel=1e-10, abs=0)
        bt_clip = (1 - abar_prev[1]) / (1 - abar[1]) * beta[1] if i == 0 else bt
        assert log_var[b].item() == pytest.approx(np.log(bt_clip), rel=1e-10)


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
@pytest.mark.parametrize("key", SCHEDULES)
def test_model_log_variance_convention(key, var_type):
    s = SCHEDULES[key][0]()
    d = GaussianDiffusion(s, var_type=var_type)
    t = torch.arange(d.T)
    out = d.p_mean_variance(lambda x, t: torch.zeros_like(x), torch.zeros(d.T, 1, 1, 1, dtype=torch.float64), t)
    beta = s.betas.numpy()
    abar = np.cumprod(1 - beta)
    beta_tilde = beta[1:] * (1 - abar[:-1]) / (1 - abar[1:])  # indices 1..T-1
    expected = np.log(beta[1:]) if var_type == "fixedlarge" else np.log(beta_tilde)
    got = out["log_variance"].flatten().numpy()
    np.testing.assert_allclose(got[1:], expected, rtol=1e-10)
    assert got[0] == pytest.approx(np.log(beta_tilde[0]), rel=1e-10), "index 0 uses log beta-tilde_1 for both"
    np.testing.assert_allclose(out["variance"].flatten().numpy()[1:], np.exp(expected), rtol=1e-10)


@pytest.mark.parametrize("key", SCHEDULES)
def test_unclipped_model_mean_is_eq11(key):
    s = SCHEDULES[key][0]()
    d = GaussianDiffusion(s)
    xt = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    eps = torch.randn_like(xt)
    t = torch.tensor([0, 3, d.T // 2, d.T - 1])
    out = d.p_mean_variance(lambda x, tt: eps, xt, t, clip_denoised=False)
    beta = s.betas.numpy()[t.numpy()].reshape(-1, 1, 1, 1)
    abar = np.cumprod(1 - s.betas.numpy())[t.numpy()].reshape(-1, 1, 1, 1)
    mu = 1 / np.sqrt(1 - beta) * (xt.numpy() - beta / np.sqrt(1 - abar) * eps.numpy())  # Eq. 11
    np.testing.assert_allclose(out["mean"].numpy(), mu, rtol=1e-8, atol=1e-10)
    x0_hat = (xt.numpy() - np.sqrt(1 - abar) * eps.numpy()) / np.sqrt(abar)
    np.testing.assert_allclose(out["pred_x0"].numpy(), x0_hat, rtol=1e-8, atol=1e-10)
    assert torch.equal(out["eps"], eps)


@pytest.mark.parametrize("var_type, theirs", [("fixedlarge", "fixed_large"), ("fixedsmall", "fixed_small")])
@pytest.mark.parametrize("key", SCHEDULES)
def test_p_sample_matches_diffusers_step(key, var_type, theirs):
    make, kw = SCHEDULES[key]
    d, ref = GaussianDiffusion(make(), var_type=var_type), diffusers_scheduler(kw, theirs, float64=True)
    xt = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 1.5
    eps = torch.randn_like(xt)
    for i in [d.T - 1, d.T // 2, 5, 1, 0]:
        t = torch.full((2,), i)
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        ours, pred_x0 = d.p_sample(lambda x, tt: eps, xt, t, noise=z)
        step = ref.step(eps, i, xt, generator=torch.Generator().manual_seed(i))
        assert_close_scaled(pred_x0, step.pred_original_sample)
        assert_close_scaled(ours, step.prev_sample)


def test_closed_form_q_matches_iterated_markov_chain():
    """q(x_t|x_0) in closed form (Eq. 4) has the mean and variance of t steps of q(x_i|x_{i-1}) (Eq. 2)."""
    s = NoiseSchedule.linear(T=100)
    d = GaussianDiffusion(s)
    x0 = torch.tensor([0.8, -0.5, 0.0], dtype=torch.float64)
    n = 200_000
    g = torch.Generator().manual_seed(1)
    for t in (0, 10, 60, 99):
        x = x0.expand(n, 3).clone()
        for i in range(t + 1):
            x = (1 - s.betas[i]).sqrt() * x + s.betas[i].sqrt() * torch.randn(x.shape, generator=g, dtype=torch.float64)
        mean, var, _ = d.q_mean_variance(x0.view(1, 3), torch.tensor([t]))
        se = (var.item() / n) ** 0.5
        assert (x.mean(0) - mean[0]).abs().max().item() < 5 * se
        assert (x.var(0) - var.item()).abs().max().item() < 5 * var.item() * (2 / n) ** 0.5
        xc = d.q_sample(x0.expand(n, 3), torch.full((n,), t), torch.randn(n, 3, generator=g, dtype=torch.float64))
        assert (xc.var(0) - var.item()).abs().max().item() < 5 * var.item() * (2 / n) ** 0.5


@pytest.mark.parametrize("var_type", ["fixedlarge", "fixedsmall"])
def test_algorithm2_with_oracle_lands_on_the_image(var_type):
    d = GaussianDiffusion(NoiseSchedule.linear(T=200), var_type=var_type)
    x_star = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    seen = []
    x = d.sample(OracleEps(d, x_star), (4, 3, 8, 8), generator=torch.Generator().manual_seed(0),
                 callback=lambda i, xi, px0: seen.append(i))
    assert seen == list(range(d.T - 1, -1, -1))
    assert x.shape == (4, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, x_star.expand_as(x), atol=1e-4, rtol=0)


def test_sampling_is_reproducible_with_a_generator():
    d = GaussianDiffusion(NoiseSchedule.linear(T=50))
    model = lambda x, t: 0.1 * x  # noqa: E731
    a = d.sample(model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(7))
    b = d.sample(model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(7))
    c = d.sample(model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_loss_is_per_example_l_simple():
    d = GaussianDiffusion(NoiseSchedule.linear(T=100))
    x0 = torch.rand(3, 2, 4, 4) * 2 - 1
    noise, t = torch.randn_like(x0), torch.tensor([0, 50, 99])
    loss = d.training_loss(lambda x, tt: torch.zeros_like(x), x0, t, noise)
    torch.testing.assert_close(loss, noise.pow(2).mean(dim=(1, 2, 3)))
    # the oracle for a one-image data set has zero loss at every t
    oracle = OracleEps(d, x0[:1])
    exact = d.training_loss(oracle, x0[:1].expand(8, -1, -1, -1).double())
    assert exact.shape == (8,) and exact.max().item() < 1e-20


def test_training_loss_draws_t_uniformly_and_uses_generator():
    d = GaussianDiffusion(NoiseSchedule.linear(T=100))
    seen = []
    model = lambda x, t: (seen.append(t), torch.zeros_like(x))[1]  # noqa: E731
    d.training_loss(model, torch.zeros(20000, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(seen[0], minlength=100).float()
    assert counts.min() > 140 and counts.max() < 270
    a = d.training_loss(lambda x, t: x, torch.ones(4, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    b = d.training_loss(lambda x, t: x, torch.ones(4, 1, 2, 2), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match="'medium'"):
        GaussianDiffusion(NoiseSchedule.linear(), var_type="medium")
    with pytest.raises(ValueError, match="channels"):
        GaussianDiffusion(NoiseSchedule.linear(T=100)).p_mean_variance(
            lambda x, t: x[:, :1], torch.zeros(1, 3, 2, 2), torch.tensor([1]))
