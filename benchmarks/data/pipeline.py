"""The data pipeline at the paper's scale: building the decoded cache, starting from it, its memory, its speed.

    python -m benchmarks.data.pipeline [--images 20000] [--workdir DIR]

1. Writes a folder of --images JPEGs of 256x256 (smooth random pictures), and a folder of 200 of them.
2. First run: decodes the folder into the cache at 256x256x3 (worker processes on every core), timed.
3. Second run, in a fresh process: the time from the process's start to its first training step (the
   celebahq256 network narrowed to 16 channels, batch 8), and the peak anonymous memory (RssAnon) of 30
   training steps; the same on the 200-image folder. The page cache may hold the data; the process's own memory
   must not grow with it.
4. The pipeline alone, from the cache: images/s that ``Batches.make`` delivers (image, flip, t and eps of every
   example) at 32x32 (batch 128) and 256x256 (batch 64), against the paper's rates: 2,688 images/s at 32x32
   (21 steps/s of 128 on a TPU v3-8) and 141 at 256x256 (2.2 steps/s of 64).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import parse

CHILD = r"""
import json, sys, threading, time
t0 = float(sys.argv[1])
folder, cache, out, steps = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
peak = [0]
def watch():
    while True:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.05)
threading.Thread(target=watch, daemon=True).start()
import torch
from ddpm.config import make_run_config
from ddpm.data.sources import load_data
from ddpm.training.train import Trainer
from ddpm.nn.unet import UNet
cfg = make_run_config("celebahq256", train={"data": folder, "batch_size": 8, "steps": steps, "precision": "fp32"},
                      model={"ch": 16, "num_groups": 8})
data = load_data(folder, channels=3, image_size=256, cache_dir=cache)
tr = Trainer(UNet(cfg.model), cfg.diffusion.build(), data, cfg.train)
tr.batches.make(0)
first = time.time() - t0
for _ in range(steps):
    tr.train_step()
time.sleep(0.1)
json.dump({"first_step_s": first, "peak_rss_anon_mib": peak[0] / 1024, "images": len(data)}, open(out, "w"))
"""


def write_folder(root: Path, n: int, size: int = 256) -> None:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # upsampled: smooth, compresses well
        Image.fromarray(small).resize((size, size), Image.BICUBIC).save(root / f"{i:06d}.jpg", quality=90)


def child(folder: Path, cache: Path, work: Path, steps: int) -> dict:
    out = work / "child.json"
    subprocess.run([sys.executable, "-c", CHILD, str(time.time()), str(folder), str(cache), str(out), str(steps)],
                   check=True)
    return json.loads(out.read_text())


def pipeline_rate(folder: Path, cache: Path, size: int, batch: int, steps: int) -> float:
    from ddpm.data.batches import Batches
    from ddpm.data.sources import load_data

    data = load_data(str(folder), channels=3, image_size=size, cache_dir=cache, progress=True)
    b = Batches(data, seed=0, batch_size=batch, T=1000, hflip=True)
    b.make(0)
    t = time.perf_counter()
    for s in range(1, steps + 1):
        b.make(s)
    return steps * batch / (time.perf_counter() - t)


SMOKE = {"images": 64, "steps": 1}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=30, help="training steps of the memory measurement")
    ap.add_argument("--workdir", default=None, help="keep the folders and caches here (default: a temporary one)")
    args = parse(ap, SMOKE)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ddpm-data-"))
    big, small, cache = work / "big", work / "small", work / "cache"
    if not big.is_dir():
        t = time.perf_counter()
        write_folder(big, args.images)
        print(f"wrote {args.images} JPEGs of 256x256 in {time.perf_counter() - t:.0f} s", flush=True)
    if not small.is_dir():
        small.mkdir()
        for p in sorted(big.iterdir())[:200]:
            shutil.copy(p, small / p.name)
    shutil.rmtree(cache, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddpm", "data", "build", str(big), "--image-size", "256", "--channels", "3",
                    "--cache-dir", str(cache)], check=True)
    build = time.perf_counter() - t
    print(f"1. first run: decoded {args.images} images into the cache in {build:.1f} s "
          f"({args.images / build:.0f} images/s on {os.cpu_count()} cores)", flush=True)
    subprocess.run([sys.executable, "-m", "ddpm", "data", "build", str(small), "--image-size", "256", "--channels",
                    "3", "--cache-dir", str(cache)], check=True, capture_output=True)
    b, s = child(big, cache, work, args.steps), child(small, cache, work, args.steps)
    print(f"2. second run: first training step {b['first_step_s']:.2f} s after the process started "
          f"({b['images']} images; {s['first_step_s']:.2f} s with {s['images']})")
    print(f"3. peak anonymous memory over {args.steps} steps: {b['peak_rss_anon_mib']:.0f} MiB with {b['images']} "
          "images, "
          f"{s['peak_rss_anon_mib']:.0f} MiB with {s['images']} (difference "
          f"{b['peak_rss_anon_mib'] - s['peak_rss_anon_mib']:+.0f} MiB)", flush=True)
    r32 = pipeline_rate(big, cache, 32, 128, 40)
    r256 = pipeline_rate(big, cache, 256, 64, 20)
    print(f"4. the pipeline alone: {r32:.0f} images/s at 32x32 (paper: 2,688; {r32 / 2688:.1f}x), "
          f"{r256:.0f} images/s at 256x256 (paper: 141; {r256 / 141:.1f}x)")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
