"""Faults a user meets: a full disk (a file-size limit in a child process: writes then fail with EFBIG, as they would
with ENOSPC), an allocation that fails, Ctrl-C. Each gives one line and a non-zero exit, keeps what it says it keeps,
and the next run continues."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.cli.commands import main

TINY = ["--preset", "tiny", "--batch-size", "4", "--log-every", "2", "--save-every", "3", "--quiet", "--T", "40"]


def _limited(argv, limit, cwd):
    """``ddpm argv`` in a child process whose files may not grow past ``limit`` bytes (RLIMIT_FSIZE; Python
    ignores SIGXFSZ, so a write past it is an OSError EFBIG)."""
    code = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
        from ddpm.cli.commands import main
        sys.exit(main({[str(a) for a in argv]!r}))
    """)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line(err):
    """The one error line (other lines are the progress and info a run prints before it)."""
    lines = [x for x in err.strip().splitlines() if x.startswith("ddpm: error")]
    assert len(lines) == 1 and "Traceback" not in err and err.strip().endswith(lines[0]), err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "3", *TINY]) == 0
    return run


def test_sampling_onto_a_full_disk_keeps_the_finished_chunks(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["sample", "--run", run_dir, "--out", out, "--n", 8, "--chunk", 2, "--sampler", "ddim", "--steps", 3]
    res = _limited(argv, 1500, tmp_path)  # a chunk of 2 images fits, the output of 8 does not
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert "no space to write (File too large:" in line and str(out) in line
    assert "4 finished chunks in" in line and "are kept" in line and "run the same command again" in line
    assert not out.exists() and len(list((tmp_path / ".s.npz.parts").glob("chunk-*.npz"))) == 4
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 0  # space freed: the same command continues
    assert "8 of them were drawn by an earlier run" in capsys.readouterr().err
    assert np.load(out)["arr_0"].shape == (8, 16, 16, 1)


def test_a_cache_build_onto_a_full_disk_keeps_nothing_half_built(tmp_path, capsys):
    src = tmp_path / "pics"
    src.mkdir()
    for i in range(12):
        Image.new("RGB", (20, 20), (i * 20, 0, 0)).save(src / f"{i}.png")
    cache = tmp_path / "cache"
    argv = ["data", "build", src, "--cache-dir", cache, "--image-size", "32"]
    res = _limited(argv, 20000, tmp_path)  # the cache of 12 RGB images of 32x32 is 36,864 bytes
    assert res.returncode == 1
    line = _one_line(res.stderr)
    assert "no space to write (File too large:" in line and "nothing half-written is kept" in line
    assert [p.name for p in cache.rglob("*") if p.suffix == ".npy" or p.name.startswith(".tmp-")] == []
    assert main([str(a) for a in argv]) == 0


def test_an_export_onto_a_full_disk_writes_nothing(run_dir, tmp_path):
    out = tmp_path / "exported"
    res = _limited(["export", "--run", run_dir, "--format", "diffusers", "--out", out], 4000, tmp_path)
    assert res.returncode == 1
    assert "no space to write (File too large:" in _one_line(res.stderr)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_training_onto_a_full_disk_keeps_the_last_checkpoint_and_resumes(tmp_path, capsys, monkeypatch):
    import ddpm.run.directory

    run = tmp_path / "run"
    real, calls = ddpm.run.directory.save_safetensors, []

    def full_at_the_second_checkpoint(tensors, path, **kw):
        calls.append(path)
        if ".tmp-step-00000006" in str(path):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, **kw)

    monkeypatch.setattr(ddpm.run.directory, "save_safetensors", full_at_the_second_checkpoint)
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "9", *TINY]) == 1
    line = _one_line(capsys.readouterr().err)
    assert "no space left on the device writing the checkpoint of step 6" in line
    assert "the last checkpoint, step 3, is kept" in line and f"ddpm train --out {run} --resume" in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000003"]
    monkeypatch.setattr(ddpm.run.directory, "save_safetensors", real)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 0
    assert [p.name for p in (run / "checkpoints").iterdir()][-1] == "step-00000009"


def test_a_run_that_failed_before_its_first_checkpoint_starts_again(tmp_path, capsys):
    run = tmp_path / "run"
    res = _limited(["train", "--data", "mnist", "--out", run, "--steps", "3", *TINY], 20000, tmp_path)
    assert res.returncode == 1 and "no checkpoint had been written" in _one_line(res.stderr)
    assert (run / "config.json").is_file()
    for extra in (["--resume"], []):  # as --resume or as new, with other settings
        assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "2", *TINY[:-2], "--T", "30",
                     *extra]) == 0
        assert (run / "checkpoints" / "step-00000002").is_dir()
        if not extra:
            break
        import shutil

        shutil.rmtree(run / "checkpoints")  # again without checkpoints: now start it as a new run


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                                "allocate memory: you tried to allocate 8589934592 bytes")])
def test_out_of_memory_is_one_line_with_what_to_change(error, run_dir, tmp_path, capsys, monkeypatch):
    import ddpm.sampling.generation
    import ddpm.training.trainer

    def oom(*a, **k):
        raise error

    monkeypatch.setattr(ddpm.training.trainer.Trainer, "train_step", oom)
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "r"), "--steps", "3", *TINY]) == 1
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("ddpm: error: out of memory at batch size 4: add --grad-accum 2")
    assert "--batch-size 2" in line
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "r"), "--steps", "3", *TINY]) == 1
    assert "out of memory" in _one_line(capsys.readouterr().err)  # the same run may be started again
    monkeypatch.setattr(ddpm.sampling.generation, "generate", oom)
    assert main(["sample", "--run", str(run_dir), "--out", str(tmp_path / "s.png"), "--batch-size", "64"]) == 1
    assert "out of memory at batch size 64: run again with --batch-size 32" in _one_line(capsys.readouterr().err)


@pytest.fixture
def ctrl_c_at_step_2(monkeypatch):
    """Training that receives SIGINT (Ctrl-C) at step 2."""
    import ddpm.training.trainer

    real = ddpm.training.trainer.Trainer.train_step

    def train_step(self, *a, **k):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *a, **k)

    monkeypatch.setattr(ddpm.training.trainer.Trainer, "train_step", train_step)


def test_ctrl_c_during_training_saves_and_exits_130(tmp_path, capsys, ctrl_c_at_step_2):
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "9", *TINY]) == 130
    assert "Continue with: ddpm train --out" in capsys.readouterr().err
    assert list((run / "checkpoints").iterdir())


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: ddpm" in capsys.readouterr().out


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("case", ["text-as-samples", "nchw-samples", "object-samples", "garbage-inception",
                                  "pickled-inception", "text-as-data", "pickled-bin"])
def test_a_file_that_is_not_what_was_expected_is_named_so(case, run_dir, tmp_path, capsys):
    """Never a loader's own text, which suggests allow_pickle=True or weights_only=False; one line saying what the
    file is."""
    f = tmp_path / {"text-as-samples": "s.npz", "nchw-samples": "s.npz", "object-samples": "s.npz",
                    "garbage-inception": "i.pth", "pickled-inception": "i.pth", "text-as-data": "d.txt",
                    "pickled-bin": "diffusers/unet/diffusion_pytorch_model.bin"}[case]
    f.parent.mkdir(parents=True, exist_ok=True)
    fd = ["eval", "--run", run_dir, "--metric", "fd", "--n", 2]
    if case == "text-as-samples":
        f.write_text("not an array")
        argv, expected = [*fd, "--samples", f], "is not an .npz file"
    elif case == "nchw-samples":
        np.savez(f, arr_0=np.zeros((4, 1, 16, 16), np.uint8))
        argv, expected = [*fd, "--samples", f], "looks like N, C, H, W; samples are N, H, W, C"
    elif case == "object-samples":
        np.savez(f, arr_0=np.array([{"a": 1}, None], dtype=object))
        argv, expected = [*fd, "--samples", f], "holds Python objects, not plain arrays"
    elif case in ("garbage-inception", "pickled-inception"):
        f.write_bytes(b"\x00\x01garbage" * 10) if case == "garbage-inception" else torch.save({"x": _Evil()}, f)
        argv = ["eval", "--run", run_dir, "--metric", "fd", "--features", "inception", "--inception", f]
        expected = ("is not a PyTorch file of plain tensors (FID Inception weights" if case == "garbage-inception"
                    else "holds Python objects besides tensors")
    elif case == "text-as-data":
        f.write_text("hello")
        argv, expected = ["train", "--data", f, "--out", tmp_path / "r"], "a file of no format ddpm reads"
    else:
        assert main(["export", "--run", str(run_dir), "--format", "diffusers", "--out", str(tmp_path / "exp")]) == 0
        (tmp_path / "exp" / "unet" / "diffusion_pytorch_model.safetensors").rename(tmp_path / "moved")
        for p in (tmp_path / "exp").rglob("*"):
            if p.is_file():
                (f.parent.parent / p.relative_to(tmp_path / "exp")).parent.mkdir(parents=True, exist_ok=True)
                (f.parent.parent / p.relative_to(tmp_path / "exp")).write_bytes(p.read_bytes())
        torch.save({"w": _Evil()}, f)
        argv, expected = ["import", f.parent.parent, "--out", tmp_path / "r"], "holds Python objects besides tensors"
    capsys.readouterr()
    assert main([str(a) for a in argv]) == 1
    out, err = capsys.readouterr()
    line = _one_line(err)
    assert expected in line, line
    assert "this ran" not in out and "weights_only" not in err and "allow_pickle" not in err


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A class-conditional run on a folder whose classes are not digits."""
    root = tmp_path_factory.mktemp("folder")
    for k, name in enumerate(("cat", "dog")):
        (root / "data" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("L", (16, 16), 40 + 100 * k + i).save(root / "data" / name / f"{i}.png")
    run = root / "run"
    assert main(["train", "--data", str(root / "data"), "--out", str(run), "--steps", "2", "--class-cond",
                 "--image-size", "16", "--channels", "1", "--cache-dir", str(root / "cache"), *TINY]) == 0
    return run


def test_fd_of_a_run_whose_classes_are_not_digits_claims_no_class_match(folder_run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["eval", "--run", str(folder_run), "--metric", "fd", "--n", "4", "--sampler", "dpm++",
                 "--features", "digits", "--out", str(tmp_path / "e"), "--cache-dir",
                 str(folder_run.parent / "cache")]) == 0
    out = capsys.readouterr().out
    assert "are their class" not in out
    row = out.strip().splitlines()[-1].split()
    assert row[:3] == ["dpm++", "20", "4"], out  # the steps the sampler used (its default 20), not T
    import csv

    with open(tmp_path / "e" / "fd.csv", newline="") as f:
        (r,) = list(csv.DictReader(f))
    assert (r["sampler"], r["steps"], r["features"], r["class_match"], r["confident_match"]) == \
        ("dpm++", "20", "digits", "", "")


def test_fd_from_features_that_do_not_vary_is_refused(run_dir, tmp_path, capsys, monkeypatch):
    import ddpm.evaluation.features

    real = ddpm.evaluation.features.load_digit_classifier

    def constant(*a, **k):
        net = real(*a, **k)
        net.features = lambda x: torch.zeros(len(x), 8)
        return net

    monkeypatch.setattr(ddpm.evaluation.features, "load_digit_classifier", constant)
    assert main(["eval", "--run", str(run_dir), "--metric", "fd", "--n", "4", "--sampler", "ddim", "--steps", "2",
                 "--out", str(tmp_path / "e")]) == 1
    assert "do not vary (zero covariance): the feature network is degenerate" in _one_line(capsys.readouterr().err)


def test_a_long_run_says_how_long_it_will_take_and_how_to_shorten_it():
    from types import SimpleNamespace

    from ddpm.cli.advice import Projection

    said, clock = [], [0.0]
    trainer = SimpleNamespace(step=0, config=SimpleNamespace(steps=800_000))
    p = Projection(after_s=30, clock=lambda: clock[0], say=said.append)
    for step in range(1, 40):  # 1.5 s per step
        trainer.step, clock[0] = step, 1.5 * step
        p(trainer)
    assert len(said) == 1
    assert "at 1.50 s per step, the 799,979 steps left take about 13.9 days" in said[0]
    assert "--steps N" in said[0] and "--preset" in said[0] and "--time-limit" in said[0]
    short, said[:] = SimpleNamespace(step=0, config=SimpleNamespace(steps=100)), []
    p = Projection(after_s=30, clock=lambda: clock[0], say=said.append)
    for step in range(1, 40):
        short.step, clock[0] = step, 1.5 * step
        p(short)
    assert said == []  # a run of minutes needs no warning


def test_training_ends_with_a_one_line_summary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "4", *TINY]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"trained {run} to step 4 in ") and ", loss " in last
    assert f"Next: ddpm sample --run {run}" in last


def test_class_names_that_are_numbers_win_over_indices_with_a_warning(caplog):
    from ddpm.sampling.guidance import class_labels

    names = ["1", "10", "2"]  # class folders 1, 2, 10, sorted as names
    with caplog.at_level("WARNING", logger="ddpm"):
        assert class_labels("1", names, 2, warn=True).tolist() == [0, 0]  # the folder "1", not index 1 ("10")
    assert "--class 1 is the class named '1' (index 0), not index 1 (class '10')" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="ddpm"):
        assert class_labels("2", names, 1, warn=True).tolist() == [2]  # name "2" is index 2 too: no doubt
    assert caplog.text == ""


def test_data_info_lists_a_folders_classes(tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "pets" / name / "a.png")
    assert main(["data", "info", str(tmp_path / "pets"), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "2 classes: cat, dog" in capsys.readouterr().out


def test_a_relative_data_path_survives_a_cd(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    (work / "pics" / "a").mkdir(parents=True)
    for i in range(6):
        Image.new("L", (16, 16), 30 * i).save(work / "pics" / "a" / f"{i}.png")
    monkeypatch.chdir(work)
    common = ["--image-size", "16", "--channels", "1", "--cache-dir", str(tmp_path / "cache")]
    assert main(["train", "--data", "pics", "--out", str(tmp_path / "run"), "--steps", "3", *TINY, *common]) == 0
    cfg = __import__("json").loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["train"]["data"] == str(work / "pics") and cfg["data_as_given"] == "pics"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "5", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "6", "--quiet",
                 "--data", "../work/pics/", "--cache-dir",
                 str(tmp_path / "cache")]) == 0  # the same source, spelled anew
    capsys.readouterr()
    assert main(["eval", "--run", str(tmp_path / "run"), "--metric", "bpd", "--n", "2", "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "bits/dim" in capsys.readouterr().out


def test_ctrl_c_during_the_demo_keeps_its_checkpoint_draws_nothing_and_exits_130(tmp_path, capsys,
                                                                                ctrl_c_at_step_2):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "20", "--quiet"]) == 130
    assert "Continue with: ddpm demo --out" in capsys.readouterr().err
    assert list((out / "checkpoints").iterdir()) and not (out / "samples.png").exists()
