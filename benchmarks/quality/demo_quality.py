"""Judge the demo's samples the way the README reports them.

    python -m benchmarks.quality.demo_quality ddpm-demo/samples.npz

With ``arr_1`` (each sample's requested digit, as ``ddpm demo`` and ``ddpm sample --class`` write it):
the share of samples the shipped digit classifier (scripts/train_digit_classifier.py) labels as their
requested digit with confidence >= 0.9 (target: 90%); without it, the share labelled as any digit
with confidence >= 0.9 (target: 80%). Then whether every digit is present among those, and the
Fréchet distance of classifier features between the samples and real digits next to the distance
between two disjoint sets of real digits of the same size (mean over 5 draws each; target: at most 3x).
"""

import argparse
import sys
from typing import Optional

import numpy as np
import torch

from benchmarks.common import parse
from ddpm.data.images import to_float
from ddpm.data.sources import load_data
from ddpm.evaluation.features import digit_classifier_heldout, load_digit_classifier
from ddpm.evaluation.metrics import frechet_distance, gaussian_stats


def judge(arr: np.ndarray, labels: Optional[np.ndarray] = None, confidence: float = 0.9, draws: int = 5) -> dict:
    """Confident (and, with ``labels``, correct) share, such samples per digit and the FD ratio of uint8 samples
    [N, H, W, 1]."""
    x = to_float(torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous())
    net = load_digit_classifier()
    real = to_float(load_data("mnist", channels=1, image_size=28).images)
    with torch.no_grad():
        probs = net(x).softmax(1)
        f_gen = net.features(x).numpy()
        f_real = net.features(real).numpy()
        held = real[digit_classifier_heldout(len(real))]
        real_conf = (net(held).softmax(1).max(1).values >= confidence).float().mean().item()
    conf, label = probs.max(1)
    good = conf >= confidence
    if labels is not None:
        good &= label == torch.from_numpy(np.asarray(labels, dtype=np.int64))
    n = len(x)
    counts = np.bincount(label[good].numpy(), minlength=10)
    rng = np.random.default_rng(0)
    fd_gen, fd_real = [], []
    for _ in range(draws):
        perm = rng.permutation(len(f_real))
        a, b = f_real[perm[:n]], f_real[perm[n:2 * n]]
        fd_gen.append(frechet_distance(*gaussian_stats(f_gen), *gaussian_stats(a)))
        fd_real.append(frechet_distance(*gaussian_stats(b), *gaussian_stats(a)))
    out = {"n": n, "confident": good.float().mean().item(), "counts": counts.tolist(),
           "conditional": labels is not None,
           "all_digits": bool((counts > 0).all()), "fd": float(np.mean(fd_gen)), "fd_real": float(np.mean(fd_real)),
           "real_confident": real_conf}
    out["fd_ratio"] = out["fd"] / out["fd_real"]
    out["target"] = 0.9 if labels is not None else 0.8
    out["pass"] = out["confident"] >= out["target"] and out["all_digits"] and out["fd_ratio"] <= 3
    return out


def real_digits() -> str:
    """--smoke's samples: 100 of the shipped digits with their labels, in a temporary .npz."""
    import tempfile

    data = load_data("mnist", channels=1, image_size=28)
    path = tempfile.mkdtemp(prefix="bench-smoke-") + "/digits.npz"
    np.savez(path, arr_0=data.images[:100].permute(0, 2, 3, 1).numpy(), arr_1=data.labels[:100].numpy())
    return path


SMOKE = {"samples": real_digits}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("samples", nargs="?", help="a .npz with arr_0 uint8 [N, H, W, C] (and arr_1, the requested digits)")
    ap.add_argument("--confidence", type=float, default=0.9)
    ap.add_argument("--draws", type=int, default=5)
    args = parse(ap, SMOKE, required=("samples",))
    with np.load(args.samples) as z:
        arr, labels = z["arr_0"], z["arr_1"] if "arr_1" in z.files else None
    r = judge(arr, labels, args.confidence, args.draws)
    what = "labelled as their requested digit" if r["conditional"] else "labelled as a digit"
    print(f"samples: {r['n']} of shape {arr.shape[1:]}")
    print(f"{what} with p >= {args.confidence}: {r['confident']:.1%}   (real digits the classifier did not train on: "
          f"{r['real_confident']:.1%} confident)")
    print(f"such samples per digit 0-9: {r['counts']}  (all present: {r['all_digits']})")
    print(f"FD samples vs real: {r['fd']:.2f}   FD real vs real (same size): {r['fd_real']:.2f}   "
          f"ratio {r['fd_ratio']:.2f}")
    print("PASS" if r["pass"] else "FAIL", f"(>= {r['target']:.0%}, every digit present, FD ratio <= 3)")
    return 0 if r["pass"] or args.smoke else 1


if __name__ == "__main__":
    sys.exit(main())
