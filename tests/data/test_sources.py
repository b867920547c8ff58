"""Data sources: the [0,255] <-> [-1,1] transforms, the shipped MNIST subset, folders of images,
CIFAR-10 in both official formats (archives built here, with known pixels), and hostile input."""

import io
import os
import pickle
import struct
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import ddpm
from ddpm.data.images import to_float, to_uint8
from ddpm.data.pictures import load_image
from ddpm.data.sources import ImageData, load_data
from ddpm.errors import DDPMError

# ---------------------------------------------------------------- transforms


def test_to_float_exact_values():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8)
    y = to_float(x)
    assert y.dtype == torch.float32
    assert y[0].item() == -1.0 and y[2].item() == 1.0
    assert y[1].item() == pytest.approx(51 / 255 * 2 - 1, abs=1e-7)  # -0.6
    ref = np.arange(256) / 255 * 2 - 1  # float64 reference
    np.testing.assert_allclose(to_float(torch.arange(256).to(torch.uint8)).numpy(), ref, atol=1e-7)


def test_to_uint8_values_and_rounding_boundary():
    assert to_uint8(torch.tensor([-1.0, 1.0])).tolist() == [0, 255]
    assert to_uint8(torch.tensor([-1.0, 1.0])).dtype == torch.uint8
    # 0.0 maps to 127.5 exactly: round half to even gives 128; just either side of it 127 / 128
    assert to_uint8(torch.tensor([0.0])).tolist() == [128]
    below, above = (127.4 / 255) * 2 - 1, (127.6 / 255) * 2 - 1
    assert to_uint8(torch.tensor([below, above])).tolist() == [127, 128]


def test_round_trip_exact_over_all_values():
    x = torch.arange(256).to(torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(to_uint8(to_float(x)), x)


def test_to_uint8_clips_out_of_range():
    x = torch.tensor([-5.0, -1.2, -1.0001, 1.0001, 1.3, 7.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 255, 255, 255]


# ---------------------------------------------------------------- mnist


def _mnist_file():
    with np.load(Path(ddpm.__file__).parent / "assets" / "mnist5k.npz", allow_pickle=False) as z:
        return z["images"], z["labels"]


def test_mnist_native():
    images, labels = _mnist_file()
    d = load_data("mnist", channels=1, image_size=28)
    assert isinstance(d, ImageData) and d.name == "mnist" and d.hflip is False
    assert len(d) == 5000
    assert d.images.shape == (5000, 1, 28, 28) and d.images.dtype == torch.uint8
    assert d.images.is_contiguous()
    assert d.labels.dtype == torch.int64 and d.labels.shape == (5000,)
    assert np.bincount(d.labels.numpy(), minlength=10).tolist() == [500] * 10
    # the file is sorted by class; the source interleaves it: image K is the (K // 10)-th image of digit K % 10
    assert labels.tolist() == sorted(labels.tolist())
    assert d.labels.tolist() == [k % 10 for k in range(5000)]
    for k in (0, 7, 17, 4999):
        assert np.array_equal(d.images[k, 0].numpy(), images[np.flatnonzero(labels == k % 10)[k // 10]])
    assert d.images.min() == 0 and d.images.max() == 255


def test_mnist_classes_are_the_digits():
    d = load_data("mnist", channels=1, image_size=28)
    assert d.classes == tuple("0123456789") and d.require_labels() == d.classes


def test_load_image_mnist_k_is_image_k_of_the_source():
    digits = load_data("mnist", channels=1, image_size=28)
    for k in (7, 17, 4999):
        x = load_image(f"mnist:{k}", 28)
        assert x.shape == (1, 28, 28) and torch.equal(to_uint8(x), digits.images[k])
        assert digits.labels[k] == k % 10  # mnist:7 is a seven
    assert load_image("mnist:3", 56).shape == (1, 56, 56)
    with pytest.raises(DDPMError, match="K must be an index from 0 to 4999"):
        load_image("mnist:5000", 28)


def test_mnist_to_rgb_32():
    images, _ = _mnist_file()
    d = load_data("mnist", channels=3, image_size=32)
    assert d.images.shape == (5000, 3, 32, 32) and d.images.dtype == torch.uint8
    assert d.images.is_contiguous()
    assert torch.equal(d.images[:, 0], d.images[:, 1]) and torch.equal(d.images[:, 0], d.images[:, 2])
    # a resize keeps each digit's mean brightness (ink area scales with the image)
    mean_28 = load_data("mnist", channels=1, image_size=28).images.reshape(5000, -1).double().mean(1).numpy()
    mean_32 = d.images[:, 0].reshape(5000, -1).double().mean(1).numpy()
    assert np.abs(mean_28 - mean_32).max() < 4


# ---------------------------------------------------------------- folders

S = 16  # the size the folder tests load at


def _bands(size, colors, vertical=False):
    """An RGB image of 3 equal bands (left/centre/right, or top/centre/bottom if vertical)."""
    a = np.zeros((size, 3 * size, 3), np.uint8)
    for i, c in enumerate(colors):
        a[:, i * size:(i + 1) * size] = c
    return Image.fromarray(a.transpose(1, 0, 2).copy() if vertical else a)


RED, BLUE, GREEN = (220, 10, 10), (10, 10, 220), (10, 220, 10)


def _luma(r, g, b):
    """Gray from RGB by ITU-R 601-2 (what "L" means)."""
    return r * 0.299 + g * 0.587 + b * 0.114


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    (root / ".hiddendir").mkdir()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(root / "a.png")
    Image.new("RGBA", (40, 30), (200, 100, 50, 0)).save(root / "b.png")  # fully transparent
    Image.new("L", (50, 50), 77).save(root / "c.png")
    Image.new("LA", (20, 24), (99, 0)).save(root / "c_la.png")  # gray + alpha, upscaled
    p = Image.new("P", (40, 40), 1)
    p.putpalette([0, 0, 0, 5, 150, 250] + [0] * 762)
    p.save(root / "d.png", transparency=0)  # palette with a (unused) transparent index
    Image.new("CMYK", (40, 40), (0, 0, 0, 0)).save(root / "e.jpg", quality=95)  # no ink: white
    hi = np.zeros((S, S), np.uint16)
    hi[:, :3], hi[:, 3:6], hi[:, 6:9], hi[:, 9:12] = 65535, 32896, 65000, 1000  # 255, 128, 252.9, 3.9 in 8 bit
    Image.fromarray(hi).save(root / "f.png")
    _bands(S, [BLUE, RED, GREEN], vertical=True).save(root / "sub" / "g.PNG")  # tall, upper-case ext
    _bands(S, [BLUE, RED, GREEN]).save(root / "wide.png")
    Image.new("RGB", (S, S)).save(root / ".hidden.png")
    Image.new("RGB", (S, S)).save(root / ".hiddendir" / "x.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_rgb(image_folder):
    with Image.open(image_folder / "f.png") as f:
        assert f.mode in ("I;16", "I")  # really a 16-bit file
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no mode conversion may warn (e.g. palette transparency)
        d = load_data(str(image_folder), channels=3, image_size=S)
    assert d.name == str(image_folder) and d.labels is None and d.hflip is True
    assert len(d) == 9  # a b c c_la d e f sub/g wide; hidden entries and .txt ignored
    assert d.images.shape == (9, 3, S, S) and d.images.dtype == torch.uint8 and d.images.is_contiguous()
    im = d.images.int()

    def solid(i, rgb, tol=1):
        assert (im[i] - torch.tensor(rgb).view(3, 1, 1)).abs().max() <= tol, (i, im[i].flatten(1).unique(dim=1))

    solid(0, (10, 20, 30))
    solid(1, (200, 100, 50))  # alpha dropped
    solid(2, (77, 77, 77))
    solid(3, (99, 99, 99))  # alpha dropped, gray replicated
    solid(4, (5, 150, 250))  # palette expanded
    assert im[5].min() >= 245  # CMYK without ink -> white
    # 16-bit scaled by 255/65535 (not clipped at 255), at native size so no resampling
    for cols, v in ((slice(0, 3), 255), (slice(3, 6), 128), (slice(6, 9), 253), (slice(9, 12), 4), (slice(12, S), 0)):
        assert (im[6][:, :, cols] == v).all(), (v, im[6][0, 0])
    solid(7, RED, tol=0)  # tall image: the centre band, exactly
    solid(8, RED, tol=0)  # wide image: the centre band, exactly


def test_folder_gray(image_folder):
    d = load_data(str(image_folder), channels=1, image_size=S)
    assert d.images.shape == (9, 1, S, S)
    for i, rgb in ((0, (10, 20, 30)), (1, (200, 100, 50)), (4, (5, 150, 250)), (8, RED)):
        assert (d.images[i].double() - _luma(*rgb)).abs().max() <= 1
    assert (d.images[2] == 77).all() and (d.images[3] == 99).all()
    assert d.images[6][0, 0, :12].tolist() == [255] * 3 + [128] * 3 + [253] * 3 + [4] * 3


def test_folder_resize_and_centre_crop(tmp_path):
    (tmp_path / "f").mkdir()
    wide, tall = _bands(32, [BLUE, RED, GREEN]), _bands(32, [GREEN, RED, BLUE], vertical=True)
    tall.save(tmp_path / "f" / "a_tall.png")  # 32 x 96 -> 8 x 8: the red square
    wide.save(tmp_path / "f" / "b_wide.png")  # 96 x 32
    d = load_data(str(tmp_path / "f"), channels=3, image_size=8)
    assert d.images.shape == (2, 3, 8, 8)
    # the same as resizing the whole image so its short side is 8, then cutting out the centre
    ref_tall = np.asarray(tall.resize((8, 24), Image.BICUBIC))[8:16].transpose(2, 0, 1)
    ref_wide = np.asarray(wide.resize((24, 8), Image.BICUBIC))[:, 8:16].transpose(2, 0, 1)
    assert np.abs(d.images.numpy().astype(int) - np.stack([ref_tall, ref_wide])).max() <= 1
    inner = d.images[:, :, 2:-2, 2:-2].int()  # pixels away from the crop's edges are pure red
    assert (inner - torch.tensor(RED).view(1, 3, 1, 1)).abs().max() <= 1
    assert (d.images[:, 0].int() > 150).all()  # no pixel is mostly blue or green


def _png_bytes(size=64):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name, content", [
    ("broken.png", lambda: _png_bytes()[: len(_png_bytes()) // 2]),  # truncated
    ("garbage.jpg", lambda: b"this is not a jpeg" * 10),
])
def test_corrupt_image_is_named(tmp_path, name, content):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    Image.new("RGB", (8, 8)).save(tmp_path / "a_good.png")
    (tmp_path / name).write_bytes(content())
    with pytest.raises(DDPMError, match=name):
        load_data(str(tmp_path), channels=3, image_size=8)


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DDPMError, match="no images"):
        load_data(str(tmp_path / "empty"), channels=1, image_size=8)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DDPMError, match="no images"):
        load_data(str(tmp_path / "empty"), channels=1, image_size=8)
    with pytest.raises(DDPMError, match="nowhere.*not found"):
        load_data(str(tmp_path / "nowhere"), channels=1, image_size=8)
    with pytest.raises(DDPMError, match="not found"):
        load_data("cifar100", channels=1, image_size=8)


def test_bad_arguments():
    with pytest.raises(DDPMError, match="channels must be an integer from 1 to 16"):
        load_data("mnist", channels=17, image_size=28)
    with pytest.raises(DDPMError, match="images decode to 1"):
        load_data("mnist", channels=5, image_size=28)
    with pytest.raises(DDPMError, match="image_size"):
        load_data("mnist", channels=1, image_size=0)
    with pytest.raises(DDPMError, match="image_size"):
        load_data("mnist", channels=1, image_size=(8, 0))


# ---------------------------------------------------------------- CIFAR-10

PER_BATCH = 4


def _cifar_image(k):
    """Known HWC pixels for image k (independent of any layout code)."""
    y, x = np.mgrid[0:32, 0:32]
    r = (7 * k + 3 * y + x) % 256
    g = (11 * k + 2 * y + 5 * x + 50) % 256
    b = (13 * k + x * y) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def _label(k):
    return (3 * k + 1) % 10


def _cifar_row(k):
    """CIFAR's row: 1024 R values, then 1024 G, then 1024 B, each plane row-major."""
    hwc = _cifar_image(k)
    return np.concatenate([hwc[:, :, 0].ravel(), hwc[:, :, 1].ravel(), hwc[:, :, 2].ravel()])


def _py_pickle(obj):
    """Protocol 2 as Python 3 writes it: bytes via _codecs.encode, numpy's _reconstruct named as the
    installed numpy names it (numpy._core.multiarray from numpy 2 on)."""
    return pickle.dumps(obj, protocol=2)


def _py2_pickle(data, labels):
    """{b"data": data, b"labels": labels} as Python 2's cPickle (protocol 2) wrote the official
    files: str as (SHORT_)BINSTRING, numpy's _reconstruct under numpy.core.multiarray."""
    def s(b):  # a Python 2 str
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b

    def i(v):  # a small int
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    dtype = (b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R("  # dtype('u1', 0, 1), then state
             + i(3) + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + i(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R("
             + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86" + dtype + b"\x89" + s(data.tobytes()) + b"tb")
    return (b"\x80\x02}(" + s(b"data") + array
            + s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"eu.")


def _cifar_files(fmt, extra=None):
    """{member name: bytes} of a CIFAR-10 release with PER_BATCH images per batch."""
    files = {}
    ks = {f"data_batch_{b + 1}": range(b * PER_BATCH, (b + 1) * PER_BATCH) for b in range(5)}
    ks["test_batch"] = range(100, 100 + PER_BATCH)  # must not be loaded
    for name, rng in ks.items():
        data = np.stack([_cifar_row(k) for k in rng])
        labels = [_label(k) for k in rng]
        if fmt == "py" and name[-1] in "135":  # as the official files, written by Python 2
            files[f"cifar-10-batches-py/{name}"] = _py2_pickle(data, labels)
        elif fmt == "py":  # as Python 3 writes protocol 2 (bytes via _codecs.encode)
            batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                     b"filenames": [f"img_{k}.png".encode() for k in rng]}
            files[f"cifar-10-batches-py/{name}"] = _py_pickle(batch)
        else:
            recs = b"".join(bytes([lab]) + row.tobytes() for lab, row in zip(labels, data))
            files[f"cifar-10-batches-bin/{name}.bin"] = recs
    if fmt == "py":
        files["cifar-10-batches-py/batches.meta"] = _py_pickle(
            {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072})
        files["cifar-10-batches-py/readme.html"] = b"<html></html>"
    else:
        files["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n" * 10
        files["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    files.update(extra or {})
    return files


def _write_tar(path, files, mode="w:gz", links=()):
    with tarfile.open(path, mode) as tf:
        top = next(iter(files)).split("/")[0]
        d = tarfile.TarInfo(top)
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return path


def _write_dir(root, files):
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _expected(n=5 * PER_BATCH):
    images = np.stack([_cifar_image(k).transpose(2, 0, 1) for k in range(n)])
    return torch.from_numpy(images), torch.tensor([_label(k) for k in range(n)], dtype=torch.int64)


@pytest.mark.parametrize("fmt", ["py", "bin"])
@pytest.mark.parametrize("form", ["archive", "odd_name", "folder", "parent"])
def test_cifar_formats(tmp_path, fmt, form):
    files = _cifar_files(fmt)
    official = {"py": "cifar-10-python.tar.gz", "bin": "cifar-10-binary.tar.gz"}[fmt]
    if form == "archive":
        src = _write_tar(tmp_path / official, files)
    elif form == "odd_name":
        src = _write_tar(tmp_path / "download.dat", files, mode="w")  # uncompressed, any name
    else:
        _write_dir(tmp_path, files)
        src = tmp_path / f"cifar-10-batches-{fmt}" if form == "folder" else tmp_path
    before = sorted(tmp_path.rglob("*"))
    d = load_data(str(src), channels=3, image_size=32)
    assert sorted(tmp_path.rglob("*")) == before  # nothing extracted
    images, labels = _expected()
    assert d.name == "cifar10" and d.hflip is True and len(d) == 20
    assert d.images.shape == (20, 3, 32, 32) and d.images.dtype == torch.uint8 and d.images.is_contiguous()
    assert torch.equal(d.images, images)
    assert torch.equal(d.labels, labels)
    assert d.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_cifar_test_split(tmp_path, fmt):
    src = _write_tar(tmp_path / "cifar.tar.gz", _cifar_files(fmt))
    d = load_data(f"{src}:test", channels=3, image_size=32)
    assert d.name == "cifar10:test" and len(d) == PER_BATCH
    assert torch.equal(d.images, torch.from_numpy(np.stack([_cifar_image(k).transpose(2, 0, 1)
                                                            for k in range(100, 100 + PER_BATCH)])))
    assert d.labels.tolist() == [_label(k) for k in range(100, 100 + PER_BATCH)]
    assert len(load_data(str(src), channels=3, image_size=32)) == 5 * PER_BATCH  # the train split, cached apart
    with pytest.raises(DDPMError, match="a split is a CIFAR-10 archive's"):
        load_data(f"{tmp_path}:test", channels=3, image_size=32)


def test_cifar_converted_to_gray_and_resized(tmp_path):
    src = _write_tar(tmp_path / "c.tar.gz", _cifar_files("py"))
    d = load_data(str(src), channels=1, image_size=32)
    rgb = _expected()[0].double()
    assert d.images.shape == (20, 1, 32, 32)
    assert (d.images[:, 0].double() - _luma(rgb[:, 0], rgb[:, 1], rgb[:, 2])).abs().max() <= 1
    d = load_data(str(src), channels=3, image_size=16)
    assert d.images.shape == (20, 3, 16, 16) and d.labels.shape == (20,)


@pytest.mark.parametrize("evil", ["../evil", "/abs/path", "cifar-10-batches-py/../../evil"])
def test_tar_with_escaping_member_refused(tmp_path, evil):
    (tmp_path / "work").mkdir()
    src = _write_tar(tmp_path / "work" / "cifar-10-python.tar.gz", _cifar_files("py", {evil: b"owned"}))
    with tarfile.open(src) as tf:
        assert evil in tf.getnames()  # the archive really holds the hostile name
    with pytest.raises(DDPMError, match="refusing.*" + evil.replace(".", r"\.")):
        load_data(str(src), channels=3, image_size=32)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cifar-10-python.tar.gz", "work"]
    assert not Path("/abs/path").exists()


def test_tar_with_link_refused(tmp_path):
    src = _write_tar(tmp_path / "c.tar", _cifar_files("py"), mode="w",
                     links=[("cifar-10-batches-py/data_batch_6", "/etc/passwd")])
    with pytest.raises(DDPMError, match="data_batch_6.*link"):
        load_data(str(src), channels=3, image_size=32)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_pickle_that_runs_code_refused(tmp_path, form):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0],
                            b"x": _RunsCode(marker)}, protocol=2)
    files = _cifar_files("py", {"cifar-10-batches-py/data_batch_3": payload})
    if form == "folder":
        _write_dir(tmp_path / "d", files)
        src = tmp_path / "d"
    else:
        src = _write_tar(tmp_path / "c.tar.gz", files)
    with pytest.raises(DDPMError, match=r"data_batch_3.*refusing to unpickle \w+\.system"):
        load_data(str(src), channels=3, image_size=32)
    assert not marker.exists()


def test_cifar_damaged(tmp_path):
    files = _cifar_files("py")
    good = _write_tar(tmp_path / "good.tar.gz", files).read_bytes()
    (tmp_path / "trunc.tar.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(DDPMError, match="trunc.tar.gz"):
        load_data(str(tmp_path / "trunc.tar.gz"), channels=3, image_size=32)

    del files["cifar-10-batches-py/data_batch_5"]
    _write_tar(tmp_path / "short.tar.gz", files)
    with pytest.raises(DDPMError, match="missing data_batch_5"):
        load_data(str(tmp_path / "short.tar.gz"), channels=3, image_size=32)

    files = _cifar_files("py")
    files["cifar-10-batches-py/data_batch_2"] = files["cifar-10-batches-py/data_batch_2"][:-100]
    _write_dir(tmp_path / "bad", files)
    with pytest.raises(DDPMError, match="data_batch_2"):
        load_data(str(tmp_path / "bad"), channels=3, image_size=32)

    files = _cifar_files("bin")
    files["cifar-10-batches-bin/data_batch_4.bin"] += b"\x00"
    _write_dir(tmp_path / "badbin", files)
    with pytest.raises(DDPMError, match="data_batch_4.bin"):
        load_data(str(tmp_path / "badbin"), channels=3, image_size=32)

    _write_tar(tmp_path / "other.tar", {"stuff/file.txt": b"hello"}, mode="w")
    with pytest.raises(DDPMError, match="not a CIFAR-10 archive"):
        load_data(str(tmp_path / "other.tar"), channels=3, image_size=32)
    (tmp_path / "plain.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(DDPMError, match="plain.bin"):
        load_data(str(tmp_path / "plain.bin"), channels=3, image_size=32)


# ---------------------------------------------------------------- labels from class subfolders


def _class_tree(root, layout):
    """Write a folder of solid-gray PNGs: ``layout`` maps a relative path to a gray level."""
    for rel, level in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".png"):
            Image.new("L", (8, 8), level).save(root / rel)
        else:
            (root / rel).write_text("not an image")
    return root


def test_class_subfolders_give_sorted_labels(tmp_path):
    root = _class_tree(tmp_path / "tree", {"dog/a.png": 10, "cat/b.png": 20, "cat/c.png": 30, "owl/x/d.png": 40,
                                           "empty/notes.txt": 0})
    d = load_data(str(root), channels=1, image_size=8)
    assert d.classes == ("cat", "dog", "owl")  # sorted; a folder without images is no class
    by_level = {int(img[0, 0, 0]): int(lab) for img, lab in zip(d.images, d.labels)}
    assert by_level == {10: 1, 20: 0, 30: 0, 40: 2}  # cat = 0, dog = 1, owl = 2 (nested folders count)
    assert d.require_labels() == ("cat", "dog", "owl")


def test_a_folder_without_class_subfolders_has_no_labels(tmp_path):
    loose = _class_tree(tmp_path / "loose", {"a.png": 1, "b.png": 2})
    d = load_data(str(loose), channels=1, image_size=8)
    assert d.labels is None and d.classes is None
    with pytest.raises(DDPMError, match="not in class subfolders .*loose/cat/\\*.png"):
        d.require_labels()
    mixed = _class_tree(tmp_path / "mixed", {"a.png": 1, "cat/b.png": 2, "dog/c.png": 3})
    d = load_data(str(mixed), channels=1, image_size=8)
    assert d.labels is None and len(d) == 3  # an unconditional run still uses every image
    with pytest.raises(DDPMError, match="1 of its images lie outside the class subfolders"):
        d.require_labels()
