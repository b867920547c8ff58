"""Run directories (run.py): checkpoints written atomically and checked, damaged ones skipped, one trainer per
run, a full disk stops cleanly, no pickle, metrics.csv written and read back."""

import errno
import json

import pytest
import torch

from ddpm import load_checkpoint
from ddpm.cli.commands import main
from ddpm.errors import DDPMError
from ddpm.run.directory import list_checkpoints, run_lock, save_checkpoint, write_config
from ddpm.run.metrics import MetricsLog, read_metrics
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
    import ddpm.run.directory as ck

    cfg = tiny_config(steps=9, save_every=3)
    run = tmp_path / "r"
    run.mkdir()
    write_config(run, cfg)
    tr = tiny_trainer(cfg)
    real, calls = ck.save_safetensors, []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) > 3:  # the second checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_safetensors", save_file)
    with pytest.raises(DDPMError, match="no space left.*the last checkpoint, step 3, is kept"):
        tr.fit(run, progress=False)
    assert [p.name for p in list_checkpoints(run)] == ["step-00000003"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert load_checkpoint(run).step == 3
    (run / "checkpoints" / ".tmp-step-00000004-killed").mkdir()  # a writer killed at another step
    monkeypatch.setattr(ck, "save_safetensors", real)
    tr.save(run)
    assert not list((run / "checkpoints").glob(".tmp-*"))



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


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    tr = tiny_trainer(tiny_config())
    tr.train_step()
    good = tr.save(tmp_path)
    tr.train_step()
    import ddpm.run.directory as ck

    calls = {"n": 0}
    real = ck.save_safetensors

    def dies_on_second_file(tensors, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            real(tensors, path, *a, **k)
            with open(path, "r+b") as f:  # half-written, then the process "dies"
                f.truncate(10)
            raise OSError("No space left on device")
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(ck, "save_safetensors", dies_on_second_file)
    with pytest.raises(OSError):
        tr.save(tmp_path)
    assert list_checkpoints(tmp_path) == [good]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()


def test_a_damaged_checkpoint_is_detected(tmp_path):
    tr = tiny_trainer(tiny_config())
    tr.train_step()
    path = tr.save(tmp_path)
    (tmp_path / "config.json").write_text(tiny_config().to_json())
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(DDPMError, match="model.safetensors does not match its checksum"):
        load_checkpoint(tmp_path)


def test_load_checkpoint_fields_and_no_pickle(tmp_path, monkeypatch):
    cfg = tiny_config(steps=4, save_every=2)
    tr = tiny_trainer(cfg)
    tr.fit(tmp_path, progress=False)
    write_config(tmp_path, cfg)
    import pickle

    def refuse(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 4 and ck.config == cfg and ck.diffusion.T == 100
    assert not ck.model.training and not ck.ema_model.training
    for k, v in ck.ema_model.state_dict().items():
        assert torch.equal(v, tr.ema.state_dict()[k])
    state = json.loads((ck.path / "state.json").read_text())
    assert state["step"] == 4 and "rng" in state


def test_save_checkpoint_public_api(tmp_path):
    tr = tiny_trainer(tiny_config())
    p = save_checkpoint(tmp_path, step=3, model=tr.model, ema_model=tr.ema)
    assert p.name == "step-00000003" and (p / "manifest.json").is_file()


def test_metrics_log_rows_round_trip_and_a_resume_drops_later_rows(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsLog(path, 0)
    for step in (2, 4, 6):
        log.append({"step": step, "loss": 1.0 / step, "lr": 1e-3, "grad_norm": 0.5, "img_per_s": 10.0,
                    "elapsed_s": float(step), "skipped": 0})
    with open(path, "a") as f:
        f.write("8,0.1")  # a write cut short by a kill
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [2, 4, 6] and rows[1]["loss"] == pytest.approx(0.25, rel=1e-5)
    MetricsLog(path, 4)  # resumed from the checkpoint at step 4: step 6 will be trained and logged again
    assert [r["step"] for r in read_metrics(path)] == [2, 4]
    assert path.read_text().splitlines()[0] == ("step,loss,lr,grad_norm,img_per_s,elapsed_s,skipped,loss_q0,loss_q1,"
                                                "loss_q2,loss_q3,val_loss,fd,fd_seconds")
