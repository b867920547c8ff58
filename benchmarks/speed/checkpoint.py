"""How long a checkpoint stalls training: written on the spot (what every checkpoint cost before) against copied
to host memory and written on a background thread (what ``Trainer.save(background=True)`` does during ``fit``).

    python -m benchmarks.speed.checkpoint                     # the cifar10 and celebahq256 networks, 3 rounds
    python -m benchmarks.speed.checkpoint --preset cifar10 --rounds 5

For each preset's network with an Adam state (weights, EMA and both moments: 4 copies of the parameters), in a
temporary folder on the disk of ``--dir``: the seconds ``save_checkpoint`` blocks, the seconds the snapshot
blocks (the training step's stall with background writes) and the seconds the background write then takes.
Medians of the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import parse
from ddpm.atomic import BackgroundWrite
from ddpm.config import PRESETS
from ddpm.nn.unet import UNet
from ddpm.run.directory import save_checkpoint, snapshot, write_checkpoint

SMOKE = {"preset": ["tiny"], "rounds": 1}


def network(preset: str):
    torch.manual_seed(0)
    model = UNet(PRESETS[preset].model)
    ema = UNet(PRESETS[preset].model)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():  # Adam's state as after a step, without a step's minutes at 256 x 256
        opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return model, ema, opt


def measure(preset: str, rounds: int, where: Path) -> dict:
    model, ema, opt = network(preset)
    n = sum(p.numel() for p in model.parameters())
    sync, stall, background = [], [], []
    writer = BackgroundWrite()
    for r in range(rounds):
        t = time.perf_counter()
        save_checkpoint(where / f"sync-{preset}", step=r + 1, model=model, ema_model=ema, optimizer=opt, keep=1)
        sync.append(time.perf_counter() - t)
        t = time.perf_counter()
        snap = snapshot(step=r + 1, model=model, ema_model=ema, optimizer=opt)
        writer.start(lambda: write_checkpoint(where / f"bg-{preset}", snap, keep=1))
        stall.append(time.perf_counter() - t)
        writer.wait()
        background.append(time.perf_counter() - t)
    size = sum(f.stat().st_size for f in (where / f"sync-{preset}").rglob("*.safetensors"))
    return {"preset": preset, "parameters": n, "checkpoint_gb": size / 1e9, "sync_s": statistics.median(sync),
            "stall_s": statistics.median(stall), "background_s": statistics.median(background)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", help="cifar10 and/or celebahq256 (default: both)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=None, help="write there (default: the system's temporary folder)")
    args = parse(ap, SMOKE)
    print(f"{'network':<12}{'parameters':>12}{'GB':>7}{'on the spot s':>15}{'stall s':>9}{'background s':>14}"
          f"{'stall cut':>11}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for preset in args.preset or ["cifar10", "celebahq256"]:
            r = measure(preset, args.rounds, Path(tmp))
            print(f"{preset:<12}{r['parameters']:>12,}{r['checkpoint_gb']:>7.2f}{r['sync_s']:>15.2f}"
                  f"{r['stall_s']:>9.2f}{r['background_s']:>14.2f}{r['sync_s'] / r['stall_s']:>10.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
