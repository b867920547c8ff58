"""ddpm against diffusers on the same network with the same weights: training and sampling speed.

    python -m benchmarks.speed.speed                       # cifar10 at batch 8 and mnist at batch 64, CPU
    python -m benchmarks.speed.speed --preset cifar10 --rounds 7 --device cuda --batch-size 128

Side by side in one process, alternating, median of --rounds rounds (each --iters timed steps after
a warm-up). The diffusers UNet2DModel gets ddpm's weights through the diffusers export, so both run
the same architecture and parameters. Rows:

- train: one step of Algorithm 1 with Adam (forward, L_simple, backward, clip, optimizer, EMA):
  ``ddpm`` is ``Trainer.train_step`` as ``ddpm train`` runs it by default (precision auto); diffusers
  is a plain PyTorch loop in fp32 and under bf16 autocast;
- forward: one network call under no_grad, as sampling makes it;
- sampler overhead: the ancestral loop against the same number of bare forwards;
- FLOP utilisation: FLOPs counted by torch.utils.flop_counter against a measured matmul peak.

Peak memory (max RSS) comes from separate child processes, one per configuration.

The process runs with the malloc setting ``ddpm``'s CLI applies (``ddpm.runtime.keep_freed_memory``), and
diffusers, sharing the process, gets it too: this compares the two networks and loops on equal terms.
``cli_speed.py`` compares ``ddpm train`` with a diffusers loop as users run them, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from benchmarks.common import parse


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 2048, iters: int = 5, rounds: int = 5) -> float:
    """The best of ``rounds`` timings of ``iters`` n x n matmuls, in GFLOP/s (a peak: the best, not the median)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(rounds):
        _sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        _sync(device)
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t) / 1e9)
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def build(preset: str, batch: int, device: torch.device, seed: int = 0, ours: bool = True, theirs: bool = True):
    """(ddpm Trainer, diffusers UNet2DModel with the same weights, diffusion, (channels, size)).

    ``ours`` / ``theirs`` False leave that side out (None), e.g. to measure the other's memory alone.
    """
    from ddpm.config import make_run_config
    from ddpm.data.sources import ImageData
    from ddpm.interop.diffusers import to_diffusers_state_dict, unet_config_to_diffusers
    from ddpm.nn.unet import UNet
    from ddpm.training.train import Trainer

    cfg = make_run_config(preset, train={"batch_size": batch, "warmup": 1})
    torch.manual_seed(seed)
    c, s = cfg.model.in_channels, cfg.model.image_size
    diffusion = cfg.diffusion.build()
    model = UNet(cfg.model) if ours or theirs else None
    trainer = unet = None
    if ours:
        images = torch.randint(0, 256, (max(batch, 64), c, s, s), dtype=torch.uint8)
        trainer = Trainer(model, diffusion, ImageData(images, None, "random", True), cfg.train, device=device)
    if theirs:
        from diffusers import UNet2DModel

        dcfg = {k: v for k, v in unet_config_to_diffusers(cfg.model).items() if not k.startswith("_")}
        unet = UNet2DModel(**dcfg).to(device)
        unet.load_state_dict(to_diffusers_state_dict(model))
    if not ours:
        del model
    return trainer, unet, diffusion, (c, s)


class DiffusersLoop:
    """The plain PyTorch training loop a diffusers user writes: Adam, MSE on eps, clip, EMA."""

    def __init__(self, unet, diffusion, batch, shape, device, bf16: bool):
        self.unet, self.device, self.bf16 = unet.train(), device, bf16
        self.opt = torch.optim.Adam(unet.parameters(), lr=2e-4)
        self.ema = [p.detach().clone() for p in unet.parameters()]
        self.abar = diffusion.schedule.alphas_cumprod.float().to(device)
        self.T = diffusion.T
        self.x0 = torch.rand(batch, *shape[:1], shape[1], shape[1], device=device) * 2 - 1

    def step(self):
        x0 = self.x0
        t = torch.randint(0, self.T, (x0.shape[0],), device=self.device)
        eps = torch.randn_like(x0)
        a = self.abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            pred = self.unet(xt, t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, list(self.unet.parameters()), 1 - 0.9999)


def timed(fn, iters: int, device) -> float:
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / iters


def run_speed(args, preset: str, batch: int) -> dict:
    from ddpm.sampling.samplers import Ancestral

    device = torch.device(args.device)
    trainer, theirs, diffusion, shape = build(preset, batch, device)
    c, s = shape
    loops = {
        "ddpm (default: %s)" % trainer.precision.kind: trainer.train_step,
        "diffusers fp32": DiffusersLoop(theirs, diffusion, batch, shape, device, False).step,
        "diffusers bf16 autocast": DiffusersLoop(theirs, diffusion, batch, shape, device, True).step,
    }
    x = torch.randn(batch, c, s, s, device=device)
    t = torch.randint(0, diffusion.T, (batch,), device=device)
    ours_eval, theirs_eval = trainer.ema, theirs

    def fwd(model, bf16, diffusers):
        def f():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = model(x, t)
                return out.sample if diffusers else out
        return f

    forwards = {
        "ddpm bf16": fwd(ours_eval, True, False),
        "ddpm fp32": fwd(ours_eval, False, False),
        "diffusers fp32": fwd(theirs_eval, False, True),
        "diffusers bf16 autocast": fwd(theirs_eval, True, True),
    }
    for fn in list(loops.values()) + list(forwards.values()):  # warm-up
        for _ in range(2):
            fn()
    train_t = {k: [] for k in loops}
    fwd_t = {k: [] for k in forwards}
    for _ in range(args.rounds):
        for k, fn in loops.items():
            train_t[k].append(timed(fn, args.iters, device))
        for k, fn in forwards.items():
            fwd_t[k].append(timed(fn, args.iters, device))
    train = {k: batch / statistics.median(v) for k, v in train_t.items()}
    forward = {k: batch / statistics.median(v) for k, v in fwd_t.items()}

    # sampler overhead: K ancestral steps vs K bare forwards, same batch and precision; each round times the
    # two back to back and the median of the per-round ratios is reported (drift cancels within a pair)
    K = 20
    sampler = Ancestral(diffusion)
    sampler.indices = sampler.indices[-K:]  # the last K steps of the chain are as costly as any

    def sample():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
            sampler(ours_eval, (batch, c, s, s), device=device)

    def bare():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
            for k in range(K):
                ours_eval(x, t)

    sample(), bare()
    ratios = []
    for i in range(args.rounds + 4):
        pair = [("s", sample), ("b", bare)] if i % 2 == 0 else [("b", bare), ("s", sample)]
        got = {name: timed(fn, 1, device) for name, fn in pair}
        ratios.append(got["s"] / got["b"])
    overhead = statistics.median(ratios) - 1
    # the same overhead measured directly: the loop's own work (schedule lookups, means, noise, clipping) with a
    # network that costs nothing (it returns a stored eps), against the bare forwards; no difference of two
    # noisy timings, so it resolves far below 1%
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
        stored = ours_eval(x, t)

    def sample_free():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=True):
            sampler(lambda xt, tt: stored, (batch, c, s, s), device=device)

    sample_free()
    loop_only = statistics.median(timed(sample_free, 5, device) for _ in range(args.rounds))
    bare_only = statistics.median(timed(bare, 1, device) for _ in range(args.rounds))
    overhead_direct = loop_only / bare_only

    gflop_fwd = count_flops(lambda: trainer.ema(x, t)) / batch / 1e9
    def fwd_bwd():
        trainer.model(x, t).square().mean().backward()
    gflop_train = count_flops(fwd_bwd) / batch / 1e9
    trainer.optimizer.zero_grad(set_to_none=True)
    return {"preset": preset, "batch": batch, "train_img_s": train, "forward_img_s": forward,
            "sampler_overhead": overhead, "sampler_overhead_direct": overhead_direct,
            "gflop_per_image_forward": gflop_fwd,
            "gflop_per_image_train": gflop_train}


def peak_memory(args, preset: str, batch: int, which: str) -> float:
    """Peak RSS in MiB of a child process that builds one configuration alone and runs 3 training steps."""
    code = f"""
import sys
from ddpm.runtime import keep_freed_memory
keep_freed_memory()
import torch
from benchmarks.speed.speed import build, DiffusersLoop
ours = {which!r} == "ddpm"
tr, theirs, d, shape = build({preset!r}, {batch}, torch.device({args.device!r}), ours=ours, theirs=not ours)
if ours:
    fn = tr.train_step
else:
    fn = DiffusersLoop(theirs, d, {batch}, shape, torch.device({args.device!r}), {which!r} == "diffusers bf16").step
import gc; gc.collect()
for _ in range(3):
    fn()
# VmHWM: this process's own peak (ru_maxrss would carry the parent's peak across fork and exec)
print([int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")][0] / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_sampling(args, device: torch.device) -> dict:
    """Seconds to draw ``args.sample`` cifar10-sized images with Algorithm 2 (T = 1000), eager and compiled."""
    from ddpm.config import make_run_config
    from ddpm.nn.unet import UNet
    from ddpm.sampling.generation import generate
    from ddpm.sampling.samplers import Ancestral
    from ddpm.sampling.settings import SamplingSettings

    cfg = make_run_config("cifar10")
    model = UNet(cfg.model).to(device).eval()
    sampler = Ancestral(cfg.diffusion.build())
    out = {"sample_images": args.sample}
    variants = {"eager": model}
    if args.compile:
        variants["compiled"] = torch.compile(model)
    for name, net in variants.items():
        settings = SamplingSettings(n=args.sample, batch_size=args.sample, device=device, precision="bf16",
                                    progress=False)
        generate(net, sampler, (3, 32, 32), settings.replace(n=min(args.sample, 16)))  # warm-up (and compilation)
        _sync(device)
        t = time.perf_counter()
        generate(net, sampler, (3, 32, 32), settings)
        _sync(device)
        out[f"seconds_{name}"] = time.perf_counter() - t
        print(f"sampling {args.sample} images, 1000 steps, bf16, {name}: {out[f'seconds_{name}']:.1f} s "
              f"(paper, TPU v3-8: 256 images in 17 s)")
    return out


SMOKE = {"preset": ["tiny"], "batch_size": 4, "rounds": 1, "iters": 1, "matmul_n": 128}

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", action="append", help="cifar10 and/or mnist (default: both)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 8 for cifar10, 64 for mnist")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory child processes")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--sample", type=int, default=0,
                    help="also time drawing this many images with the full 1000-step Algorithm 2 (bf16)")
    ap.add_argument("--matmul-n", type=int, default=2048, help="the size of the matmuls that measure the peak")
    ap.add_argument("--compile", action="store_true", help="time the sampling with a torch.compile'd network too")
    args = parse(ap, SMOKE)
    from ddpm.runtime import keep_freed_memory

    keep_freed_memory()  # as the ddpm CLI does; both sides of the comparison share it
    device = torch.device(args.device)
    n = args.matmul_n  # bf16 is emulated, and slow, on a CPU without it (AVX2): --smoke keeps it small
    peak32, peak16 = matmul_peak(torch.float32, device, n=n), matmul_peak(torch.bfloat16, device, n=n)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}")
    print(f"{n}^2 matmul peak: fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    results = []
    for preset in args.preset or ["cifar10", "mnist"]:
        batch = args.batch_size or {"cifar10": 8, "mnist": 64}.get(preset, 8)
        r = run_speed(args, preset, batch)
        if not args.no_memory:
            r["peak_rss_mib"] = {w: peak_memory(args, preset, batch, w)
                                 for w in ("ddpm", "diffusers fp32", "diffusers bf16")}
        results.append(r)
        print(f"\n{preset}, batch {batch}: {r['gflop_per_image_forward']:.2f} GFLOP/image forward, "
              f"{r['gflop_per_image_train']:.2f} forward+backward")
        base = r["train_img_s"]["diffusers fp32"]
        bf = r["train_img_s"]["diffusers bf16 autocast"]
        print(f"  {'training step (img/s)':<34}{'img/s':>8}{'x diffusers fp32':>18}{'x diffusers bf16':>18}")
        for k, v in r["train_img_s"].items():
            print(f"  {k:<34}{v:>8.1f}{v / base:>18.2f}{v / bf:>18.2f}")
        fbase = r["forward_img_s"]["diffusers fp32"]
        print(f"  {'forward, no_grad (img/s)':<34}{'img/s':>8}{'x diffusers fp32':>18}{'% of peak':>18}")
        for k, v in r["forward_img_s"].items():
            peak = peak16 if "bf16" in k else peak32
            print(f"  {k:<34}{v:>8.1f}{v / fbase:>18.2f}{100 * v * r['gflop_per_image_forward'] / peak:>17.0f}%")
        ours = next(k for k in r["train_img_s"] if k.startswith("ddpm"))
        peak = peak16 if "bf16" in ours else peak32
        print(f"  training FLOP utilisation ({ours}): "
              f"{100 * r['train_img_s'][ours] * r['gflop_per_image_train'] / peak:.0f}% of the matmul peak "
              f"(forward+backward FLOPs only)")
        print(f"  ancestral sampler overhead over bare forwards: {100 * r['sampler_overhead']:+.2f}% "
              "(pairs of timings), "
              f"{100 * r['sampler_overhead_direct']:.3f}% (the loop with a free network / bare forwards)")
        if "peak_rss_mib" in r:
            print("  peak memory of a process that builds one side and trains 3 steps (max RSS, MiB): " +
                  ", ".join(f"{k} {v:.0f}" for k, v in r["peak_rss_mib"].items()))
    if args.sample:
        results.append(time_sampling(args, device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": {"fp32": peak32, "bf16": peak16}, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
