"""Samplers against diffusers' DDPMScheduler / DDIMScheduler steps, analytic inversion, step sets."""

import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.sampling.guidance import Guided, class_labels
from ddpm.sampling.samplers import (
    DDIM,
    Ancestral,
    Respaced,
    _OriginalTimesteps,
    ddim_update,
    make_sampler,
    step_indices,
)
from helpers import OracleEps


@pytest.mark.parametrize("K", [1, 2, 7, 33, 999, 1000])
@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_step_indices(K, spacing):
    idx = step_indices(1000, K, spacing)
    assert len(idx) == K and idx[-1] == 999 and idx[0] >= 0
    assert all(a < b for a, b in zip(idx, idx[1:]))
    if K == 1000:
        assert idx == list(range(1000))


def test_quadratic_spacing_is_denser_near_zero():
    idx = step_indices(1000, 10, "quadratic")
    assert idx[1] - idx[0] < idx[-1] - idx[-2]
    assert step_indices(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]


def test_bad_step_counts():
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match=r"\[1, 1000\]"):
            step_indices(1000, bad)
    with pytest.raises(ValueError, match="respaced or ddim"):
        Ancestral(GaussianDiffusion(NoiseSchedule.linear()), steps=50)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_sampler("euler", GaussianDiffusion(NoiseSchedule.linear()))


def test_ancestral_sampler_is_algorithm_2_exactly():
    d = GaussianDiffusion(NoiseSchedule.linear(T=100))
    model = lambda x, t: 0.3 * x + 0.001 * t.view(-1, 1, 1, 1)  # noqa: E731
    a = d.sample(model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    b = make_sampler("ancestral", d)(model, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def _float64_tables(ref):
    c = ref.config
    ref.betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
    ref.alphas = 1.0 - ref.betas
    ref.alphas_cumprod = torch.cumprod(ref.alphas, dim=0)
    ref.one = torch.tensor(1.0, dtype=torch.float64)
    ref.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return ref


@pytest.mark.parametrize("var_type, theirs", [("fixedlarge", "fixed_large"), ("fixedsmall", "fixed_small")])
@pytest.mark.parametrize("K", [7, 50])
def test_respaced_steps_match_diffusers_ddpm_with_the_same_timesteps(K, var_type, theirs):
    diffusers = pytest.importorskip("diffusers")
    d = GaussianDiffusion(NoiseSchedule.linear(), var_type=var_type)
    smp = Respaced(d, K)
    ref = _float64_tables(diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type=theirs, clip_sample=True))
    ref.set_timesteps(timesteps=smp.indices[::-1])
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    eps = torch.randn_like(x)
    seen = []
    model = lambda xt, t: (seen.append(t), eps)[1]  # noqa: E731
    for k in range(K - 1, -1, -1):
        tau = smp.indices[k]
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        ours, _ = smp.process.p_sample(lambda xt, i: model(xt, smp.timesteps[i]), x, torch.full((2,), k), noise=z)
        step = ref.step(eps, tau, x, generator=torch.Generator().manual_seed(k))
        err = (ours - step.prev_sample).abs().max().item()
        assert err <= 1e-5 * max(1.0, step.prev_sample.abs().max().item()), (k, err)
        assert seen[-1].tolist() == [tau, tau]  # the network sees the original t


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("K", [10, 50, 1000])
def test_ddim_steps_match_diffusers(K, eta):
    diffusers = pytest.importorskip("diffusers")
    T = 1000
    ref = _float64_tables(diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True))
    ref.set_timesteps(K)  # diffusers steps from t to t - T // K
    d = GaussianDiffusion(NoiseSchedule.linear())
    abar = d.schedule.alphas_cumprod
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64) * 1.3
    eps = torch.randn_like(x)
    for t in [T - 1 - (T // K) * 0, T // 2, T // K, 0]:
        prev = t - T // K
        z = torch.randn_like(x)
        a_prev = abar[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        ours, pred_x0 = ddim_update(x, eps, abar[t], a_prev, eta, z)
        step = ref.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=z)
        for a, b in ((pred_x0, step.pred_original_sample), (ours, step.prev_sample)):
            assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())


def test_ddim_sampler_uses_its_own_previous_step():
    d = GaussianDiffusion(NoiseSchedule.linear())
    smp = DDIM(d, 33)
    assert smp.alphas_cumprod_prev[0] == 1.0
    for k in range(1, 33):
        assert smp.alphas_cumprod_prev[k] == d.schedule.alphas_cumprod[smp.indices[k - 1]]


def gaussian_data_model(d, s=0.5):
    """The exact eps-predictor for data x0 ~ N(0, s^2 I): eps = sqrt(1-abar) x_t / (abar s^2 + 1 - abar)."""
    ab = d.schedule.alphas_cumprod

    def model(x, t):
        a = ab[t].to(x.dtype).view(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * s * s + 1 - a)

    return model


def test_ddim_eta0_with_K_equal_T_inverts():
    d = GaussianDiffusion(NoiseSchedule.linear())
    model = gaussian_data_model(d)
    smp = DDIM(d, 1000, clip_denoised=False)
    x0 = torch.randn(3, 1, 6, 6, dtype=torch.float64) * 0.5
    xT = smp.invert(model, x0)
    assert xT.std() > 0.8  # it really went to noise
    x = xT
    for k in range(999, -1, -1):
        x, _ = smp.step(model, x, k, None)
    assert (x - x0).abs().max().item() < 2e-2


@pytest.mark.parametrize("name, K", [("respaced", 7), ("respaced", 33), ("ddim", 7), ("ddim", 999), ("respaced", 999)])
def test_any_K_runs_and_reports_its_steps(name, K):
    d = GaussianDiffusion(NoiseSchedule.linear())
    smp = make_sampler(name, d, steps=K, eta=0.5 if name == "ddim" else None)
    seen = []
    x = smp(lambda x, t: 0.1 * x, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0),
            callback=lambda t, xt, px0: seen.append(t))
    assert seen == smp.indices[::-1] and x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()
    assert x.abs().max() <= 1


def test_respaced_with_the_oracle_lands_on_the_image():
    d = GaussianDiffusion(NoiseSchedule.linear())
    x_star = torch.rand(1, 1, 6, 6) * 1.6 - 0.8
    oracle = OracleEps(d, x_star)
    for name in ("respaced", "ddim"):
        x = make_sampler(name, d, steps=20)(oracle, (3, 1, 6, 6), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(x, x_star.expand_as(x), atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- classifier-free guidance
class _TwoHeaded:
    """A fake conditional model with known outputs: eps = y + 0.01 t (its class as a number), the null class 9."""

    calls = 0

    def __call__(self, x, t, y):
        type(self).calls += 1
        return (y.to(x.dtype) + 0.01 * t.to(x.dtype)).view(-1, 1, 1, 1).expand_as(x).clone()


def test_guidance_is_one_batched_forward_of_the_formula():
    x, t, y = torch.zeros(3, 1, 2, 2), torch.tensor([5, 6, 7]), torch.tensor([1, 2, 3])
    model = _TwoHeaded()
    for w in (0.5, 2.0):
        _TwoHeaded.calls = 0
        eps = Guided(model, y, null_class=9, guidance=w)(x, t)
        cond, uncond = y + 0.01 * t, 9 + 0.01 * t
        assert torch.allclose(eps[:, 0, 0, 0], (1 + w) * cond - w * uncond) and _TwoHeaded.calls == 1
    assert torch.equal(Guided(model, y, 9, 0.0)(x, t), model(x, t, y))  # W = 0: the plain conditional model
    with pytest.raises(ValueError, match="guidance weight must be >= 0"):
        Guided(model, y, 9, -1.0)


def test_every_sampler_passes_labels_and_guidance_through():
    d = GaussianDiffusion(NoiseSchedule.linear(T=50))
    x_star = torch.stack([torch.full((1, 4, 4), -0.5), torch.full((1, 4, 4), 0.3)])  # class 0 and class 1

    def conditional_oracle(x, t, y):  # the exact eps for "class c is the image x_star[c]"; the null class is 0
        return OracleEps(d, x_star[torch.where(y == 2, 0, y)])(x, t)

    # guided, the oracle of class c becomes the oracle of (1 + w) x*_c - w x*_null: class 0 (the null's image) stays
    # -0.5, class 1 is pushed away from it, to (1 + w) 0.3 + 0.5 w = 0.62 (clipped to [-1, 1] where it would leave)
    labels, w = torch.tensor([0, 1, 1, 0]), 0.4
    expected = ((1 + w) * x_star[labels] - w * x_star[0]).clamp(-1, 1)
    assert expected[1].max() == pytest.approx(0.3 + 0.4 * 0.8)
    for name in ("ancestral", "respaced", "ddim"):
        smp = make_sampler(name, d, steps=None if name == "ancestral" else 10)
        out = smp(Guided(conditional_oracle, labels, null_class=2, guidance=w), (4, 1, 4, 4),
                  generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_class_labels_by_index_name_list_and_all():
    names = ("cat", "dog", "7")
    assert class_labels(None, names, 4) is None
    assert class_labels("dog", names, 3).tolist() == [1, 1, 1]
    assert class_labels("1", names, 2).tolist() == [1, 1]
    assert class_labels("7", names, 2).tolist() == [2, 2]  # a class name wins over an index
    assert class_labels("all", names, 6).tolist() == [0, 0, 1, 1, 2, 2]  # class by class: a grid row each
    assert class_labels("2,cat", names, 4).tolist() == [2, 2, 0, 0]
    for spec, classes, n, pattern in [("0", None, 4, "needs a class-conditional run"),
                                      ("zebra", names, 3, "unknown class 'zebra'; the run's classes: cat, dog, 7"),
                                      ("12", names, 3, "--class 12: the run has 3 classes, 0-2"),
                                      ("all", names, 4, "--n 4 is not a multiple of 3 \\(try --n 3 or 6\\)")]:
        with pytest.raises(ValueError, match=pattern):
            class_labels(spec, classes, n)


# ----------------------------------------------------------------------------- DPM-Solver++(2M)
@pytest.mark.parametrize("K", [5, 10, 20, 25])
@pytest.mark.parametrize("clip", [False, True])
def test_dpm_solver_pp_steps_match_diffusers(K, clip):
    """Step by step against diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, the last step to
    sigma 0) on our timesteps, with a fixed model; clipping x0 to [-1, 1] is its thresholding with
    sample_max_value 1 (the quantile is then irrelevant: s = 1). Its sigmas are float32, its steps run in float32."""
    diffusers = pytest.importorskip("diffusers")
    d = GaussianDiffusion(NoiseSchedule.linear())
    smp = make_sampler("dpm++", d, steps=K)
    if not clip:
        smp.clip_denoised = False
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                beta_end=0.02, algorithm_type="dpmsolver++", solver_order=2,
                                                thresholding=clip, sample_max_value=1.0, final_sigmas_type="zero",
                                                lower_order_final=True)
    ref.alphas_cumprod = d.schedule.alphas_cumprod.clone()  # float64: its float32 table loses 1 - abar near t = 0
    ref.set_timesteps(timesteps=smp.indices[::-1])
    g = torch.Generator().manual_seed(K)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    model = lambda xt, t: torch.tanh(xt * weights + 1e-3 * t.view(-1, 1, 1, 1))  # noqa: E731 - fixed, x-dependent
    smp.reset()
    for k in range(K - 1, -1, -1):  # each step from the same x_t (diffusers keeps its own history of x0)
        tau = smp.indices[k]
        eps = model(x, torch.full((2,), tau))
        theirs = ref.step(eps.float(), tau, x.float()).prev_sample
        x, _ = smp.step(model, x, k, None)
        err = (x.float() - theirs).abs().max().item()
        assert err <= 1e-5 * max(1.0, theirs.abs().max().item()), (k, err)


def test_dpm_solver_pp_with_the_oracle_lands_on_the_image():
    d = GaussianDiffusion(NoiseSchedule.linear())
    x_star = torch.rand(1, 1, 6, 6) * 1.6 - 0.8
    for K in (10, 20):
        x = make_sampler("dpm++", d, steps=K)(OracleEps(d, x_star), (3, 1, 6, 6),
                                             generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(x, x_star.expand_as(x), atol=1e-4, rtol=0)
    assert make_sampler("dpm++", d).steps == 20  # its default: 20 network calls



@pytest.mark.parametrize("K", [10, 20])
def test_sde_dpm_solver_pp_steps_match_diffusers(K):
    """The stochastic twin against diffusers' algorithm_type "sde-dpmsolver++", given the same noise each step."""
    diffusers = pytest.importorskip("diffusers")
    d = GaussianDiffusion(NoiseSchedule.linear())
    smp = make_sampler("sde-dpm++", d, steps=K)
    ref = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                                beta_end=0.02, algorithm_type="sde-dpmsolver++", solver_order=2,
                                                thresholding=True, sample_max_value=1.0, final_sigmas_type="zero")
    ref.alphas_cumprod = d.schedule.alphas_cumprod.clone()
    ref.set_timesteps(timesteps=smp.indices[::-1])
    g = torch.Generator().manual_seed(K)
    x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    weights = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    model = lambda xt, t: torch.tanh(xt * weights + 1e-3 * t.view(-1, 1, 1, 1))  # noqa: E731
    smp.reset()
    for k in range(K - 1, -1, -1):
        tau = smp.indices[k]
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float64)

        class Fixed:  # hands the sampler the noise diffusers is given
            def randn(self, shape, dtype):
                return z.to(dtype)

        theirs = ref.step(model(x, torch.full((2,), tau)).float(), tau, x.float(), variance_noise=z.float()).prev_sample
        x, _ = smp.step(model, x, k, Fixed())
        err = (x.float() - theirs).abs().max().item()
        assert err <= 1e-5 * max(1.0, theirs.abs().max().item()), (k, err)


@pytest.mark.parametrize("predict, theirs", [("eps", "epsilon"), ("x0", "sample"), ("v", "v_prediction")])
@pytest.mark.parametrize("var_type, their_var", [("fixedlarge", "fixed_large"), ("learned-range", "learned_range")])
@pytest.mark.parametrize("K", [7, 1000])
def test_algorithm_2_steps_match_diffusers_for_each_prediction_and_variance(predict, theirs, var_type, their_var, K):
    diffusers = pytest.importorskip("diffusers")
    d = GaussianDiffusion(NoiseSchedule.linear(), var_type=var_type, predict=predict)
    smp = Respaced(d, K)
    ref = _float64_tables(diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type=their_var,
                                                  prediction_type=theirs, clip_sample=True))
    if K < 1000:
        ref.set_timesteps(timesteps=smp.indices[::-1])
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g)
    for k in sorted({K - 1, K // 2, 1, 0}, reverse=True):
        tau = smp.indices[k]
        out = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g)
        if var_type == "learned-range":  # the same model output: the prediction, then the variance values
            out = torch.cat([out, torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=g) * 2 - 1], 1)
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        model = lambda xt, t: out  # noqa: E731
        if smp.process is d:  # all T steps: Algorithm 2 itself
            ours, _ = d.p_sample(model, x, torch.full((2,), tau), noise=z)
        else:  # the respaced process, given the network's output read as eps at the original t
            ours, _ = smp.process.p_sample(_OriginalTimesteps(model, smp.timesteps, d), x, torch.full((2,), k),
                                           noise=z)
        step = ref.step(out, tau, x, generator=torch.Generator().manual_seed(k))
        err = (ours - step.prev_sample).abs().max().item()
        assert err <= 1e-5 * max(1.0, step.prev_sample.abs().max().item()), (k, err)


def test_the_guidance_mix_is_computed_in_fp32_from_bf16_outputs():
    """Under bf16 autocast the network's outputs are bf16; (1 + w) c - w u in bf16 loses the difference that
    guidance is made of (c and u agree to a few bits). The mix is computed in fp32."""
    from ddpm.sampling.guidance import Guided

    g = torch.Generator().manual_seed(0)
    cond = (1 + 1e-2 * torch.randn(2, 1, 4, 4, generator=g)).bfloat16()
    uncond = (1 + 1e-2 * torch.randn(2, 1, 4, 4, generator=g)).bfloat16()

    def model(x, t, y):
        return torch.cat([cond, uncond]) if len(x) == 4 else cond

    out = Guided(model, torch.tensor([1, 2]), 10, 3.0)(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    exact = 4.0 * cond.double() - 3.0 * uncond.double()
    assert out.dtype == torch.float32 and (out.double() - exact).abs().max().item() < 1e-6
    in_bf16 = 4.0 * cond - 3.0 * uncond
    assert (in_bf16.double() - exact).abs().max().item() > 1e-3  # what the bf16 mix loses
