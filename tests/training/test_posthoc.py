"""Post-hoc EMA (Karras et al. 2024): the power-function profiles tracked while training, their snapshots, and EMAs of
other lengths rebuilt from them (Algorithm 3), checked against closed forms, against a profile tracked directly and
against ema-pytorch's PostHocEMA."""

import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm.cli.commands import main
from ddpm.training.posthoc import (
    PowerEMA,
    coefficients,
    gamma_to_sigma_rel,
    list_snapshots,
    profile_overlap,
    reconstruct,
    sigma_rel_to_gamma,
    write_snapshot,
)
from helpers import tiny_config, tiny_trainer


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.1, 0.2, 0.28])
def test_sigma_rel_and_gamma_are_inverse_and_match_the_profile_moments(sigma):
    g = sigma_rel_to_gamma(sigma)
    assert gamma_to_sigma_rel(g) == pytest.approx(sigma, rel=1e-10)
    # the profile tau^g on (0, 1], normalised: its standard deviation is sigma_rel (a numerical integral)
    tau = (np.arange(1_000_000) + 0.5) / 1_000_000
    w = tau ** g / np.sum(tau ** g)
    mean = np.sum(w * tau)
    assert math.sqrt(np.sum(w * (tau - mean) ** 2)) == pytest.approx(sigma, rel=1e-4)


def test_profile_overlap_is_the_integral_of_the_two_profiles():
    """<p_a, p_b> against a midpoint-rule integral of (g+1) tau^g / t^(g+1) on (0, t]."""
    for t_a, g_a, t_b, g_b in [(100, 6.9, 300, 3.0), (500, 15.0, 200, 6.9), (50, 2.0, 50, 2.0)]:
        m = min(t_a, t_b)
        tau = (np.arange(2_000_000) + 0.5) / 2_000_000 * m
        pa = (g_a + 1) * tau ** g_a / t_a ** (g_a + 1)
        pb = (g_b + 1) * tau ** g_b / t_b ** (g_b + 1)
        assert profile_overlap(t_a, g_a, t_b, g_b) == pytest.approx(np.sum(pa * pb) * m / len(tau), rel=1e-6)


def test_the_coefficients_are_ema_pytorchs_least_squares_solution():
    ema_pytorch = pytest.importorskip("ema_pytorch.post_hoc_ema")
    t_in = [t for t in range(100, 1100, 100) for _ in range(2)]
    g_in = [sigma_rel_to_gamma(s) for _ in range(10) for s in (0.05, 0.10)]
    for target in (0.03, 0.07, 0.15):
        mine = coefficients(t_in, g_in, [1000], [sigma_rel_to_gamma(target)])[:, 0]
        theirs = ema_pytorch.solve_weights(torch.tensor(t_in, dtype=torch.float64), torch.tensor(g_in),
                                           torch.tensor([1000.0]), torch.tensor([sigma_rel_to_gamma(target)]))
        theirs = theirs[:, 0].numpy()
        np.testing.assert_allclose(mine, theirs / theirs.sum(), rtol=1e-6, atol=1e-9)
        assert abs(theirs.sum() - 1) < 0.05  # the least squares profile integrates to about 1 before scaling


def test_power_ema_follows_its_closed_form():
    """The recursion with beta_t = (1 - 1/t)^(g+1) averages theta_1..theta_t with weights w_tau (an explicit sum)."""
    model = torch.nn.Linear(3, 2)
    ema = PowerEMA(model, [0.1])
    g = ema.gammas[0]
    thetas = []
    for _ in range(40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        thetas.append(model.weight.detach().double().clone())
        ema.update(model)
    t = len(thetas)
    w = np.zeros(t)  # weights of the unrolled recursion: theta_tau enters with (1 - beta_tau) prod_{s > tau} beta_s
    for tau in range(1, t + 1):
        w[tau - 1] = (1 - (1 - 1 / tau) ** (g + 1)) * np.prod([(1 - 1 / s) ** (g + 1) for s in range(tau + 1, t + 1)])
    assert w.sum() == pytest.approx(1, abs=1e-12)
    expect = sum(wi * th for wi, th in zip(w, thetas))
    assert torch.allclose(ema.profile(0.1)["weight"].double(), expect, atol=1e-5)


@pytest.fixture(scope="module")
def profiled_run(tmp_path_factory):
    """A tiny run that tracks three profiles (0.05, 0.10 and 0.07) with snapshots every 5 of 150 steps."""
    run = tmp_path_factory.mktemp("posthoc") / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--preset", "tiny", "--steps", "150",
                 "--batch-size", "8", "--T", "50", "--ema-profiles", "0.05,0.1,0.07", "--ema-snapshot-every", "5",
                 "--save-every", "75", "--quiet"]) == 0
    return run


def _max_rel(a, b, ref):
    """max |a - b| over the run's movement: relative to |ref| of the same tensors (the weights' scale)."""
    num = max((a[k] - b[k]).abs().max().item() for k in a)
    return num / max(ref[k].abs().max().item() for k in ref)


def test_a_stored_profile_is_rebuilt_exactly(profiled_run):
    snaps = list_snapshots(profiled_run)
    assert [s[1] for s in snaps] == list(range(5, 155, 5)) and snaps[-1][3] == (0.05, 0.1, 0.07)
    last = load_file(str(snaps[-1][0]))
    stored = {k[len("0.05/"):]: v for k, v in last.items() if k.startswith("0.05/")}
    (rebuilt,), info = reconstruct(profiled_run, [0.05], use=(0.05, 0.1))
    assert info["step"] == 150 and info["snapshots"] == 30
    assert _max_rel(rebuilt, stored, stored) < 1e-6


def test_another_length_agrees_with_that_profile_tracked_directly(profiled_run):
    """0.07 rebuilt from the snapshots of 0.05 and 0.10 alone against the 0.07 tracked during training: within 1e-5
    of the weights' scale (measured 3.0e-7, float32 rounding; the 0.05 profile is 3.7e-3 away from the 0.07 one)."""
    last = load_file(str(list_snapshots(profiled_run)[-1][0]))
    direct = {k[len("0.07/"):]: v for k, v in last.items() if k.startswith("0.07/")}
    short = {k[len("0.05/"):]: v for k, v in last.items() if k.startswith("0.05/")}
    (rebuilt,), _ = reconstruct(profiled_run, [0.07], use=(0.05, 0.1))
    err, spread = _max_rel(rebuilt, direct, direct), _max_rel(short, direct, direct)
    assert err < 1e-5 and err < spread / 100, f"rebuilt vs direct {err:.2e}, 0.05 vs 0.07 {spread:.2e}"


def test_the_synthesis_matches_ema_pytorchs_post_hoc_ema(tmp_path):
    """ema-pytorch's PostHocEMA tracks its own profiles and snapshots on a toy model; its synthesised EMA and ours,
    from the same snapshots, agree."""
    post_hoc = pytest.importorskip("ema_pytorch.post_hoc_ema")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    theirs = post_hoc.PostHocEMA(model, sigma_rels=(0.05, 0.10), update_every=1, checkpoint_every_num_steps=10,
                                 checkpoint_folder=str(tmp_path / "theirs"), checkpoint_dtype=torch.float32)
    for _ in range(100):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        theirs.update()
    for f in (tmp_path / "theirs").glob("*.pt"):  # their snapshots, in our format (their step count as t)
        ind, step = map(int, f.stem.split("."))
        if ind == 0:
            parts = {}
            for i, s in enumerate((0.05, 0.10)):
                sd = torch.load(tmp_path / "theirs" / f"{i}.{step}.pt", weights_only=True)
                parts.update({f"{s:g}/{k[len('ema_model.'):]}": v for k, v in sd.items() if k.startswith("ema_model.")})
            write_snapshot(tmp_path / "run", step, step, (0.05, 0.1), parts)
    for target in (0.07, 0.15):
        synth = theirs.synthesize_ema_model(sigma_rel=target)
        w = post_hoc.solve_weights(torch.arange(10, 110, 10).repeat_interleave(2).double(),
                                   torch.tensor([sigma_rel_to_gamma(s) for s in (0.05, 0.1)] * 10).double(),
                                   torch.tensor([100.0]).double(), torch.tensor([sigma_rel_to_gamma(target)]).double())
        scale = w.sum().item()  # theirs is not normalised; ours sums its weights to 1
        (mine,), _ = reconstruct(tmp_path / "run", [target])
        for k, v in synth.ema_model.state_dict().items():
            torch.testing.assert_close(mine[k], v / scale, rtol=1e-5, atol=1e-6)


def test_resuming_continues_the_profiles_exactly(tmp_path):
    """Stopped at step 10 and resumed, the profiles and snapshots are those of the uninterrupted run."""
    args = ["train", "--data", "mnist", "--preset", "tiny", "--batch-size", "8", "--T", "50", "--image-size", "8",
            "--ema-profiles", "0.05,0.1", "--ema-snapshot-every", "5", "--save-every", "10", "--precision", "fp32",
            "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a"), "--steps", "20"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--steps", "10"]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), "--steps", "20", "--resume", "--quiet"]) == 0
    for step in (5, 15, 20):
        a = load_file(str(tmp_path / "a" / "ema-snapshots" / f"step-{step:08d}.safetensors"))
        b = load_file(str(tmp_path / "b" / "ema-snapshots" / f"step-{step:08d}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_trainer_profiles_start_at_the_weights_and_follow_every_update():
    cfg = tiny_config(ema_profiles="0.05,0.1", steps=3)
    tr = tiny_trainer(cfg)
    tr.train_step()
    assert tr.profiles.updates == 1  # t = 1: beta = 0, the profile is the weights
    for s in (0.05, 0.1):
        for k, v in tr.profiles.profile(s).items():
            assert torch.equal(v, dict(tr.model.named_parameters())[k].detach())
