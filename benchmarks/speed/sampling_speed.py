"""Seconds per image of each sampler on a trained run, side by side in one process (alternating, median).

    python -m benchmarks.speed.sampling_speed --run ddpm-demo --n 100 --rounds 3

Rows: the ancestral sampler (Algorithm 2, T steps) and DDIM / respaced with fewer steps, all with the
run's EMA weights under the same precision; the speed-up is against the ancestral row.
"""

import argparse
import statistics
import time

from benchmarks.common import parse, tiny_run
from ddpm import load_checkpoint
from ddpm.sampling.generation import generate
from ddpm.sampling.samplers import make_sampler
from ddpm.sampling.settings import SamplingSettings

SMOKE = {"run": tiny_run, "n": 2, "rounds": 1, "sampler": ["ancestral:50", "ddim:3:0"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--sampler", action="append", default=None,
                    help="NAME:STEPS[:ETA], e.g. ddim:50:1 (default: ancestral, ddim:50:0, ddim:50:1, respaced:50)")
    args = parse(ap, SMOKE, required=("--run",))
    ckpt = load_checkpoint(args.run)
    c, s = ckpt.config.model.in_channels, ckpt.config.model.image_size
    specs = args.sampler or [f"ancestral:{ckpt.diffusion.T}", "ddim:50:0", "ddim:50:1", "respaced:50"]
    samplers = {}
    for spec in specs:
        name, steps, *eta = spec.split(":")
        steps = int(steps)
        samplers[spec] = make_sampler(name, ckpt.diffusion, steps=None if name == "ancestral" else steps,
                                      eta=float(eta[0]) if eta else None)
    times = {k: [] for k in samplers}
    for _ in range(args.rounds):
        for k, smp in samplers.items():
            t = time.perf_counter()
            generate(ckpt.ema_model, smp, (c, s, s), SamplingSettings(n=args.n, batch_size=args.n,
                                                                      precision=args.precision, progress=False))
            times[k].append((time.perf_counter() - t) / args.n)
    base = statistics.median(times[specs[0]])
    print(f"{args.run} (step {ckpt.step}), {args.n} images per call, precision {args.precision}, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'sampler':<16}{'s/image':>10}{'speed-up':>10}")
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:<16}{m:>10.4f}{base / m:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
