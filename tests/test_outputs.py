"""ddpm.outputs: where a sampling job will write is checked before any work; outputs appear whole."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.errors import DDPMError
from ddpm.outputs import check_output, output_kind, write_images


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
    for path, pattern in [(tmp_path / "old.npz", "already exists"), (tmp_path / "full", "not empty"),
                          (tmp_path / "afile", "a file of that name is in the way"),
                          (tmp_path / "adir.png", "it is a folder"), (tmp_path / "no" / "x.png", "does not exist")]:
        with pytest.raises(DDPMError, match=pattern):
            check_output(path)
    assert check_output(tmp_path / "old.npz", overwrite=True) == "npz"
    assert check_output(tmp_path / "full", overwrite=True) == "dir"
    assert check_output(tmp_path / "empty-or-new") == "dir"
    assert (tmp_path / "old.npz").read_bytes() == b"keep me"  # checking never writes the output
    leftovers = [p for p in os.listdir(tmp_path) if p.startswith(".")]
    assert leftovers == []  # nor leaves its probe behind


def test_written_formats(tmp_path):
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    write_images(images, tmp_path / "s.npz", labels=torch.tensor([0, 1, 2, 3, 4]))
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (5, 8, 8, 1) and z["arr_0"].dtype == np.uint8
        assert np.array_equal(z["arr_0"][..., 0], images[:, 0].numpy()) and z["arr_1"].tolist() == [0, 1, 2, 3, 4]
    write_images(images, tmp_path / "pngs")
    assert sorted(os.listdir(tmp_path / "pngs")) == [f"{i:06d}.png" for i in range(5)]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / "000003.png")), images[3, 0].numpy())
    write_images(images, tmp_path / "g.png", nrow=5)
    assert Image.open(tmp_path / "g.png").size == (2 * (2 + 5 * 10), 2 * (2 + 10))  # one row of five, x2
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
