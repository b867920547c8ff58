"""Inpainting (RePaint) and editing (SDEdit) measured on the demo model, with held-out digits (ones the shipped
classifier never saw) and their true labels:

- inpainting with the right or the bottom half missing: the share of completions the classifier gives the true
  label, beside the masked inputs alone (the missing half black, the digits' background) and the originals, with
  and without resampling (r = 1 vs 10, j = 10, Algorithm 2 respaced to --steps), and the FD ratio of the
  completions (FD of the classifier's features to real digits over that of two disjoint real sets of that size);
- SDEdit over strengths 0.1-0.9: faithfulness (mean squared distance to the input, per pixel in [-1, 1]) against
  realism (FD ratio), and the share still given the input's label;
- for the class-conditional demo model, threes edited with --class 8: the share the classifier calls 8.

    python -m benchmarks.quality.editing --run ddpm-demo --n 100 --pictures docs --json editing.json

One run at a time, never beside another benchmark (2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import parse, tiny_run


def classify(images: torch.Tensor) -> torch.Tensor:
    from ddpm.data.images import to_float
    from ddpm.evaluation.features import load_digit_classifier

    with torch.no_grad():
        return load_digit_classifier()(to_float(images)).argmax(1)


def realism(images: torch.Tensor) -> float:
    from benchmarks.quality.demo_quality import judge

    return judge(images.permute(0, 2, 3, 1).numpy())["fd_ratio"]


SMOKE = {"run": tiny_run, "n": 2, "steps": 12, "sdedit_steps": 3}

def main() -> int:
    from ddpm.data.images import to_float
    from ddpm.data.sources import load_data
    from ddpm.evaluation.features import digit_classifier_heldout
    from ddpm.run.directory import load_checkpoint
    from ddpm.sampling.edit_jobs import Edit, inpaint, sdedit
    from ddpm.sampling.editing import RePaint, SDEdit, make_mask
    from ddpm.sampling.outputs import write_images
    from ddpm.sampling.samplers import make_sampler

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="ddpm-demo")
    ap.add_argument("--n", type=int, default=100, help="held-out digits per measurement")
    ap.add_argument("--steps", type=int, default=250, help="RePaint's chain: Algorithm 2 respaced to this")
    ap.add_argument("--sdedit-steps", type=int, default=100, help="SDEdit's sampler: Algorithm 2 respaced to this")
    ap.add_argument("--guidance", type=float, default=2.0, help="for the 3 -> 8 edits")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--pictures", default=None, help="write editing_inpaint.png and editing_sdedit.png here")
    ap.add_argument("--json", default=None)
    args = parse(ap, SMOKE)

    ckpt = load_checkpoint(args.run)
    model, diffusion = ckpt.ema_model, ckpt.diffusion
    data = load_data("mnist", channels=1, image_size=ckpt.config.model.image_size)
    held = digit_classifier_heldout(len(data.images))
    images, labels = data.images[held][:args.n], data.labels[held][:args.n]
    kw = dict(precision=args.precision, progress=False)
    res = {"run": str(args.run), "step": ckpt.step, "n": len(images),
           "originals": float((classify(images) == labels).float().mean())}
    print(f"{args.run} (step {ckpt.step}), {len(images)} held-out digits; the classifier on the originals: "
          f"{res['originals']:.1%} right")
    print(f"{'mask':<8} {'masked alone':>12} {'r = 1':>14} {'r = 10':>14}   (label right, FD ratio; seconds)")
    res["inpaint"] = []
    for name in ("right", "bottom"):
        mask = make_mask(name, len(images), 1, images.shape[-1])
        masked = torch.where(mask.bool(), images, torch.zeros_like(images))  # the missing half black
        row = {"mask": name, "masked_alone": float((classify(masked) == labels).float().mean())}
        for r in (1, 10):
            t0 = time.perf_counter()
            out = inpaint(model, diffusion, images, mask, steps=args.steps, jump=10, resample=r, **kw)
            row[f"r{r}"] = {"right": float((classify(out) == labels).float().mean()), "fd_ratio": realism(out),
                            "seconds": time.perf_counter() - t0,
                            "calls": RePaint(diffusion, min(args.steps, diffusion.T), resample=r).calls}
        res["inpaint"].append(row)
        print(f"{name:<8} {row['masked_alone']:>12.1%} " + " ".join(
            f"{row[k]['right']:>6.1%} {row[k]['fd_ratio']:>5.2f} {row[k]['seconds']:>4.0f}s" for k in ("r1", "r10")),
            flush=True)

    sampler = make_sampler("respaced", diffusion, steps=args.sdedit_steps)
    print(f"\nSDEdit (Algorithm 2 respaced to {args.sdedit_steps} steps)\n{'strength':>8} {'MSE to input':>12} "
          f"{'FD ratio':>9} {'label kept':>10}")
    res["sdedit"] = []
    for s in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        out = sdedit(model, sampler, images, s, **kw)
        row = {"strength": s, "mse": float(((to_float(out) - to_float(images)) ** 2).mean()), "fd_ratio": realism(out),
               "label_kept": float((classify(out) == labels).float().mean())}
        res["sdedit"].append(row)
        print(f"{s:>8.1f} {row['mse']:>12.4f} {row['fd_ratio']:>9.2f} {row['label_kept']:>10.1%}", flush=True)

    if ckpt.config.classes:
        threes = data.images[held][data.labels[held] == 3][:max(args.n // 2, 1)]
        eight = ckpt.config.classes.index("8")
        res["three_to_eight"] = []
        print(f"\n{len(threes)} threes edited with --class 8 --guidance {args.guidance:g}\n{'strength':>8} "
              f"{'called 8':>9} {'still 3':>8}")
        for s in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
            out = sdedit(model, sampler, threes, s, labels=torch.full((len(threes),), eight), guidance=args.guidance,
                         **kw)
            pred = classify(out)
            row = {"strength": s, "eight": float((pred == 8).float().mean()),
                   "three": float((pred == 3).float().mean())}
            res["three_to_eight"].append(row)
            print(f"{s:>8.1f} {row['eight']:>9.1%} {row['three']:>8.1%}", flush=True)

    if args.pictures:
        first = images[:6]
        mask = make_mask("right", 6, 1, first.shape[-1])
        edit = Edit([RePaint(diffusion, min(args.steps, diffusion.T))], first, 4, mask)
        write_images(edit.figure(edit.draw(model, range(len(edit)), **kw)), Path(args.pictures) / "editing_inpaint.png",
                     nrow=6)
        edit = Edit([SDEdit(sampler, s) for s in (0.25, 0.5, 0.75, 1.0)], images[:2], 4)
        write_images(edit.figure(edit.draw(model, range(len(edit)), **kw)), Path(args.pictures) / "editing_sdedit.png",
                     nrow=6)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
