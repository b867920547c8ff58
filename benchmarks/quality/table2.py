"""The paper's Table 2 (and Improved DDPM's rows) at the demo's scale: each row trains the mnist recipe
(unconditional) at equal steps and seed, then reports bits/dim on the 500 digits the shipped classifier never saw
(mean and standard error), and for --n samples drawn with Algorithm 2 over all T steps and respaced to 50 steps:
the FD ratio (the Fréchet distance of the classifier's features to real digits over that of two disjoint real
sets of the same size) and the share the classifier labels as a digit with confidence >= 0.9. The paper's
CIFAR-10 figures (IS, FID) stand beside; a row whose training diverges says so.

    python -m benchmarks.quality.table2 --steps 1000 --n 500 --bpd-n 100 --json table2.json
    python -m benchmarks.quality.table2 --rows eps-simple,eps-hybrid --steps 200 --n 100   # a quick look
    python -m benchmarks.quality.table2 --rows eps-simple,eps-hybrid --keep t2   # then fewer_calls.py --runs ...

One run at a time, never beside another benchmark (2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import parse

# name: (predict, var_type, objective, t_sampling, the paper's CIFAR-10 IS / FID, or "" where it has none)
ROWS = {
    "mu-L-learned": ("mu", "learned", "vlb", "uniform", "7.28 / 23.69"),
    "mu-L-fixed": ("mu", "fixedlarge", "vlb", "uniform", "8.06 / 13.22"),
    "mu-mse": ("mu", "fixedlarge", "simple", "uniform", "- / - (unstable)"),
    "eps-L-learned": ("eps", "learned", "vlb", "uniform", "- / - (unstable)"),
    "eps-L-fixed": ("eps", "fixedlarge", "vlb", "uniform", "7.67 / 13.51"),
    "eps-simple": ("eps", "fixedlarge", "simple", "uniform", "9.46 / 3.17 (the paper's)"),
    "eps-hybrid": ("eps", "learned-range", "hybrid", "uniform", "Improved DDPM"),
    "x0-simple": ("x0", "fixedlarge", "simple", "uniform", ""),
    "v-simple": ("v", "fixedlarge", "simple", "uniform", ""),
    "eps-hybrid-importance": ("eps", "learned-range", "hybrid", "importance", "Improved DDPM"),
}


def row(name: str, root: Path, args) -> dict:
    from benchmarks.quality.demo_quality import judge
    from ddpm.config import make_run_config
    from ddpm.data.sources import load_data
    from ddpm.errors import DDPMError
    from ddpm.evaluation.features import digit_classifier_heldout
    from ddpm.evaluation.reports import evaluate_bpd
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.generation import sample_checkpoint
    from ddpm.sampling.settings import SamplingSettings
    from ddpm.training.train import train_run

    predict, var_type, objective, t_sampling, paper = ROWS[name]
    cfg = make_run_config(args.preset, model={"image_size": 28},
                          train={"data": "mnist", "steps": args.steps, "seed": args.seed, "save_every": args.steps,
                                 "objective": objective, "t_sampling": t_sampling, "sample_every": 0},
                          diffusion={"predict": predict, "var_type": var_type, **({"T": args.T} if args.T else {})})
    out = {"row": name, "predict": predict, "var_type": var_type, "objective": objective, "t_sampling": t_sampling,
           "paper_is_fid": paper}
    t0 = time.perf_counter()
    try:
        train_run(root / name, cfg, device=torch.device("cpu"), progress=False)
    except DDPMError as e:  # a diverging objective: the paper's dashes
        return {**out, "failed": str(e)}
    out["train_s"] = time.perf_counter() - t0
    ckpt = load_checkpoint(root / name)
    digits = load_data("mnist", channels=1, image_size=28).images
    held = digits[digit_classifier_heldout(len(digits))][:args.bpd_n]
    t0 = time.perf_counter()
    bpd = evaluate_bpd(ckpt.diffusion, ckpt.ema_model, held, batch_size=100, progress=False)["total"]
    out.update(bpd=float(bpd.mean()), bpd_se=float(bpd.std(ddof=1) / math.sqrt(len(bpd))),
               bpd_s=time.perf_counter() - t0)
    # The network under args.precision (bf16 autocast where the CPU has it, as the demo samples: about 2x fp32
    # here); the 50-step column again in fp32, so that the table shows what bf16 moves.
    for sampler, steps, precision, key in (("ancestral", None, args.precision, "T"),
                                           ("respaced", 50, args.precision, "50"), ("respaced", 50, "fp32", "50_fp32")):
        t0 = time.perf_counter()
        images = sample_checkpoint(ckpt, SamplingSettings(sampler, steps, seed=args.seed, n=args.n,
                                                          precision=precision, progress=False))
        out[f"sample_{key}_s"] = time.perf_counter() - t0
        r = judge(images.permute(0, 2, 3, 1).numpy())
        out.update({f"fd_ratio_{key}": r["fd_ratio"], f"confident_{key}": r["confident"]})
    return out


SMOKE = {"rows": "eps-hybrid", "steps": 2, "n": 10, "bpd_n": 2, "preset": "tiny", "T": 50}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=",".join(ROWS), help="which rows, comma-separated")
    ap.add_argument("--steps", type=int, default=1000, help="training steps per row")
    ap.add_argument("--n", type=int, default=500, help="samples per sampler")
    ap.add_argument("--bpd-n", type=int, default=100, help="held-out digits for bits/dim")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="the network's precision while sampling (auto: bf16 where the CPU has it)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--keep", default=None, metavar="DIR", help="keep the trained runs here (for fewer_calls.py)")
    ap.add_argument("--preset", default="mnist", help="the network (the judge wants 28 x 28 digits)")
    ap.add_argument("--T", type=int, default=None, help="diffusion steps (default: the preset's, 1,000)")
    args = parse(ap, SMOKE)
    names = [r for r in args.rows.split(",") if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        ap.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    results = []
    print(f"{'row':<24} {'bits/dim':>15} {'FD ratio T':>10} {'conf T':>7} {'FD ratio 50':>11} {'conf 50':>7} "
          f"{'50 fp32':>7} {'train s':>8}  paper (CIFAR-10 IS / FID)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for name in names:
            r = row(name, root, args)
            results.append(r)
            if "failed" in r:
                print(f"{name:<24} failed: {r['failed']}  {r['paper_is_fid']}", flush=True)
                continue
            print(f"{name:<24} {r['bpd']:>7.3f} +- {r['bpd_se']:.3f} {r['fd_ratio_T']:>10.2f} {r['confident_T']:>7.1%} "
                  f"{r['fd_ratio_50']:>11.2f} {r['confident_50']:>7.1%} {r['fd_ratio_50_fp32']:>7.2f} "
                  f"{r['train_s']:>8.0f}  {r['paper_is_fid']}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
