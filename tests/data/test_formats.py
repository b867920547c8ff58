"""Data sources kept inside other files (LSUN's LMDB, zip archives, Hugging Face datasets, numpy arrays): each is
found by what its path is, read in place through the decoded cache to the same pixels as the same images in a
folder (the folder path is tested against PIL in test_sources), with its labels; bad input is one clear line."""

import builtins
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.data.cache import caches_of
from ddpm.data.images import fit
from ddpm.data.sources import find_source, load_data
from ddpm.errors import DDPMError
from helpers import one_line_error, run

lmdb = pytest.importorskip("lmdb")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMATS = ("WEBP", "JPEG", "PNG")


def _encoded(n, seed=0, fmt="PNG", size=(14, 10)):
    """n random images of w x h encoded as fmt (cycling through FORMATS when fmt is None)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        b = io.BytesIO()
        Image.fromarray(a).save(b, format=fmt or FORMATS[i % 3])
        out.append(b.getvalue())
    return out


def _as_folder(root: Path, blobs, names=None):
    """The same bytes as files (the folder source reads them: the independent reference)."""
    root.mkdir(parents=True)
    for i, b in enumerate(blobs):
        kind = Image.open(io.BytesIO(b)).format.lower().replace("jpeg", "jpg")
        (root / (names[i] if names else f"{i:05d}.{kind}")).write_bytes(b)
    return root


def _lmdb(path: Path, blobs, extra=()):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, b in enumerate(blobs):
            txn.put(f"{i:05d}".encode(), b)
        for k, v in extra:
            txn.put(k, v)
    env.close()
    return path


HF_FEATURES = {"image": {"_type": "Image"}, "label": {"names": ["ant", "bee", "cow"], "_type": "ClassLabel"}}
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _table(blobs, labels, features=HF_FEATURES, image="image", label="label"):
    cols = {image: pa.array([{"bytes": b, "path": None} for b in blobs], IMAGE_TYPE)}
    if label:
        cols[label] = pa.array(labels, pa.int64())
    t = pa.table(cols)
    return t.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})


def _save_to_disk(folder: Path, table):
    """The layout of datasets' save_to_disk: arrow stream files, state.json naming them, dataset_info.json."""
    folder.mkdir()
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as f, pa.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": HF_FEATURES}))
    return folder


def _same(a, b):
    return torch.equal(a.images, b.images)


def test_lmdb_reads_webp_jpeg_png_like_a_folder_and_names_a_corrupt_value(tmp_path):
    blobs = _encoded(300, fmt=None)
    db = _lmdb(tmp_path / "bedroom_train_lmdb", blobs, extra=[(b"zz-broken", b"\x89PNG not really")])
    before = sorted((p.name, p.stat().st_mtime_ns) for p in db.iterdir())
    assert find_source(str(db)).kind == "lmdb"
    with pytest.raises(DDPMError, match="1 of the 301 images .* cannot be read; the first: .*zz-broken"):
        load_data(str(db), channels=3, image_size=8, cache_dir=tmp_path / "c")
    data = load_data(str(db), channels=3, image_size=8, cache_dir=tmp_path / "c", skip_bad=True)
    ref = load_data(str(_as_folder(tmp_path / "f", blobs)), channels=3, image_size=8, cache_dir=tmp_path / "c")
    assert _same(data, ref) and data.labels is None and data.skipped == (f"{db} key zz-broken",)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in db.iterdir()) == before  # read-only, no lock file
    # data.mdb alone (subdir=False) is the same source
    assert _same(load_data(str(db / "data.mdb"), channels=3, image_size=8, cache_dir=tmp_path / "c", skip_bad=True),
                 data)


def test_an_lmdb_written_to_gets_a_new_cache(tmp_path):
    db = _lmdb(tmp_path / "db", _encoded(5))
    first = load_data(str(db), channels=1, image_size=8, cache_dir=tmp_path / "c")
    env = lmdb.open(str(db))
    with env.begin(write=True) as txn:
        txn.put(b"99999", _encoded(1, seed=3)[0])
    env.close()
    second = load_data(str(db), channels=1, image_size=8, cache_dir=tmp_path / "c")
    assert len(first) == 5 and len(second) == 6 and first.key != second.key
    assert torch.equal(second.images[:5], first.images)


def test_zip_with_class_folders_reads_like_the_folder(tmp_path):
    blobs = _encoded(12)
    names = [f"{['cat', 'dog'][i % 2]}/{i}.png" for i in range(12)]
    with zipfile.ZipFile(tmp_path / "pets.zip", "w") as z:
        for n, b in zip(names, blobs):
            z.writestr(f"pets/{n}", b)  # one folder around everything, as `zip -r pets.zip pets/` makes
        z.writestr("pets/notes.txt", "not an image")
        z.writestr("__MACOSX/pets/._0.png", b"junk")
    data = load_data(str(tmp_path / "pets.zip"), channels=3, image_size=8, cache_dir=tmp_path / "c")
    folder = tmp_path / "pets"
    for n, b in zip(names, blobs):
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(b)
    ref = load_data(str(folder), channels=3, image_size=8, cache_dir=tmp_path / "c")
    assert _same(data, ref) and data.classes == ("cat", "dog") and torch.equal(data.labels, ref.labels)


def test_zip_with_edm_dataset_json_labels_and_mismatches_refused(tmp_path):
    blobs = _encoded(9)
    names = [f"00000/img{i:08d}.png" for i in range(9)]

    def write(path, labels):
        with zipfile.ZipFile(path, "w") as z:
            for n, b in zip(names, blobs):
                z.writestr(n, b)
            z.writestr("dataset.json", json.dumps({"labels": labels}))
        return str(path)

    data = load_data(write(tmp_path / "edm.zip", [[n, i % 4] for i, n in enumerate(names)]), channels=3,
                     image_size=8, cache_dir=tmp_path / "c")
    assert data.labels.tolist() == [i % 4 for i in range(9)] and data.classes == ("0", "1", "2", "3")
    unlabelled = load_data(write(tmp_path / "none.zip", None), channels=3, image_size=8, cache_dir=tmp_path / "c")
    assert unlabelled.labels is None and "no labels" in unlabelled.unlabelled and _same(unlabelled, data)
    with pytest.raises(DDPMError, match="do not match its images: 1 images have none.*img00000008"):
        load_data(write(tmp_path / "short.zip", [[n, 0] for n in names[:8]]), channels=3, image_size=8,
                  cache_dir=tmp_path / "c")


def test_hf_parquet_and_save_to_disk_with_classlabel(tmp_path):
    blobs, labels = _encoded(30, fmt="PNG"), [i % 3 for i in range(30)]
    pq.write_table(_table(blobs, labels), tmp_path / "train.parquet", row_group_size=7)
    ref = load_data(str(_as_folder(tmp_path / "f", blobs)), channels=3, image_size=8, cache_dir=tmp_path / "c")
    for src in (tmp_path / "train.parquet", _save_to_disk(tmp_path / "saved", _table(blobs, labels))):
        data = load_data(str(src), channels=3, image_size=8, cache_dir=tmp_path / "c")
        assert _same(data, ref) and data.classes == ("ant", "bee", "cow") and data.labels.tolist() == labels
    # a hub snapshot: a folder with data/*.parquet (two files, read in order), other column names given
    (tmp_path / "hub" / "data").mkdir(parents=True)
    plain = pa.table({"png": pa.array(blobs, pa.binary()), "y": pa.array(labels, pa.int64())})
    pq.write_table(plain.slice(0, 20), tmp_path / "hub" / "data" / "train-00000-of-00002.parquet")
    pq.write_table(plain.slice(20), tmp_path / "hub" / "data" / "train-00001-of-00002.parquet")
    hub = load_data(str(tmp_path / "hub"), channels=3, image_size=8, cache_dir=tmp_path / "c", label_column="y")
    assert _same(hub, ref) and hub.classes == ("0", "1", "2") and hub.labels.tolist() == labels
    assert load_data(str(tmp_path / "hub"), channels=3, image_size=8, cache_dir=tmp_path / "c").labels is None


def test_hf_image_given_by_path(tmp_path):
    blobs = _encoded(4)
    _as_folder(tmp_path / "files", blobs, [f"{i}.png" for i in range(4)])
    t = pa.table({"image": pa.array([{"bytes": None, "path": f"files/{i}.png"} for i in range(4)], IMAGE_TYPE)})
    pq.write_table(t, tmp_path / "by_path.parquet")
    data = load_data(str(tmp_path / "by_path.parquet"), channels=3, image_size=8, cache_dir=tmp_path / "c")
    assert _same(data, load_data(str(tmp_path / "files"), channels=3, image_size=8, cache_dir=tmp_path / "c"))


def test_parquet_files_added_or_columns_chosen_get_new_caches(tmp_path):
    blobs = _encoded(6)
    (tmp_path / "d").mkdir()
    pq.write_table(_table(blobs[:3], [0, 1, 2]), tmp_path / "d" / "a.parquet")
    first = load_data(str(tmp_path / "d"), channels=1, image_size=8, cache_dir=tmp_path / "c")
    pq.write_table(_table(blobs[3:], [0, 1, 2]), tmp_path / "d" / "b.parquet")
    second = load_data(str(tmp_path / "d"), channels=1, image_size=8, cache_dir=tmp_path / "c")
    assert (len(first), len(second)) == (3, 6) and first.key != second.key


def test_npz_with_and_without_labels_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr, np.arange(10) % 3)
    (tmp_path / "samples.classes.json").write_text(json.dumps(["x", "y", "z"]))
    np.savez(tmp_path / "plain.npz", arr)
    np.save(tmp_path / "gray.npy", arr[..., 0])
    data = load_data(str(tmp_path / "samples.npz"), channels=3, image_size=12, cache_dir=tmp_path / "c")
    assert np.array_equal(data.images.numpy(), arr.transpose(0, 3, 1, 2))  # at its own size: the pixels as they are
    assert data.classes == ("x", "y", "z") and data.labels.tolist() == [i % 3 for i in range(10)]
    plain = load_data(str(tmp_path / "plain.npz"), channels=3, image_size=12, cache_dir=tmp_path / "c")
    assert plain.labels is None and _same(plain, data)
    gray = load_data(str(tmp_path / "gray.npy"), channels=1, image_size=6, cache_dir=tmp_path / "c")
    expect = [np.asarray(Image.fromarray(a[..., 0]).resize((6, 6), Image.BICUBIC, reducing_gap=3.0)) for a in arr]
    assert np.array_equal(gray.images.numpy()[:, 0], np.stack(expect))
    np.savez(tmp_path / "bad.npz", arr, np.arange(9))
    with pytest.raises(DDPMError, match="arr_1 .* is not one class index >= 0 for each of its 10 images"):
        load_data(str(tmp_path / "bad.npz"), channels=3, image_size=12, cache_dir=tmp_path / "c")


def test_resize_modes_against_closed_forms(tmp_path):
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 10:] = 255  # left half black, right half white
    im = Image.fromarray(wide)
    crop = np.asarray(fit(im, 10))  # the centre 10 x 10: columns 5..14, half black, half white
    assert (crop[:, :5] == 0).all() and (crop[:, 5:] == 255).all()
    pad = np.asarray(fit(im, 10, "pad"))  # 20 x 10 -> 10 x 5, centred: rows 0-1 and 7-9 black borders
    assert pad.shape == (10, 10, 3) and (pad[:2] == 0).all() and (pad[7:] == 0).all()
    assert (pad[2:7, :3] == 0).all() and (pad[2:7, 7:] == 255).all()
    stretch = np.asarray(fit(im, 10, "stretch"))  # 20 x 10 -> 10 x 10: both halves kept
    assert (stretch[:, :4] == 0).all() and (stretch[:, 6:] == 255).all()
    # a choice of resize is part of the cache key
    np.savez(tmp_path / "w.npz", wide[None])
    a = load_data(str(tmp_path / "w.npz"), channels=3, image_size=10, cache_dir=tmp_path / "c")
    b = load_data(str(tmp_path / "w.npz"), channels=3, image_size=10, cache_dir=tmp_path / "c", resize="pad")
    assert a.key != b.key and np.array_equal(b.images[0].permute(1, 2, 0).numpy(), pad)


@pytest.mark.parametrize("case", ["lmdb_text", "zip_no_images", "parquet_no_image_column", "parquet_bad_label",
                                  "datasetdict", "column_not_there"])
def test_bad_sources_are_one_clear_line(tmp_path, case):
    if case == "lmdb_text":
        src = _lmdb(tmp_path / "db", [b"hello", b"world"])
        want = "does not hold images: the value of its first entry"
    elif case == "zip_no_images":
        src = tmp_path / "a.zip"
        with zipfile.ZipFile(src, "w") as z:
            z.writestr("a.txt", "x")
        want = "no images .* in the zip archive .*1 other files"
    elif case == "parquet_no_image_column":
        src = tmp_path / "t.parquet"
        pq.write_table(pa.table({"text": ["a", "b"], "score": [1, 2]}), src)
        want = r"has no image column \(its columns: text, score\); name it with --image-column"
    elif case == "parquet_bad_label":
        src = tmp_path / "t.parquet"
        pq.write_table(_table(_encoded(2), [0, 7]), src)
        want = "has the value 7, and its ClassLabel names only 3 classes"
    elif case == "datasetdict":
        src = tmp_path / "dd"
        src.mkdir()
        (src / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
        want = "DatasetDict .* give one split's folder"
    else:
        src = tmp_path / "t.parquet"
        pq.write_table(_table(_encoded(2), [0, 1]), src)
        want = r"has no column 'img' \(its columns: image, label\)"
    with pytest.raises(DDPMError, match=want):
        load_data(str(src), channels=3, image_size=8, cache_dir=tmp_path / "c",
                  image_column="img" if case == "column_not_there" else "")


def test_a_missing_extra_names_it(tmp_path, monkeypatch):
    import ddpm.data.tables as tables

    db = _lmdb(tmp_path / "db", _encoded(2))
    real_import = builtins.__import__

    def no_lmdb(name, *args, **kw):
        if name == "lmdb":
            raise ImportError("No module named 'lmdb'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_lmdb)
    monkeypatch.setattr(tables.importlib, "import_module", lambda name: no_lmdb(name))
    with pytest.raises(DDPMError, match=r"needs the 'lmdb' package: pip install 'ddpm-tool\[lsun\]'"):
        load_data(str(db), channels=3, image_size=8, cache_dir=tmp_path / "c")


def test_cli_data_info_train_and_metrics_ref(tmp_path, capsys):
    blobs = _encoded(24)
    pq.write_table(_table(blobs, [i % 3 for i in range(24)]), tmp_path / "train.parquet", row_group_size=10)
    cache = ["--cache-dir", str(tmp_path / "c")]
    code, out, _ = run(capsys, "data", "info", str(tmp_path / "train.parquet"), "--preset", "tiny", *cache)
    assert code == 0 and "parquet, 24 images" in out and "3 classes: ant, bee, cow" in out and "not built yet" in out
    code, _, _ = run(capsys, "train", "--data", str(tmp_path / "train.parquet"), "--preset", "tiny", "--out",
                     str(tmp_path / "r"), "--steps", "2", "--batch-size", "4", "--class-cond", "--quiet", *cache)
    assert code == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["num_classes"] == 3 and cfg["train"]["resize"] == "center-crop"
    assert len(caches_of(tmp_path / "c", find_source(str(tmp_path / "train.parquet")).key())) == 1
    # the run's data as a reference set: read at the other set's shape from the same cache
    np.savez(tmp_path / "s.npz", np.zeros((4, 16, 16, 1), np.uint8))
    from ddpm.evaluation.compare import read_set

    ref = read_set(str(tmp_path / "train.parquet"), shape=(1, 16, 16), cache_dir=tmp_path / "c")
    assert ref.n == 24 and tuple(ref.images.shape) == (24, 1, 16, 16)
    native = read_set(str(tmp_path / "train.parquet"), cache_dir=tmp_path / "c")
    assert tuple(native.images.shape) == (24, 3, 10, 10)  # its own size: the images' short side
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "train.parquet"), "--preset", "tiny", "--out",
                       str(tmp_path / "r2"), "--steps", "2", "--image-column", "nope", "--quiet", *cache)
    assert code != 0 and "has no column 'nope'" in one_line_error(err) and not (tmp_path / "r2").exists()


@pytest.mark.parametrize("kind", ["lmdb", "zip", "save_to_disk", "npz"])
def test_each_source_trains(tmp_path, capsys, kind):
    blobs, labels = _encoded(12), [i % 3 for i in range(12)]
    if kind == "lmdb":  # no labels: unconditional
        src = _lmdb(tmp_path / "db", blobs)
    elif kind == "zip":
        src = tmp_path / "d.zip"
        with zipfile.ZipFile(src, "w") as z:
            for i, b in enumerate(blobs):
                z.writestr(f"{'abc'[labels[i]]}/{i}.png", b)
    elif kind == "save_to_disk":
        src = _save_to_disk(tmp_path / "saved", _table(blobs, labels))
    else:
        src = tmp_path / "a.npz"
        np.savez(src, np.stack([np.asarray(Image.open(io.BytesIO(b))) for b in blobs]), np.array(labels))
    cond = [] if kind == "lmdb" else ["--class-cond"]
    code, _, err = run(capsys, "train", "--data", src, "--preset", "tiny", "--out", tmp_path / "r", "--steps", "2",
                       "--batch-size", "4", "--quiet", "--cache-dir", tmp_path / "c", *cond)
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"]["num_classes"] == (0 if kind == "lmdb" else 3)
    assert cfg["train"]["data"] == str(src.resolve()) and list((tmp_path / "r" / "checkpoints").iterdir())
    if kind == "lmdb":  # an LMDB has no labels: asking for a class-conditional model is one clear line
        code, _, err = run(capsys, "train", "--data", src, "--preset", "tiny", "--out", tmp_path / "r2", "--steps",
                           "2", "--quiet", "--cache-dir", tmp_path / "c", "--class-cond")
        assert code != 0 and "an LMDB holds images only" in one_line_error(err)


def test_metrics_ref_an_lmdb_with_a_bad_value(tmp_path, capsys):
    db = _lmdb(tmp_path / "db", _encoded(20), extra=[(b"zz-broken", b"not an image")])
    np.savez(tmp_path / "s.npz", np.random.default_rng(1).integers(0, 256, (10, 28, 28, 1), dtype=np.uint8))
    argv = ["metrics", tmp_path / "s.npz", "--ref", db, "--metrics", "fid", "--quiet", "--cache-dir", tmp_path / "c"]
    code, _, err = run(capsys, *argv)
    assert code != 0 and "key zz-broken" in one_line_error(err)
    code, out, err = run(capsys, *argv, "--skip-bad-images")
    assert code == 0, err
    assert "10 images of" in out and "(20 images)" in out


def test_a_datasets_image_paths_are_read_only_inside_its_folder(tmp_path):
    """Rows whose path points outside the data set's folder (absolute, or up with ..) are not read: they are bad
    images, named with the reason (skipped with --skip-bad-images); a path inside the folder is read."""
    from ddpm.data.sources import load_data

    inside, outside = tmp_path / "data", tmp_path / "private"
    inside.mkdir()
    outside.mkdir()
    blob = _encoded(1)[0]
    (inside / "ok.png").write_bytes(blob)
    (outside / "secret.png").write_bytes(blob)
    rows = [{"bytes": None, "path": "ok.png"}, {"bytes": None, "path": str(outside / "secret.png")},
            {"bytes": None, "path": "../private/secret.png"}]
    table = pa.table({"image": pa.array(rows, IMAGE_TYPE)})
    pq.write_table(table, inside / "train.parquet")
    with pytest.raises(DDPMError, match="lies outside the data set's folder"):
        load_data(str(inside / "train.parquet"), channels=3, image_size=8, cache_dir=tmp_path / "c")
    data = load_data(str(inside / "train.parquet"), channels=3, image_size=8, cache_dir=tmp_path / "c",
                     skip_bad=True)
    assert len(data) == 1 and len(data.skipped) == 2 and all("outside" in s for s in data.skipped)


@pytest.mark.parametrize("member", ["/abs/x.png", "a/../../x.png", "dup.png"])
def test_a_zip_with_unsafe_or_doubled_member_names_is_refused(tmp_path, member):
    blob = _encoded(1)[0]
    with zipfile.ZipFile(tmp_path / "x.zip", "w") as zf:
        zf.writestr("ok.png", blob)
        zf.writestr(member, blob)
        if member == "dup.png":
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
                zf.writestr("dup.png", blob)
    from ddpm.data.sources import load_data

    with pytest.raises(DDPMError, match="absolute names or '..'|two members named dup.png"):
        load_data(str(tmp_path / "x.zip"), channels=3, image_size=8, cache_dir=tmp_path / "c")


def test_a_decompression_bomb_is_refused_in_one_line_before_decoding(tmp_path):
    from ddpm.data.sources import load_data

    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("L", (13000, 13000)).save(d / "bomb.png")  # 164 KB on disk, 169M pixels
    for i in range(3):
        Image.new("L", (20, 20), i * 60).save(d / f"{i}.png")
    with pytest.raises(DDPMError, match="13000 x 13000 pixels is more than the 67,108,864 pixels ddpm decodes"):
        load_data(str(d), channels=1, image_size=8, cache_dir=tmp_path / "c")
    data = load_data(str(d), channels=1, image_size=8, cache_dir=tmp_path / "c", skip_bad=True)
    assert len(data) == 3 and "bomb.png" in data.skipped[0]


def test_a_huge_parquet_row_group_is_read_in_bounded_pieces_across_workers(tmp_path, monkeypatch):
    from ddpm.data import formats

    monkeypatch.setattr(formats, "GROUP_PIECE", 5)  # pieces of >= 5 rows, at most 8 a group
    monkeypatch.setattr(formats, "TASK", 2)  # batches of 2 rows within a piece
    blobs = _encoded(50, fmt="PNG")
    pq.write_table(_table(blobs, [i % 3 for i in range(50)]), tmp_path / "one.parquet", row_group_size=50)
    src = find_source(str(tmp_path / "one.parquet")).encoded
    chunks = list(src.chunks())
    assert [n for n, _ in chunks] == [7] * 7 + [1] and [p[2] for _, p in chunks] == list(range(0, 50, 7))
    read = []
    real = pq.ParquetFile.iter_batches

    def watched(self, *a, **k):
        for b in real(self, *a, **k):
            read.append(b.num_rows)
            yield b

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", watched)
    names = [name for _, p in chunks for name, _ in src.items(p)]
    assert names == [f"one.parquet row {i}" for i in range(50)] and max(read) == 2
    data = [blob for _, p in chunks for _, blob in src.items(p)]
    assert data == blobs
    assert [b for _, b in src.items(chunks[3][1], stop=2)] == blobs[21:23]


def test_cache_workers_import_no_torch():
    """A spawned decoding worker imports what its task's function needs (and the ddpm CLI's entry module): none
    of it may pull in torch, which would cost each worker seconds and hundreds of MB."""
    import subprocess
    import sys

    code = ("import sys, ddpm.cli, ddpm.data.images, ddpm.data.formats, ddpm.data.tables, ddpm.data.cache; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
