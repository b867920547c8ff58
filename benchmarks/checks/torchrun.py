"""Worker-count invariance, checked from outside: `ddpm train` under torchrun against one process.

    python -m benchmarks.checks.torchrun                          # mnist preset, 2 processes, 20 steps
    python -m benchmarks.checks.torchrun --nproc 2 --steps 40 --batch-size 64 --grad-accum 2

Runs the same `ddpm train` command twice in fresh directories, as one process and as
`torchrun --standalone --nproc_per_node=N` (gloo on CPU), both in fp32 (bf16 rounding would depend on how
the batch is split), then compares the final weights and EMA weights tensor by tensor. It prints the
largest difference next to how far training moved the weights (so a tiny difference means something)
and exits 1 if the difference exceeds --tol and also what the same 1-process command gives on one thread
instead of all (reduction order alone; over tens of steps Adam lets it grow past 1e-5). The network must have no
dropout (the mnist and tiny
presets): t, eps and flips are fixed per example by the seed, the step and the example's index, dropout
masks are not.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import parse


def train(out: Path, args, nproc: int, steps: int, threads: int = 0) -> float:
    cmd = ["-m", "ddpm", "train", "--out", str(out), "--data", args.data, "--preset", args.preset,
           "--steps", str(steps), "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
           "--precision", "fp32", "--seed", str(args.seed), "--quiet"]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *cmd]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or max(1, (os.cpu_count() or 1) // nproc))}
    t = time.perf_counter()
    res = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env)
    if res.returncode:
        sys.exit(f"{'torchrun' if nproc > 1 else 'ddpm train'} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - t


def final_weights(run: Path, name: str) -> dict:
    from safetensors.torch import load_file

    from ddpm.run.directory import list_checkpoints

    return load_file(str(list_checkpoints(run)[-1] / f"{name}.safetensors"))


SMOKE = {"preset": "tiny", "steps": 2, "batch_size": 8}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--preset", default="mnist")
    ap.add_argument("--data", default="mnist")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = parse(ap, SMOKE)
    with tempfile.TemporaryDirectory() as tmp:
        t1 = train(Path(tmp) / "one", args, 1, args.steps)
        tn = train(Path(tmp) / "many", args, args.nproc, args.steps)
        train(Path(tmp) / "first", args, 1, 1)  # the weights after one step: how far training moved them
        # the floor of floating-point reproducibility: the same 1-process command on one thread (another
        # reduction order inside every kernel, no change of split at all)
        floor_run = (os.cpu_count() or 1) > 1
        if floor_run:
            train(Path(tmp) / "one-thread", args, 1, args.steps, threads=1)
        worst = floor = 0.0
        for name in ("model", "ema"):
            a, b = final_weights(Path(tmp) / "one", name), final_weights(Path(tmp) / "many", name)
            if a.keys() != b.keys():
                sys.exit(f"{name}: the two runs saved different tensors")
            diff = max((a[k] - b[k]).abs().max().item() for k in a)
            first = final_weights(Path(tmp) / "first", name)
            moved = max((a[k] - first[k]).abs().max().item() for k in a)
            worst = max(worst, diff)
            line = (f"{name}: max |1 process - {args.nproc} processes| = {diff:.3g} over {len(a)} tensors; "
                    f"training moved them by up to {moved:.3g} after the first step")
            if floor_run:
                c = final_weights(Path(tmp) / "one-thread", name)
                f = max((a[k] - c[k]).abs().max().item() for k in a)
                floor = max(floor, f)
                line += f"; 1 process on 1 thread instead of {os.cpu_count()}: {f:.3g}"
            print(line)
        print(f"{args.preset} preset, {args.steps} steps of {args.batch_size} (grad-accum {args.grad_accum}), fp32: "
              f"1 process {t1:.0f} s, {args.nproc} processes {tn:.0f} s (including start-up)")
    if worst <= args.tol:
        print(f"PASS: largest difference {worst:.3g} (tolerance {args.tol:g})")
        return 0
    if worst <= floor:
        print(f"PASS: largest difference {worst:.3g} is above the tolerance {args.tol:g} but no larger than what a "
              f"change of thread count alone gives ({floor:.3g}): floating-point reduction order")
        return 0
    print(f"FAIL: largest difference {worst:.3g} (tolerance {args.tol:g}; thread-count floor {floor:.3g})")
    return 1


if __name__ == "__main__":
    sys.exit(main())
