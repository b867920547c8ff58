"""eps, x0, mu and v: the conversions against closed forms computed here in numpy float64; p_theta the same
whichever way a model states one prediction; the learned variances; the objectives (the bound's terms against
closed-form Gaussian KLs, the hybrid's stopped gradient)."""

import math

import numpy as np
import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.diffusion import parameterisation as param


def _closed_forms(T=1000):
    betas = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    c1 = betas * np.sqrt(abar_prev) / (1 - abar)
    c2 = (1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar)
    post_var = betas * (1 - abar_prev) / (1 - abar)
    return betas, abar, c1, c2, post_var


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 999])
    s = NoiseSchedule.linear()
    a = torch.from_numpy(_closed_forms()[1])[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps  # Eq. 4, written out
    return s, x0, eps, t, xt, a


def test_conversions_against_closed_forms(case):
    s, x0, eps, t, xt, a = case
    _, _, c1, c2, _ = _closed_forms()
    c1, c2 = (torch.from_numpy(c)[t].view(-1, 1, 1, 1) for c in (c1, c2))
    v = a.sqrt() * eps - (1 - a).sqrt() * x0  # Salimans & Ho's v
    mu = c1 * x0 + c2 * xt  # Eq. 7
    assert torch.allclose(param.v_from(s, t, x0, eps), v, atol=1e-12)
    assert torch.allclose(param.mu_from(s, xt, t, x0), mu, atol=1e-12)
    for predict, out in (("eps", eps), ("x0", x0), ("v", v), ("mu", mu)):
        e, x = param.to_eps_x0(s, predict, xt, t, out)
        tol = 1e-9 if predict != "x0" else 1e-6  # eps from x0 divides by sqrt(1 - abar) (0.01 at t = 0)
        assert torch.allclose(x, x0, atol=1e-9), predict
        assert torch.allclose(e, eps, atol=tol), predict
        assert torch.allclose(param.target(s, predict, x0, xt, t, eps), out, atol=1e-12)


def test_p_theta_is_the_same_whichever_prediction_states_it(case):
    s, x0, eps, t, xt, _ = case
    t = t[1:]  # from index 1 on, every conversion is well conditioned
    x0, eps, xt = x0[1:], eps[1:], xt[1:]
    outs = {"eps": eps, "x0": x0, "v": param.v_from(s, t, x0, eps), "mu": param.mu_from(s, xt, t, x0)}
    ref = GaussianDiffusion(s).p_mean_variance(lambda x, tt: eps, xt, t, clip_denoised=False)
    for predict, out in outs.items():
        got = GaussianDiffusion(s, predict=predict).p_mean_variance(lambda x, tt: out, xt, t, clip_denoised=False)
        for k in ("mean", "pred_x0", "eps", "variance"):
            assert torch.allclose(got[k], ref[k], atol=1e-8), (predict, k)


def test_learned_variances_read_their_channels(case):
    s, x0, eps, t, xt, _ = case
    betas, _, _, _, post_var = _closed_forms()
    v = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    out = torch.cat([eps, v], 1)
    rng = GaussianDiffusion(s, var_type="learned-range").p_mean_variance(lambda x, tt: out, xt, t)
    lo = np.log(np.concatenate([post_var[1:2], post_var[1:]]))[t.numpy()]  # log beta-tilde, clipped at index 0
    hi = np.log(betas)[t.numpy()]
    frac = (v.numpy() + 1) / 2
    expected = frac * hi[:, None, None, None] + (1 - frac) * lo[:, None, None, None]
    assert np.allclose(rng["log_variance"].numpy(), expected, atol=1e-12)
    assert torch.allclose(rng["std"], (0.5 * rng["log_variance"]).exp())
    learned = GaussianDiffusion(s, var_type="learned").p_mean_variance(lambda x, tt: out, xt, t)
    assert torch.equal(learned["log_variance"], v)  # the paper's learned diagonal Sigma: log sigma^2 itself
    with pytest.raises(ValueError, match="returns 2C"):
        GaussianDiffusion(s, var_type="learned").p_mean_variance(lambda x, tt: eps, xt, t)


def test_the_bound_term_is_the_closed_form_gaussian_kl(case):
    s, x0, eps, t, xt, _ = case
    _, abar, c1, c2, post_var = _closed_forms()
    out = torch.cat([0.9 * eps, torch.full_like(eps, 0.3)], 1)  # some prediction and learned-range value
    d = GaussianDiffusion(s, var_type="learned-range")
    got = d.training_loss(lambda x, tt: out.float(), x0.float(), t, eps.float(), objective="vlb")
    for i, ti in enumerate(t.tolist()):
        if ti == 0:
            continue  # the decoder term, checked by bits/dim's own tests
        xi, x0i = xt[i].numpy(), x0[i].numpy()
        mean_q = c1[ti] * x0i + c2[ti] * xi
        x0_hat = (xi - math.sqrt(1 - abar[ti]) * 0.9 * eps[i].numpy()) / math.sqrt(abar[ti])
        mean_p = c1[ti] * x0_hat + c2[ti] * xi
        lo, hi = math.log(post_var[ti]), math.log(np.linspace(1e-4, 0.02, 1000)[ti])
        logvar_p = 0.65 * hi + 0.35 * lo
        kl = 0.5 * (-1 + logvar_p - math.log(post_var[ti]) + post_var[ti] / math.exp(logvar_p)
                    + (mean_q - mean_p) ** 2 / math.exp(logvar_p))
        assert got[i].item() == pytest.approx(kl.mean() / math.log(2), rel=1e-3, abs=1e-6), ti  # float32 in training


def test_the_hybrids_bound_trains_the_variance_only():
    s = NoiseSchedule.linear(T=50)
    d = GaussianDiffusion(s, var_type="learned-range")
    g = torch.Generator().manual_seed(2)
    x0 = (torch.randint(0, 256, (6, 1, 4, 4), generator=g) / 127.5 - 1).float()
    t, noise = torch.tensor([0, 3, 10, 20, 40, 49]), torch.randn(6, 1, 4, 4, generator=g)
    out = torch.randn(6, 2, 4, 4, generator=g).requires_grad_()
    model = lambda x, tt: out  # noqa: E731
    simple = d.training_loss(model, x0, t, noise, objective="vlb") * 0 + \
        ((param.target(s, "eps", x0, None, t, noise) - out[:, :1]) ** 2).flatten(1).mean(1)
    hybrid = d.training_loss(model, x0, t, noise, objective="hybrid")
    (grad_bound,) = torch.autograd.grad((hybrid - simple).sum(), out)
    assert grad_bound[:, :1].abs().max() == 0 and grad_bound[:, 1:].abs().max() > 0
    (grad_vlb,) = torch.autograd.grad(d.training_loss(model, x0, t, noise, objective="vlb").sum(), out)
    assert grad_vlb[:, :1].abs().max() > 0  # the true bound trains the mean too
    assert torch.isfinite(grad_vlb).all() and torch.isfinite(grad_bound).all()


def test_objectives_that_leave_outputs_untrained_are_refused():
    s = NoiseSchedule.linear(T=50)
    with pytest.raises(ValueError, match="does not train a learned variance"):
        GaussianDiffusion(s, var_type="learned").check_objective("simple")
    with pytest.raises(ValueError, match="hybrid objective trains a learned variance"):
        GaussianDiffusion(s).check_objective("hybrid")
    with pytest.raises(ValueError, match="predict must be one of"):
        GaussianDiffusion(s, predict="score")
