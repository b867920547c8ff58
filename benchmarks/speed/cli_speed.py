"""Training speed as users meet it: `ddpm train` against a plain diffusers loop, each in its own process.

    python -m benchmarks.speed.cli_speed                      # cifar10 preset, batch 8, 3 rounds
    python -m benchmarks.speed.cli_speed --rounds 5 --steps 40 --ddpm-env GLIBC_TUNABLES=

Each round runs, one after another (never at once), three fresh processes:

- ``python -m ddpm train --data DIR --preset cifar10 --batch-size 8 --steps S --log-every L`` on a folder
  of random 32x32 PNGs, with every default; its images/s are the ``img_per_s`` rows of ``metrics.csv``
  after the first (the first row holds the warm-up);
- the plain PyTorch loop a diffusers user writes (speed.py's ``DiffusersLoop``: UNet2DModel with the same
  architecture, Adam, MSE on eps, clipping, EMA) for S steps in fp32, and again under bf16 autocast,
  timed per L steps the same way.

The ratio of each round is ddpm's median row over the diffusers loop's median row in that round; the
report gives every round and the median of the rounds. ``--ddpm-env NAME=VALUE`` runs ddpm with an
extra environment variable, e.g. ``GLIBC_TUNABLES=`` (empty) leaves glibc's malloc at its defaults
(see ``ddpm/runtime.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import parse

SMOKE = {"preset": "tiny", "steps": 4, "log_every": 2, "rounds": 1, "images": 8}


def make_folder(path: Path, n: int, size: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path / f"{i:05d}.png")


def run_ddpm(args, data: Path, out: Path, env: dict) -> list:
    cmd = [sys.executable, "-m", "ddpm", "train", "--data", str(data), "--out", str(out), "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--log-every", str(args.log_every)]
    subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from benchmarks.quality.precision import read_metrics

    return read_metrics(out / "metrics.csv")["img_per_s"][1:].tolist()


def run_diffusers(args, precision: str) -> list:
    cmd = [sys.executable, "-m", "benchmarks.speed.cli_speed", "--child", precision, "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--log-every", str(args.log_every)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def child(args) -> None:
    """A diffusers loop alone in this process: images/s per --log-every steps, as ddpm's metrics.csv rows."""
    import torch

    from benchmarks.speed.speed import DiffusersLoop, build

    device = torch.device("cpu")
    _, unet, diffusion, shape = build(args.preset, args.batch_size, device, ours=False)
    step = DiffusersLoop(unet, diffusion, args.batch_size, shape, device, args.child == "bf16").step
    rows, t = [], time.perf_counter()
    for i in range(1, args.steps + 1):
        step()
        if i % args.log_every == 0:
            now = time.perf_counter()
            rows.append(args.log_every * args.batch_size / (now - t))
            t = now
    print(json.dumps(rows[1:]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=256, help="random PNGs in the training folder")
    ap.add_argument("--ddpm-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--diffusers", default="fp32,bf16",
                    help="the diffusers loops to run: fp32, bf16 or both (on a CPU without native bf16, such as "
                         "an AVX2 one, bf16 is emulated and many times slower: compare fp32 with fp32 there)")
    ap.add_argument("--child", choices=("fp32", "bf16"), help=argparse.SUPPRESS)
    args = parse(ap, SMOKE)
    if args.child:
        child(args)
        return 0
    if args.steps < 2 * args.log_every:
        ap.error("--steps must be at least twice --log-every (the first row is the warm-up)")
    env = dict(kv.split("=", 1) for kv in args.ddpm_env)
    from ddpm.config import PRESETS

    size = PRESETS[args.preset].model.image_size
    rounds = []
    sides = [p.strip() for p in args.diffusers.split(",") if p.strip()]
    if not sides or set(sides) - {"fp32", "bf16"}:
        ap.error(f"--diffusers: fp32, bf16 or both, got {args.diffusers!r}")
    from ddpm.runtime import machine_class

    print(f"machine class: {machine_class(__import__('torch').device('cpu'))}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "images"
        make_folder(data, args.images, size)
        for r in range(args.rounds):
            got = {"ddpm": statistics.median(run_ddpm(args, data, Path(tmp) / f"run-{r}", env))}
            for side in sides:
                got[f"diffusers {side}"] = statistics.median(run_diffusers(args, side))
            rounds.append(got)
            theirs = {side: got[f"diffusers {side}"] for side in sides}
            print(f"round {r + 1}: ddpm {got['ddpm']:.2f} images/s, "
                  + ", ".join(f"diffusers {side} {v:.2f} (x {got['ddpm'] / v:.2f})" for side, v in theirs.items()),
                  flush=True)
    x = {side: statistics.median(g["ddpm"] / g[f"diffusers {side}"] for g in rounds) for side in sides}
    extra = f", ddpm env {' '.join(args.ddpm_env)}" if args.ddpm_env else ""
    print(f"median of {args.rounds} rounds: ddpm train is "
          + " and ".join(f"{v:.2f}x diffusers {side}" for side, v in x.items())
          + f" ({args.preset}, batch {args.batch_size}{extra})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": rounds, **{f"x_{side}": v for side, v in x.items()}}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
