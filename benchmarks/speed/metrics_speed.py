"""The FID network on this machine: does ddpm's Inception read from a TorchScript file give the file's own
features, and how fast are the features of N 32x32 images (the projected time for 50,000)?

    python -m benchmarks.speed.metrics_speed --n 10000                 # the Inception ddpm finds
    python -m benchmarks.speed.metrics_speed --inception default_1.pt --n 2000

1. Agreement (TorchScript files only): ddpm maps the archive's tensors into its own network by layer order; the
   reference is the archive's own graph (``torch.jit.load``, run here only, as the independent check) on the same
   299 x 299 inputs. Prints the largest difference relative to the largest feature.
2. Layout, side by side in one process: channels-last against the default layout and batch sizes, on a few
   hundred images (img/s, ratio, and how far the features differ).
3. The product's path (``extract_features`` with its default batch) on --n images: img/s and the projection.
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch

from benchmarks.common import parse
from ddpm.data.images import to_float
from ddpm.evaluation.features import extract_features, feature_batch
from ddpm.evaluation.inception import find_inception, load_inception
from ddpm.safeload import is_torchscript


def agreement(path) -> float:
    ours = load_inception(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.jit.load(str(path)).eval()
    x = torch.rand(4, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a, b = ours.features(x), ref(x)
    return ((a - b).abs().max() / b.abs().max()).item()


def layouts(net, images, batches) -> None:
    plain = copy.deepcopy(net)
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def rate(m, bs):
        out, t = [], time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(images), bs):
                out.append(m.features(to_float(images[i:i + bs])))
        return len(images) / (time.perf_counter() - t), torch.cat(out)

    rate(plain, batches[0]), rate(fast, batches[0])  # warm-up
    for bs in batches:
        (a, fa), (b, fb) = rate(plain, bs), rate(fast, bs)
        print(f"  batch {bs:>3}: default {a:6.2f} img/s, channels-last {b:6.2f} img/s, ratio {b / a:.2f}, "
              f"features differ by {((fa - fb).abs().max() / fa.abs().max()).item():.1e} relative")


def random_inception() -> str:
    """An FID Inception of random weights in a temporary file (--smoke: no real file is needed to run the code)."""
    import tempfile

    from ddpm.evaluation.inception import FIDInception

    torch.manual_seed(0)
    path = tempfile.mkdtemp(prefix="bench-smoke-") + "/fid_inception.pth"
    torch.save({k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path


SMOKE = {"inception": random_inception, "n": 4, "layout_n": 2, "batches": "2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inception", default=None, help="the FID Inception file (default: the one ddpm finds)")
    ap.add_argument("--n", type=int, default=10000, help="images for the product's path")
    ap.add_argument("--layout-n", type=int, default=256, help="images per layout/batch measurement")
    ap.add_argument("--batches", default="8,16,32", help="batch sizes to compare")
    args = parse(ap, SMOKE)
    path = find_inception(args.inception)
    net = load_inception(path)
    print(f"Inception: {path} (sha256 {net.sha256[:16]}...), {torch.get_num_threads()} threads")
    if is_torchscript(path):
        print(f"1. agreement with the archive's own graph: {agreement(path):.1e} of the largest feature")
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    print(f"2. layouts and batches on {args.layout_n} images:")
    layouts(net, images[:args.layout_n], [int(b) for b in args.batches.split(",")])
    t = time.perf_counter()
    feats = extract_features(net, images, progress=True, desc="features")
    seconds = time.perf_counter() - t
    print(f"3. extract_features (batch {feature_batch('cpu')}): {args.n:,} images in {seconds:.0f} s, "
          f"{args.n / seconds:.1f} img/s; 50,000 would take {50000 / (args.n / seconds) / 60:.0f} min "
          f"(features {feats.shape})")


if __name__ == "__main__":
    main()
