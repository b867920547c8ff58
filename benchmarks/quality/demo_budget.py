"""The demo's quality against its training budget: the shortest that still gives what the README promises.

    python -m benchmarks.quality.demo_budget --steps 600,1000,1500,2400 --seeds 0,1 --json budget.json
    python -m benchmarks.quality.demo_budget --steps 600 --set lr=3e-3 --set batch_size=32 --guidance 1,2

For each number of steps and seed, trains the demo's recipe (``ddpm.cli.demo.DEMO_RECIPE``: the class-conditional
mnist preset, p_uncond 0.1, min-SNR-5, EMA warm-up, cosine decay over exactly those steps: a demo with a shorter
budget plans fewer steps and its decay follows), then draws the demo's 100 samples (ten of each digit, sde-dpm++ 20
calls, at each --guidance weight)
and judges them as demo_quality.py does: the share labelled as the asked-for digit with confidence >= 0.9, and
the FD ratio. ``--set FIELD=VALUE`` changes a field of the training config (``model.FIELD=VALUE`` of the network,
``diffusion.FIELD=VALUE`` of the diffusion) to try another recipe. Prints a row per run and weight with the
training seconds and seconds per step (one run at a time: never beside another benchmark).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import parse


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def overrides(pairs) -> dict:
    """``["lr=3e-3", "model.ch=24"]`` -> ``{"train": {"lr": 0.003}, "model": {"ch": 24}, "diffusion": {}}``."""
    out = {"train": {}, "model": {}, "diffusion": {}}
    for pair in pairs:
        key, _, value = pair.partition("=")
        part, _, name = key.rpartition(".")
        out[part or "train"][name] = _value(value)
    return out


def one(steps: int, seed: int, root: Path, guidance=(1.0,), sets=None, precision: str = "auto") -> list:
    from benchmarks.quality.demo_quality import judge
    from ddpm.cli.demo import DEMO_RECIPE, DEMO_SAMPLER
    from ddpm.config import make_run_config, with_classes
    from ddpm.data.sources import MNIST_CLASSES
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.generation import sample_checkpoint
    from ddpm.sampling.guidance import class_labels
    from ddpm.sampling.settings import SamplingSettings
    from ddpm.training.train import train_run

    sets = sets or overrides([])
    run = root / f"s{steps}-{seed}-{time.time_ns()}"
    train = {**DEMO_RECIPE, "steps": steps, "seed": seed, "save_every": steps, "precision": precision,
             **sets["train"]}
    cfg = with_classes(make_run_config("mnist", train=train, model=sets["model"], diffusion=sets["diffusion"]),
                       MNIST_CLASSES)
    t0 = time.perf_counter()
    train_run(run, cfg, device=torch.device("cpu"), progress=False)
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(run)
    labels = class_labels("all", ckpt.config.classes, 100)
    rows = []
    for w in guidance:
        images = sample_checkpoint(ckpt, SamplingSettings(*DEMO_SAMPLER, guidance=w, seed=seed, n=100,
                                                          precision=precision, progress=False), labels=labels)
        r = judge(images.permute(0, 2, 3, 1).numpy(), labels.numpy())
        rows.append({"steps": steps, "seed": seed, "guidance": w, "train_s": train_s, "step_s": train_s / steps,
                     "asked_for_digit": r["confident"], "fd_ratio": r["fd_ratio"], "all_digits": r["all_digits"]})
    return rows


SMOKE = {"steps": "2", "seeds": "0", "set": ["model.ch=8", "model.num_groups=2", "batch_size=8", "diffusion.T=50"]}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="600,1000,1500,2400")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--guidance", default="1", help="comma-separated guidance weights to sample each model with")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="a recipe change: a training config field, or model.FIELD / diffusion.FIELD")
    ap.add_argument("--precision", default="auto", help="training and sampling precision (auto: as the demo)")
    ap.add_argument("--json", default=None)
    args = parse(ap, SMOKE)
    from ddpm.runtime import keep_freed_memory

    keep_freed_memory()  # as the ddpm command does
    sets, rows = overrides(args.set), []
    print(f"recipe changes: {sets}; CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"precision {args.precision}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for steps in map(int, args.steps.split(",")):
            for seed in map(int, args.seeds.split(",")):
                for r in one(steps, seed, Path(tmp), [float(w) for w in args.guidance.split(",")], sets,
                             args.precision):
                    rows.append(r)
                    print(f"steps {steps:5d} seed {seed} guidance {r['guidance']:g}: {r['asked_for_digit']:.0%} "
                          f"asked-for digit, FD ratio {r['fd_ratio']:.2f}, every digit {r['all_digits']}; trained in "
                          f"{r['train_s']:.0f} s ({r['step_s']:.3f} s/step)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"sets": sets, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
