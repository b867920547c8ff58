"""Any channel count: arrays of 2, 4 or 5 channels as they are, RGBA folders with alpha kept (--channels 4) or dropped
(the default), pictures of the first 1 or 3 channels, and the refusals."""

import numpy as np
import pytest
from PIL import Image

from ddpm.data.sources import load_data
from helpers import TINY, one_line_error, run


def _array(path, c, n=24, size=16, seed=0):
    g = np.random.default_rng(seed)
    a = g.integers(0, 256, (n, size, size, c), dtype=np.uint8)
    np.save(path, a)
    return a


@pytest.mark.parametrize("c", [2, 4, 5])
def test_arrays_of_any_channel_count_load_as_they_are(tmp_path, c):
    a = _array(tmp_path / f"a{c}.npy", c)
    data = load_data(str(tmp_path / f"a{c}.npy"), channels=c, image_size=16, cache_dir=tmp_path / "cache")
    assert data.images.shape == (24, c, 16, 16)
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), a)  # at its own size: untouched
    half = load_data(str(tmp_path / f"a{c}.npy"), channels=c, image_size=8, cache_dir=tmp_path / "cache")
    assert half.images.shape == (24, c, 8, 8)
    # each channel resized on its own: channel k of the result is the resize of channel k alone
    one = load_data(str(_single(tmp_path, a[..., -1:])), channels=1, image_size=8, cache_dir=tmp_path / "cache")
    assert np.array_equal(half.images[:, -1].numpy(), one.images[:, 0].numpy())


def _single(tmp_path, a):
    np.save(tmp_path / "single.npy", a)
    return tmp_path / "single.npy"


def test_a_4_channel_npz_trains_and_samples_4_channel_arrays(tmp_path, capsys):
    _array(tmp_path / "four.npy", 4)
    r = tmp_path / "r"
    assert run(capsys, "train", "--data", tmp_path / "four.npy", "--out", r, "--channels", "4", "--steps", "2",
               *TINY, "--cache-dir", tmp_path / "cache")[0] == 0
    code, _, err = run(capsys, "sample", "--run", r, "--n", "3", "--out", tmp_path / "s.npz", "--sampler", "ddim",
                       "--steps", "2")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (3, 16, 16, 4)
    code, _, err = run(capsys, "sample", "--run", r, "--n", "3", "--out", tmp_path / "g.png")
    assert code == 0 and "pictures show the first 3" in err
    assert Image.open(tmp_path / "g.png").mode == "RGB"
    assert run(capsys, "sample", "--run", r, "--n", "2", "--out", tmp_path / "f")[0] == 0
    assert Image.open(next((tmp_path / "f").glob("*.png"))).mode == "RGBA"  # a folder's PNGs keep alpha
    code, _, err = run(capsys, "eval", "--run", r, "--metrics", "fd", "--n", "4", "--out", tmp_path / "ev",
                       "--cache-dir", tmp_path / "cache")
    assert code != 0 and "read 1 or 3 channels" in one_line_error(err)
    assert run(capsys, "eval", "--run", r, "--metrics", "bpd", "--n", "2", "--cache-dir", tmp_path / "cache")[0] == 0


def _rgba_folder(tmp_path):
    folder = tmp_path / "rgba"
    folder.mkdir()
    g = np.random.default_rng(1)
    pixels = g.integers(0, 256, (6, 16, 16, 4), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p, "RGBA").save(folder / f"{i}.png")
    return folder, pixels


def test_rgba_folders_keep_alpha_with_4_channels_and_drop_it_by_default(tmp_path):
    folder, pixels = _rgba_folder(tmp_path)
    kept = load_data(str(folder), channels=4, image_size=16, cache_dir=tmp_path / "c")
    assert np.array_equal(kept.images.permute(0, 2, 3, 1).numpy(), pixels)  # colour and alpha, as stored
    dropped = load_data(str(folder), channels=3, image_size=16, cache_dir=tmp_path / "c")
    assert np.array_equal(dropped.images.permute(0, 2, 3, 1).numpy(), pixels[..., :3])  # dropped, not composited
    gray_alpha = load_data(str(folder), channels=2, image_size=16, cache_dir=tmp_path / "c")
    assert np.array_equal(gray_alpha.images[:, 1].numpy(), pixels[..., 3])


def test_what_cannot_be_read_at_a_channel_count_is_refused(tmp_path, capsys):
    folder, _ = _rgba_folder(tmp_path)
    code, _, err = run(capsys, "train", "--data", folder, "--out", tmp_path / "r", "--channels", "5", *TINY)
    assert code != 0 and "it has 1 page(s); more than 4 channels come from multi-page images" in one_line_error(err)
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--channels", "5", *TINY)
    assert code != 0 and "images decode to 1 (gray), 2 (gray and alpha), 3 (RGB) or 4 (RGBA)" in one_line_error(err)
    _array(tmp_path / "five.npy", 5)
    code, _, err = run(capsys, "train", "--data", tmp_path / "five.npy", "--out", tmp_path / "r", "--channels",
                       "3", *TINY, "--cache-dir", tmp_path / "cache")
    assert code != 0 and "have 5 channels" in one_line_error(err)
    assert not (tmp_path / "r").exists()


def test_a_folder_of_multi_page_tiffs_gives_a_channel_per_page(tmp_path):
    folder = tmp_path / "stacks"
    folder.mkdir()
    g = np.random.default_rng(2)
    stacks = g.integers(0, 256, (3, 5, 12, 12), dtype=np.uint8)  # 3 images of 5 pages
    for i, pages in enumerate(stacks):
        frames = [Image.fromarray(p) for p in pages]
        frames[0].save(folder / f"{i}.tif", save_all=True, append_images=frames[1:])
    data = load_data(str(folder), channels=5, image_size=12, cache_dir=tmp_path / "c")
    assert np.array_equal(data.images.numpy(), stacks)
    with pytest.raises(Exception, match="it has 5 page"):
        load_data(str(folder), channels=6, image_size=12, cache_dir=tmp_path / "c")


def test_a_parquet_of_array_images_any_channels(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    g = np.random.default_rng(3)
    images = g.integers(0, 256, (10, 12, 12, 5), dtype=np.uint8)  # H x W x C per row, as datasets' Array3D holds it
    labels = np.arange(10) % 2
    table = pa.table({"pixels": pa.array([im.tolist() for im in images], pa.list_(pa.list_(pa.list_(pa.uint8())))),
                      "label": pa.array(labels, pa.int64())})
    pq.write_table(table, tmp_path / "bands.parquet")
    data = load_data(str(tmp_path / "bands.parquet"), channels=5, image_size=12, cache_dir=tmp_path / "c")
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), images)
    assert data.labels.tolist() == labels.tolist()
    gray = pa.table({"image": pa.array([im[..., 0].tolist() for im in images], pa.list_(pa.list_(pa.int32())))})
    pq.write_table(gray, tmp_path / "gray.parquet")
    one = load_data(str(tmp_path / "gray.parquet"), channels=1, image_size=6, cache_dir=tmp_path / "c")
    assert one.images.shape == (10, 1, 6, 6)
    assert run(capsys, "train", "--data", tmp_path / "bands.parquet", "--out", tmp_path / "r", "--channels", "5",
               "--steps", "2", *TINY, "--cache-dir", tmp_path / "c")[0] == 0
    code, out, _ = run(capsys, "data", "info", tmp_path / "bands.parquet", "--channels", "5", "--image-size", "12",
                       "--cache-dir", tmp_path / "c")
    assert code == 0 and "image column 'pixels'" in out and "5x12x12" in out
