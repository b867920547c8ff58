"""Training each parameterisation, variance and objective: importance sampling of t unbiased and resumable, every
combination trains, resumes bit-exactly, samples with every sampler and gives bits/dim."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddpm.sampling.guidance import Guided
from ddpm.training.timesteps import HISTORY, ImportanceSampler
from helpers import one_line_error, run


def _warm(T=8, seed=0):
    s = ImportanceSampler(T, seed)
    rng = np.random.default_rng(seed)
    for _ in range(HISTORY):
        s.update(torch.arange(T), torch.from_numpy(rng.uniform(0.1, 1.0, T) * np.arange(1, T + 1)))
    return s


def test_importance_sampling_is_uniform_until_every_t_has_ten_losses():
    s = ImportanceSampler(5)
    s.update(torch.tensor([0, 1, 2, 3, 4] * 9 + [0, 1, 2, 3]), torch.ones(49))
    assert not s.warmed_up() and torch.equal(s.probabilities(), torch.full((5,), 0.2, dtype=torch.float64))
    s.update(torch.tensor([4]), torch.ones(1))
    assert s.warmed_up()


def test_importance_weighted_losses_estimate_the_uniform_mean_without_bias():
    s = _warm()
    p = s.probabilities()
    expected = s.history.pow(2).mean(1).sqrt()
    assert torch.allclose(p, expected / expected.sum() * 0.999 + 0.001 / 8)  # Improved DDPM's rule
    f = torch.tensor([3.0, 0.5, 2.0, 8.0, 1.0, 0.1, 4.0, 6.0], dtype=torch.float64)  # any per-t loss
    estimates = []
    for step in range(400):
        t, w = s.draw(step, 256)
        estimates.append((f[t] * w.double()).mean().item())
    assert np.mean(estimates) == pytest.approx(f.mean().item(), rel=0.01)
    counts = np.bincount(torch.cat([s.draw(k, 256)[0] for k in range(50)]).numpy(), minlength=8) / (50 * 256)
    assert np.allclose(counts, p.numpy(), atol=0.01)  # t is drawn by p_t


def test_importance_state_round_trips_exactly():
    s = _warm()
    s.update(torch.tensor([3, 3, 5]), torch.tensor([0.25, 7.0, 1e-3]))
    other = ImportanceSampler(8, 0)
    other.load_state(s.state())
    assert torch.equal(other.history, s.history) and torch.equal(other.count, s.count)
    assert all(torch.equal(a, b) for a, b in zip(other.draw(11, 64), s.draw(11, 64)))


COMBOS = [("x0", "fixedsmall", "simple", "uniform"), ("mu", "fixedlarge", "vlb", "uniform"),
          ("v", "learned-range", "hybrid", "importance"), ("eps", "learned", "vlb", "importance")]


@pytest.mark.parametrize("predict, var_type, objective, t_sampling", COMBOS)
def test_every_combination_trains_resumes_exactly_samples_and_gives_bits_per_dim(
        capsys, tmp_path, predict, var_type, objective, t_sampling):
    flags = ["--data", "mnist", "--preset", "tiny", "--batch-size", "32", "--T", "21", "--log-every", "4",
             "--save-every", "8", "--sample-every", "0", "--quiet", "--predict", predict, "--var-type", var_type,
             "--objective", objective, "--t-sampling", t_sampling, "--image-size", "16"]
    assert run(capsys, "train", "--out", tmp_path / "a", "--steps", "16", *flags)[0] == 0
    assert run(capsys, "train", "--out", tmp_path / "b", "--steps", "8", *flags)[0] == 0
    assert run(capsys, "train", "--out", tmp_path / "b", "--steps", "16", "--resume", "--quiet")[0] == 0
    a, b = (load_file(str(tmp_path / r / "checkpoints" / "step-00000016" / "model.safetensors")) for r in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-exact, importance sampler's history included
    if t_sampling == "importance":
        import json

        state = json.loads((tmp_path / "a" / "checkpoints" / "step-00000016" / "state.json").read_text())
        assert min(state["timesteps"]["count"]) == 10  # warmed up: the last steps drew t by their losses
    for sampler in (["ancestral"], ["respaced", "--steps", "5"], ["ddim", "--steps", "5"], ["dpm++", "--steps", "5"]):
        code, _, err = run(capsys, "sample", "--run", tmp_path / "a", "--n", "3", "--out",
                           tmp_path / f"{sampler[0]}.npz", "--sampler", *sampler, "--quiet")
        assert code == 0, err
        with np.load(tmp_path / f"{sampler[0]}.npz") as z:
            assert z["arr_0"].shape == (3, 16, 16, 1)
    code, out, err = run(capsys, "eval", "--run", tmp_path / "a", "--metric", "bpd", "--n", "3", "--quiet")
    assert code == 0 and "bits/dim" in out, err


@pytest.mark.parametrize("argv, expected", [
    (["--var-type", "learned"], "L_simple does not train a learned variance"),
    (["--objective", "hybrid"], "the hybrid objective trains a learned variance"),
    (["--predict", "score"], "invalid choice: 'score'"),
])
def test_combinations_that_cannot_train_are_one_line(capsys, tmp_path, argv, expected):
    code, _, err = run(capsys, "train", "--data", "mnist", "--preset", "tiny", "--out", tmp_path / "r", "--steps", "2",
                       "--T", "21", "--quiet", *argv)
    assert code != 0 and expected in one_line_error(err)
    assert not (tmp_path / "r").exists()


def test_guidance_mixes_the_predictions_and_keeps_the_conditional_variance():
    def net(x, t, y):
        shift = y.view(-1, 1, 1, 1).float()
        return torch.cat([x + shift, x * 0 + 10 * shift], 1)  # a prediction, then variance values

    x, t, y = torch.zeros(2, 1, 2, 2), torch.tensor([3, 3]), torch.tensor([2, 4])
    out = Guided(net, y, null_class=0, guidance=1.5)(x, t)
    assert torch.allclose(out[:, :1], 2.5 * (x + y.view(-1, 1, 1, 1)))  # (1 + w) cond - w null (null shift 0)
    assert torch.allclose(out[:, 1:], 10 * y.view(-1, 1, 1, 1).float().expand(-1, 1, 2, 2))
