"""bf16 against fp32 training on the demo: the same recipe and seed, loss curves and sample quality side by side.

    python -m benchmarks.quality.precision --out precision-runs  # the demo recipe for 2,400 steps, ~25 min on 2 cores

Trains the ``mnist`` preset on the shipped digits twice from the same seed, once with bf16 autocast (fp32
master weights) and once in fp32, then samples both the way ``ddpm demo`` does (respaced, bf16 where the
hardware has it, the same seed) and judges the samples as benchmarks/quality/demo_quality.py does. Prints the loss of
both runs over the last quarter of training with its standard error, the largest per-row difference, whether
any step was non-finite, and the quality table; draws both loss curves into OUT/loss_bf16_vs_fp32.png.
A run directory that exists is resumed, so the command can be interrupted and run again.
"""

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import parse
from benchmarks.quality.demo_quality import judge


def read_metrics(path: Path) -> dict:
    """metrics.csv columns as arrays, through ddpm's own reader."""
    from ddpm.run.metrics import read_metrics as rows_of

    rows = rows_of(path)
    return {k: np.array([float(r[k]) for r in rows]) for k in ("step", "loss", "img_per_s", "skipped")}


SMOKE = {"out": "precision-smoke", "steps": 2, "n": 4, "sampling_steps": 3, "preset": "tiny", "T": 50}

def main() -> int:
    from ddpm.config import make_run_config
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.generation import generate
    from ddpm.sampling.outputs import write_images
    from ddpm.sampling.samplers import make_sampler
    from ddpm.sampling.settings import SamplingSettings
    from ddpm.training.train import train_run

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="precision-runs")
    ap.add_argument("--steps", type=int, default=2400,
                    help="training steps; the cosine decay ends there (2,400: what BENCHMARKS.md reports)")
    ap.add_argument("--n", type=int, default=400, help="samples per run")
    ap.add_argument("--sampling-steps", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset", default="mnist", help="the network (the judge wants 28 x 28 digits)")
    ap.add_argument("--T", type=int, default=None, help="diffusion steps (default: the preset's, 1,000)")
    args = parse(ap, SMOKE)
    out = Path(args.out)
    curves, quality, train_s = {}, {}, {}
    for prec in ("bf16", "fp32"):
        run = out / prec
        over = {"data": "mnist", "precision": prec, "seed": args.seed, "steps": args.steps}
        cfg = make_run_config(args.preset, model={"image_size": 28}, train=over,
                              diffusion={"T": args.T} if args.T else {})
        t = time.perf_counter()
        train_run(run, cfg, device=torch.device("cpu"), progress=False)
        train_s[prec] = time.perf_counter() - t
        ckpt = load_checkpoint(run)
        smp = make_sampler("respaced", ckpt.diffusion, steps=args.sampling_steps)
        x = generate(ckpt.ema_model, smp, (1, 28, 28), SamplingSettings(n=args.n, precision="auto", progress=False))
        write_images(x, run / "samples.npz")
        write_images(x[:100], run / "samples.png")
        quality[prec] = judge(np.load(run / "samples.npz")["arr_0"])
        curves[prec] = read_metrics(run / "metrics.csv")
        print(f"{prec}: {ckpt.step} steps, training {train_s[prec]:.0f} s this call", flush=True)

    a, b = curves["bf16"], curves["fp32"]
    assert np.array_equal(a["step"], b["step"])
    tail = slice(3 * len(a["step"]) // 4, None)
    print(f"\nloss over the last quarter of training (mean of {len(a['step'][tail])} rows +- standard error):")
    for prec, c in curves.items():
        v = c["loss"][tail]
        print(f"  {prec}: {v.mean():.5f} +- {v.std(ddof=1) / math.sqrt(len(v)):.5f}   "
              f"non-finite steps: {int(c['skipped'][-1])}, "
              f"all logged losses finite: {bool(np.isfinite(c['loss']).all())}")
    rel = np.abs(a["loss"] - b["loss"]) / b["loss"]
    noise = np.abs(np.diff(b["loss"][tail])).mean() / b["loss"][tail].mean()
    print(f"  per-row |bf16 - fp32| / fp32: median {np.median(rel):.3f}, last quarter {rel[tail].mean():.3f}; "
          f"row-to-row change of fp32 alone in the last quarter: {noise:.3f}")
    print(f"  training images/s (median of rows): bf16 {np.median(a['img_per_s']):.0f}, "
          f"fp32 {np.median(b['img_per_s']):.0f}")
    print(f"\nsamples ({args.n}, respaced {args.sampling_steps}, seed 0), judged by the shipped digit classifier:")
    for prec, q in quality.items():
        print(f"  {prec}: confident {q['confident']:.1%}, all digits {q['all_digits']}, FD {q['fd']:.2f} "
              f"(real vs real {q['fd_real']:.2f}, ratio {q['fd_ratio']:.2f})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for prec, c in curves.items():
        ax.plot(c["step"], c["loss"], lw=1.2, label=prec)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (L_simple, mean of 50 steps)")
    ax.set_title("demo recipe, seed 0: bf16 autocast vs fp32")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss_bf16_vs_fp32.png")
    print(f"\nloss curves: {out / 'loss_bf16_vs_fp32.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
