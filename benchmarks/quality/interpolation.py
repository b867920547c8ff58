"""Linear against spherical mixing of latents on a digits run (the paper's Sec. 4.3 interpolation).

    python -m benchmarks.quality.interpolation --run ddpm-demo --pairs 20 --t 500

For --pairs random pairs of shipped digits of different classes: encode both to step --t with the same noise,
mix for 7 inner lambdas (0.125 .. 0.875) linearly or by slerp, decode, and judge the mixtures with the shipped
digit classifier: the share it labels with confidence >= 0.9 (a mixture that is some clear digit), and the mean
pixel standard deviation against the real digits' (linear mixing shrinks the noise, which blurs).
"""

import argparse

import torch

from benchmarks.common import parse, tiny_run
from ddpm import load_checkpoint
from ddpm.data.images import to_float
from ddpm.data.sources import load_data
from ddpm.evaluation.features import load_digit_classifier
from ddpm.sampling.interpolation import interpolate

SMOKE = {"run": tiny_run, "pairs": 2, "t": 5}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None)
    ap.add_argument("--pairs", type=int, default=20)
    ap.add_argument("--t", type=int, default=500)
    args = parse(ap, SMOKE, required=("--run",))
    ckpt = load_checkpoint(args.run)
    digits = load_data("mnist", channels=1, image_size=28)
    net = load_digit_classifier()
    g = torch.Generator().manual_seed(0)
    lambdas = [i / 8 for i in range(1, 8)]
    real_std = to_float(digits.images).flatten(1).std(1).mean().item()
    print(f"{args.run} (step {ckpt.step}), {args.pairs} pairs, t = {args.t}, 7 mixtures each; real digits' pixel std "
          f"{real_std:.3f}")
    for mix in ("linear", "slerp"):
        conf, std = [], []
        for p in range(args.pairs):
            a, b = torch.randint(0, len(digits), (2,), generator=g).tolist()
            if digits.labels[a] == digits.labels[b]:
                b = (b + 1) % len(digits)
            xa, xb = to_float(digits.images[a]), to_float(digits.images[b])
            out = interpolate(ckpt.ema_model, ckpt.diffusion, xa, xb, args.t, lambdas=lambdas, mix=mix, seed=p)
            x = to_float(out)
            with torch.no_grad():
                conf.append((net(x).softmax(1).max(1).values >= 0.9).float())
            std.append(x.flatten(1).std(1))
        print(f"{mix:>7}: confident mixtures {torch.cat(conf).mean().item():.1%}, pixel std "
              f"{torch.cat(std).mean().item():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
