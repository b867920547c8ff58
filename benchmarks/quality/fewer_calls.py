"""FD against network calls for every sampler, on runs you give (e.g. today's eps model and a learned-range hybrid
one from table2.py --keep DIR): the same seeds, n samples each, FD of the shipped digit classifier's features
against the real digits, and each FD over that of Algorithm 2 respaced to 500 steps (the reference); with
--full-chain Algorithm 2 over all T steps beside. The network runs under --precision (auto: bf16 autocast where
the CPU has it, as the demo samples; about 2x fp32 here).

    python -m benchmarks.quality.fewer_calls --runs t2/eps-simple,t2/eps-hybrid --n 1000 --json calls.json

One run at a time, never beside another benchmark (2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.common import parse, tiny_run

CALLS = (10, 20, 25, 50, 100)
SAMPLERS = ("respaced", "ddim", "dpm++", "sde-dpm++")


def measure(run: str, n: int, calls, seed: int, samplers, precision: str, full_chain: bool = False) -> list:
    from ddpm.data.sources import load_data
    from ddpm.evaluation.features import get_features
    from ddpm.evaluation.reports import fd_report
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.settings import SamplingSettings

    ckpt = load_checkpoint(run)
    real = load_data("mnist", channels=1, image_size=ckpt.config.model.image_size)
    features = get_features("digits", channels=1)
    settings = SamplingSettings(n=n, seed=seed, precision=precision, progress=False)
    rows = fd_report(ckpt, real, features, settings.replace(sampler="respaced"), steps=[min(500, ckpt.diffusion.T)])
    reference = rows[0]["fd"]
    for sampler in samplers:
        rows += fd_report(ckpt, real, features, settings.replace(sampler=sampler), steps=list(calls))
    if full_chain:  # 1,000 calls per image: as long as all the rest together
        rows += fd_report(ckpt, real, features, settings)
    for r in rows:
        r.update(run=run, ratio=r["fd"] / reference)
    return rows


def plot(rows: list, out: str) -> None:
    """One panel per run: each sampler's FD ratio against network calls (log-log), 1 = the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(dict.fromkeys(r["run"] for r in rows))
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4), dpi=110, squeeze=False)
    for ax, run in zip(axes[0], runs):
        mine = [r for r in rows if r["run"] == run][1:]  # the first row of a run is its reference
        for name in dict.fromkeys(r["sampler"] for r in mine):
            rs = sorted((r for r in mine if r["sampler"] == name), key=lambda r: r["steps"])
            ax.plot([r["steps"] for r in rs], [r["ratio"] for r in rs], "o-", label=name)
        ax.axhline(1.0, color="gray", lw=0.8)
        for y in (1.1, 1.25, 1.3):
            ax.axhline(y, color="gray", lw=0.5, ls=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("network calls per image")
        ax.set_ylabel("FD / FD of Algorithm 2 respaced to 500")
        ax.set_title(Path(run).name, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


SMOKE = {"runs": tiny_run, "n": 8, "calls": "2,3", "samplers": "ddim"}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default=None, help="run directories, comma-separated")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--calls", default=",".join(map(str, CALLS)))
    ap.add_argument("--samplers", default=",".join(SAMPLERS), help="comma-separated; empty: only the reference "
                    "(and --full-chain)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--full-chain", action="store_true", help="also Algorithm 2 over all T steps")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, metavar="PNG", help="draw FD ratio against calls here")
    ap.add_argument("--replot", default=None, metavar="JSON", help="only draw --plot from an earlier --json")
    args = parse(ap, SMOKE, required=("--runs",))
    if args.replot:
        plot(json.loads(Path(args.replot).read_text()), args.plot)
        return 0
    calls = [int(c) for c in args.calls.split(",")]
    everything = []
    for run in args.runs.split(","):
        rows = measure(run, args.n, calls, args.seed, [s for s in args.samplers.split(",") if s], args.precision,
                       args.full_chain)
        everything += rows
        print(f"{run}: FD@{args.n} over that of Algorithm 2 respaced to {rows[0]['steps']} steps ({rows[0]['fd']:.3f})")
        for r in rows[1:]:
            print(f"  {r['sampler']:>10} {r['steps']:>5} calls  FD {r['fd']:8.3f}  ratio {r['ratio']:.2f}  "
                  f"{r['seconds_per_image']:.3f} s/image", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1) + "\n")
    if args.plot:
        plot(everything, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
