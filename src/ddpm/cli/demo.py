"""The out-of-the-box demo: a class-conditional ``mnist`` model trained on the shipped digits within a time
budget, then "draw me a 7": a row of samples per digit, and the same network's unconditional samples.

A new demo first times this machine (a few training steps and sampling forwards) and plans as many steps
as fit in the budget, with the cosine learning-rate decay ending at that step, so the schedule always
runs to its end. At the end of the warm-up (before the decay begins, so nothing trained so far depends
on the total) it plans once more from the measured speed of its own steps, and records both plans in
``RUN/plan.json``. Run again, it continues a demo that was stopped early, or only draws the samples of
a finished one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from ..atomic import atomic_write_text
from ..config import PRESETS, RunConfig, make_run_config, with_classes
from ..data.sources import MNIST_CLASSES, load_data
from ..errors import DDPMError, Interrupted
from ..nn.unet import UNet
from ..run.directory import checkpoint_step, is_run, list_checkpoints, load_checkpoint, read_config, write_config
from ..runtime import autocast, machine_class, resolve_precision
from ..sampling.generation import sample_checkpoint
from ..sampling.guidance import class_labels
from ..sampling.outputs import write_images
from ..sampling.settings import SamplingSettings
from ..training.resuming import resume_config
from ..training.train import Trainer, train_run

__all__ = ["DemoPlan", "DemoResult", "plan_demo", "run_demo", "DEMO_DIR", "DEMO_SAMPLES", "DEMO_SAMPLER",
           "DEMO_MINUTES", "DEMO_MIN_STEPS", "DEMO_RECIPE"]

log = logging.getLogger(__name__)
DEMO_DIR = "ddpm-demo"
DEMO_SAMPLES = 100
# The default budget and the floor of steps, chosen by benchmarks/quality/demo_budget.py (BENCHMARKS.md):
# DEMO_MIN_STEPS of the recipe are the fewest measured to give >= 95% of the asked-for digit and an FD ratio <= 1.5
# at 100 samples (both seeds); a machine too slow to train them in DEMO_MINUTES trains them anyway, taking longer,
# and says so.
DEMO_MINUTES = 4.0
DEMO_MIN_STEPS = 700
DEMO_BATCH = 256  # images per sampling batch
DEMO_SAMPLER = ("sde-dpm++", 20)  # SDE-DPM-Solver++(2M), 20 network calls (BENCHMARKS.md: chosen by measurement)
DEMO_GUIDANCE = 1.0  # classifier-free guidance weight of the per-digit rows (BENCHMARKS.md)
DEMO_P_UNCOND = 0.1  # the share of training labels replaced by the null class
# The demo's recipe: the mnist preset, class-conditional, with min-SNR-5 loss weighting (Hang et al. 2023), which
# reaches the demo's quality in fewer steps (BENCHMARKS.md, "The demo's budget")
DEMO_RECIPE = {"data": "mnist", "class_cond": True, "p_uncond": DEMO_P_UNCOND, "snr_gamma": 5.0}


@dataclass
class DemoPlan:
    """Training steps that fit (None: not timed, the config decides), seconds left for training, and the
    estimated seconds of sampling; ``extended``: the budget was too short for DEMO_MIN_STEPS, so ``train_s`` was
    stretched to fit them."""

    steps: Optional[int]
    train_s: float
    sampling_s: float
    step_s: Optional[float] = None  # the timed seconds per training step
    extended: bool = False

    @property
    def minutes(self) -> float:
        """The whole demo as planned: start-up, training and sampling."""
        return (START_S + self.train_s + 1.25 * self.sampling_s) / 60


@dataclass
class DemoResult:
    run: Path
    step: int
    minutes: float
    status: str  # "new", "continued" or "finished" (a finished run only drew its samples again)
    files: Dict[str, Path]
    n: int = DEMO_SAMPLES

    def described(self):
        """(path, what it holds) of each file the demo wrote."""
        what = {"samples.png": f"{self.n} generated digits, a row each for 0 to 9",
                "samples.npz": "the same: uint8 arr_0 [N, H, W, C], their digits arr_1",
                "samples_unconditional.png": f"{self.n} digits of the same network with no digit asked for",
                "loss.png": f"the loss curve; metrics in {self.files['metrics.csv']}"}
        return [(self.files[name], text) for name, text in what.items()]


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


START_S = 15.0  # seconds the plan keeps for start-up and writing files


def plan_demo(cfg: RunConfig, *, minutes: float, n: int, sampling_steps: int, device,
              calibrate: bool = True, min_steps: int = DEMO_MIN_STEPS) -> DemoPlan:
    """What fits in ``minutes`` for the whole demo: times sampling forwards on this machine at the demo's batch
    sizes (guided samples run the conditional and the null halves in one batch of twice the size; then the
    unconditional ones) and, when ``calibrate``, training steps of a throw-away copy of the network; gives
    sampling 25% more than its estimate and START_S for start-up and files, and plans 97% of the training steps
    that fit, but never fewer than ``min_steps`` (the fewest that reach the demo's quality; at most the recipe's):
    a slower machine gets the time they need (``extended``)."""
    torch.manual_seed(cfg.train.seed)
    net = UNet(cfg.model).to(device)
    b = min(n, DEMO_BATCH)
    forward_s = sum(_time_forward(net, torch.randn(k, *cfg.model.shape, device=device),
                                  torch.zeros(k, dtype=torch.long, device=device), device) for k in (2 * b, b))
    sampling_s = math.ceil(n / DEMO_BATCH) * sampling_steps * forward_s
    train_s = minutes * 60 - START_S - 1.25 * sampling_s
    steps = step_s = None
    extended = False
    if calibrate:
        step_s = _time_train_step(cfg, net, device)
        train_s -= 16 * step_s  # the time this calibration took
        # a 3% margin for jitter; if the machine slows down more, the time limit stops training near the
        # end of the cosine decay, where the learning rate is already small
        steps = min(cfg.train.steps, int(0.97 * train_s / step_s))
        floor = min(min_steps, cfg.train.steps)
        if steps < floor:
            steps, train_s, extended = floor, max(train_s, floor * step_s / 0.97), True
    elif train_s < 10:
        raise DDPMError(f"--minutes {minutes:g} leaves no time to train on this machine: drawing the samples "
                        f"alone takes about {sampling_s:.0f} s; give more minutes, or fewer --n / --sampling-steps")
    return DemoPlan(steps, train_s, sampling_s, step_s, extended)


def _demo_config(run: Path, plan: DemoPlan, steps: Optional[int]) -> RunConfig:
    # a plan stretched to the floor of steps trains them all: no time limit cuts it short
    over = {"time_limit": 0.0 if plan.extended else plan.train_s / 60, "steps": steps or plan.steps}
    if is_run(run):
        return resume_config(read_config(run), over, {})
    return with_classes(make_run_config("mnist", train={**DEMO_RECIPE, **over}), MNIST_CLASSES)


class _Replan:
    """Plans the demo's total once more at the end of the warm-up, from the measured time of its own steps (after
    the first few, which are slow), so that a machine busy while the demo timed itself does not shrink the
    run; rewrites config.json and records the plan."""

    def __init__(self, run: Path, cfg: RunConfig, deadline: float, record: Dict[str, Any]):
        self.run, self.cfg, self.deadline, self.record = run, cfg, deadline, record
        self.most = PRESETS["mnist"].train["steps"]
        self.floor = min(DEMO_MIN_STEPS, self.most)
        # at the end of the warm-up (or before the first plan's end), timing from the 5th step on
        self.at = max(2, min(cfg.train.warmup, cfg.train.steps - 1))
        self.start = max(1, min(5, self.at // 2))
        self.t0: Optional[float] = None
        self.s0: Optional[int] = None

    def __call__(self, trainer: Trainer) -> None:
        if self.t0 is None and trainer.step >= self.start:
            self.t0, self.s0 = time.monotonic(), trainer.step
        if trainer.step != self.at or self.t0 is None or self.s0 is None or trainer.step == self.s0:
            return
        step_s = (time.monotonic() - self.t0) / (trainer.step - self.s0)
        fit = min(self.most, trainer.step + int(0.97 * (self.deadline - time.monotonic()) / step_s))
        steps = max(trainer.step + 1, self.floor, fit)
        trainer.set_steps(steps)
        if steps > fit:  # the floor: trained whole, however long it takes
            trainer.config = dataclasses.replace(trainer.config, time_limit=0.0)
        write_config(self.run, dataclasses.replace(self.cfg, train=trainer.config))
        self.record.update(replanned_at_step=trainer.step, measured_step_s=round(step_s, 4), steps=steps,
                           extended=steps > fit)
        atomic_write_text(self.run / "plan.json", json.dumps(self.record, indent=2) + "\n")
        if steps > fit:
            log.info("at step %d: %.3f s per step measured; the %d steps the demo needs take %s more than its "
                     "budget", trainer.step, step_s, steps, _minutes((steps - fit) * step_s))
        else:
            log.info("at step %d: %.3f s per step measured, so %d steps fit (the first plan: %d)", trainer.step,
                     step_s, steps, self.record["planned_steps"])


def run_demo(out: Path = Path(DEMO_DIR), *, minutes: float = DEMO_MINUTES, steps: Optional[int] = None,
             n: int = DEMO_SAMPLES, sampling_steps: int = DEMO_SAMPLER[1], device=None,
             progress: bool = True) -> DemoResult:
    """Train (or continue) the demo run in ``out`` within ``minutes``, then write ``samples.png`` (a row per
    digit, 0 at the top), ``samples.npz`` (``arr_0`` images, ``arr_1`` their digits) and
    ``samples_unconditional.png`` there. ``steps`` fixes the number of training steps instead of timing the
    machine."""
    run, t0 = Path(out), time.monotonic()
    device = device or torch.device("cpu")
    if not minutes > 0:
        raise DDPMError(f"--minutes must be positive, got {minutes:g}")
    if n % 10:
        raise DDPMError(f"--n {n}: the demo draws equal numbers of each digit, so --n must be a multiple of 10")
    resume = is_run(run)
    if not resume and run.exists() and (not run.is_dir() or any(run.iterdir())):
        raise DDPMError(f"{run} exists and is not a ddpm run; choose another --out")
    if resume and (read_config(run).preset, read_config(run).train.class_cond) != ("mnist", True):
        raise DDPMError(f"{run} is a run of preset {read_config(run).preset!r}, not a demo run (a class-conditional "
                        "'mnist' run); choose another --out")
    base = with_classes(make_run_config("mnist", train={**DEMO_RECIPE, "steps": steps}),
                        MNIST_CLASSES)
    precision = resolve_precision(base.train.precision, device, training=True)
    log.info("this machine: %s, %s; training in %s", machine_class(device), _threads(device),
             {"bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(precision, precision))
    plan = plan_demo(base, minutes=minutes, n=n, sampling_steps=sampling_steps, device=device,
                     calibrate=not resume and not steps)
    if plan.extended:
        log.info("at %.3f s per training step the %d steps the demo needs for its quality do not fit in --minutes "
                 "%g: it trains them anyway and takes about %s", plan.step_s, plan.steps, minutes,
                 _minutes(plan.minutes * 60))
    elif plan.steps is not None:
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
    replan = None
    if plan.steps is not None and done < cfg.train.warmup:
        record = {"minutes": minutes, "machine": machine_class(device), "precision": precision,
                  "timed_step_s": None if plan.step_s is None else round(plan.step_s, 4), "planned_steps": plan.steps,
                  "sampling_s_estimate": round(plan.sampling_s, 1), "extended": plan.extended}
        replan = _Replan(run, cfg, time.monotonic() + plan.train_s, record)
    res = train_run(run, cfg, device=device, on_step=replan, progress=progress)
    if res.reason.startswith("SIG"):  # SIGINT, SIGTERM, SIGUSR1
        raise Interrupted(f"stopped at step {res.step} ({res.reason}) before drawing samples; the checkpoint is kept. "
                          f"Continue with: ddpm demo --out {run}", res.reason)
    return _draw(run, n, sampling_steps, device, t0, status, progress)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _threads(device) -> str:
    if device.type != "cpu":
        return "1 GPU"
    n = torch.get_num_threads()
    return f"{n} CPU thread{'s' if n != 1 else ''}"


def _draw(run: Path, n: int, sampling_steps: int, device, t0: float, status: str, progress: bool = True) -> DemoResult:
    """The demo's pictures: guided samples of every digit, a row each, and unconditional ones."""
    ckpt = load_checkpoint(run, map_location=device)
    settings = SamplingSettings(DEMO_SAMPLER[0], steps=min(sampling_steps, ckpt.diffusion.T), seed=0, n=n,
                                batch_size=DEMO_BATCH, device=device, precision="auto", progress=progress)
    labels = class_labels("all", ckpt.config.classes, n)
    files = {name: run / name for name in ("samples.png", "samples.npz", "samples_unconditional.png", "loss.png",
                                           "metrics.csv")}
    images = sample_checkpoint(ckpt, settings.replace(guidance=DEMO_GUIDANCE), labels=labels)
    write_images(images, files["samples.png"], nrow=n // 10)
    write_images(images, files["samples.npz"], labels=labels)
    write_images(sample_checkpoint(ckpt, settings), files["samples_unconditional.png"])
    return DemoResult(run, ckpt.step, (time.monotonic() - t0) / 60, status, files, n)
