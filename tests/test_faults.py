"""Faults: damaged checkpoints are detected and skipped, a run has one trainer, a full disk stops cleanly."""

import errno

import pytest
import torch

from ddpm import load_checkpoint
from ddpm.checkpoint import list_checkpoints, run_lock, write_config
from ddpm.cli import main
from ddpm.errors import DDPMError

from helpers import CodeRunningPickle, tiny_config, tiny_trainer

TINY = ["--data", "mnist", "--preset", "tiny", "--batch-size", "4", "--log-every", "2", "--save-every", "3",
        "--sample-every", "0", "--quiet", "--T", "40"]


def _damage(path, how):
    f = path / "model.safetensors"
    if how == "truncated":
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])
    elif how == "bit-flipped":
        data = bytearray(f.read_bytes())
        data[-5] ^= 0x01
        f.write_bytes(bytes(data))
    else:
        f.unlink()


@pytest.mark.parametrize("how", ["truncated", "bit-flipped", "missing"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(how, tmp_path, capsys):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(["train", "--out", str(straight), "--steps", "9", *TINY]) == 0
    assert main(["train", "--out", str(broken), "--steps", "6", *TINY]) == 0
    assert [p.name for p in list_checkpoints(broken)] == ["step-00000003", "step-00000006"]
    _damage(broken / "checkpoints" / "step-00000006", how)
    capsys.readouterr()
    ckpt = load_checkpoint(broken)
    err = capsys.readouterr().err
    assert ckpt.step == 3
    assert "step-00000006" in err and "model.safetensors" in err and "using the newest intact checkpoint" in err
    # resuming from step 3 replays steps 4-9 exactly: the result equals the straight run
    assert main(["train", "--out", str(broken), "--resume", "--steps", "9", "--quiet"]) == 0
    a, b = load_checkpoint(straight), load_checkpoint(broken)
    assert b.step == 9
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k


def test_no_intact_checkpoint_is_an_error_naming_the_damage(tmp_path):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), "--steps", "3", *TINY]) == 0
    _damage(run / "checkpoints" / "step-00000003", "bit-flipped")
    with pytest.raises(DDPMError, match="no intact checkpoint.*model.safetensors does not match its checksum"):
        load_checkpoint(run)
    with pytest.raises(DDPMError, match="does not match"):
        load_checkpoint(run, step=3)  # an explicit step never falls back


def test_a_second_trainer_on_a_run_is_refused(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--out", str(run), "--steps", "3", *TINY]) == 0
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
    with run_lock(run):  # the first trainer, still running
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 1
        err = capsys.readouterr().err
        assert "is being trained by process" in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == before
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 0  # lock released


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import ddpm.checkpoint as ck

    cfg = tiny_config(steps=9, save_every=3)
    run = tmp_path / "r"
    run.mkdir()
    write_config(run, cfg)
    tr = tiny_trainer(cfg)
    real, calls = ck.save_file, []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) > 3:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_file", save_file)
    with pytest.raises(DDPMError, match="no space left.*previous checkpoint is intact"):
        tr.fit(run, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(run).step == 3
    (run / "checkpoints" / ".tmp-step-00000004-killed").mkdir()  # a writer killed at another step
    monkeypatch.setattr(ck, "save_file", real)
    tr.save(run)
    assert not list((run / "checkpoints").glob(".tmp-*"))



def test_written_aside_renames_only_a_finished_folder(tmp_path):
    from ddpm.checkpoint import written_aside

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


def test_a_pickle_planted_in_a_run_runs_nothing(tmp_path, monkeypatch, capsys):
    import hashlib
    import json
    import pickle

    run = tmp_path / "r"
    assert main(["train", "--out", str(run), "--steps", "3", *TINY]) == 0
    ck = run / "checkpoints" / "step-00000003"
    for name in ("model.safetensors", "optimizer.safetensors"):
        (ck / name).write_bytes(pickle.dumps({"w": CodeRunningPickle()}))
    # a careful attacker also rewrites the manifest, so the checksums match the planted files
    manifest = json.loads((ck / "manifest.json").read_text())
    for name in ("model.safetensors", "optimizer.safetensors"):
        data = (ck / name).read_bytes()
        manifest[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ck / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DDPMError, match="cannot read"):
        load_checkpoint(run)
    assert main(["sample", "--run", str(run), "--n", "2", "--out", str(tmp_path / "s.png")]) == 1
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 1
    assert not (tmp_path / "PWNED").exists()
