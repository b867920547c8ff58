"""The CLI end to end (in-process): train, resume, sample outputs, and one-line errors for bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import load_checkpoint
from ddpm.cli.commands import main
from helpers import TINY, one_line_error, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", "mnist", "--out", str(run_dir), "--steps", "6", *TINY]) == 0
    return run_dir


@pytest.fixture(scope="module")
def conditional(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "cond"
    assert main(["train", "--data", "mnist", "--out", str(run_dir), "--steps", "4", "--class-cond", *TINY]) == 0
    return run_dir


def test_train_writes_a_complete_run(trained):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["train"]["steps"] == 6 and cfg["diffusion"]["T"] == 60
    assert (trained / "metrics.csv").read_text().startswith("step,loss,lr,grad_norm,img_per_s")
    assert (trained / "loss.png").is_file()
    assert load_checkpoint(trained).step == 6


@pytest.mark.parametrize("cond", [[], ["--class-cond", "--p-uncond", "0.3"], "folder"],
                         ids=["unconditional", "class-cond", "cached-folder"])
def test_resume_through_the_cli_is_bit_identical(cond, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    data = "mnist"
    if cond == "folder":  # a source read from the decoded cache (memory-mapped)
        data, cond = tmp_path / "imgs", ["--channels", "3"]
        data.mkdir()
        rng = np.random.default_rng(0)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(data / f"{i}.png")
    assert run(capsys, "train", "--data", data, "--out", a, "--steps", "8", *TINY, *cond)[0] == 0
    assert run(capsys, "train", "--data", data, "--out", b, "--steps", "5", *TINY, *cond)[0] == 0
    code, _, err = run(capsys, "train", "--out", b, "--resume", "--steps", "8", "--quiet")
    assert code == 0 and "resuming" in err and "from step 5" in err
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca.step == cb.step == 8
    for m in ("model", "ema_model"):
        for k, v in getattr(ca, m).state_dict().items():
            assert torch.equal(v, getattr(cb, m).state_dict()[k]), (m, k)


def test_sample_writes_png_npz_and_folder(trained, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--run", trained, "--n", "5", "--out", tmp_path / "s.npz", "--batch-size", "3")
    assert code == 0, err
    arr = np.load(tmp_path / "s.npz")["arr_0"]
    assert arr.shape == (5, 16, 16, 1) and arr.dtype == np.uint8
    assert run(capsys, "sample", "--run", trained, "--n", "3", "--out", tmp_path / "g.png")[0] == 0
    assert Image.open(tmp_path / "g.png").size[0] > 16
    assert run(capsys, "sample", "--run", trained, "--n", "3", "--out", tmp_path / "pngs")[0] == 0
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == [".ddpm-files.json", "000000.png", "000001.png", "000002.png"]
    # the same seed gives the same images
    assert run(capsys, "sample", "--run", trained, "--n", "5", "--out", tmp_path / "t.npz", "--batch-size", "3")[0] == 0
    assert np.array_equal(np.load(tmp_path / "t.npz")["arr_0"], arr)


def test_fast_samplers_through_the_cli(trained, tmp_path, capsys):
    for sampler in ("ddim", "respaced"):
        code, _, err = run(capsys, "sample", "--run", trained, "--n", "2", "--out", tmp_path / f"{sampler}.npz",
                           "--sampler", sampler, "--steps", "7", *(["--eta", "0.5"] if sampler == "ddim" else []))
        assert code == 0, err
        assert np.load(tmp_path / f"{sampler}.npz")["arr_0"].shape == (2, 16, 16, 1)


def test_a_class_conditional_run_samples_what_is_asked_for(conditional, tmp_path, capsys):
    cfg = json.loads((conditional / "config.json").read_text())
    assert cfg["classes"] == list("0123456789") and cfg["model"]["num_classes"] == 10 and cfg["train"]["class_cond"]
    code, _, err = run(capsys, "sample", "--run", conditional, "--n", "20", "--class", "all", "--out",
                       tmp_path / "all.npz", "--sampler", "ddim", "--steps", "5", "--guidance", "1.5")
    assert code == 0, err
    with np.load(tmp_path / "all.npz") as z:
        assert z["arr_0"].shape == (20, 16, 16, 1) and z["arr_1"].dtype == np.int64
        assert z["arr_1"].tolist() == [c for c in range(10) for _ in range(2)]
    assert run(capsys, "sample", "--run", conditional, "--n", "20", "--class", "all", "--out", tmp_path / "all.png",
               "--sampler", "ddim", "--steps", "5")[0] == 0
    assert Image.open(tmp_path / "all.png").size == (2 * (2 + 2 * 18), 2 * (2 + 10 * 18))  # a row per class
    assert run(capsys, "sample", "--run", conditional, "--n", "3", "--class", "7", "--out", tmp_path / "7.npz",
               "--sampler", "respaced", "--steps", "5")[0] == 0
    assert np.load(tmp_path / "7.npz")["arr_1"].tolist() == [7, 7, 7]
    assert run(capsys, "sample", "--run", conditional, "--n", "2", "--out", tmp_path / "u.npz")[0] == 0  # null class
    assert "arr_1" not in np.load(tmp_path / "u.npz").files


def test_eval_of_a_class_conditional_run(conditional, tmp_path, capsys):
    code, stdout, err = run(capsys, "eval", "--run", conditional, "--metric", "fd", "--n", "20", "--out",
                            tmp_path / "ev", "--sampler", "ddim", "--steps", "3", "--guidance", "1")
    assert code == 0, err
    assert "of the samples are their class" in stdout
    header, row = (tmp_path / "ev" / "fd.csv").read_text().strip().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["guidance"] == "1" and 0 <= float(values["class_match"]) <= 1
    code, stdout, err = run(capsys, "eval", "--run", conditional, "--metric", "bpd", "--n", "2", "--out",
                            tmp_path / "ev")
    assert code == 0, err
    assert json.loads((tmp_path / "ev" / "bpd.json").read_text())["conditional"] is True


def _corrupt_folder(tmp_path):
    d = tmp_path / "corrupt"
    d.mkdir()
    Image.new("RGB", (20, 20), "red").save(d / "ok.png")
    (d / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    return d


def _read_only_folder(tmp_path):
    """A folder no file can be created in: chmod 555 where that binds, /sys for root (whom permission bits do
    not stop; sysfs refuses new files to everyone)."""
    import os

    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o555)
    return d if os.geteuid() != 0 else Path("/sys")


def _bad_things(tmp_path, trained):
    """A truncated PNG, a folder without images, a run with broken JSON, a float .npz, a foreign diffusers dir."""
    import io
    import shutil

    out = {}
    d = tmp_path / "truncated"
    d.mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (d / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = d
    d = tmp_path / "txtonly"
    d.mkdir()
    (d / "notes.txt").write_text("no images here")
    out["txtonly"] = d
    d = tmp_path / "brokenrun"
    shutil.copytree(trained, d)
    (d / "config.json").write_text('{"preset": "tiny", "model": ')
    out["brokenrun"] = d
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((4, 16, 16, 1), np.float32))
    out["badnpz"] = tmp_path / "float.npz"
    np.savez(tmp_path / "rgb.npz", arr_0=np.zeros((4, 16, 16, 3), np.uint8))  # 3 channels for a 1-channel run
    out["rgbnpz"] = tmp_path / "rgb.npz"
    d = tmp_path / "foreign" / "unet"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({
        "_class_name": "UNet2DModel", "sample_size": 16, "in_channels": 1,
        "out_channels": 1, "block_out_channels": [16, 32], "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"]}))
    out["foreign"] = tmp_path / "foreign"
    d = tmp_path / "otherjson"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 16}))
    out["otherjson"] = d
    return out


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["train", "--data", "{tmp}/missing", "--out", "{tmp}/r"], "not found"),
        (["train", "--data", "{empty}", "--out", "{tmp}/r"], "no images"),
        (["train", "--data", "{corrupt}", "--out", "{tmp}/r"], "bad.png"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--steps", "0"], "--steps must be a positive integer, got 0"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--preset", "huge"], "invalid choice: 'huge'"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--snr-gamma", "-1"], "--snr-gamma must be >= 0"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--lr", "-1"], "--lr must be positive"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--T", "10"], "not below 1"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--batch-size", "x"], "invalid int value: 'x'"),
        (["train", "--out", "{tmp}/r"], "--data is required"),
        (["train", "--data", "mnist", "--out", "{trained}"], "already exists; pass --resume"),
        (["train", "--out", "{trained}", "--resume", "--batch-size", "7"], "cannot change it"),
        (["sample", "--run", "{tmp}/nope", "--out", "{tmp}/x.png"], "does not exist"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.jpg"], "unknown output type '.jpg'"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/no/such/x.png"], "does not exist"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--n", "0"], "expected a positive integer"),
        (["sample", "--run", "{empty}", "--out", "{tmp}/x.png"], "not a ddpm run directory"),
        (["demo", "--minutes", "0", "--out", "{tmp}/d"], "--minutes must be positive"),
        (["demo", "--out", "{empty}/../corrupt"], "exists and is not a ddpm run"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--steps", "5"],
         "the ancestral sampler takes all T=60"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--sampler", "ddim", "--steps", "61"], "[1, 60]"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--sampler", "ddim", "--eta", "-1"],
         "eta must be >= 0"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--features", "inception"], "--inception PATH"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--features", "inception", "--inception", "{tmp}/i.pth"],
         "not found"),
        (["eval", "--run", "{trained}", "--metric", "bpd", "--steps", "5"], "--steps is for the metrics of samples"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--steps", "5"], "the ancestral sampler takes all T=60"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--samples", "{tmp}/none.npz"], "not found"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--sampler", "ddim", "--steps", "3,x"],
         "separated by commas"),
        (["eval", "--run", "{trained}", "--metric", "nll"], "unknown metric 'nll'"),
        (["eval", "--run", "{trained}", "--metric", "bpd", "--data", "{empty}"], "no images"),
        (["noise", "{tmp}/missing.png", "--out", "{tmp}/s.png"], "not found"),
        (["noise", "{corrupt}/bad.png", "--out", "{tmp}/s.png"], "cannot read image"),
        (["noise", "mnist:99999", "--out", "{tmp}/s.png"], "K must be an index"),
        (["noise", "mnist", "--out", "{tmp}/s.jpg"], "must end in .png"),
        (["noise", "mnist", "--out", "{tmp}/s.png", "--t", "0,2000"], "[0, 1000]"),
        (["noise", "mnist", "--out", "{tmp}/s.png", "--run", "{trained}", "--T", "50"], "drop --T"),
        (["schedule", "--out", "{tmp}/no/such/s.png"], "does not exist"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--gif", "{tmp}/a.png"], "must end in .gif"),
        (["train", "--data", "{truncated}", "--out", "{tmp}/r"], "cannot read image"),
        (["train", "--data", "{txtonly}", "--out", "{tmp}/r"], "no images"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--grad-accum", "0"], "--grad-accum must be a positive"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--batch-size", "4", "--grad-accum", "5"], "larger than"),
        (["sample", "--run", "{brokenrun}", "--out", "{tmp}/x.png"], "is not valid JSON"),
        (["eval", "--run", "{brokenrun}", "--metric", "bpd"], "is not valid JSON"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--samples", "{badnpz}"], "must be uint8"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--samples", "{rgbnpz}"], "but the real images"),
        (["import", "{foreign}", "--out", "{tmp}/r"], "CrossAttnDownBlock2D"),
        (["import", "{empty}", "--out", "{tmp}/r"], "not a diffusers DDPM directory"),
        (["import", "{tmp}/nowhere", "--out", "{tmp}/r"], "is not a folder"),
        (["import", "{foreign}", "--out", "{trained}"], "already exists"),
        (["export", "--run", "{trained}", "--format", "onnx", "--out", "{tmp}/x"], "invalid choice: 'onnx'"),
        (["export", "--run", "{trained}", "--format", "diffusers", "--out", "{trained}"], "already exists"),
        (["export", "--run", "{tmp}/nope", "--format", "diffusers", "--out", "{tmp}/x"], "does not exist"),
        (["schedule", "--out", "{tmp}/s.png", "--T", "0"], "expected a positive integer"),
        # what a new user tripped over: each is caught before any work, with a message that says what is wrong
        (["sample", "--run", "{trained}", "--out", "{existing}"], "the file exists and ddpm did not write it"),
        (["sample", "--run", "{trained}", "--out", "{existing}", "--overwrite"],
         "the file exists and ddpm did not write it"),
        (["sample", "--run", "{trained}", "--out", "{readonly}/x.png"], "is not writable"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--sampler", "respaced", "--steps", "5", "--eta",
          "0.5"], "eta is an option of the ddim sampler"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--spacing", "quadratic"], "spacing is an option of"),
        (["train", "--out", "{tmp}/never", "--resume"], "does not exist, so there is nothing to resume"),
        (["import", "{trained}", "--out", "{tmp}/r"], "is a ddpm run, not a diffusers directory"),
        (["import", "{otherjson}", "--out", "{tmp}/r"], "is not a diffusers UNet2DModel config (it has no down_block"),
        (["demo", "--out", "{trained}"], "is a run of preset 'tiny', not a demo run"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--n", "1"], "needs --n >= 2 samples"),
        (["eval", "--run", "{trained}", "--metric", "bpd", "--eta", "1"], "--eta is for the metrics of samples"),
        (["schedule", "--out", "{tmp}/s.png", "--T", "10"], "the smallest T that works is 21"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--preset", "tiny", "--image-size", "9"],
         "image_size=9 must be divisible by 2"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--channels", "0"], "expected a positive integer"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--channels", "17"], "an integer from 1 to 16"),
        (["data", "info", "{tmp}/nowhere"], "not found"),
        (["data", "info", "{empty}"], "no images"),
        # sampling jobs
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.npz", "--seeds", "5-2"], "comes before the first"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.npz", "--seeds", "abc"], "expected a range of seeds"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.npz", "--seeds", "0-9", "--n", "3"], "not both"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/big.png", "--n", "10001"], "too large"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.npz", "--sampler", "dpm++", "--steps", "61"], "[1, 60]"),
        (["interpolate", "--run", "{trained}", "mnist:1", "mnist:2", "--t", "61", "--out", "{tmp}/i.png"],
         "t must lie in [1, 60]"),
        (["interpolate", "--run", "{trained}", "mnist:1", "{tmp}/none.png", "--out", "{tmp}/i.png"], "not found"),
        (["interpolate", "--run", "{trained}", "mnist:1", "mnist:2", "--out", "{tmp}/i.jpg"], "must end in .png"),
        # class-conditional runs
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--class", "3"], "needs a class-conditional run"),
        (["sample", "--run", "{conditional}", "--out", "{tmp}/x.png", "--n", "2", "--class", "zebra"],
         "unknown class 'zebra'; the run's classes: 0, 1, 2"),
        (["sample", "--run", "{conditional}", "--out", "{tmp}/x.png", "--n", "2", "--class", "12"],
         "--class 12: the run has 10 classes, 0-9"),
        (["sample", "--run", "{conditional}", "--out", "{tmp}/x.png", "--class", "all"],
         "--n 64 is not a multiple of 10"),
        (["sample", "--run", "{conditional}", "--out", "{tmp}/x.png", "--class", "1", "--guidance", "-1"],
         "expected a number >= 0, got -1"),
        (["sample", "--run", "{conditional}", "--out", "{tmp}/x.png", "--guidance", "2"],
         "--guidance steers samples toward requested classes: add --class"),
        (["sample", "--run", "{trained}", "--out", "{tmp}/x.png", "--guidance", "2", "--class", "1"],
         "--guidance needs a class-conditional run"),
        (["eval", "--run", "{trained}", "--metric", "fd", "--guidance", "1"], "--guidance needs a class-conditional"),
        (["train", "--data", "{loose}", "--out", "{tmp}/r", "--class-cond"], "are not in class subfolders"),
        (["train", "--data", "mnist", "--out", "{tmp}/r", "--class-cond", "--p-uncond", "1"], "--p-uncond must lie in"),
        (["noise", "mnist", "--out", "{tmp}/s.png", "--schedule", "quadratic"], "invalid choice: 'quadratic'"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(argv, pattern, trained, conditional, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("L", (8, 8), 3).save(loose / "a.png")
    subs = {"tmp": tmp_path, "empty": empty, "trained": trained, "corrupt": _corrupt_folder(tmp_path),
            "conditional": conditional, "loose": loose,
            "readonly": _read_only_folder(tmp_path), **_bad_things(tmp_path, trained)}
    (tmp_path / "existing.png").write_bytes(b"a picture the user keeps")
    subs["existing"] = tmp_path / "existing.png"
    argv = [a.format(**subs) for a in argv]
    before = sorted(p.relative_to(trained).as_posix() for p in trained.rglob("*"))
    code, _, err = run(capsys, *argv)
    assert code != 0
    line = one_line_error(err)
    assert pattern in line, line
    assert not (tmp_path / "r").exists(), "a failed command must not leave a run behind"
    assert not list(tmp_path.glob(".*.parts")), "a failed check must come before a job's parts appear"
    assert sorted(p.relative_to(trained).as_posix() for p in trained.rglob("*")) == before
    assert (tmp_path / "existing.png").read_bytes() == b"a picture the user keeps"


def test_eval_bpd_writes_terms_plot_and_total(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, _ = run(capsys, "eval", "--run", trained, "--metric", "bpd", "--n", "3", "--out", out)
    assert code == 0
    rows = (out / "bpd_terms.csv").read_text().strip().splitlines()
    assert rows[0] == "term,t,bits_per_dim,std_error"
    assert len(rows) == 1 + 1 + 59 + 1 + 1  # header, prior, T-1 KLs, decoder, total
    values = [float(r.split(",")[2]) for r in rows[1:-1]]
    total = float(rows[-1].split(",")[2])
    assert total == pytest.approx(sum(values), rel=1e-6)  # the terms add up to the bound
    summary = json.loads((out / "bpd.json").read_text())
    assert summary["n"] == 3 and summary["bits_per_dim"] == pytest.approx(total, rel=1e-6)
    assert f"bits/dim: {total:.4f}" in stdout and "standard error" in stdout
    assert (out / "bpd_terms.png").stat().st_size > 1000


def test_eval_fd_over_steps_writes_a_table_and_reuses_reference_stats(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    argv = ["eval", "--run", trained, "--metric", "fd", "--n", "12", "--out", out, "--sampler", "ddim",
            "--steps", "2,5"]
    code, stdout, err = run(capsys, *argv)
    assert code == 0
    assert "FD from 12 samples of 128-d features is biased upwards" in err
    rows = (out / "fd.csv").read_text().strip().splitlines()
    assert rows[0].startswith("sampler,steps") and [r.split(",")[1] for r in rows[1:]] == ["2", "5"]
    assert all(float(r.split(",")[6]) > 0 for r in rows[1:])
    assert (out / "fd_vs_steps.png").is_file()
    assert "ddim" in stdout and "FD@12" in stdout  # FD depends on n: the report names it
    cache = list(out.glob("ref_stats_digits_*.npz"))
    assert len(cache) == 1
    stamp = cache[0].stat().st_mtime_ns
    samples = tmp_path / "s.npz"
    assert run(capsys, "sample", "--run", trained, "--n", "6", "--out", samples, "--sampler", "ddim",
               "--steps", "3")[0] == 0
    code, stdout, _ = run(capsys, "eval", "--run", trained, "--metric", "fd", "--out", out, "--samples", samples)
    assert code == 0 and "file" in stdout
    assert cache[0].stat().st_mtime_ns == stamp  # the reference statistics came from the cache


def test_noise_schedule_and_trajectory_pictures(trained, tmp_path, capsys):
    img = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(img)
    assert run(capsys, "noise", img, "--out", tmp_path / "strip.png", "--size", "32")[0] == 0
    strip = Image.open(tmp_path / "strip.png")
    assert strip.width > 8 * 32 and strip.height > 32  # eight panels and their labels
    assert run(capsys, "noise", "mnist:3", "--out", tmp_path / "m.png", "--run", trained, "--t", "0,30,60")[0] == 0
    assert run(capsys, "schedule", "--out", tmp_path / "sched.png", "--T", "100")[0] == 0
    assert Image.open(tmp_path / "sched.png").width > 500
    code, _, err = run(capsys, "sample", "--run", trained, "--n", "3", "--out", tmp_path / "s.png", "--sampler",
                       "respaced", "--steps", "10", "--trajectory", tmp_path / "t.png", "--gif", tmp_path / "a.gif")
    assert code == 0, err
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 10  # the 10 steps taken (40 frames asked for, only 10 exist)
    assert Image.open(tmp_path / "t.png").height > 6 * 16  # x_t and pred x_0 rows for three samples


def test_help_teaches(capsys):
    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    for flag in ("--data", "--out", "--resume", "--steps", "--batch-size", "--seed", "--lr", "--ema-decay", "examples:",
                 "--threads", "presets:"):
        assert flag in out
    assert "cifar10 800000" in out and "mnist 4800" in out  # each preset's default, where they differ
    for command in ("noise", "schedule", "sample", "eval", "import", "export", "demo"):
        code, out, _ = run(capsys, command, "--help")
        assert code == 0 and "--threads" in out and "examples:" in out
        assert "preset's recipe" not in out  # no preset here: the defaults shown are the real ones
    code, out, _ = run(capsys, "noise", "--help")
    assert "(default: 1000)" in out and "(default: 'linear')" in out


def test_a_preset_at_another_size_and_channels(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--steps", "1", *TINY,
                       "--image-size", "8", "--channels", "3")
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (cfg["model"]["image_size"], cfg["model"]["in_channels"]) == (8, 3)
    assert np.load(_sampled(tmp_path, capsys))["arr_0"].shape == (2, 8, 8, 3)
    code, _, err = run(capsys, "train", "--out", tmp_path / "r", "--resume", "--image-size", "16")
    assert code == 1 and "the run was trained with --image-size 8; a resumed run cannot change it" in err


def _sampled(tmp_path, capsys):
    assert run(capsys, "sample", "--run", tmp_path / "r", "--n", "2", "--out", tmp_path / "s.npz", "--sampler",
               "ddim", "--steps", "3")[0] == 0
    return tmp_path / "s.npz"


def test_resume_of_a_finished_run_says_so_and_changes_nothing(trained, capsys):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()}
    code, _, err = run(capsys, "train", "--out", trained, "--resume", "--quiet")
    assert code == 0 and "has finished its 6 steps; nothing to train" in err and "--steps N" in err
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*") if p.is_file()} == before


def test_resume_with_more_steps_of_a_cosine_run_says_how_the_learning_rate_changes(tmp_path, capsys):
    out = tmp_path / "r"
    assert run(capsys, "train", "--data", "mnist", "--out", out, "--steps", "6", "--lr-schedule", "cosine",
               "--warmup", "2", *TINY)[0] == 0
    code, _, err = run(capsys, "train", "--out", out, "--resume", "--steps", "12", "--quiet")
    assert code == 0
    line = next(x for x in err.splitlines() if "warning" in x)
    assert "cosine learning-rate decay now ends at step 12 instead of 6" in line
    assert "goes from 0 to 0.000" in line  # at step 6 it had reached 0; stretched to 12 it is half way up again
    assert load_checkpoint(out).step == 12


def test_interpolate_writes_a_strip(trained, tmp_path, capsys):
    code, _, err = run(capsys, "interpolate", "--run", trained, "mnist:3", "mnist:8", "--t", "30", "--n", "5",
                       "--out", tmp_path / "i.png", "--mix", "slerp")
    assert code == 0, err
    strip = Image.open(tmp_path / "i.png")
    assert strip.width > 7 * 16 and "5 slerp mixtures of mnist:3 and mnist:8" in err  # A, five mixtures, B


def test_a_leading_double_dash_is_passed_over(tmp_path, capsys):
    """`torchrun ... -m ddpm -- train ...` hands ddpm `-- train ...`: the form that keeps torchrun's parser off
    ddpm's flags must run like the plain one."""
    code, _, err = run(capsys, "--", "schedule", "--out", tmp_path / "s.png", "--T", "50")
    assert code == 0, err
    assert (tmp_path / "s.png").stat().st_size > 1000
