"""Gradient checkpointing: the peak memory and the time of a training step, with and without, against --dry-run's
estimate.

    python -m benchmarks.speed.memory                       # the cifar10 network, batches 1 and 32
    python -m benchmarks.speed.memory --preset celebahq256 --batches 1,4

Each row trains ``--steps`` steps (Adam, the run's precision as ``auto`` resolves it here) in a fresh process and
prints its peak resident memory (VmHWM, which also holds PyTorch itself: compare rows, not absolutes) and
its median step time. The activations of a batch B are peak(B) - peak(1) (B - 1 images); the estimate is
``training.memory.estimate_step_memory``'s for those images.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import parse

STEP = """
import json, sys, time, torch
from ddpm import UNet
from ddpm.config import make_run_config
from ddpm.runtime import autocast, resolve_precision
preset, b, gc, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", int(sys.argv[4])
torch.manual_seed(0)
cfg = make_run_config(preset)
model = UNet(cfg.model).train()
model.grad_checkpointing = gc
d, opt = cfg.diffusion.build(), torch.optim.Adam(model.parameters())
precision = resolve_precision("auto", torch.device("cpu"))
x = torch.rand(b, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size) * 2 - 1
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    with autocast(torch.device("cpu"), precision):
        loss = d.training_loss(model, x).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    times.append(time.perf_counter() - t0)
peak = next(int(v.split()[1]) for v in open("/proc/self/status") if v.startswith("VmHWM:"))  # KiB, this image
print(json.dumps({"peak_mib": peak / 1024, "precision": precision, "step_s": sorted(times)[len(times) // 2]}))
"""


def measure(preset: str, b: int, gc: bool, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-c", STEP, preset, str(b), "1" if gc else "0", str(steps)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cifar10")
    ap.add_argument("--batches", default="1,32", help="batch sizes; the first is the baseline of the activations")
    ap.add_argument("--steps", type=int, default=3)
    args = parse(ap, {"preset": "tiny", "batches": "1,4", "steps": 2}, argv)
    from ddpm.config import make_run_config
    from ddpm.training.memory import estimate_step_memory

    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for gc in (False, True):
        base = None
        for b in batches:
            r = measure(args.preset, b, gc, args.steps)
            base = base if base is not None else r["peak_mib"]
            cfg = make_run_config(args.preset, train={"grad_checkpointing": gc})
            est = estimate_step_memory(cfg, micro_batch=b, precision=r["precision"], checkpointing=gc)
            rows.append({"checkpointing": gc, "batch": b, **r, "activations_mib": r["peak_mib"] - base,
                         "estimate_mib": est["per_image"] * (b - batches[0])})
            print(f"{args.preset} batch {b:>3} checkpointing {'on ' if gc else 'off'} ({r['precision']}): peak "
                  f"{r['peak_mib']:8.0f} MiB, activations {r['peak_mib'] - base:8.0f} MiB (estimate "
                  f"{rows[-1]['estimate_mib']:8.0f}), step {r['step_s']:.3f} s", flush=True)
    for b in batches[1:]:
        off, on = (next(r for r in rows if r["batch"] == b and r["checkpointing"] is g) for g in (False, True))
        print(f"batch {b}: checkpointing keeps {on['activations_mib'] / max(off['activations_mib'], 1e-9):.2f}x the "
              f"activation memory at {on['step_s'] / off['step_s']:.2f}x the step time")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
