"""ddpm.sampling.outputs: where a sampling job will write is checked before any work; outputs appear whole."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.errors import DDPMError
from ddpm.sampling.outputs import check_output, output_kind, write_images


def test_kinds_by_name(tmp_path):
    assert [output_kind(tmp_path / n) for n in ("a.png", "b.NPZ", "c")] == ["png", "npz", "dir"]
    assert output_kind(f"{tmp_path}/d.e/") == output_kind(f"{tmp_path}/grids.png/") == "dir"  # a slash says folder
    with pytest.raises(DDPMError, match="unknown output type '.jpg'"):
        output_kind(tmp_path / "x.jpg")


def test_what_is_in_the_way_is_found_first(tmp_path):
    (tmp_path / "old.npz").write_bytes(b"keep me")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.png").write_bytes(b"")
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "adir.png").mkdir()
    write_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), tmp_path / "ours.npz")
    for path, pattern in [(tmp_path / "old.npz", "ddpm did not write it"),
                          (tmp_path / "full", "did not write \\(a.png\\)"),
                          (tmp_path / "ours.npz", "already exists; choose another --out or pass --overwrite"),
                          (tmp_path / "afile", "a file of that name is in the way"),
                          (tmp_path / "adir.png", "it is a folder"), (tmp_path / "no" / "x.png", "does not exist")]:
        with pytest.raises(DDPMError, match=pattern):
            check_output(path)
    for path in ("old.npz", "full"):  # --overwrite never replaces what ddpm did not write
        with pytest.raises(DDPMError, match="did not write"):
            check_output(tmp_path / path, overwrite=True)
    assert check_output(tmp_path / "ours.npz", overwrite=True) == "npz"
    assert check_output(tmp_path / "empty-or-new") == "dir"
    assert (tmp_path / "old.npz").read_bytes() == b"keep me"  # checking never writes the output
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert leftovers == []  # nor leaves its probe behind


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_overwrite_replaces_only_a_folder_that_ddpm_filled(tmp_path):
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    out = tmp_path / "pngs"
    write_images(images, out, seeds=[7, 8, 9])
    assert check_output(out, overwrite=True) == "dir"
    with pytest.raises(DDPMError, match="holds earlier output.*--overwrite"):
        check_output(out)
    write_images(images[:2], out, seeds=[0, 1])  # replaced: the new images, not the old ones beside them
    assert sorted(os.listdir(out)) == [".ddpm-files.json", "000000.png", "000001.png"]
    (out / "000001.png").write_bytes(b"edited by hand")  # a file changed since makes the folder the user's
    with pytest.raises(DDPMError, match="did not write \\(000001.png\\)"):
        check_output(out, overwrite=True)
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "thesis.txt").write_text("years of work")
    (mine / "sub" / "deep.txt").write_text("more")
    before = _tree(mine)
    with pytest.raises(DDPMError, match=r"did not write \(sub/, thesis.txt\); nothing was changed"):
        check_output(mine, overwrite=True)
    assert _tree(mine) == before
    # even a writer called without the check leaves the user's files and fails
    with pytest.raises(OSError):
        write_images(images, mine)
    assert _tree(mine) == before and (mine / "thesis.txt").read_text() == "years of work"


def test_places_never_replaced(tmp_path, monkeypatch):
    from ddpm.run.ownership import protected_reason

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"preset": "tiny"}')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert protected_reason(".") == "it is the current folder"
    assert protected_reason(tmp_path) == "it holds the current folder"
    assert protected_reason(run) == "it is a training run"
    assert protected_reason(run, runs=[run]) == "it is the run being read"
    assert protected_reason(tmp_path / "x", runs=[tmp_path / "x" / "run"]) == "it holds the run being read"
    assert protected_reason(Path.home()) in ("it is your home folder", "it holds the current folder")
    assert protected_reason(tmp_path / "other") is None
    for where in (".", str(run)):
        with pytest.raises(DDPMError, match="will not write into"):
            check_output(where, overwrite=True)


def test_single_files_carry_ddpm_s_mark(tmp_path):
    from ddpm.diffusion.schedule import NoiseSchedule
    from ddpm.run.ownership import is_marked
    from ddpm.viz import plot_schedule, save_picture

    write_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), tmp_path / "g.png")
    write_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), tmp_path / "a.npz")
    save_picture(Image.new("L", (4, 4)), tmp_path / "p.gif")
    plot_schedule({"linear": NoiseSchedule.linear(100)}, tmp_path / "plot.png")
    Image.new("L", (4, 4)).save(tmp_path / "theirs.png")
    np.savez(tmp_path / "theirs.npz", arr_0=np.zeros(2))
    (tmp_path / "text.png").write_text("not a png")
    assert [is_marked(tmp_path / n) for n in ("g.png", "a.npz", "p.gif", "plot.png")] == [True] * 4
    assert [is_marked(tmp_path / n) for n in ("theirs.png", "theirs.npz", "text.png", "nothing.png")] == [False] * 4


def test_written_formats(tmp_path):
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    write_images(images, tmp_path / "s.npz", labels=torch.tensor([0, 1, 2, 3, 4]))
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (5, 8, 8, 1) and z["arr_0"].dtype == np.uint8
        assert np.array_equal(z["arr_0"][..., 0], images[:, 0].numpy()) and z["arr_1"].tolist() == [0, 1, 2, 3, 4]
    write_images(images, tmp_path / "pngs")
    assert sorted(os.listdir(tmp_path / "pngs")) == [".ddpm-files.json"] + [f"{i:06d}.png" for i in range(5)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / "000003.png")), images[3, 0].numpy())
    write_images(images, tmp_path / "g.png", nrow=5)
    assert Image.open(tmp_path / "g.png").size == (2 * (2 + 5 * 10), 2 * (2 + 10))  # one row of five, x2
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
