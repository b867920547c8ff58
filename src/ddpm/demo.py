"""The out-of-the-box demo: train the ``mnist`` preset on the shipped digits within a time budget, then sample.

A new demo first times this machine (a few training steps and sampling forwards), then trains as many
steps as fit in the budget, with the cosine learning-rate decay ending at that step, so the schedule
always runs to its end. Run again, it continues a demo that was stopped early, or only draws the
samples of a finished one.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

from .config import PRESETS, RunConfig, make_run_config, resume_config
from .data import load_data
from .errors import DDPMError
from .outputs import write_images
from .run import checkpoint_step, is_run, list_checkpoints, load_checkpoint, read_config
from .runtime import autocast
from .sampling import sample_checkpoint
from .train import Trainer, train_run
from .unet import UNet

__all__ = ["DemoPlan", "DemoResult", "plan_demo", "run_demo", "DEMO_DIR", "DEMO_SAMPLES", "DEMO_SAMPLER"]

log = logging.getLogger(__name__)
DEMO_DIR = "ddpm-demo"
DEMO_SAMPLES = 100
DEMO_BATCH = 256  # images per sampling batch
DEMO_SAMPLER = ("respaced", 500)  # Algorithm 2 over 500 of the 1000 steps: the best measured (BENCHMARKS.md)


@dataclass
class DemoPlan:
    """Training steps that fit (None: not timed, the config decides), seconds left for training, and the
    estimated seconds of sampling."""

    steps: Optional[int]
    train_s: float
    sampling_s: float


@dataclass
class DemoResult:
    run: Path
    step: int
    minutes: float
    status: str  # "new", "continued" or "finished" (a finished run only drew its samples again)
    files: Dict[str, Path]


def _time_forward(net, x, t, device, calls: int = 7) -> float:
    """Median seconds of the last 5 of ``calls`` forwards (the first calls pick kernels and allocate)."""
    times = []
    with torch.no_grad(), autocast(device, "auto"):
        for _ in range(calls):
            t0 = time.monotonic()
            net(x, t)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.monotonic() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]


def _time_train_step(cfg: RunConfig, net, device) -> float:
    data = load_data(cfg.train.data, channels=cfg.model.in_channels, image_size=cfg.model.image_size)
    trainer = Trainer(net, cfg.diffusion.build(), data, cfg.train, device=device)
    for _ in range(3):
        trainer.train_step()
    t0 = time.monotonic()
    for _ in range(10):
        trainer.train_step()
    return (time.monotonic() - t0) / 10


def plan_demo(cfg: RunConfig, *, minutes: float, n: int, sampling_steps: int, device,
              calibrate: bool = True) -> DemoPlan:
    """What fits in ``minutes`` for the whole demo: times sampling forwards at the demo's batch size (and, when
    ``calibrate``, training steps of a throw-away copy of the network) on this machine, gives sampling 25% more
    than its estimate and 15 s for start-up and files, and plans 97% of the training steps that fit."""
    torch.manual_seed(cfg.train.seed)
    net = UNet(cfg.model).to(device)
    c, s, b = cfg.model.in_channels, cfg.model.image_size, min(n, DEMO_BATCH)
    forward_s = _time_forward(net, torch.randn(b, c, s, s, device=device), torch.zeros(b, dtype=torch.long,
                                                                                         device=device), device)
    sampling_s = math.ceil(n / DEMO_BATCH) * sampling_steps * forward_s
    train_s = minutes * 60 - 15 - 1.25 * sampling_s
    steps = None
    if calibrate and train_s >= 10:
        step_s = _time_train_step(cfg, net, device)
        train_s -= 16 * step_s  # the time this calibration took
        # a 3% margin for jitter; if the machine slows down more, the time limit stops training near the
        # end of the cosine decay, where the learning rate is already small
        steps = min(cfg.train.steps, int(0.97 * train_s / step_s))
    if train_s < 10 or (steps is not None and steps < 1):
        raise DDPMError(f"--minutes {minutes:g} leaves no time to train on this machine: drawing the samples "
                        f"alone takes about {sampling_s:.0f} s; give more minutes, or fewer --n / --sampling-steps")
    return DemoPlan(steps, train_s, sampling_s)


def _demo_config(run: Path, plan: DemoPlan, steps: Optional[int]) -> RunConfig:
    over = {"time_limit": plan.train_s / 60, "steps": steps or plan.steps}
    if is_run(run):
        return resume_config(read_config(run), over, {})
    return make_run_config("mnist", train={"data": "mnist", **over})


def run_demo(out: Path = Path(DEMO_DIR), *, minutes: float = 9.5, steps: Optional[int] = None,
             n: int = DEMO_SAMPLES, sampling_steps: int = DEMO_SAMPLER[1], device=None) -> DemoResult:
    """Train (or continue) the demo run in ``out`` within ``minutes``, then write ``samples.png`` and
    ``samples.npz`` there. ``steps`` fixes the number of training steps instead of timing the machine."""
    run, t0 = Path(out), time.monotonic()
    device = device or torch.device("cpu")
    if not minutes > 0:
        raise DDPMError(f"--minutes must be positive, got {minutes:g}")
    resume = is_run(run)
    if not resume and run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise DDPMError(f"{run} exists and is not a ddpm run; choose another --out")
    if resume and read_config(run).preset != "mnist":
        raise DDPMError(f"{run} is a run of preset {read_config(run).preset!r}, not a demo run (preset 'mnist'); "
                        "choose another --out")
    base = make_run_config("mnist", train={"data": "mnist", "steps": steps})
    plan = plan_demo(base, minutes=minutes, n=n, sampling_steps=sampling_steps, device=device,
                     calibrate=not resume and not steps)
    if plan.steps is not None:
        log.info("this machine fits %d training steps (the recipe's most: %d) in %.1f min, leaving about %.0f s "
                 "for sampling within --minutes %g", plan.steps, PRESETS["mnist"].train["steps"], plan.train_s / 60,
                 plan.sampling_s, minutes)
    cfg = _demo_config(run, plan, steps)
    done = max((checkpoint_step(p) for p in list_checkpoints(run)), default=0)
    status = "finished" if resume and done >= cfg.train.steps else "continued" if resume else "new"
    if status == "finished":
        log.info("the demo run in %s has finished its %d steps: drawing its samples again", run, cfg.train.steps)
    elif status == "continued":
        log.info("continuing the demo run in %s from step %d of %d", run, done, cfg.train.steps)
    train_run(run, cfg, device=device)
    ckpt = load_checkpoint(run, map_location=device)
    images = sample_checkpoint(ckpt, n, sampler=DEMO_SAMPLER[0], steps=min(sampling_steps, ckpt.diffusion.T),
                               seed=0, batch_size=DEMO_BATCH, device=device, precision="auto")
    files = {"samples.png": run / "samples.png", "samples.npz": run / "samples.npz", "loss.png": run / "loss.png",
             "metrics.csv": run / "metrics.csv"}
    write_images(images, files["samples.png"])
    write_images(images, files["samples.npz"])
    return DemoResult(run, ckpt.step, (time.monotonic() - t0) / 60, status, files)
