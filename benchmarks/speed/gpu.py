"""What a GPU user needs to know, measured in one go (gpu.sh runs this): about 8 minutes on one H100-class GPU.

    python -m benchmarks.speed.gpu --json gpu.json            # needs a CUDA build of PyTorch and ddpm installed
    python -m benchmarks.speed.gpu --smoke --json smoke.json  # the same code on the CPU with the tiny preset: seconds

Figures (all in the JSON):
- training images/s of the preset's UNet (cifar10: the paper's 35.7M network) at batch 128 in bf16, eager and
  compiled, through ``Trainer.train_step`` and through ``ddpm train`` (metrics.csv), with the model FLOP
  utilisation against the GPU's spec peak (a table of known dense bf16 peaks) and a measured matmul peak;
- seconds for 256 samples with Algorithm 2 (1,000 steps) and with sde-dpm++ (20 steps), eager and compiled, each
  warmed up at the timed batch size first;
- peak CUDA memory (``max_memory_allocated``) of training and of sampling;
- a few fp16 + GradScaler steps (finite losses, the scale);
- a stop and resume on the device against a straight run: the largest weight difference;
- the seconds a checkpoint blocks training, written on the spot and handed to a background write;
- a ``ddpm sample`` job of 256 images, timed;
- the paper's 256x256 network (celebahq256) at its batch of 64 in bf16: peak CUDA memory and step time of a
  training step with and without ``--grad-checkpointing``, against ``--dry-run``'s estimate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import parse

HERE = Path(__file__).resolve().parent

# dense bf16 tensor-core peaks from the vendors' spec sheets, TFLOP/s (the first name that the device's contains)
SPEC_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0,
                    "L4": 121.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}


def spec_peak(name: str):
    for key, value in SPEC_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def trainer_for(cfg, device, n_images: int = 512):
    from ddpm.data.sources import ImageData
    from ddpm.nn.unet import UNet
    from ddpm.training.train import Trainer

    m = cfg.model
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, m.in_channels, m.image_size, m.image_size), generator=g,
                           dtype=torch.uint8)
    data = ImageData(images=images, labels=None, name="random", hflip=True)
    torch.manual_seed(0)
    return Trainer(UNet(m), cfg.diffusion.build(), data, cfg.train, device=device)


def train_speed(cfg, device, steps: int, compile_: bool) -> dict:
    """img/s of train_step after warm-up, peak memory, and FLOPs per image (forward + backward)."""
    import dataclasses

    from benchmarks.speed.speed import count_flops

    tr = trainer_for(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, compile=compile_)), device)
    for _ in range(3 if compile_ else 2):  # compile and autotune outside the timing
        tr.train_step()
    reset_memory(device)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        tr.train_step()
    sync(device)
    img_s = steps * cfg.train.batch_size / (time.perf_counter() - t0)
    x0, t, noise, _ = tr.batches.make(0)
    x0, t, noise = x0.to(device), t.to(device), noise.to(device)

    def fwd_bwd():
        with tr.precision.autocast():
            tr.diffusion.training_loss(tr.model, x0, t, noise).mean().backward()

    flops = count_flops(fwd_bwd) / cfg.train.batch_size
    tr.optimizer.zero_grad(set_to_none=True)
    return {"img_per_s": img_s, "flops_per_image": flops, "precision": tr.precision.kind,
            "peak_memory_gib": peak_memory_gib(device)}


def sampling_speed(model, diffusion, shape, n: int, device, compile_: bool) -> dict:
    from ddpm.sampling.generation import generate
    from ddpm.sampling.samplers import make_sampler
    from ddpm.sampling.settings import SamplingSettings

    net = torch.compile(model) if compile_ else model
    out = {}
    settings = SamplingSettings(n=n, batch_size=n, device=device, precision="bf16", progress=False)
    for name, steps in (("ancestral", None), ("sde-dpm++", 20)):
        sampler = make_sampler(name, diffusion, steps=steps)
        warm = make_sampler("respaced", diffusion, steps=2)
        generate(net, warm, shape, settings)  # same batch
        reset_memory(device)
        sync(device)
        t0 = time.perf_counter()
        generate(net, sampler, shape, settings)
        sync(device)
        out[f"{name}_{sampler.steps}_steps_s"] = time.perf_counter() - t0
        out[f"{name}_peak_memory_gib"] = peak_memory_gib(device)
    return out


def fp16_steps(cfg, device, steps: int = 5) -> dict:
    import dataclasses

    tr = trainer_for(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision="fp16")), device)
    losses = [tr.train_step().numbers()["loss"] for _ in range(steps)]
    return {"losses": losses, "all_finite": all(math.isfinite(v) for v in losses),
            "scale": tr.precision.scaler.get_scale() if tr.precision.scaler is not None else None,
            "precision": tr.precision.kind}


def checkpoint_stall(cfg, device) -> dict:
    """Seconds a checkpoint of the preset's network (weights, EMA, Adam) blocks training: written on the spot,
    and copied to host memory for a background write (``Trainer.save(background=True)``, what ``fit`` does)."""
    tr = trainer_for(cfg, device)
    tr.train_step()  # Adam's state exists
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key, background in (("on_the_spot_s", False), ("stall_s", True)):
            sync(device)
            t0 = time.perf_counter()
            tr.save(Path(tmp) / key, background=background)
            out[key] = time.perf_counter() - t0
            tr.writer.wait()
    return out


def stop_and_resume(cfg, device, steps: int) -> dict:
    """``2 steps`` straight against ``steps``, a checkpoint, a fresh Trainer loading it, ``steps`` more."""
    from ddpm.run.directory import load_checkpoint

    straight = trainer_for(cfg, device)
    for _ in range(2 * steps):
        straight.train_step()
    first = trainer_for(cfg, device)
    for _ in range(steps):
        first.train_step()
    with tempfile.TemporaryDirectory() as tmp:
        from ddpm.run.directory import write_config

        write_config(tmp, cfg)
        first.save(Path(tmp))
        second = trainer_for(cfg, device)
        second.load(load_checkpoint(tmp, with_optimizer=True, map_location=device))
    for _ in range(steps):
        second.train_step()
    diff = max((a - b).abs().max().item() for a, b in zip(straight.model.state_dict().values(),
                                                           second.model.state_dict().values()))
    return {"steps": 2 * steps, "max_weight_difference": diff}


def cli_runs(cfg, device, args, tmp: Path) -> dict:
    from benchmarks.speed.cli_speed import make_folder

    make_folder(tmp / "images", 256, cfg.model.image_size)
    out = {}
    env = {**os.environ}
    for extra in ([], ["--compile"]) if not args.smoke else ([],):
        run = tmp / f"run{len(extra)}"
        cmd = [sys.executable, "-m", "ddpm", "train", "--data", str(tmp / "images"), "--out", str(run), "--preset",
               args.preset, "--batch-size", str(args.batch_size), "--steps", str(args.cli_steps), "--log-every",
               str(max(1, args.cli_steps // 4)), "--save-every", "1000000", "--sample-every", "0", "--quiet",
               "--device", device.type, "--channels", str(cfg.model.in_channels), *extra]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        import csv

        with open(run / "metrics.csv") as f:
            rows = [float(r["img_per_s"]) for r in csv.DictReader(f)]
        out["ddpm_train" + ("_compiled" if extra else "") + "_img_per_s"] = rows[-1]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ddpm", "sample", "--run", str(tmp / "run0"), "--n", str(args.n),
                    "--sampler", "sde-dpm++", "--steps", "20", "--out", str(tmp / "s.npz"), "--quiet",
                    "--device", device.type], check=True, env=env, stdout=subprocess.DEVNULL)
    out["ddpm_sample_job_s"] = time.perf_counter() - t0
    return out


def checkpointing_memory(preset: str, batch: int, device, smoke: bool) -> dict:
    """Peak CUDA memory (GiB) and step time of the preset's training step at ``batch``, with and without gradient
    checkpointing, beside ``training.memory``'s estimate (MiB)."""
    from ddpm.config import make_run_config
    from ddpm.training.memory import estimate_step_memory

    out = {}
    for gc in (False, True):
        cfg = make_run_config(preset, train={"data": "mnist", "batch_size": batch, "val_fraction": 0.0,
                                             "precision": "fp32" if smoke else "bf16", "grad_checkpointing": gc},
                              diffusion={"T": 100} if smoke else {})
        tr = trainer_for(cfg, device, n_images=2 * batch)
        tr.train_step()
        reset_memory(device)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            tr.train_step()
        sync(device)
        est = estimate_step_memory(cfg, micro_batch=batch, precision=cfg.train.precision, checkpointing=gc)
        step_s = (time.perf_counter() - t0) / 3
        out["on" if gc else "off"] = {"peak_memory_gib": peak_memory_gib(device), "step_s": step_s,
                                      "estimate_mib": est["total"]}
        del tr
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None, help="write every figure here")
    args = parse(ap, {"json": "gpu-smoke.json"}, required=("--json",))  # --smoke: the CPU and the tiny preset
    if args.smoke:
        import functools

        device = torch.device("cpu")
        args.preset, args.batch_size, args.steps, args.n, args.cli_steps = "tiny", 8, 2, 4, 4
        # the compiled paths run through torch.compile, without inductor's minutes of code generation
        torch.compile = functools.partial(torch.compile, backend="eager")
    else:
        if not torch.cuda.is_available():
            print("gpu.py: CUDA is not available (a CUDA build of PyTorch and a GPU are needed; --smoke runs on the "
                  "CPU)", file=sys.stderr)
            return 2
        device = torch.device("cuda", 0)
        args.preset, args.batch_size, args.steps, args.n, args.cli_steps = "cifar10", 128, 20, 256, 100
    from benchmarks.speed.speed import matmul_peak
    from ddpm.config import make_run_config

    cfg = make_run_config(args.preset, train={"data": "mnist", "batch_size": args.batch_size,
                                              "precision": "fp32" if args.smoke else "bf16", "val_fraction": 0.0},
                          diffusion={"T": 100} if args.smoke else {})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    res = {"device": name, "torch": torch.__version__, "preset": args.preset, "batch_size": args.batch_size,
           "smoke": args.smoke}
    t_start = time.perf_counter()
    res["matmul_peak_tflops_bf16"] = matmul_peak(torch.bfloat16, device, n=256 if args.smoke else 8192) / 1e3
    res["spec_peak_tflops_bf16"] = spec_peak(name)
    for compile_ in (False, True):
        key = "train_compiled" if compile_ else "train_eager"
        r = train_speed(cfg, device, args.steps, compile_)
        achieved = r["img_per_s"] * r["flops_per_image"] / 1e12
        r["mfu_vs_measured_peak"] = achieved / res["matmul_peak_tflops_bf16"]
        r["mfu_vs_spec_peak"] = achieved / res["spec_peak_tflops_bf16"] if res["spec_peak_tflops_bf16"] else None
        res[key] = r
        print(f"{key}: {r['img_per_s']:.1f} img/s ({r['precision']}), MFU {r['mfu_vs_measured_peak']:.1%} of the "
              f"measured matmul peak", flush=True)
    tr = trainer_for(cfg, device)
    shape = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    for compile_ in (False, True):
        key = "sampling_compiled" if compile_ else "sampling_eager"
        res[key] = sampling_speed(tr.ema, tr.diffusion, shape, args.n, device, compile_)
        print(f"{key}: {res[key]}", flush=True)
    res["fp16_gradscaler"] = fp16_steps(cfg, device)
    res["stop_and_resume"] = stop_and_resume(cfg, device, args.steps)
    res["checkpoint"] = checkpoint_stall(cfg, device)
    print(f"fp16: {res['fp16_gradscaler']}; resume: {res['stop_and_resume']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        res["cli"] = cli_runs(cfg, device, args, Path(tmp))
    print(f"cli: {res['cli']}", flush=True)
    res["grad_checkpointing"] = checkpointing_memory("tiny" if args.smoke else "celebahq256", 4 if args.smoke else 64,
                                                     device, args.smoke)
    print(f"grad checkpointing: {res['grad_checkpointing']}", flush=True)
    res["total_s"] = time.perf_counter() - t_start
    Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {args.json} ({res['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
