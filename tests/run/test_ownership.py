"""Nothing a user owns is deleted or replaced: --overwrite replaces only what ddpm wrote, every command that writes
refuses anything else with one line, and nothing is changed when it does."""

import os

import numpy as np
import pytest
from PIL import Image

from ddpm.cli.commands import main

TINY = ["--preset", "tiny", "--batch-size", "4", "--log-every", "2", "--save-every", "3", "--quiet", "--T", "40"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("own") / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "3", *TINY]) == 0
    return run


def _tree(root):
    """Every path under ``root`` with its bytes (folders as None)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _sample(run, out, *extra):
    return main(["sample", "--run", str(run), "--out", str(out), "--sampler", "ddim", "--steps", "3",
                 *map(str, extra)])


def _one_line(err):
    lines = [x for x in err.strip().splitlines() if x.strip() and "%|" not in x]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_folder_of_the_users_is_never_emptied(run_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("three years")
    (mine / "sub" / "deep.txt").write_text("deeper")
    Image.new("L", (4, 4)).save(mine / "photo.png")
    before = _tree(mine)
    for extra in ([], ["--overwrite"]):
        assert _sample(run_dir, mine, "--n", 2, *extra) == 1
        assert "ddpm did not write (photo.png, sub/, thesis.txt)" in _one_line(capsys.readouterr().err)
        assert _tree(mine) == before
    assert not list(tmp_path.glob(".mine.parts"))  # refused before any work


def test_runs_the_current_folder_and_home_are_never_replaced(run_dir, tmp_path, capsys, monkeypatch):
    before = _tree(run_dir)
    cases = [(run_dir, "it is the run being read"), (run_dir.parent, "it holds the run being read")]
    other = tmp_path / "other-run"
    assert main(["train", "--data", "mnist", "--out", str(other), "--steps", "1", *TINY]) == 0
    cases.append((other, "it is a training run"))
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    cases.append((".", "it is the current folder"))
    for out, why in cases:
        capsys.readouterr()
        assert _sample(run_dir, out, "--n", 2, "--overwrite") == 1
        assert why in _one_line(capsys.readouterr().err)
    assert _tree(run_dir) == before and (work / "notes.txt").read_text() == "mine"
    assert (other / "config.json").is_file() and list((other / "checkpoints").iterdir())


def test_overwrite_replaces_ddpm_s_own_output(run_dir, tmp_path, capsys):
    out = tmp_path / "pngs"
    assert _sample(run_dir, out, "--seed", 5, "--n", 3) == 0
    assert sorted(os.listdir(out)) == [".ddpm-files.json", "000005.png", "000006.png", "000007.png"]  # by seed
    capsys.readouterr()
    assert _sample(run_dir, out, "--n", 2) == 1
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    assert _sample(run_dir, out, "--n", 2, "--overwrite") == 0
    assert sorted(os.listdir(out)) == [".ddpm-files.json", "000000.png", "000001.png"]
    capsys.readouterr()
    (out / "keep.txt").write_text("added by the user")
    assert _sample(run_dir, out, "--n", 2, "--overwrite") == 1
    assert "keep.txt" in _one_line(capsys.readouterr().err) and (out / "keep.txt").exists()
    grid = tmp_path / "grid.png"
    assert _sample(run_dir, grid, "--n", 2) == 0
    assert _sample(run_dir, grid, "--n", 4, "--overwrite") == 0 and Image.open(grid).size[0] > 40
    capsys.readouterr()
    assert main(["sample", "--run", str(run_dir), "--out", str(tmp_path / "g2.png"), "--n", "1", "--sampler", "ddim",
                 "--steps", "2"]) == 0
    assert "wrote 1 sample (seed 0)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["noise", "schedule", "trajectory"])
def test_single_pictures_replace_only_their_own(command, run_dir, tmp_path, capsys):
    out = tmp_path / "p.png"
    argv = {"noise": ["noise", "mnist:3", "--t", "0,10,40"], "schedule": ["schedule", "--T", "100"],
            "trajectory": ["sample", "--run", str(run_dir), "--n", "2", "--sampler", "ddim", "--steps", "3",
                           "--out", str(tmp_path / "s.npz")]}[command]
    flag = "--trajectory" if command == "trajectory" else "--out"
    Image.new("L", (4, 4)).save(out)  # the user's picture
    before = out.read_bytes()
    for extra in ([], ["--overwrite"]):
        assert main([*argv, flag, str(out), *extra]) == 1
        assert "ddpm did not write it" in _one_line(capsys.readouterr().err)
        assert out.read_bytes() == before
    out.unlink()
    assert main([*argv, flag, str(out)]) == 0
    capsys.readouterr()
    if command == "trajectory":
        (tmp_path / "s.npz").unlink()
    assert main([*argv, flag, str(out)]) == 1  # ddpm's own picture: only with --overwrite
    assert "--overwrite" in _one_line(capsys.readouterr().err)
    if command == "trajectory":
        (tmp_path / "s.npz").unlink(missing_ok=True)
    assert main([*argv, flag, str(out), "--overwrite"]) == 0


def test_eval_never_replaces_a_report_of_the_users_and_checks_before_work(run_dir, tmp_path, capsys, monkeypatch):
    import ddpm.evaluation.reports

    out = tmp_path / "reports"
    out.mkdir()
    (out / "fd.csv").write_text("my own table")
    monkeypatch.setattr(ddpm.evaluation.reports, "sample_checkpoint", lambda *a,
                        **k: pytest.fail("sampled before the check"))
    assert main(["eval", "--run", str(run_dir), "--metric", "fd", "--n", "4", "--out", str(out)]) == 1
    assert "fd.csv there were not written by ddpm" in _one_line(capsys.readouterr().err)
    assert (out / "fd.csv").read_text() == "my own table" and sorted(os.listdir(out)) == ["fd.csv"]


def test_eval_of_two_metrics_checks_the_reports_of_both(run_dir, tmp_path, capsys):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "bpd.json").write_text("my own numbers")
    assert main(["eval", "--run", str(run_dir), "--metric", "bpd,fd", "--n", "4", "--out", str(out)]) == 1
    assert "bpd.json there were not written by ddpm" in _one_line(capsys.readouterr().err)
    assert (out / "bpd.json").read_text() == "my own numbers" and sorted(os.listdir(out)) == ["bpd.json"]


def test_eval_prints_its_numbers_before_a_failed_write(run_dir, tmp_path, capsys, monkeypatch):
    import ddpm.evaluation.reports

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ddpm.evaluation.reports, "_write_reports", full_disk)
    assert main(["eval", "--run", str(run_dir), "--metric", "bpd", "--n", "2", "--out", str(tmp_path / "e")]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("bits/dim: ") and "No space left on device" in err


def test_the_parts_of_a_job_are_removed_file_by_file(run_dir, tmp_path):
    out = tmp_path / "s.npz"
    parts = tmp_path / ".s.npz.parts"
    parts.mkdir()
    (parts / "job.json").write_text('{"run": "elsewhere"}')
    (parts / "note.txt").write_text("someone put this here")
    assert _sample(run_dir, out, "--n", 2, "--overwrite") == 0
    assert np.load(out)["arr_0"].shape[0] == 2
    assert (parts / "note.txt").read_text() == "someone put this here"
