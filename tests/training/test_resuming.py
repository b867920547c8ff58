"""Training where clusters run: one command that starts or continues a run (--resume auto), the settings a resumed
run may not change, preemption signals (SIGTERM, SLURM's SIGUSR1) that checkpoint the current step and exit with
128 + the signal, checkpoints by wall clock (--save-minutes) and milestones kept (--keep-every)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from ddpm.cli.commands import main
from ddpm.run.directory import list_checkpoints
from helpers import tiny_config, tiny_trainer

ARGS = ["--data", "mnist", "--preset", "tiny", "--batch-size", "8", "--T", "50", "--image-size", "8", "--quiet"]


def _train(capsys, out, *extra):
    code = main(["train", "--out", str(out), *ARGS, *extra])
    return code, capsys.readouterr().err


def test_resume_auto_starts_continues_and_finishes_with_the_same_command(tmp_path, capsys):
    run = tmp_path / "run"
    same = ["--steps", "4", "--save-every", "2", "--resume", "auto"]
    assert _train(capsys, run, *same)[0] == 0 and [p.name for p in list_checkpoints(run)][-1] == "step-00000004"
    code, err = _train(capsys, run, *same)  # a restart of a finished run: nothing to do, and success
    assert code == 0 and "has finished its 4 steps" in err
    code, err = _train(capsys, run, *same[:-4], "--steps", "6", "--save-every", "2", "--resume", "auto")
    assert code == 0 and list_checkpoints(run)[-1].name == "step-00000006"
    code, err = _train(capsys, run, "--steps", "6", "--lr", "0.5", "--seed", "3", "--resume", "auto")
    assert code == 1 and "--lr 0.001, --seed 0; a resumed run cannot change them (given: --lr 0.5, --seed 3" in err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("mine")  # not a run: never taken over
    code, err = _train(capsys, other, "--steps", "2", "--resume", "auto")
    assert code == 1 and "already exists" in err and (other / "notes.txt").read_text() == "mine"


def test_resume_auto_restarts_a_run_that_died_before_its_first_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(capsys, run, "--steps", "2", "--dry-run")[0] == 0  # nothing written
    run.mkdir()
    (run / ".lock").write_text("")  # killed while starting
    assert _train(capsys, run, "--steps", "2", "--resume", "auto")[0] == 0
    assert list_checkpoints(run)[-1].name == "step-00000002"


def _cli(out, steps, *extra):
    return [sys.executable, "-m", "ddpm", "train", "--out", str(out), "--steps", str(steps), *ARGS, "--log-every",
            "1", "--save-every", "1000", "--resume", "auto", *extra]


def _tensors(run, step):
    d = run / "checkpoints" / f"step-{step:08d}"
    return {f"{n}/{k}": v for n in ("model", "ema", "optimizer")
            for k, v in load_file(str(d / f"{n}.safetensors")).items()}


@pytest.mark.parametrize("sig, code", [("SIGUSR1", 138), ("SIGTERM", 143)])
def test_a_preemption_signal_checkpoints_the_current_step_and_the_same_command_continues_exactly(tmp_path, sig, code):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = 5000
    straight = tmp_path / "straight"
    subprocess.run(_cli(straight, 60), env=env, check=True, capture_output=True)
    run = tmp_path / "run"
    proc = subprocess.Popen(_cli(run, steps), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # some steps done (a metrics row each)
        metrics = run / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) > 4:
            break
        time.sleep(0.005)
    os.kill(proc.pid, getattr(signal, sig))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    stopped = [int(p.name.split("-")[1]) for p in list_checkpoints(run)]
    assert len(stopped) == 1 and 4 <= stopped[0] < steps and f"({sig})" in err
    res = subprocess.run(_cli(run, 60), env=env, capture_output=True, text=True)  # the same command, --steps 60
    if stopped[0] >= 60:
        pytest.skip("the run was past step 60 when the signal came (a very fast machine)")
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _tensors(straight, 60), _tensors(run, 60)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_save_minutes_writes_by_the_clock_and_keep_every_keeps_milestones(tmp_path, monkeypatch):
    from ddpm.training import trainer as trainer_module

    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    tr = tiny_trainer(tiny_config(steps=7, save_every=1000, save_minutes=1.0, keep=2, keep_every=2, log_every=100))
    run = tmp_path / "run"

    def tick(t):
        clock[0] += 61.0 if t.step in (2, 4, 5) else 1.0  # a minute passes after steps 2, 4 and 5

    tr.fit(run, progress=False, on_step=tick)
    # by the clock after steps 3, 5 and 6 (61 s since the last), at the end 7; kept: the newest 2 and milestones
    assert [int(p.name.split("-")[1]) for p in list_checkpoints(run)] == [6, 7]
    tr2 = tiny_trainer(tiny_config(steps=7, save_every=2, keep=1, keep_every=4, log_every=100))
    (run2 := tmp_path / "run2").mkdir()
    tr2.fit(run2, progress=False)
    assert [int(p.name.split("-")[1]) for p in list_checkpoints(run2)] == [4, 7]


def test_old_checkpoints_go_but_what_a_user_put_in_them_stays(tmp_path):
    tr = tiny_trainer(tiny_config(steps=4, save_every=1, keep=1, log_every=100))
    run = tmp_path / "run"
    tr.set_steps(1)
    tr.fit(run, progress=False)
    mine = list_checkpoints(run)[0] / "my-notes.txt"
    mine.write_text("mine")
    tr.set_steps(3)
    tr.fit(run, progress=False)
    assert list_checkpoints(run)[-1].name == "step-00000003" and not (run / "checkpoints" / "step-00000002").exists()
    assert sorted(p.name for p in mine.parent.iterdir()) == ["my-notes.txt"] and mine.read_text() == "mine"


def _workers(agent_pid: int):
    """The pids of the processes torchrun's agent started (its children)."""
    found = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == agent_pid:
                found.append(int(d))
    return found


def log_text(tmp_path):
    return (tmp_path / "torchrun.log").read_text(errors="replace") if (tmp_path / "torchrun.log").exists() else ""


def _torchrun(out, steps, restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={restarts}", "--monitor-interval=0.2", "-m", "ddpm", "--", "train", "--out", str(out),
            "--steps", str(steps), *ARGS, "--precision", "fp32", "--log-every", "1", "--save-every", "2",
            "--resume", "auto"]


@pytest.mark.skipif(not torch.distributed.is_available() or not os.path.isdir("/proc"), reason="torchrun, /proc")
def test_torchrun_elastic_restarts_after_workers_are_killed_end_bit_identical(tmp_path):
    """`torchrun --max-restarts 3 ... train --resume auto`, a worker SIGKILLed twice at random moments: torchrun
    restarts the group, the same command continues from the last checkpoint, and the final weights, EMA and Adam
    state equal those of the uninterrupted 2-process run bit for bit."""
    import random

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps, rng = 30, random.Random(0)
    straight = tmp_path / "straight"
    res = subprocess.run(_torchrun(straight, steps), env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "run"
    log = open(tmp_path / "torchrun.log", "w")  # a file, not a pipe: nobody reads it while the workers run
    agent = subprocess.Popen(_torchrun(run, steps, restarts=3), env=env, stdout=log, stderr=subprocess.STDOUT)
    killed = []
    try:
        deadline = time.monotonic() + 300
        while len(killed) < 2 and agent.poll() is None and time.monotonic() < deadline:
            workers = [w for w in _workers(agent.pid) if w not in killed]
            # this group trains (its rank 0 has logged a step since it started): kill one of its workers a moment later
            started = log_text(tmp_path).count("training tiny") > len(killed) and (run / "metrics.csv").is_file()
            if len(workers) == 2 and started:
                time.sleep(rng.uniform(0.0, 0.5))
                victim = rng.choice(workers)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(0.02)
        agent.wait(timeout=300)
    finally:  # a failure leaves no process behind
        for pid in [*_workers(agent.pid), agent.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    log.close()
    err = log_text(tmp_path)
    assert len(killed) == 2, f"the run ended before two kills: {err[-2000:]}"
    assert agent.returncode == 0, err[-3000:]
    # torchrun reports the first failure of a group: the killed worker's, or its partner's when that one's broken
    # collective ends it first (about 1 run in 7), so at least one of the two kills is named
    assert err.count("resuming") == 2 and err.count("SIGKILL") + err.count("exitcode: -9") >= 1
    a, b = _tensors(straight, steps), _tensors(run, steps)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_written_in_the_background_holds_its_own_step(tmp_path):
    """The state is copied to host memory when the checkpoint is taken; the steps that run while it is written
    do not reach it, and the files equal a checkpoint written on the spot."""
    tr = tiny_trainer(tiny_config(steps=10, log_every=100))
    for _ in range(2):
        tr.train_step()
    at_two = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.save(tmp_path / "bg", background=True)
    for _ in range(3):  # while it writes
        tr.train_step()
    tr.writer.wait()
    written = load_file(str(tmp_path / "bg" / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert all(torch.equal(written[k], at_two[k]) for k in at_two)
    assert any(not torch.equal(v, at_two[k]) for k, v in tr.model.state_dict().items())  # training went on


def test_a_failed_background_write_is_raised_in_the_training_thread():
    from ddpm.atomic import BackgroundWrite

    def full():
        raise OSError(28, "No space left on device")

    w = BackgroundWrite()
    w.start(full)
    with pytest.raises(OSError, match="No space"):
        w.wait()
    w.wait()  # raised once
