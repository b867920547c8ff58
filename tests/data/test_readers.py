"""One reader per kind of source, in one table: each answers key, shape and info without decoding, and
load_data builds the cache through it."""

import os

import numpy as np
from PIL import Image

from ddpm.data.readers import READERS, ArrayReader, FolderReader, MnistReader, Reader
from ddpm.data.sources import find_source, load_data, resolve_source, split_suffix


def _folder(root, n=3, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_every_kind_find_source_gives_has_a_reader(tmp_path):
    assert all(issubclass(r, Reader) for r in READERS.values())
    assert {"mnist", "folder", "cifar10", "npz", "lmdb", "zip", "parquet", "arrow"} <= set(READERS)
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    assert isinstance(find_source("mnist").reader, MnistReader)
    assert isinstance(find_source(str(tmp_path / "a.npz")).reader, ArrayReader)
    assert isinstance(find_source(str(_folder(tmp_path / "f"))).reader, FolderReader)


def test_a_folder_reader_answers_without_decoding_and_its_key_follows_the_files(tmp_path):
    root = _folder(tmp_path / "f")
    reader = find_source(str(root)).reader
    assert reader.shape() == (3, 10)  # RGB, its short side
    assert reader.info() == {"images": 6, "classes": ("cat", "dog"), "unlabelled": ""}
    key = reader.key()
    os.utime(root / "cat" / "0.png", (1, 1))
    assert find_source(str(root)).reader.key() != key


def test_an_array_reader(tmp_path):
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((5, 6, 9, 1), np.uint8), arr_1=np.arange(5) % 2)
    reader = find_source(str(tmp_path / "a.npz")).reader
    assert reader.shape() == (1, 6) and reader.info()["images"] == 5 and reader.info()["classes"] == ("0", "1")


def test_load_data_builds_the_cache_through_the_reader(tmp_path, monkeypatch):
    calls = []
    real = FolderReader.build

    def build(self, *a, **k):
        calls.append(self.source.kind)
        return real(self, *a, **k)

    monkeypatch.setattr(FolderReader, "build", build)
    root = _folder(tmp_path / "f")
    first = load_data(str(root), channels=1, image_size=8, cache_dir=tmp_path / "c")
    again = load_data(str(root), channels=1, image_size=8, cache_dir=tmp_path / "c")
    assert calls == ["folder"] and first.images.shape == (6, 1, 8, 8) and (again.images == first.images).all()
    assert first.hflip and first.classes == ("cat", "dog")


def test_the_split_suffix_is_read_in_one_place(tmp_path):
    assert split_suffix("x.tar.gz:test") == ("x.tar.gz", "test") and split_suffix("mnist") == ("mnist", "train")
    odd = tmp_path / "data:test"  # a file named so is the file, not a split
    odd.write_bytes(b"")
    assert split_suffix(str(odd)) == (str(odd), "train")
    assert resolve_source("rel/x.tar.gz:test") == os.path.abspath("rel/x.tar.gz") + ":test"
    assert resolve_source("mnist") == "mnist"
    assert resolve_source("mnist:test").endswith("mnist:test")  # kept, so that find_source refuses it
