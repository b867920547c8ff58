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
