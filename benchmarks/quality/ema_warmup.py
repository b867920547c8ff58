"""What EMA warm-up changes on the demo: sample quality at equal steps, with and without it.

    python -m benchmarks.quality.ema_warmup --steps 3000 --at 100,250,500,1000,2000,3000 --n 200

Trains the demo's recipe (the class-conditional 'mnist' preset: EMA decay 0.995, cosine learning rate to
``--steps``) twice from the same seed, once with ``ema_warmup`` (the decay min(0.995, (1 + n) / (10 + n))) and
once without (0.995 from step 1); keeps the EMA weights at each of ``--at``; and judges ``--n`` guided samples of
each (the demo's sampler: sde-dpm++ 20 steps, guidance 1, equal numbers of each digit, seed 0) as
``demo_quality.py`` does: the share labelled as the asked-for digit with p >= 0.9, and the FD ratio. The raw
network's samples at the same steps are the reference (what an EMA can at best follow). One run at a time; about
20 minutes on 2 CPU cores for 3,000 steps.
"""

import argparse
import copy
import dataclasses
import tempfile
from pathlib import Path

import torch

from benchmarks.common import parse
from benchmarks.quality.demo_quality import judge
from ddpm import load_checkpoint  # noqa: E402
from ddpm.cli.demo import DEMO_GUIDANCE, DEMO_P_UNCOND, DEMO_SAMPLER  # noqa: E402
from ddpm.sampling.generation import sample_checkpoint  # noqa: E402
from ddpm.sampling.guidance import class_labels  # noqa: E402
from ddpm.sampling.settings import SamplingSettings
from ddpm.training.train import plan_run, train_run  # noqa: E402


def train(out: Path, steps: int, warmup: bool, at):
    """EMA and raw weights at each step of ``at``."""
    kept = {}

    def keep(trainer):
        if trainer.step in at:
            kept[trainer.step] = (copy.deepcopy(trainer.ema.state_dict()), copy.deepcopy(trainer.model.state_dict()))

    cfg = plan_run(out, train={"data": "mnist", "class_cond": True, "p_uncond": DEMO_P_UNCOND, "steps": steps,
                               "ema_warmup": warmup, "val_fraction": 0.0, "save_every": steps}, diffusion={})
    train_run(out, cfg, device=torch.device("cpu"), progress=False, on_step=keep)
    return load_checkpoint(out), kept


def quality(ckpt, state, n: int):
    net = copy.deepcopy(ckpt.ema_model)
    net.load_state_dict(state)
    labels = class_labels("all", ckpt.config.classes, n)
    x = sample_checkpoint(dataclasses.replace(ckpt, ema_model=net),
                          SamplingSettings(*DEMO_SAMPLER, guidance=DEMO_GUIDANCE, n=n, precision="auto",
                                           progress=False), labels=labels)
    return judge(x.permute(0, 2, 3, 1).numpy(), labels.numpy())


SMOKE = {"steps": 2, "at": "1,2", "n": 10}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3000, help="training steps (the demo trains about 3,000 here)")
    ap.add_argument("--at", default="100,250,500,1000,2000,3000", help="steps to judge, separated by commas")
    ap.add_argument("--n", type=int, default=200, help="samples per judgement (a multiple of 10)")
    args = parse(ap, SMOKE)
    at = sorted(int(s) for s in args.at.split(","))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for warmup in (True, False):
            ckpt, kept = train(Path(tmp) / f"warmup-{warmup}", args.steps, warmup, set(at))
            # the raw network is the same in both runs (the EMA does not feed back): judged once
            results[warmup] = {s: (quality(ckpt, e, args.n), warmup and quality(ckpt, r, args.n))
                               for s, (e, r) in kept.items()}
    print(f"demo recipe, {args.steps} steps, {args.n} guided samples per cell (sde-dpm++ 20, guidance 1, seed 0): "
          "share of the asked-for digit with p >= 0.9 / FD ratio")
    print(f"{'step':>6}{'EMA, warm-up':>18}{'EMA, 0.995 from step 1':>26}{'raw network':>18}")
    for s in at:
        (w, raw), (o, _) = results[True][s], results[False][s]
        print(f"{s:>6}{w['confident']:>11.1%} / {w['fd_ratio']:<5.2f}{o['confident']:>19.1%} / {o['fd_ratio']:<5.2f}"
              f"{raw['confident']:>11.1%} / {raw['fd_ratio']:<5.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
