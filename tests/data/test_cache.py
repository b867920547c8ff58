"""The decoded cache: built once (in workers), memory-mapped, keyed by what decides it, rebuilt when killed
mid-build or damaged, bad images named or skipped."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddpm.data.cache as cache
from ddpm.cli.commands import main
from ddpm.data.sources import cache_info, load_data
from ddpm.errors import DDPMError


def _folder(root, n, size=20, seed=0, classes=()):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        where = root / classes[i % len(classes)] if classes else root
        where.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(where / f"{i:05d}.png")
    return root


def _caches(root):
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())


def test_built_once_then_memory_mapped(tmp_path, monkeypatch):
    src, root = _folder(tmp_path / "imgs", 30, classes=("cat", "dog")), tmp_path / "cache"
    first = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert first.images.shape == (30, 3, 16, 16) and first.classes == ("cat", "dog")
    assert len(_caches(root)) == 1 and not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    monkeypatch.setattr(cache, "decode_into", lambda task: pytest.fail("decoded again"))
    again = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    # the same pixels as decoding each file directly
    from ddpm.data.images import decode, list_images

    direct = np.stack([decode(p, 3, 16) for p in list_images(src)])
    assert np.array_equal(again.images.numpy(), direct)
    monkeypatch.undo()
    gray = load_data(str(src), channels=1, image_size=8, cache_dir=root)  # another size and channels: another cache
    assert gray.images.shape == (30, 1, 8, 8) and len(_caches(root)) == 2


def test_a_changed_folder_gets_a_new_cache(tmp_path):
    src, root = _folder(tmp_path / "imgs", 12), tmp_path / "cache"
    key = load_data(str(src), channels=3, image_size=16, cache_dir=root).key
    _folder(tmp_path / "extra", 1, seed=9)
    os.replace(tmp_path / "extra" / "00000.png", src / "new.png")  # a file added
    added = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert added.key != key and len(added) == 13
    Image.new("RGB", (20, 24), (9, 9, 9)).save(src / "00003.png")  # a file modified
    os.utime(src / "00003.png", ns=(time.time_ns(), time.time_ns() + 10**9))
    modified = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert modified.key not in (key, added.key) and int(modified.images[3].float().mean()) == 9
    assert len(_caches(root)) == 3


@pytest.mark.parametrize("damage", ["flipped", "truncated", "meta"])
def test_a_damaged_cache_is_found_and_built_again(tmp_path, damage, caplog):
    src, root = _folder(tmp_path / "imgs", 12), tmp_path / "cache"
    good = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    images = good.images.clone()
    npy = root / good.key / "images.npy"
    del good
    data = bytearray(npy.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0xFF  # inside one of the checked blocks (the middle of a small file)
        npy.write_bytes(bytes(data))
    elif damage == "truncated":
        npy.write_bytes(bytes(data[: len(data) - 100]))
    else:
        (npy.parent / "meta.json").write_text("{")
    assert cache.verify(npy.parent) is not None
    with caplog.at_level("WARNING"):
        again = load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert "is damaged" in caplog.text and "building it again" in caplog.text
    assert torch.equal(again.images, images) and cache.verify(npy.parent, full=True) is None


def test_a_build_killed_midway_leaves_nothing_used_and_the_next_builds_again(tmp_path):
    src, root = _folder(tmp_path / "imgs", 1500, size=96), tmp_path / "cache"
    code = (f"from ddpm.data.sources import load_data; load_data({str(src)!r}, channels=3, image_size=64, "
            f"cache_dir={str(root)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(root.glob(".tmp-*/images.npy")):
        time.sleep(0.02)
    time.sleep(0.3)  # mid-build: the workers are decoding
    os.killpg(proc.pid, signal.SIGKILL)  # the builder and its workers
    proc.wait()
    assert list(root.glob(".tmp-*")) and not [p for p in _caches(root) if not p.startswith(".")]
    data = load_data(str(src), channels=3, image_size=64, cache_dir=root)
    assert len(data) == 1500 and cache.verify(root / data.key, full=True) is None
    assert not list(root.glob(".tmp-*"))  # the killed build's leftovers are swept


def test_bad_images_are_named_or_skipped_and_recorded(tmp_path, capsys):
    src = _folder(tmp_path / "imgs", 100)
    for name in ("00010.png", "00050.png", "00090.png"):
        (src / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    root = tmp_path / "cache"
    with pytest.raises(DDPMError, match="3 of the 100 images in .* cannot be read; the first: .*00010.png"):
        load_data(str(src), channels=3, image_size=16, cache_dir=root)
    assert not _caches(root)
    data = load_data(str(src), channels=3, image_size=16, cache_dir=root, skip_bad=True)
    assert len(data) == 97 and data.skipped == ("00010.png", "00050.png", "00090.png")
    with pytest.raises(DDPMError, match="--skip-bad-images"):  # the cache knows; without the flag it still stops
        load_data(str(src), channels=3, image_size=16, cache_dir=root)
    run = tmp_path / "run"
    assert main(["train", "--data", src, "--out", run, "--preset", "tiny", "--steps", "2", "--batch-size", "4",
                 "--skip-bad-images", "--quiet", "--cache-dir", root]) == 0
    assert (run / "skipped_images.txt").read_text().split() == ["00010.png", "00050.png", "00090.png"]
    assert "left out 3 unreadable images" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["skip_bad_images"] is True


def test_data_info_and_build(tmp_path, capsys):
    src, root = _folder(tmp_path / "imgs", 10, classes=("a", "b")), tmp_path / "cache"
    info = cache_info(str(src), preset="tiny", channels=3, cache_dir=root)
    assert info["images"] == 10 and info["built"] is False and (info["channels"], info["size"]) == (3, 16)
    assert main(["data", "build", src, "--preset", "tiny", "--channels", "3", "--cache-dir", root]) == 0
    assert main(["data", "info", src, "--preset", "tiny", "--channels", "3", "--cache-dir", root, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "10 images" in out and "(built)" in out and "10 images of 3x16x16" in out and "intact" in out
    assert main(["data", "info", "mnist"]) == 0
    assert "no cache" in capsys.readouterr().out


def test_the_decoding_processes_start_without_torch():
    """A cache build's worker processes import the modules of their tasks (and ddpm.data): numpy and Pillow, never
    torch, whose import costs each worker a second or more."""
    code = ("import sys, ddpm.data.cache, ddpm.data.formats, ddpm.data.images; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == \
        "False"


def test_a_few_images_decode_in_the_process_and_many_in_workers(tmp_path, monkeypatch):
    """Up to INLINE_MAX images decode in the building process; more in worker processes. Both give the same
    pixels."""
    src = _folder(tmp_path / "imgs", 12)
    pools = []
    real = cache.ProcessPoolExecutor

    def counted(*a, **k):
        pools.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cache, "ProcessPoolExecutor", counted)
    inline = load_data(str(src), channels=3, image_size=16, cache_dir=tmp_path / "a")
    assert pools == []
    monkeypatch.setattr(cache, "INLINE_MAX", 4)
    pooled = load_data(str(src), channels=3, image_size=16, cache_dir=tmp_path / "b")
    assert pools == [1] and torch.equal(inline.images, pooled.images)
