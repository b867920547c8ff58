"""A against B: training and sampling speed of a git revision against the working tree, interleaved.

    python -m benchmarks.speed.ab HEAD                 # before committing a change to a hot path
    python -m benchmarks.speed.ab e6124ae --rounds 7   # against an older commit
    python -m benchmarks.speed.ab HEAD --what train --train-args "--objective hybrid --t-sampling importance"

Runs before committing any change to unet, trainer, batches, sampling, rng, runtime or diffusion. The revision is
checked out into a temporary git worktree and run from there (``PYTHONPATH=<worktree>/src``, the same venv), the
working tree from a copy of its ``src`` taken at the start. Each round runs, one process at a time, in alternating
order:

- train: ``python -m ddpm train --data <256 random 32x32 PNGs> --preset P --batch-size B --steps S
  --log-every 1`` (every other setting the preset's); its figure is the median ``img_per_s`` of metrics.csv
  after the first two rows (start-up);
- sample: ``python -m ddpm sample --run <that run> --n N --sampler ddim --steps K`` timed by the wall clock
  (start-up included, as a user meets it), from the run that side just trained.

It prints each round's ratio (working tree over revision: > 1 means the working tree is faster) and the median
with its range, and writes the figures as JSON with ``--json``. Timings on a shared machine are noisy: read the
spread, and never run two benchmarks at once.
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

from benchmarks.common import ROOT, parse

SMOKE = {"rev": "HEAD", "rounds": 1, "preset": "tiny", "steps": 4, "n": 4, "sampling_steps": 2}


def worktree(rev: str, where: Path) -> Path:
    path = where / "rev"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return path


def env_for(src: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(src), "DDPM_CACHE_DIR": str(cache)}


def img_per_s(metrics: Path) -> list:
    import csv

    with open(metrics) as f:
        return [float(r["img_per_s"]) for r in csv.DictReader(f) if r.get("img_per_s")]


def train(env: dict, data: Path, out: Path, args) -> float:
    cmd = [sys.executable, "-m", "ddpm", "train", "--data", str(data), "--out", str(out), "--preset", args.preset,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps), "--log-every", "1", "--quiet",
           *args.train_args.split()]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return statistics.median(img_per_s(out / "metrics.csv")[2:])


def sample(env: dict, run: Path, out: Path, args) -> float:
    cmd = [sys.executable, "-m", "ddpm", "sample", "--run", str(run), "--n", str(args.n), "--sampler", "ddim",
           "--steps", str(args.sampling_steps), "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def spread(ratios) -> str:
    return f"median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} rounds)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev", nargs="?", help="the git revision to compare the working tree against (e.g. HEAD, e6124ae)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--n", type=int, default=16, help="images per sampling job")
    ap.add_argument("--sampling-steps", type=int, default=20)
    ap.add_argument("--what", default="train,sample", help="train, sample or both")
    ap.add_argument("--train-args", default="", help="more train flags, e.g. '--objective hybrid --var-type "
                                                       "learned-range --t-sampling importance'")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = parse(ap, SMOKE, required=("rev",))
    what = set(args.what.split(","))
    from benchmarks.speed.cli_speed import make_folder

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        import shutil

        shutil.copytree(ROOT / "src", tmp / "tree-src")  # a snapshot: edits made while it runs change nothing
        sides = {"rev": env_for(worktree(args.rev, tmp) / "src", tmp / "cache-rev"),
                 "tree": env_for(tmp / "tree-src", tmp / "cache-tree")}
        try:
            make_folder(tmp / "data", 256, 32)
            figures = {side: {"train_img_s": [], "sample_s": []} for side in sides}
            for k in range(args.rounds):
                order = ["rev", "tree"] if k % 2 == 0 else ["tree", "rev"]
                for side in order:
                    run = tmp / f"{side}-{k}"
                    if "train" in what or "sample" in what:
                        img_s = train(sides[side], tmp / "data", run, args)
                        if "train" in what:
                            figures[side]["train_img_s"].append(img_s)
                for side in order:
                    if "sample" in what:
                        figures[side]["sample_s"].append(sample(sides[side], tmp / f"{side}-{k}",
                                                                tmp / f"{side}-{k}.npz", args))
                line = [f"round {k + 1}:"]
                if "train" in what:
                    line.append(f"train {figures['rev']['train_img_s'][-1]:.2f} -> "
                                f"{figures['tree']['train_img_s'][-1]:.2f} img/s")
                if "sample" in what:
                    line.append(f"sample {figures['rev']['sample_s'][-1]:.2f} -> "
                                f"{figures['tree']['sample_s'][-1]:.2f} s")
                print(" ".join(line), flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tmp / "rev")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"{args.rev} -> working tree ({args.preset}, batch {args.batch_size}, {args.steps} steps; sampling "
          f"{args.n} images, ddim {args.sampling_steps} steps):")
    result = {"rev": args.rev, "settings": vars(args), "figures": figures}
    if "train" in what:
        r = [b / a for a, b in zip(figures["rev"]["train_img_s"], figures["tree"]["train_img_s"])]
        print(f"  training img/s ratio (tree / rev): {spread(r)}")
        result["train_ratio"] = r
    if "sample" in what:
        r = [a / b for a, b in zip(figures["rev"]["sample_s"], figures["tree"]["sample_s"])]
        print(f"  sampling speed ratio (rev seconds / tree seconds): {spread(r)}")
        result["sample_ratio"] = r
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
