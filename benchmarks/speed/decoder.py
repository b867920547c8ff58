"""The bound's discretised decoder in a training step (--objective vlb or hybrid): every row in float64 (the code
before), the t = 0 rows alone in fp32 (a CPU's path now), every row in fp32 (a GPU's path, which must not wait
for the device to choose rows), side by side in one process.

    python -m benchmarks.speed.decoder --batch 128 --size 32
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import parse
from ddpm.diffusion.gaussian import _decoder_bits
from ddpm.diffusion.losses import discretized_gaussian_log_likelihood, mean_bits_per_dim

SMOKE = {"batch": 8, "size": 8, "rounds": 1}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    args = parse(p, SMOKE)
    torch.manual_seed(0)
    x0 = torch.randint(0, 256, (args.batch, 3, args.size, args.size)).float() / 127.5 - 1
    mean, log_scale = x0 + 0.02 * torch.randn_like(x0), torch.full_like(x0, -4.0)
    first = torch.zeros(args.batch, dtype=torch.bool)
    first[0] = True  # 1/T of a batch is at t = 0: here one row

    def every_row_float64():
        keep = first.reshape(-1, 1, 1, 1)
        m, s = torch.where(keep, mean, x0), torch.where(keep, log_scale, torch.full_like(log_scale, -6.0))
        return mean_bits_per_dim(-discretized_gaussian_log_likelihood(x0, m, s))

    ways = {"every row, float64 (before)": every_row_float64,
            "t = 0 rows, fp32 (CPU)": lambda: _decoder_bits(x0, mean, log_scale, first, select=True),
            "every row, fp32 (GPU path)": lambda: _decoder_bits(x0, mean, log_scale, first, select=False)}
    ms = {k: [] for k in ways}
    for _ in range(args.rounds):
        for name, f in ways.items():
            t0 = time.perf_counter()
            for _ in range(5):
                f()
            ms[name].append((time.perf_counter() - t0) / 5 * 1000)
    for name, v in ms.items():
        print(f"{name:>30}: {statistics.median(v):7.2f} ms (range {min(v):.2f}-{max(v):.2f})")


if __name__ == "__main__":
    main()
