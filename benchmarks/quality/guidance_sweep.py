"""Sample quality of a class-conditional digits run against the guidance weight, the sampler and its steps.

    python -m benchmarks.quality.guidance_sweep --run ddpm-demo --n 100 --guidance 0,0.5,1,2 \
        --sampler respaced:100,respaced:250

For each sampler setting and guidance weight: ``--n`` samples, equal numbers of each digit (``--class all``),
judged as ``demo_quality.py`` judges them (the share labelled as their requested digit with confidence
>= 0.9, every digit present, the FD ratio), and the seconds per image; then the same network's unconditional
samples (the null class) for each sampler setting. Seed 0 for every row, so rows differ by their settings only.
"""

import argparse
import time

from benchmarks.common import parse, tiny_run
from benchmarks.quality.demo_quality import judge
from ddpm import load_checkpoint  # noqa: E402
from ddpm.sampling.generation import sample_checkpoint  # noqa: E402
from ddpm.sampling.guidance import class_labels  # noqa: E402
from ddpm.sampling.settings import SamplingSettings

SMOKE = {"run": tiny_run, "n": 10, "guidance": "0,1", "sampler": "respaced:3"}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--guidance", default="0,0.5,1,2", help="weights separated by commas")
    ap.add_argument("--sampler", default="respaced:100,respaced:250", help="NAME:STEPS[:ETA] separated by commas")
    ap.add_argument("--no-unconditional", action="store_true")
    args = parse(ap, SMOKE, required=("--run",))
    ckpt = load_checkpoint(args.run)
    labels = class_labels("all", ckpt.config.classes, args.n)
    print(f"{args.run} (step {ckpt.step}), {args.n} samples per row, seed 0, bf16 sampling where the CPU has it")
    print(f"{'sampler':<16}{'guidance':>9}{'asked-for digit, p>=0.9':>25}{'all digits':>11}{'FD ratio':>9}"
          f"{'s/image':>9}")
    for spec in args.sampler.split(","):
        name, steps, *eta = spec.split(":")
        settings = SamplingSettings(name, None if name == "ancestral" else int(steps), float(eta[0]) if eta else None,
                                    seed=0, n=args.n, precision="auto", progress=False)
        rows = [(w, labels) for w in map(float, args.guidance.split(","))]
        if not args.no_unconditional:
            rows.append(("uncond", None))
        for w, lab in rows:
            t0 = time.perf_counter()
            x = sample_checkpoint(ckpt, settings.replace(guidance=0.0 if lab is None else w), labels=lab)
            s = (time.perf_counter() - t0) / args.n
            r = judge(x.permute(0, 2, 3, 1).numpy(), None if lab is None else lab.numpy())
            print(f"{spec:<16}{w if lab is not None else 'none':>9}{r['confident']:>25.1%}{str(r['all_digits']):>11}"
                  f"{r['fd_ratio']:>9.2f}{s:>9.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
