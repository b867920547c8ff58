"""Kill a CLI training run with SIGKILL at random moments, resume it each time, and compare the result
with a run that was never interrupted: every tensor of the final checkpoint must be bit-identical.

    python scripts/kill_campaign.py --kills 25                # the long campaign reported in the README
    python scripts/kill_campaign.py --kills 3 --steps 12      # a short one (what the test suite runs)

The run checkpoints every 2 steps and draws a sample grid every 3, so the kills land during
training steps, during checkpoint writes and during sampling alike; the first kill comes before the
first checkpoint. Prints one line per kill (when, and the newest checkpoint it left) and the verdict.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = ["--data", "mnist", "--preset", "tiny", "--batch-size", "8", "--T", "50", "--log-every", "1",
        "--save-every", "2", "--sample-every", "3", "--n-samples", "4", "--keep", "2", "--quiet"]


def _cmd(out: Path, steps: int, resume: bool):
    cmd = [sys.executable, "-m", "ddpm", "train", "--out", str(out), "--steps", str(steps), *ARGS]
    return cmd + (["--resume"] if resume else [])


def _env():
    return {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _newest(out: Path) -> str:
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*")) if (out / "checkpoints").is_dir() else []
    return ckpts[-1] if ckpts else "none"


def _tensors(out: Path, steps: int):
    from safetensors.torch import load_file

    d = out / "checkpoints" / f"step-{steps:08d}"
    return {f"{name}/{k}": v for name in ("model", "ema", "optimizer")
            for k, v in load_file(str(d / f"{name}.safetensors")).items()}


def campaign(workdir: Path, kills: int, steps: int, seed: int = 0, log=print) -> dict:
    """Run the campaign in ``workdir``; returns {'kills', 'killed_at', 'identical', 'differing', 'runs'}.

    When a killed run has already reached the last step, it is compared with the straight run and a
    fresh one is started for the next kill; ``runs`` counts the killed runs compared.
    """
    rng = random.Random(seed)
    straight, killed = workdir / "straight", workdir / "killed"
    t0 = time.monotonic()
    subprocess.run(_cmd(straight, steps, False), check=True, env=_env(), capture_output=True)
    duration = time.monotonic() - t0  # a whole run, start-up included
    killed_at, differing, lineages = [], [], 1
    first = True  # the next start is a fresh run (no --resume)
    early = True  # the very first kill lands before the first checkpoint
    final = f"step-{steps:08d}"
    while len(killed_at) < kills:
        proc = subprocess.Popen(_cmd(killed, steps, not first), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        start = time.monotonic()
        if early:  # as soon as the run has written its config, before any checkpoint
            while not (killed / "config.json").is_file() and proc.poll() is None:
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(0.5, duration))
        delay = time.monotonic() - start
        if proc.poll() is not None:  # it ended before the kill
            err = proc.stderr.read().decode(errors="replace")
            if proc.returncode != 0:
                raise RuntimeError(f"the training run failed: {err[-2000:]}")
            shutil.rmtree(killed)  # it finished: start the killed run over, so every kill counts
            first = True
            continue
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        mid_write = any((killed / "checkpoints").glob(".tmp-*")) if (killed / "checkpoints").is_dir() else False
        killed_at.append((round(delay, 2), _newest(killed), mid_write))
        log(f"kill {len(killed_at):2d}: after {delay:5.2f} s, newest checkpoint {killed_at[-1][1]}"
            + ("  (during a checkpoint write: a .tmp folder was left)" if mid_write else ""))
        first = early = False
        if killed_at[-1][1] == final and len(killed_at) < kills:  # it had finished: check it, then start afresh
            differing += _compare(straight, killed, steps)
            lineages += 1
            shutil.rmtree(killed)
            first = True
    res = subprocess.run(_cmd(killed, steps, True), env=_env(), capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"the final resume failed: {res.stderr[-2000:]}")
    differing += _compare(straight, killed, steps)
    return {"kills": len(killed_at), "killed_at": killed_at, "identical": not differing, "differing": differing,
            "runs": lineages}


def _compare(straight: Path, killed: Path, steps: int) -> list:
    """Names of the tensors that differ between the two runs' final checkpoints (missing ones count)."""
    import torch

    a, b = _tensors(straight, steps), _tensors(killed, steps)
    return sorted(k for k in set(a) | set(b) if k not in a or k not in b or not torch.equal(a[k], b[k]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=25)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="ddpm-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    r = campaign(work, args.kills, args.steps, args.seed)
    before = sum(1 for _, c, _ in r["killed_at"] if c == "none")
    writes = sum(1 for _, _, w in r["killed_at"] if w)
    n = len(_tensors(work / "straight", args.steps))
    print(f"{r['kills']} SIGKILLs ({before} before the first checkpoint, {writes} during a checkpoint write) over "
          f"{r['runs']} killed-and-resumed runs "
          f"in {time.monotonic() - t:.0f} s; final checkpoints "
          f"{'BIT-IDENTICAL' if r['identical'] else 'DIFFERENT'} to the uninterrupted run "
          f"({n} tensors of model, EMA and Adam compared per run)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if r["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
