"""The demo's quality against its training budget: the shortest that still gives what the README promises.

    python benchmarks/demo_budget.py --steps 600,1000,1500,2400 --seeds 0,1 --json budget.json

For each number of steps and seed, trains the demo's recipe (class-conditional mnist preset, p_uncond 0.1, EMA
warm-up, cosine decay over exactly those steps: a demo with a shorter budget plans fewer steps and its decay
follows), then draws the demo's 100 samples (ten of each digit, guidance 1, sde-dpm++ 20 calls) and judges them as
demo_quality.py does: the share labelled as the asked-for digit with confidence >= 0.9, and the FD ratio. Prints
a row per run with the training seconds and seconds per step (one run at a time: never beside another benchmark).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one(steps: int, seed: int, root: Path) -> dict:
    from demo_quality import judge

    from ddpm.sampling.guidance import class_labels
    from ddpm.config import make_run_config, with_classes
    from ddpm.data.sources import MNIST_CLASSES
    from ddpm.cli.demo import DEMO_GUIDANCE, DEMO_P_UNCOND, DEMO_SAMPLER
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.samplers import sample_checkpoint
    from ddpm.training.train import train_run

    run = root / f"s{steps}-{seed}"
    cfg = with_classes(make_run_config("mnist", train={"data": "mnist", "class_cond": True, "p_uncond": DEMO_P_UNCOND,
                                                       "steps": steps, "seed": seed, "save_every": steps}),
                       MNIST_CLASSES)
    t0 = time.perf_counter()
    train_run(run, cfg, device=torch.device("cpu"), progress=False)
    train_s = time.perf_counter() - t0
    ckpt = load_checkpoint(run)
    labels = class_labels("all", ckpt.config.classes, 100)
    images = sample_checkpoint(ckpt, 100, labels=labels, guidance=DEMO_GUIDANCE, sampler=DEMO_SAMPLER[0],
                               steps=DEMO_SAMPLER[1], seed=seed, precision="auto", progress=False)
    r = judge(images.permute(0, 2, 3, 1).numpy(), labels.numpy())
    return {"steps": steps, "seed": seed, "train_s": train_s, "step_s": train_s / steps,
            "asked_for_digit": r["confident"], "fd_ratio": r["fd_ratio"], "all_digits": r["all_digits"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="600,1000,1500,2400")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for steps in map(int, args.steps.split(",")):
            for seed in map(int, args.seeds.split(",")):
                r = one(steps, seed, Path(tmp))
                rows.append(r)
                print(f"steps {steps:5d} seed {seed}: {r['asked_for_digit']:.0%} asked-for digit, FD ratio "
                      f"{r['fd_ratio']:.2f}, every digit {r['all_digits']}; trained in {r['train_s']:.0f} s "
                      f"({r['step_s']:.3f} s/step)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
