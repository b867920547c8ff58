"""The demo: plan to the budget, train, sample, continue and redraw; bad demo runs refused."""

import numpy as np
import torch

from ddpm import load_checkpoint
from ddpm.cli import main
from ddpm.config import make_run_config
from ddpm.demo import plan_demo


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_demo_writes_samples_and_continues(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(capsys, "demo", "--out", out, "--steps", "2", "--n", "4", "--sampling-steps", "3")
    assert code == 0, err
    assert np.load(out / "samples.npz")["arr_0"].shape == (4, 28, 28, 1)
    assert (out / "samples.png").is_file() and "samples.png" in stdout
    code, _, err = run(capsys, "demo", "--out", out, "--steps", "3", "--n", "2", "--sampling-steps", "3")
    assert code == 0 and "continuing" in err and load_checkpoint(out).step == 3
    code, _, err = run(capsys, "demo", "--out", out, "--n", "2", "--sampling-steps", "3", "--minutes", "1")
    assert code == 0, err  # no --steps: the run keeps its own total (3, set above)
    assert load_checkpoint(out).step == 3 and "has finished its 3 steps: drawing its samples again" in err


def test_demo_plan_fits_the_budget():
    """A new demo times this machine and trains as many steps as fit, never more than the recipe's."""
    cfg = make_run_config("mnist", train={"data": "mnist", "batch_size": 4, "steps": 50})
    plan = plan_demo(cfg, minutes=1e5 / 60, n=4, sampling_steps=10, device=torch.device("cpu"))
    assert plan.steps == 50 and 0 < plan.sampling_s < 60 and plan.train_s > 1e5 - 100
    plan = plan_demo(cfg, minutes=0.75, n=4, sampling_steps=10, device=torch.device("cpu"))
    assert 1 <= plan.steps <= 50 and 10 <= plan.train_s < 30
