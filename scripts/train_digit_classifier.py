"""Train the small digit classifier that ships in ddpm/assets (used by `ddpm eval --metric fd` on mnist
and by benchmarks/quality/demo_quality.py). Trains on 4,500 of the 5,000 shipped digits, reports accuracy on
the other 500 (every 10th image), and writes src/ddpm/assets/digit_classifier.safetensors.

    python scripts/train_digit_classifier.py            # about a minute on 2 CPU cores
"""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ddpm.data.images import to_float
from ddpm.data.sources import load_data
from ddpm.evaluation.features import DigitClassifier, digit_classifier_heldout

OUT = Path(__file__).resolve().parents[1] / "src" / "ddpm" / "assets" / "digit_classifier.safetensors"


def shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translations by up to max_shift pixels (padding with the background value -1)."""
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    out = torch.empty_like(x)
    offs = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=g)
    for i, (dy, dx) in enumerate(offs.tolist()):
        out[i] = pad[i, :, dy:dy + 28, dx:dx + 28]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = load_data("mnist", channels=1, image_size=28)
    x, y = to_float(data.images), data.labels
    val = digit_classifier_heldout(len(x))  # every 10th image of each digit
    xtr, ytr, xva, yva = x[~val], y[~val], x[val], y[val]
    net = DigitClassifier()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 128):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(net(shift(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(xva).argmax(1) == yva).float().mean().item()
        print(f"epoch {epoch + 1}: last loss {loss.item():.4f}, held-out accuracy {acc:.4f}")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(args.out),
              metadata={"heldout_accuracy": f"{acc:.4f}",
                        "trained_on": "4500 of ddpm's mnist5k (every 10th image of each digit held out)"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
