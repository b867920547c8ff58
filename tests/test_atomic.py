"""ddpm.atomic: a reader never sees half a file or folder; a killed writer leaves nothing behind."""

import os

import numpy as np
import pytest

from ddpm.atomic import atomic_path, atomic_write_text


def test_written_aside_renames_only_a_finished_folder(tmp_path):
    from ddpm.atomic import written_aside

    final = tmp_path / "out"
    stale = tmp_path / ".tmp-out-killed"  # left by a writer that was killed mid-write
    stale.mkdir()
    with pytest.raises(RuntimeError):
        with written_aside(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert not final.exists() and sorted(p.name for p in tmp_path.iterdir()) == [".tmp-out-killed"]
    with written_aside(final) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.txt").write_text("whole")
    assert (final / "sub" / "a.txt").read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the stale folder is gone too
    with pytest.raises(OSError):  # never merged into or over an existing folder unless asked
        with written_aside(final) as tmp:
            (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["sub"] and len(list(tmp_path.iterdir())) == 1
    with written_aside(final, replace=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_atomic_path_keeps_the_suffix_and_the_old_file_until_done(tmp_path):
    out = tmp_path / "arr.npz"
    atomic_write_text(out, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name.endswith(".npz") and tmp.name.startswith(".")
            np.savez(tmp, arr_0=np.zeros(3))  # numpy would append .npz to any other name
            raise RuntimeError("killed mid-write")
    assert out.read_text() == "old" and os.listdir(tmp_path) == ["arr.npz"]
    with atomic_path(out) as tmp:
        np.savez(tmp, arr_0=np.arange(3))
    assert np.load(out)["arr_0"].tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["arr.npz"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_what_is_written_follows_the_umask(umask, tmp_path):
    """Temporaries from mkstemp (0600) and mkdtemp (0700) are renamed into place: they must get the modes any file
    the user creates gets, or nothing ddpm writes could be shared."""
    import stat

    import torch

    from ddpm.run.directory import save_checkpoint
    from ddpm.sampling.outputs import write_images

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        images = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
        for name in ("g.png", "a.npz", "folder"):
            write_images(images, tmp_path / name)
        net = torch.nn.Linear(2, 2)
        ckpt = save_checkpoint(tmp_path / "run", step=1, model=net, ema_model=net)
    finally:
        os.umask(old)
    files = [tmp_path / n for n in ("config.json", "g.png", "a.npz")] + list((tmp_path / "folder").iterdir()) \
        + list(ckpt.iterdir())
    folders = [tmp_path / "folder", ckpt, ckpt.parent]
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {oct(0o666 & ~umask)}
    assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in folders} == {oct(0o777 & ~umask)}
