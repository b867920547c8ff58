"""The scoring process's peak memory against the reference's size: does scoring 1,000 samples against 10,000 or
1,000,000 reference images take the same memory?

    python -m benchmarks.data.scoring_memory                              # 10k, 100k, 1M
    python -m benchmarks.data.scoring_memory --sizes 10000,100000 --dim 2048

Each row runs ``compare.score`` in a fresh process and prints its peak resident memory (``ru_maxrss``) and time.
The reference is synthetic: 3 x 32 x 32 images made from their index when a batch asks for them (as a memory-mapped
data set is read), so the reference itself takes no memory. The features come from a cheap network of the FID
Inception's width (``--dim``, 2048: a fixed random projection of 8 x 8 pooled pixels), so that a million images
take minutes here; what is held per image (features, moments) is what the Inception's would be.

Two settings per size: ``fid,kid,pr`` at the default ``--ref-n`` (50,000: the features of a seeded subset are held
for KID and precision/recall), and ``fid`` over every reference image (``--ref-n all``: mean and covariance
accumulate streaming, nothing per image is held).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from benchmarks.common import parse


class Synthetic:
    """n uint8 images [3, 32, 32], each made from its index on request (no storage)."""

    def __init__(self, n: int, offset: int = 0):
        self.n, self.offset, self.shape = n, offset, (n, 3, 32, 32)
        g = torch.Generator().manual_seed(0)
        self.base = torch.randint(0, 256, (1, 3, 32, 32), generator=g)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, which) -> torch.Tensor:
        idx = torch.arange(self.n)[which] + self.offset
        return ((self.base + idx[:, None, None, None] * 7919 + (idx[:, None, None, None] // 97) * 31) % 256).to(
            torch.uint8)


class Wide(nn.Module):
    """Features of the Inception's width, cheaply: 8 x 8 average pooling, then a fixed random projection."""

    def __init__(self, dim: int):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(3 * 8 * 8, dim)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)))


def child(size: int, metrics: str, ref_n: str, dim: int) -> None:
    from ddpm.evaluation.compare import ImageSet, score

    samples = ImageSet("samples", images=Synthetic(1000, offset=10 ** 7)[:], n=1000)
    ref = ImageSet("synthetic", images=Synthetic(size), n=size)
    t0 = time.perf_counter()
    r = score(samples, ref, metrics.split(","), ("wide", Wide(dim)), batch_size=500,
              ref_n=None if ref_n == "all" else int(ref_n))
    seconds = time.perf_counter() - t0
    print(json.dumps({"size": size, "metrics": metrics, "ref_n": ref_n, "seconds": seconds, "fid": r.values["fid"],
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


SMOKE = {"sizes": "3000", "dim": 16}

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--child", nargs=3, metavar=("SIZE", "METRICS", "REF_N"), help=argparse.SUPPRESS)
    args = parse(p, SMOKE)
    if args.child:
        return child(int(args.child[0]), args.child[1], args.child[2], args.dim)
    print(f"{'reference':>10} {'metrics':>10} {'--ref-n':>8} {'peak MiB':>9} {'seconds':>8} {'FD':>10}")
    for size in [int(s) for s in args.sizes.split(",")]:
        for metrics, ref_n in (("fid,kid,pr", "50000"), ("fid", "all")):
            out = subprocess.run([sys.executable, "-m", "benchmarks.data.scoring_memory", "--dim", str(args.dim),
                                  "--child", str(size), metrics, ref_n], capture_output=True, text=True,
                                 check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{size:>10,} {metrics:>10} {ref_n:>8} {r['peak_mib']:>9.0f} {r['seconds']:>8.1f} {r['fid']:>10.4f}",
                  flush=True)


if __name__ == "__main__":
    main()
