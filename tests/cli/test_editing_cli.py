"""`ddpm inpaint` and `ddpm edit`: outputs, exact kept pixels, resuming after a kill, refusals in one line."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.pictures import load_images
from helpers import one_line_error, run

STEPS = ["--steps", "6", "--jump", "2", "--resample", "2"]


@pytest.fixture
def runs(tiny_runs):
    return tiny_runs


def test_inpaint_keeps_the_known_pixels_and_draws_a_figure(runs, tmp_path, capsys):
    out = tmp_path / "fill.npz"
    code, _, err = run(capsys, "inpaint", "--run", runs[0], "mnist:0-1", "--mask", "right", "--n", "2", "--out", out,
                       *STEPS, "--quiet")
    assert code == 0 and "wrote 4 completions of 2 images (10 network calls each)" in err
    got = torch.from_numpy(np.load(out)["arr_0"]).permute(0, 3, 1, 2)
    inputs = load_images("mnist:0-1", 16, 1).repeat_interleave(2, 0)
    assert torch.equal(got[..., :8], inputs[..., :8]) and not torch.equal(got[..., 8:], inputs[..., 8:])
    fig = tmp_path / "fill.png"
    assert run(capsys, "inpaint", "--run", runs[0], "mnist:0-1", "--mask", "right", "--n", "2", "--out", fig,
               *STEPS, "--quiet")[0] == 0
    w, h = Image.open(fig).size
    assert w > 3 * h / 2 > 0  # two rows of four tiles: input, masked input, two completions


def test_inpaint_after_a_kill_continues_to_the_same_images(runs, tmp_path, monkeypatch, capsys):
    import ddpm.sampling.edit_jobs as edit_jobs

    args = ["inpaint", "--run", runs[0], "mnist:0-4", "--mask", "strokes", "--chunk", "2", *STEPS, "--quiet"]
    whole = tmp_path / "whole.npz"
    assert run(capsys, *args, "--out", whole)[0] == 0
    real, calls = edit_jobs.Edit.draw, []

    def killed_in_the_second_chunk(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(edit_jobs.Edit, "draw", killed_in_the_second_chunk)
    cut = tmp_path / "cut.npz"
    assert run(capsys, *args, "--out", cut)[0] == 130 and not cut.exists()
    monkeypatch.setattr(edit_jobs.Edit, "draw", real)
    code, _, err = run(capsys, *args, "--out", cut)
    assert code == 0 and "2 of them were drawn by an earlier run of this job" in err
    assert cut.read_bytes() == whole.read_bytes()
    code, _, err = run(capsys, *args, "--out", cut, "--jump", "3", "--overwrite")  # other settings: a new job
    assert code == 0 and "earlier run" not in err


def test_edit_strength_zero_is_the_input_and_classes_steer(runs, tmp_path, capsys):
    out = tmp_path / "same.npz"
    code, _, err = run(capsys, "edit", "--run", runs[0], "mnist:0-2", "--strength", "0", "--out", out, "--quiet")
    assert code == 0 and "wrote 3 edits of 3 images (0 network calls each)" in err
    assert torch.equal(torch.from_numpy(np.load(out)["arr_0"]).permute(0, 3, 1, 2), load_images("mnist:0-2", 16, 1))
    fig = tmp_path / "fig7.png"
    code, _, err = run(capsys, "edit", "--run", runs[1], "mnist:3", "--strength", "0.3,0.9", "--n", "3", "--class",
                       "8", "--guidance", "1", "--sampler", "ddim", "--steps", "5", "--out", fig, "--quiet")
    assert code == 0 and "wrote 6 edits of 1 image" in err and fig.is_file()
    code, _, err = run(capsys, "inpaint", "--run", runs[1], "mnist:3", "--mask", "top", "--class", "8", "--guidance",
                       "1", "--sampler", "ancestral", "--resample", "1", "--out", tmp_path / "eights.npz", "--quiet")
    assert code == 0 and "wrote 1 completion of 1 image (60 network calls each)" in err


def test_refusals_are_one_line(runs, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "small.png")
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"a picture of mine")
    base = ["--run", runs[0], "mnist:0", "--out", tmp_path / "o.png", "--quiet"]
    for argv, message in (
            (["inpaint", *base, "--mask", tmp_path / "small.png"],
             "is 8x8 (height x width); the run's images are 16x16"),
            (["inpaint", *base, "--mask", "diagonal"], "unknown mask 'diagonal'"),
            (["inpaint", *base, "--mask", "top", "--sampler", "ancestral", "--steps", "5"], "takes all T=60 steps"),
            (["inpaint", *base, "--mask", "top", "--steps", "200"],
             "the run has T=60 steps, so a chain takes at most 60"),
            (["inpaint", *base, "--mask", "top", "--steps", "10", "--jump", "50"], "--jump 50 is not below the chain's "
                                                                                   "10 steps"),
            (["inpaint", "--run", runs[0], "mnist:0", "--mask", "top", "--out", mine], "mine.png"),
            (["edit", *base, "--strength", "0.5", "--class", "3"], "needs a class-conditional run"),
            (["edit", "--run", runs[0], tmp_path / "none.png", "--strength", "0.5", "--out", tmp_path / "x.npz"],
             "not found")):
        code, _, err = run(capsys, *argv)
        assert code != 0 and message in one_line_error(err), (argv, err)
    assert mine.read_bytes() == b"a picture of mine"
    code, _, err = run(capsys, "edit", *base, "--strength", "1.5")
    assert code == 2 and "expected numbers in [0, 1]" in one_line_error(err)


def test_help_teaches_the_mask(capsys):
    code, out, _ = run(capsys, "inpaint", "--help")
    assert code == 0 and "white (>= 128) = keep" in out and "--resample" in out
    code, out, _ = run(capsys, "edit", "--help")
    assert code == 0 and "Fig. 7" in out and "--strength" in out
