"""ddpm eval --metrics rd (Sec. 4.3, Table 4): the report files, the same images and noise as bpd, every kind of run,
and the refusals."""

import json

import pytest

from helpers import TINY, one_line_error, run


def test_rd_and_bpd_in_one_call_measure_the_same_images(tiny_runs, tmp_path, capsys):
    uncond, _ = tiny_runs
    out = tmp_path / "ev"
    code, stdout, _ = run(capsys, "eval", "--run", uncond, "--metrics", "rd,bpd", "--n", "3", "--out", out)
    assert code == 0, stdout
    rd = json.loads((out / "rd.json").read_text())
    bpd = json.loads((out / "bpd.json").read_text())
    assert rd["reverse_steps"] == list(range(1, 61)) and len(rd["rate_bpd"]) == len(rd["rmse"]) == 60
    assert rd["n"] == 3 and rd["paper"] is None
    # the last rate plus the decoder's bits is the bound of the same images and noise
    assert rd["rate_final_bpd"] + rd["distortion_bpd"] == pytest.approx(bpd["bits_per_dim"], rel=1e-9)
    assert rd["distortion_bpd"] == pytest.approx(bpd["decoder"], rel=1e-9)
    assert all(b >= a for a, b in zip(rd["rate_bpd"], rd["rate_bpd"][1:]))
    assert [r["reverse_step"] for r in rd["table"]] == [6, 12, 18, 24, 30, 36, 42, 48, 54, 60]
    assert "reverse step" in stdout and "(the bound)" in stdout and "bits/dim:" in stdout
    assert (out / "rd.png").stat().st_size > 1000


def test_rd_alone_agrees_with_the_run_of_both(tiny_runs, tmp_path, capsys):
    uncond, _ = tiny_runs
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(capsys, "eval", "--run", uncond, "--metrics", "rd", "--n", "2", "--out", a)[0] == 0
    assert run(capsys, "eval", "--run", uncond, "--metrics", "bpd,rd", "--n", "2", "--out", b)[0] == 0
    assert json.loads((a / "rd.json").read_text())["rate_bpd"] == json.loads((b / "rd.json").read_text())["rate_bpd"]
    assert not (a / "bpd.json").exists()


def test_rd_of_a_class_conditional_run_on_its_held_out_digits(tiny_runs, tmp_path, capsys):
    _, cond = tiny_runs
    out = tmp_path / "ev"
    code, stdout, _ = run(capsys, "eval", "--run", cond, "--metrics", "rd", "--n", "3", "--held-out", "--out", out)
    assert code == 0
    rd = json.loads((out / "rd.json").read_text())
    assert rd["conditional"] is True and rd["data"] == "mnist (held out)" and rd["n"] == 3


@pytest.mark.parametrize("flags", [["--predict", "x0", "--var-type", "learned", "--objective", "vlb"],
                                   ["--predict", "mu", "--var-type", "fixedsmall"]])
def test_rd_of_other_parameterisations(flags, tmp_path, capsys):
    r = tmp_path / "r"
    assert run(capsys, "train", "--data", "mnist", "--out", r, "--steps", "2", *TINY, *flags)[0] == 0
    assert run(capsys, "eval", "--run", r, "--metrics", "rd", "--n", "2")[0] == 0
    rd = json.loads((r / "eval" / "rd.json").read_text())
    assert len(rd["rate_bpd"]) == 60 and all(v >= 0 for v in rd["rmse"])


@pytest.mark.parametrize("argv,pattern", [
    (["--metrics", "rd,fid"], "rd measures real images"),
    (["--metrics", "rd", "--steps", "10"], "--steps is for the metrics of samples"),
    (["--metrics", "fd", "--held-out"], "--held-out picks the real images of bpd and rd"),
])
def test_rd_refusals(tiny_runs, tmp_path, capsys, argv, pattern):
    uncond, _ = tiny_runs
    code, _, err = run(capsys, "eval", "--run", uncond, "--out", tmp_path / "ev", *argv)
    assert code != 0 and pattern in one_line_error(err)
    assert not (tmp_path / "ev").exists()


def test_held_out_needs_a_run_that_held_images_out(tmp_path, capsys):
    r = tmp_path / "r"
    assert run(capsys, "train", "--data", "mnist", "--out", r, "--steps", "2", *TINY, "--val-fraction", "0")[0] == 0
    code, _, err = run(capsys, "eval", "--run", r, "--metrics", "rd", "--n", "2", "--held-out")
    assert code != 0 and "held no images out" in one_line_error(err)
