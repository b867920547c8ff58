"""Schedule constants against numpy float64 closed forms and against diffusers' DDPMScheduler."""

import math

import numpy as np
import pytest
import torch

from ddpm import NoiseSchedule


def closed_forms(betas):
    """The paper's definitions, written independently in numpy float64."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return {
        "betas": betas,
        "alphas": alphas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
        "reciprocal_sqrt_alphas": 1 / np.sqrt(alphas),
        "remove_noise_coeff": betas / np.sqrt(1 - abar),
        "sigma": np.sqrt(betas),
        "posterior_variance": (1 - abar_prev) / (1 - abar) * betas,
        "posterior_mean_coef1": np.sqrt(abar_prev) * betas / (1 - abar),
        "posterior_mean_coef2": np.sqrt(alphas) * (1 - abar_prev) / (1 - abar),
    }


def numpy_linear(T, lo=1e-4, hi=0.02):
    scale = 1000 / T
    return np.linspace(lo * scale, hi * scale, T)


def numpy_cosine(T, s=0.008):
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])


@pytest.mark.parametrize(
    "sched, betas",
    [
        (lambda: NoiseSchedule.linear(), lambda: numpy_linear(1000)),
        (lambda: NoiseSchedule.linear(T=250), lambda: numpy_linear(250)),
        (lambda: NoiseSchedule.linear(T=4000), lambda: numpy_linear(4000)),
        (lambda: NoiseSchedule.cosine(T=1000), lambda: numpy_cosine(1000)),
        (lambda: NoiseSchedule.cosine(T=50), lambda: numpy_cosine(50)),
    ],
)
def test_constants_match_closed_forms(sched, betas):
    s, ref = sched(), closed_forms(betas())
    for name, expected in ref.items():
        got = getattr(s, name)
        assert got.dtype == torch.float64, name
        assert got.shape == (len(expected),), name
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=0, err_msg=name)


def test_linear_paper_endpoints_and_T_scaling():
    s = NoiseSchedule.linear()
    assert s.T == 1000 and s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    s = NoiseSchedule.linear(T=250)
    assert s.betas[0].item() == pytest.approx(4e-4) and s.betas[-1].item() == pytest.approx(0.08)


def test_analytic_properties():
    for s in (NoiseSchedule.linear(), NoiseSchedule.cosine()):
        abar = s.alphas_cumprod
        assert (abar[1:] < abar[:-1]).all(), "abar must decrease strictly"
        assert s.posterior_variance[0].item() == 0.0, "beta-tilde at the first step is 0"
        assert (s.posterior_variance[1:] <= s.betas[1:]).all(), "beta-tilde <= beta"
        assert torch.isfinite(s.posterior_log_variance_clipped).all()
    # the paper's linear schedule leaves almost no signal: sqrt(abar_T) ~ 6e-3
    assert NoiseSchedule.linear().sqrt_alphas_cumprod[-1].item() < 1e-2


def _diffusers_scheduler(**kw):
    diffusers = pytest.importorskip("diffusers")
    return diffusers.DDPMScheduler(**kw)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: NoiseSchedule.linear(), dict(num_train_timesteps=1000, beta_schedule="linear")),
        (lambda: NoiseSchedule.linear(T=250),
         dict(num_train_timesteps=250, beta_start=1e-4 * 4, beta_end=0.02 * 4, beta_schedule="linear")),
        (lambda: NoiseSchedule.cosine(T=1000), dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")),
    ],
)
def test_constants_match_diffusers(ours, theirs):
    # diffusers keeps these in float32: agreement to 1e-5 relative, or 1e-6 absolute where float32
    # rounding of tiny values (1 - 0.999, products of 1000 factors) dominates.
    s, ref = ours(), _diffusers_scheduler(**theirs)
    np.testing.assert_allclose(s.betas.numpy(), ref.betas.double().numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(s.alphas.numpy(), ref.alphas.double().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), ref.alphas_cumprod.double().numpy(), rtol=1e-5, atol=1e-6)
    # diffusers' posterior variance ("fixed_small"), for t >= 1 (it clamps t = 0 to 1e-20)
    ref.variance_type = "fixed_small"
    theirs_var = np.array([float(ref._get_variance(t)) for t in range(1, s.T)])
    np.testing.assert_allclose(s.posterior_variance[1:].numpy(), theirs_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NoiseSchedule.linear(T=0), "T must be a positive integer, got 0"),
        (lambda: NoiseSchedule.linear(T=-3), "-3"),
        (lambda: NoiseSchedule.linear(T=2.5), "2.5"),
        (lambda: NoiseSchedule.linear(beta_start=0.0), "beta_start"),
        (lambda: NoiseSchedule.linear(beta_end=1.5), "1.5"),
        (lambda: NoiseSchedule.linear(beta_start=0.02, beta_end=1e-4), "must not exceed"),
        (lambda: NoiseSchedule.linear(T=10), "not below 1"),
        (lambda: NoiseSchedule.cosine(T=0), "T must be"),
        (lambda: NoiseSchedule([0.1, 1.0]), r"beta\[1\] = 1.0"),
        (lambda: NoiseSchedule([-0.1]), "-0.1"),
    ],
)
def test_invalid_schedules_raise_naming_the_value(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_spec_round_trip():
    for s in (NoiseSchedule.linear(T=250), NoiseSchedule.cosine(T=100), NoiseSchedule([0.1, 0.2, 0.3])):
        r = NoiseSchedule.from_spec(s.spec)
        assert torch.equal(r.betas, s.betas)
