"""Quality while training: --eval-every logs the Fréchet distance of EMA samples, keeps the checkpoint of the lowest
as best, and `ddpm eval --checkpoint STEP|best` measures the logged number again; --checkpoint picks weights in
every command that reads a run."""

import json

import pytest
import torch

from ddpm.run.directory import list_checkpoints, save_checkpoint
from ddpm.run.metrics import read_metrics
from ddpm.run.weights import read_best
from ddpm.sampling.settings import SamplingSettings
from helpers import TINY, assert_same_state, one_line_error, run, tiny_config, tiny_trainer

EVAL = ["--eval-every", "4", "--eval-n", "24", "--eval-steps", "5"]


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """A tiny run of 12 steps evaluated at 4, 8 and 12, keeping one checkpoint (plus the best)."""
    from ddpm.cli.commands import main

    out = tmp_path_factory.mktemp("watched") / "run"
    assert main(["train", "--data", "mnist", "--out", str(out), "--steps", "12", *TINY, "--keep", "1", *EVAL]) == 0
    return out


def test_eval_every_logs_fd_at_every_nth_step_and_keeps_the_best(watched):
    rows = {r["step"]: r for r in read_metrics(watched / "metrics.csv")}
    logged = {s: r["fd"] for s, r in rows.items() if "fd" in r}
    assert sorted(logged) == [4, 8, 12] and all(rows[s]["fd_seconds"] > 0 for s in logged)
    best = read_best(watched)
    assert best["step"] == min(logged, key=logged.get) and best["fd"] == pytest.approx(logged[best["step"]], rel=1e-5)
    assert best["n"] == 24 and best["sampler"] == "sde-dpm++" and best["steps"] == 5
    kept = {int(p.name[5:]) for p in list_checkpoints(watched)}
    assert kept == {best["step"], 12}  # --keep 1, and the best


@pytest.mark.parametrize("which", ["best", "12"])
def test_eval_of_a_checkpoint_gives_the_logged_number_again(watched, which, tmp_path, capsys):
    code, out, err = run(capsys, "eval", "--run", watched, "--checkpoint", which, "--metrics", "fd", "--n", "24",
                         "--sampler", "sde-dpm++", "--steps", "5", "--out", tmp_path / "e", "--quiet")
    assert code == 0, err
    step = read_best(watched)["step"] if which == "best" else 12
    logged = {r["step"]: r["fd"] for r in read_metrics(watched / "metrics.csv") if "fd" in r}[step]
    fd = float(out.strip().splitlines()[-1].split()[-1])
    assert fd == pytest.approx(logged, rel=1e-5)


def test_the_commands_that_read_a_run_take_checkpoint(watched, tmp_path, capsys):
    best = read_best(watched)["step"]
    code, _, err = run(capsys, "sample", "--run", watched, "--checkpoint", "best", "--n", "2", "--out",
                       tmp_path / "s.png")
    assert code == 0 and f"(step {best}, EMA weights)" in err
    code, _, err = run(capsys, "export", "--run", watched, "--checkpoint", "12", "--format", "diffusers", "--out",
                       tmp_path / "x")
    assert code == 0 and "(step 12," in err
    for cmd in (["inpaint", "--run", watched, "mnist:3", "--mask", "right", "--steps", "4", "--resample", "1"],
                ["edit", "--run", watched, "mnist:3", "--strength", "0.5", "--steps", "4", "--sampler", "respaced"]):
        code, _, err = run(capsys, *cmd, "--checkpoint", "best", "--out", tmp_path / f"{cmd[0]}.png", "--quiet")
        assert code == 0 and f"(step {best})" in err, err
    code, _, err = run(capsys, "sample", "--run", watched, "--checkpoint", "5", "--n", "2", "--out", tmp_path / "t.png")
    assert code == 1 and "no checkpoint at step 5" in one_line_error(err)


def test_a_run_without_evaluations_has_no_best(tiny_runs, tmp_path, capsys):
    code, _, err = run(capsys, "sample", "--run", tiny_runs[0], "--checkpoint", "best", "--n", "2", "--out",
                       tmp_path / "s.png")
    assert code == 1 and "has no best checkpoint: train it with --eval-every" in one_line_error(err)
    code, _, err = run(capsys, "sample", "--run", tiny_runs[0], "--checkpoint", "newest", "--n", "2", "--out",
                       tmp_path / "s.png")
    assert code == 2 and "best, latest or a step" in err


def test_rgb_runs_need_the_inception_before_training_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DDPM_INCEPTION", str(tmp_path / "missing.pt"))
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--steps", "2", *TINY,
                       "--channels", "3", "--eval-every", "1")
    assert code == 1 and "not found" in one_line_error(err) and not (tmp_path / "r").exists()


def _scripted(fds):
    """An evaluate callable that draws a few samples (as the real one does) and returns the next of ``fds``."""
    calls = []

    def evaluate(trainer):
        trainer.draw(SamplingSettings(sampler="ddim", steps=2, n=3, progress=False))
        calls.append(trainer.step)
        return fds[len(calls) - 1]

    return evaluate, calls


def test_evaluating_changes_nothing_that_training_computes(tmp_path):
    cfg = tiny_config(steps=12, eval_every=3)
    plain, watched = tiny_trainer(cfg), tiny_trainer(cfg)
    plain.fit(tmp_path / "a", progress=False)
    evaluate, calls = _scripted([9.0, 8.0, 7.0, 6.0])
    watched.fit(tmp_path / "b", progress=False, evaluate=evaluate)
    assert calls == [3, 6, 9, 12]
    assert_same_state(plain, watched)


def test_the_best_moves_only_to_a_lower_fd_and_outlives_keep(tmp_path):
    cfg = tiny_config(steps=12, eval_every=3, save_every=100, keep=1)
    tr = tiny_trainer(cfg)
    evaluate, _ = _scripted([9.0, 4.0, 5.0, 6.0])
    tr.fit(tmp_path, progress=False, evaluate=evaluate)
    assert read_best(tmp_path) == {"step": 6, "fd": 4.0, "n": 1000, "sampler": "sde-dpm++", "steps": 20}
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000006", "step-00000012"]
    state = json.loads((tmp_path / "checkpoints" / "step-00000012" / "state.json").read_text())
    assert state["best"]["step"] == 6  # a resumed run knows the best so far


def test_save_checkpoint_keeps_the_best_and_writes_best_json_after_it(tmp_path):
    net = torch.nn.Linear(2, 2)
    best = {"step": 1, "fd": 3.0}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step=step, model=net, ema_model=net, keep=1, best=best)
    assert read_best(tmp_path)["step"] == 1
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000001", "step-00000003"]
