"""The demo: plan to the budget, train, sample, continue and redraw; bad demo runs refused."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import load_checkpoint
from ddpm.cli.commands import main
from ddpm.cli.demo import plan_demo
from ddpm.config import make_run_config, with_classes


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_writes_samples_and_continues(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--out", out, "--steps", "2", "--n", "20", "--sampling-steps", "3")
    assert code == 0, err
    with np.load(out / "samples.npz") as z:
        assert z["arr_0"].shape == (20, 28, 28, 1) and z["arr_1"].tolist() == [d for d in range(10) for _ in range(2)]
    grid = Image.open(out / "samples.png")
    assert grid.size == (2 * (2 + 2 * 30), 2 * (2 + 10 * 30))  # ten rows, one per digit
    assert Image.open(out / "samples_unconditional.png").size[0] > 28
    assert "samples.png" in stdout and "samples_unconditional.png" in stdout
    cfg = load_checkpoint(out).config
    assert cfg.train.class_cond and cfg.classes == tuple("0123456789")
    code, _, err = run(capsys, "demo", "--out", out, "--steps", "3", "--n", "10", "--sampling-steps", "3")
    assert code == 0 and "continuing" in err and load_checkpoint(out).step == 3
    code, _, err = run(capsys, "demo", "--out", out, "--n", "10", "--sampling-steps", "3", "--minutes", "1")
    assert code == 0, err  # no --steps: the run keeps its own total (3, set above)
    assert load_checkpoint(out).step == 3 and "has finished its 3 steps: drawing its samples again" in err


def _machine(monkeypatch, forward_s: float, step_s: float):
    """A machine whose network forward and training step take these seconds (no timing: the plan is arithmetic)."""
    import ddpm.cli.demo as demo

    monkeypatch.setattr(demo, "_time_forward", lambda *a, **k: forward_s)
    monkeypatch.setattr(demo, "_time_train_step", lambda *a, **k: step_s)


def test_demo_plan_fits_the_budget(monkeypatch):
    """A new demo times this machine and trains as many steps as fit, never more than the recipe's."""
    from ddpm.cli.demo import START_S

    cfg = with_classes(make_run_config("mnist", train={"data": "mnist", "steps": 5000, "class_cond": True}),
                       tuple("0123456789"))
    _machine(monkeypatch, forward_s=0.01, step_s=0.1)
    plan = plan_demo(cfg, minutes=4, n=100, sampling_steps=20, device=torch.device("cpu"), min_steps=800)
    sampling = 20 * 2 * 0.01  # one batch each of guided (2x) and unconditional samples, 20 calls
    assert plan.sampling_s == pytest.approx(sampling)
    assert plan.train_s == pytest.approx(240 - START_S - 1.25 * sampling - 16 * 0.1)
    assert plan.steps == int(0.97 * plan.train_s / 0.1) and not plan.extended
    plan = plan_demo(cfg, minutes=1e5 / 60, n=10, sampling_steps=10, device=torch.device("cpu"))
    assert plan.steps == 5000  # the recipe's most, however long the budget


def test_a_slow_machine_gets_the_steps_the_demo_needs_and_is_told(monkeypatch):
    from ddpm.cli.demo import START_S

    cfg = with_classes(make_run_config("mnist", train={"data": "mnist", "class_cond": True}), tuple("0123456789"))
    _machine(monkeypatch, forward_s=0.05, step_s=0.5)  # 240 s fit 440 steps
    plan = plan_demo(cfg, minutes=4, n=100, sampling_steps=20, device=torch.device("cpu"), min_steps=800)
    assert plan.extended and plan.steps == 800 and plan.train_s == pytest.approx(800 * 0.5 / 0.97)
    assert plan.minutes == pytest.approx((START_S + plan.train_s + 1.25 * plan.sampling_s) / 60)


def test_the_demo_plans_again_after_the_warm_up(tmp_path, monkeypatch, capsys):
    """A machine that was busy while the demo timed itself: the first plan is far too small (here: forced to 8
    steps); at the end of the warm-up the demo measures its own steps and plans again, records both plans, and
    trains to the new total, the config saying so."""
    import ddpm.cli.demo as demo

    real = demo.plan_demo

    def busy_at_first(cfg, **kw):
        return dataclasses.replace(real(cfg, **kw), steps=8)

    monkeypatch.setattr(demo, "plan_demo", busy_at_first)
    _machine(monkeypatch, forward_s=0.001, step_s=0.01)  # the first plan's timing (the replan measures for real)
    monkeypatch.setitem(demo.PRESETS["mnist"].train, "warmup", 6)  # the recipe's warm-up, shortened for the test
    monkeypatch.setitem(demo.PRESETS["mnist"].train, "steps", 20)  # and its most steps
    out = tmp_path / "demo"
    code, _, err = run(capsys, "demo", "--out", out, "--n", "10", "--sampling-steps", "2", "--minutes", "3")
    assert code == 0, err
    plan = json.loads((out / "plan.json").read_text())
    assert plan["planned_steps"] == 8 and plan["replanned_at_step"] == 6 and plan["steps"] == 20
    assert "at step 6:" in err and "so 20 steps fit (the first plan: 8)" in err
    assert load_checkpoint(out).step == 20 and load_checkpoint(out).config.train.steps == 20


def test_a_fixed_demo_whose_sampling_alone_overruns_the_budget_is_refused(monkeypatch):
    from ddpm.errors import DDPMError

    cfg = with_classes(make_run_config("mnist", train={"data": "mnist", "steps": 5, "class_cond": True}),
                       tuple("0123456789"))
    _machine(monkeypatch, forward_s=1.0, step_s=0.1)  # sampling 100 digits: 20 calls x 2 batches x 1 s
    with pytest.raises(DDPMError, match="--minutes 0.3 leaves no time to train on this machine"):
        plan_demo(cfg, minutes=0.3, n=100, sampling_steps=20, device=torch.device("cpu"), calibrate=False)
