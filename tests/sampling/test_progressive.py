"""Progressive generation (Figs. 6 and 10): x0_hat kept along the chain for every image, against the sampler's own
predictions, in a sampling job, and ddpm sample --progressive."""

import numpy as np
import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.sampling.progressive import Progressive, default_reverse_steps, parse_reverse_steps
from ddpm.sampling.samplers import make_sampler
from helpers import OracleEps, one_line_error, run


def test_default_steps_are_every_tenth_of_the_chain():
    assert default_reverse_steps(1000) == [100, 200, 300, 400, 500, 600, 700, 800, 900, 1000]
    assert default_reverse_steps(60) == [6, 12, 18, 24, 30, 36, 42, 48, 54, 60]


@pytest.mark.parametrize("text", ["0,10", "61", "a,b", ""])
def test_reverse_steps_outside_the_chain_are_refused(text):
    with pytest.raises(Exception, match="--at"):
        parse_reverse_steps(text, 60)


def test_kept_predictions_are_the_samplers_own_at_each_reverse_step():
    T = 40
    d = GaussianDiffusion(NoiseSchedule.linear(T=T))
    x_star = torch.rand(1, 1, 4, 4) * 2 - 1
    sampler = make_sampler("ancestral", d)
    seen = {}
    kept = Progressive(sampler.indices, T, [1, 20, 40])
    assert kept.reverse_steps == [1, 20, 40]

    def both(t, x, pred_x0):
        seen[t] = pred_x0.clone()
        kept(t, x, pred_x0)

    sampler(OracleEps(d, x_star), (3, 1, 4, 4), generator=torch.Generator().manual_seed(0), callback=both)
    images = kept.images()
    for k in (1, 20, 40):  # reverse step k is the call at index T - k
        expected = ((seen[T - k].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        assert torch.equal(images[k], expected)
    # the oracle predicts x* from any x_t: the prediction is x* at every step
    star = ((x_star.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    assert all((images[k].int() - star.int()).abs().max() <= 1 for k in images)


def test_a_sampler_of_fewer_steps_keeps_its_nearest_calls():
    d = GaussianDiffusion(NoiseSchedule.linear(T=100))
    sampler = make_sampler("ddim", d, steps=10)  # indices 0, 11, 22, ..., 99
    kept = Progressive(sampler.indices, 100, [1, 50, 100])
    assert kept.reverse_steps == sorted(100 - i for i in kept.wanted)
    assert kept.reverse_steps[0] == 1 and kept.reverse_steps[-1] == 100
    assert all(100 - k in sampler.indices for k in kept.reverse_steps)


def test_sample_progressive_writes_the_strip_and_the_same_samples(tiny_runs, tmp_path, capsys):
    from PIL import Image

    uncond, cond = tiny_runs
    code, _, err = run(capsys, "sample", "--run", cond, "--n", "3", "--class", "3", "--out", tmp_path / "s.npz",
                       "--progressive", tmp_path / "p.png", "--at", "60,30,1", "--sampler", "ddim", "--steps", "12")
    assert code == 0, err
    # ddim's 12 calls are at indices 0, 5, 11, 16, 21, 27, 32, ...: reverse step 30 (index 30) is shown by index 32
    assert "x0 predicted at reverse steps 1,28,60" in err
    strip = Image.open(tmp_path / "p.png")
    assert strip.size[1] > strip.size[0] / 5  # 3 rows of 4 panels
    code, _, err = run(capsys, "sample", "--run", uncond, "--n", "2", "--out", tmp_path / "u.png", "--progressive",
                       tmp_path / "q.png")
    assert code == 0 and (tmp_path / "q.png").is_file()


def test_at_without_progressive_is_refused(tiny_runs, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--run", tiny_runs[0], "--n", "2", "--out", tmp_path / "s.png", "--at", "5")
    assert code != 0 and "--at picks the reverse steps" in one_line_error(err)
    code, _, err = run(capsys, "sample", "--run", tiny_runs[0], "--n", "2", "--out", tmp_path / "s.png",
                       "--progressive", tmp_path / "p.png", "--at", "61")
    assert code != 0 and "reverse steps lie in 1..60" in one_line_error(err)
    assert not (tmp_path / "s.png").exists()


def test_a_progressive_job_keeps_every_images_predictions_in_its_npz(tiny_runs, tmp_path):
    from ddpm import load_checkpoint
    from ddpm.sampling.generation import sample_checkpoint
    from ddpm.sampling.jobs import sample_job
    from ddpm.sampling.settings import SamplingSettings

    ckpt = load_checkpoint(tiny_runs[0])
    settings = SamplingSettings(sampler="ddim", steps=6, n=5, batch_size=2, progress=False)
    sample_job(tmp_path / "s.npz", ckpt, settings, chunk=3, progressive=[30, 60])
    with np.load(tmp_path / "s.npz") as z:
        # ddim's 6 calls are at indices 0, 12, 24, 35, 47, 59: reverse step 30 is shown by index 35, step 25
        assert sorted(z.files) == ["arr_0", "x0hat_0025", "x0hat_0060"]
        arrays = {k: z[k] for k in z.files}
    kept = Progressive(settings.make_sampler(ckpt.diffusion).indices, 60, [30, 60])
    direct = sample_checkpoint(ckpt, settings, collect=kept)
    assert np.array_equal(arrays["arr_0"], direct.permute(0, 2, 3, 1).numpy())
    for k, v in kept.arrays().items():
        assert np.array_equal(arrays[k], v)


def test_eval_fd_progressive_scores_each_kept_step_of_one_job(tiny_runs, tmp_path, capsys):
    import json

    from ddpm.evaluation.features import get_features
    from ddpm.evaluation.reports import fd_of, reference_moments

    out = tmp_path / "ev"
    argv = ["eval", "--run", tiny_runs[0], "--metrics", "fd", "--n", "6", "--sampler", "ddim", "--steps", "6",
            "--progressive", "30,60", "--out", out, "--ref-n", "200"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0, err
    rows = json.loads((out / "progressive.json").read_text())
    assert [r["reverse_step"] for r in rows] == [25, 60]
    assert (out / "progressive.png").stat().st_size > 1000 and "reverse step" in stdout
    samples = next(out.glob("samples-*.npz"))
    from ddpm.data.sources import load_data

    features = get_features("digits", channels=1)
    real = load_data("mnist", channels=1, image_size=16)
    _, mu, sig = reference_moments(real, features, ref_n=200)
    with np.load(samples) as z:
        for r in rows:  # an independent FD of each stored set
            images = torch.from_numpy(z[f"x0hat_{r['reverse_step']:04d}"]).permute(0, 3, 1, 2)
            assert r["fd"] == pytest.approx(fd_of(images, features, mu, sig), rel=1e-9)
    code, stdout, _ = run(capsys, *argv)  # again: the job's samples are reused
    assert code == 0 and json.loads((out / "progressive.json").read_text()) == rows


def test_eval_fid_progressive_goes_into_the_report(tiny_runs, tmp_path, capsys):
    import json

    out = tmp_path / "ev"
    code, _, err = run(capsys, "eval", "--run", tiny_runs[0], "--metrics", "fid,is", "--n", "20", "--sampler", "ddim",
                       "--steps", "4", "--progressive", "60", "--out", out, "--quiet", "--cache-dir", tmp_path)
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert [r["reverse_step"] for r in report["progressive"]] == [60]
    assert set(report["progressive"][0]) == {"reverse_step", "fid", "is"}


@pytest.mark.parametrize("argv,pattern", [
    (["--metrics", "bpd", "--progressive", "5"], "--progressive scores the predictions"),
    (["--metrics", "fd", "--steps", "2,3", "--sampler", "ddim", "--progressive", "5"], "one --steps value"),
    (["--metrics", "fd", "--progressive", "0"], "reverse steps lie in 1..60"),
])
def test_eval_progressive_refusals(tiny_runs, tmp_path, capsys, argv, pattern):
    code, _, err = run(capsys, "eval", "--run", tiny_runs[0], "--out", tmp_path / "ev", *argv)
    assert code != 0 and pattern in one_line_error(err)
