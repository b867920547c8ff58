"""Non-square images end to end (--image-size HxW): the data and its cache, training, sampling, inpainting, editing,
interpolation, pictures, metrics, data info and diffusers both ways."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.config import UNetConfig
from ddpm.data.images import fit
from helpers import TINY, one_line_error, run


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A folder of 30 random 16x24 (height x width) gray images, and a run of the tiny preset trained on them at
    --image-size 16x24."""
    from ddpm.cli.commands import main

    root = tmp_path_factory.mktemp("wide")
    folder = root / "images"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(g.integers(0, 256, (16, 24), dtype=np.uint8)).save(folder / f"{i:03d}.png")
    assert main(["train", "--data", str(folder), "--out", str(root / "run"), "--image-size", "16x24", "--steps", "3",
                 *TINY]) == 0
    return folder, root / "run"


def test_a_run_keeps_its_shape_and_samples_come_out_that_shape(wide, tmp_path, capsys):
    _, run_dir = wide
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"]["image_size"] == [16, 24]
    assert run(capsys, "sample", "--run", run_dir, "--n", "3", "--out", tmp_path / "s.npz", "--sampler", "ddim",
               "--steps", "3", "--trajectory", tmp_path / "t.png", "--progressive", tmp_path / "p.png")[0] == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (3, 16, 24, 1)
    assert run(capsys, "sample", "--run", run_dir, "--n", "4", "--out", tmp_path / "g.png")[0] == 0
    assert Image.open(tmp_path / "g.png").size[0] > Image.open(tmp_path / "g.png").size[1]  # wider than tall
    assert run(capsys, "sample", "--run", run_dir, "--n", "2", "--out", tmp_path / "folder")[0] == 0
    assert Image.open(next((tmp_path / "folder").glob("*.png"))).size == (24, 16)


def test_inpaint_edit_and_interpolate_work_at_that_shape(wide, tmp_path, capsys):
    folder, run_dir = wide
    first = sorted(folder.glob("*.png"))[0]
    for mask in ("right", "centre", "strokes"):
        code, _, err = run(capsys, "inpaint", "--run", run_dir, first, "--mask", mask, "--out",
                           tmp_path / f"{mask}.npz", "--steps", "4", "--sampler", "respaced", "--jump", "2",
                           "--resample", "2")
        assert code == 0, err
        with np.load(tmp_path / f"{mask}.npz") as z:
            assert z["arr_0"].shape[1:] == (16, 24, 1)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((16, 24), 255, np.uint8)).save(mask)
    code, _, err = run(capsys, "inpaint", "--run", run_dir, first, "--mask", mask, "--out", tmp_path / "m.npz",
                       "--steps", "4", "--sampler", "respaced", "--jump", "2", "--resample", "2")
    assert code == 0, err
    Image.fromarray(np.full((24, 16), 255, np.uint8)).save(tmp_path / "tall.png")
    code, _, err = run(capsys, "inpaint", "--run", run_dir, first, "--mask", tmp_path / "tall.png", "--out",
                       tmp_path / "x.npz")
    assert code != 0 and "the run's images are 16x24" in one_line_error(err)
    assert run(capsys, "edit", "--run", run_dir, first, "--strength", "0.3", "--out", tmp_path / "e.npz",
               "--sampler", "ddim", "--steps", "4")[0] == 0
    with np.load(tmp_path / "e.npz") as z:
        assert z["arr_0"].shape[1:] == (16, 24, 1)
    assert run(capsys, "interpolate", "--run", run_dir, first, sorted(folder.glob("*.png"))[1], "--t", "20",
               "--out", tmp_path / "i.png", "--n", "3")[0] == 0


def test_data_info_and_the_cache_say_the_size(wide, tmp_path, capsys):
    folder, _ = wide
    code, out, _ = run(capsys, "data", "info", folder, "--image-size", "16x24", "--channels", "1")
    assert code == 0 and "1x16x24 (channels x height x width)" in out


def test_metrics_of_that_shape(wide, tmp_path, capsys):
    _, run_dir = wide
    code, _, err = run(capsys, "eval", "--run", run_dir, "--metrics", "fd", "--n", "4", "--out", tmp_path / "ev",
                       "--sampler", "ddim", "--steps", "2")
    assert code != 0 and "the digit classifier reads square images" in one_line_error(err)
    code, stdout, err = run(capsys, "eval", "--run", run_dir, "--metrics", "bpd,rd", "--n", "2", "--out",
                            tmp_path / "ev2")
    assert code == 0, err
    folder, _ = wide
    code, _, err = run(capsys, "train", "--data", folder, "--out", tmp_path / "r", "--image-size", "16x24",
                       "--eval-every", "2", *TINY)
    assert code != 0 and "the digit classifier reads square images" in one_line_error(err)
    assert not (tmp_path / "r").exists()  # refused before training


def test_the_exported_unet2dmodel_gives_ddpms_outputs(wide, tmp_path, capsys):
    from diffusers import UNet2DModel

    from ddpm import load_checkpoint

    _, run_dir = wide
    assert run(capsys, "export", "--run", run_dir, "--format", "diffusers", "--out", tmp_path / "x")[0] == 0
    theirs = UNet2DModel.from_pretrained(tmp_path / "x" / "unet").eval()
    assert list(theirs.config.sample_size) == [16, 24]
    ckpt = load_checkpoint(run_dir)
    with torch.no_grad():
        for p in ckpt.ema_model.parameters():  # a trained-for-3-steps net is nearly zero: make every layer count
            p.add_(torch.randn_like(p) * 0.1)
    assert run(capsys, "import", tmp_path / "x", "--out", tmp_path / "back")[0] == 0
    assert load_checkpoint(tmp_path / "back").config.model.image_size == (16, 24)
    from ddpm.interop.diffusers import export_diffusers

    out = export_diffusers(ckpt.ema_model, ckpt.config.diffusion, tmp_path / "y")
    theirs = UNet2DModel.from_pretrained(out / "unet").eval()
    x, t = torch.randn(3, 1, 16, 24), torch.tensor([0, 30, 59])
    with torch.no_grad():
        ref, ours = theirs(x, t).sample, ckpt.ema_model(x, t)
    assert ours.shape == (3, 1, 16, 24) and (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("resize", ["center-crop", "pad", "stretch"])
def test_resize_to_another_aspect_ratio(resize):
    im = Image.fromarray(np.arange(40 * 60, dtype=np.uint32).reshape(40, 60).astype(np.uint8))  # 40 high, 60 wide
    out = fit(im, (16, 32), resize)
    assert out.size == (32, 16)
    square = fit(im, 20, resize)
    assert square.size == (20, 20)


def test_center_crop_keeps_the_middle_box_of_the_wanted_aspect():
    a = np.zeros((40, 60), np.uint8)
    a[:, 5:55] = 255  # white but for 5 black columns on each side of a 40 x 60 image
    out = np.asarray(fit(Image.fromarray(a), (20, 20), "center-crop"))
    assert out.min() == 255  # the centre 40 x 40 square is all white: the crop a square size always had
    wide = np.asarray(fit(Image.fromarray(a), (10, 30), "center-crop"))  # 1:3 fits inside 40 x 60 as 20 x 60
    assert wide[:, 0].max() == 0 and wide[:, 15].min() == 255


def test_sizes_the_network_cannot_take_name_the_nearest_that_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="nearest sizes that work: 16x24 or 16x28"):
        UNetConfig(image_size=(17, 26), ch_mult=(1, 2, 2))
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--preset", "tiny",
                       "--image-size", "15x16")
    assert code != 0 and "14x16 or 16" in one_line_error(err)
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--image-size", "16by24")
    assert code != 0 and "expected S or HxW" in err
