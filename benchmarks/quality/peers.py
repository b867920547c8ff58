"""ddpm against the DDPM tools people use, for the same minutes of training on the same data.

    python -m benchmarks.quality.peers --budgets 3,6 --out peers-runs     # ~50 min on 2 cores
    python -m benchmarks.quality.peers --sweep --out peers-runs           # the CPU-sized peer's sweep, 3 minutes each

Every tool trains an unconditional model on the 5,000 digits shipped with ddpm for each budget (minutes of its
training loop, timed from its first step; start-up and sampling are not counted), then draws 1,000 samples with its
default fast sampler at 20 network calls, seeded. Every sample set is scored the same way: the Fréchet distance of
the shipped digit classifier's features to those of the 5,000 digits, beside the floor (1,000 of the real digits
themselves, a seeded subset), and the share of samples the classifier labels with probability >= 0.9.

The tools, as a user of each would run them (their configurations are printed and written to OUT/peers.json):

- ``ddpm``: ``ddpm train --data mnist --preset mnist --time-limit B --fit-steps``, then ``ddpm sample --sampler
  sde-dpm++ --steps 20``; ``ddpm-before`` is ddpm as it was before this benchmark (the preset's L_simple, and the
  cosine decay cut off where --time-limit stops it), ``ddpm-fit-l-simple`` the first change alone.
- ``ddp-readme``: denoising-diffusion-pytorch 2.3.4's ``Trainer`` with its README's ``Unet(dim=64, dim_mults=(1, 2,
  4))``, lr 8e-5, batch 32 x 2 accumulated, EMA 0.995 every 10 steps; DDIM at 20 steps (its fast sampler,
  ``sampling_timesteps``). Horizontal flips off (digits), no FID during training, fp32 (no GPU for amp).
- ``ddp-cpu``: the same Trainer with the width and learning rate that ``--sweep`` found best at the shortest budget.
- ``diffusers``: a loop as diffusers' train_unconditional example writes it (UNet2DModel, DDPMScheduler with 1,000
  linear steps, AdamW lr 1e-4 betas (0.95, 0.999), weight decay 1e-6, cosine schedule with 500 warm-up steps over
  100 epochs, batch 16, clipping at 1, EMAModel with warm-up, power 3/4, max 0.9999), sized for 28 x 28;
  DPMSolverMultistepScheduler at 20 steps (diffusers' fast sampler).

denoising-diffusion-pytorch imports torchvision, which does not install beside this machine's torch; it is
installed without its dependencies (``pip install --no-deps denoising-diffusion-pytorch==2.3.4`` plus einops,
accelerate and ema-pytorch) and runs with a stand-in ``torchvision`` module (``_torchvision_stand_in``) that does
what its Trainer asks of torchvision with Pillow and numpy: the same transforms (convert, resize, centre crop, to a
[0, 1] tensor) on the same images, and ``save_image``, which no budget here reaches. What it computes is unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

from benchmarks.common import parse

CALLS = 20
TOOLS = {
    "ddpm": {"kind": "ddpm", "preset": "mnist", "args": ["--fit-steps"]},
    "ddp-readme": {"kind": "ddp", "dim": 64, "dim_mults": [1, 2, 4], "lr": 8e-5, "batch": 32, "accum": 2,
                   "ema": 0.995},
    "ddp-cpu": {"kind": "ddp", "dim": 32, "dim_mults": [1, 2, 4], "lr": 1e-3, "batch": 64, "accum": 1, "ema": 0.995},
    "diffusers": {"kind": "diffusers", "channels": [32, 64, 128], "lr": 1e-4, "batch": 16, "warmup": 500,
                  "epochs": 100},
}
# ddpm before this benchmark (the preset's L_simple, its decay cut off by --time-limit), and one change alone
BEFORE = {"ddpm-before": {"kind": "ddpm", "preset": "mnist", "args": ["--snr-gamma", "0"]},
          "ddpm-fit-l-simple": {"kind": "ddpm", "preset": "mnist", "args": ["--fit-steps", "--snr-gamma", "0"]}}
SWEEP = [{"dim": 16, "lr": 1e-3}, {"dim": 16, "lr": 3e-3}, {"dim": 32, "lr": 1e-3}]  # ddp-cpu candidates
SMOKE = {"budgets": "0.03", "n": 16, "out": None, "tools": "ddpm,ddp-cpu,diffusers"}
SMOKE_SIZES = {"ddp": {"dim": 8}, "diffusers": {"channels": [8, 16, 16], "groups": 8}}


# ----------------------------------------------------------------------------- data
def digits() -> np.ndarray:
    """The 5,000 shipped digits, uint8 [N, 28, 28]."""
    from ddpm.data.sources import load_data

    return load_data("mnist", channels=1, image_size=28, progress=False).images[:, 0].numpy()


def digit_folder(work: Path) -> Path:
    """The digits as PNG files: what denoising-diffusion-pytorch's Trainer reads."""
    from PIL import Image

    folder = work / "digits"
    if not (folder / "04999.png").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(digits()):
            Image.fromarray(im).save(folder / f"{i:05d}.png")
    return folder


class _Budget(Exception):
    pass


def timed(batches, seconds: float):
    """``batches`` until ``seconds`` have passed since the first was taken, then _Budget."""
    t0 = None
    for b in batches:
        if t0 is None:
            t0 = time.monotonic()
        elif time.monotonic() - t0 > seconds:
            raise _Budget
        yield b


# ----------------------------------------------------------------------------- the tools
def run_ddpm(cfg, seconds: float, work: Path, n: int, smoke: bool) -> dict:
    run = work / "run"
    extra = ["--preset", "tiny", "--image-size", "28", "--T", "50"] if smoke else ["--preset", cfg["preset"]]
    extra += cfg.get("args", [])
    ddpm = [sys.executable, "-m", "ddpm"]
    subprocess.run([*ddpm, "train", "--data", "mnist", "--out", str(run), *extra, "--time-limit", str(seconds / 60),
                    "--quiet"], check=True)
    from ddpm.run.directory import checkpoint_step, list_checkpoints
    from ddpm.run.metrics import read_metrics

    steps = checkpoint_step(list_checkpoints(run)[-1])
    t0 = time.monotonic()
    subprocess.run([*ddpm, "sample", "--run", str(run), "--n", str(n), "--sampler", "sde-dpm++", "--steps",
                    str(CALLS if not smoke else 2), "--out", str(work / "samples.npz"), "--quiet"], check=True)
    images = np.load(work / "samples.npz")["arr_0"][..., 0]
    rows = read_metrics(run / "metrics.csv")
    return {"steps": steps, "train_s": rows[-1]["elapsed_s"] if rows else None, "sample_s": time.monotonic() - t0,
            "sampler": "sde-dpm++", "images": images}


def _torchvision_stand_in() -> None:
    """A ``torchvision`` module with what denoising-diffusion-pytorch's Trainer takes from it, in Pillow and numpy."""
    import torch
    from PIL import Image

    class Compose:
        def __init__(self, fs):
            self.fs = fs

        def __call__(self, x):
            for f in self.fs:
                x = f(x)
            return x

    class Lambda:
        def __init__(self, f):
            self.f = f

        def __call__(self, x):
            return self.f(x)

    class Resize:  # torchvision's: an (h, w) exactly, or the short side to an int; bilinear
        def __init__(self, size):
            self.size = size

        def __call__(self, im):
            w, h = im.size
            if isinstance(self.size, int):
                s = self.size / min(w, h)
                new = (round(w * s), round(h * s))
            else:
                new = (self.size[1], self.size[0])
            return im if (w, h) == new else im.resize(new, Image.BILINEAR)

    class CenterCrop:
        def __init__(self, size):
            self.size = (size, size) if isinstance(size, int) else tuple(size)

        def __call__(self, im):
            (w, h), (ch, cw) = im.size, self.size
            left, top = (w - cw) // 2, (h - ch) // 2
            return im.crop((left, top, left + cw, top + ch))

    class RandomHorizontalFlip:
        def __call__(self, im):
            return im.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand(1).item() < 0.5 else im

    def to_tensor(im):
        a = np.asarray(im, dtype=np.float32) / 255.0
        return torch.from_numpy(a[None] if a.ndim == 2 else a.transpose(2, 0, 1).copy())

    class ToTensor:
        def __call__(self, im):
            return to_tensor(im)

    def save_image(images, path, nrow=8):
        from ddpm.viz import save_grid

        save_grid((images.clamp(0, 1) * 255).round().to(torch.uint8), path)

    tv = types.ModuleType("torchvision")
    tv.transforms = types.SimpleNamespace(Compose=Compose, Lambda=Lambda, Resize=Resize, CenterCrop=CenterCrop,
                                          RandomHorizontalFlip=RandomHorizontalFlip, ToTensor=ToTensor)
    tv.utils = types.SimpleNamespace(save_image=save_image)
    sys.modules["torchvision"] = tv


def run_ddp(cfg, seconds: float, work: Path, n: int, smoke: bool) -> dict:
    import torch

    _torchvision_stand_in()
    from denoising_diffusion_pytorch import GaussianDiffusion, Trainer, Unet

    torch.manual_seed(0)
    model = Unet(dim=cfg["dim"], dim_mults=tuple(cfg["dim_mults"]), channels=1, flash_attn=False)
    diffusion = GaussianDiffusion(model, image_size=28, timesteps=1000, sampling_timesteps=CALLS if not smoke else 2)
    trainer = Trainer(diffusion, str(digit_folder(work.parent)), train_batch_size=cfg["batch"],
                      gradient_accumulate_every=cfg["accum"], train_lr=cfg["lr"], train_num_steps=10 ** 9,
                      ema_decay=cfg["ema"], amp=False, calculate_fid=False, save_and_sample_every=10 ** 9,
                      results_folder=str(work / "results"), augment_horizontal_flip=False)
    trainer.dl = timed(trainer.dl, seconds)
    t0 = time.monotonic()
    try:
        trainer.train()
    except _Budget:
        pass
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    torch.manual_seed(1)
    ema = trainer.ema.ema_model.eval()
    with torch.inference_mode():
        images = torch.cat([ema.sample(batch_size=min(250, n - i)) for i in range(0, n, 250)])
    return {"steps": trainer.step, "train_s": train_s, "sample_s": time.monotonic() - t0, "sampler": "ddim",
            "params": sum(p.numel() for p in model.parameters()),
            "images": (images[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()}


def run_diffusers(cfg, seconds: float, work: Path, n: int, smoke: bool) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    ch = cfg["channels"]
    model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2, block_out_channels=ch,
                        norm_num_groups=cfg.get("groups", 32),
                        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    data = torch.from_numpy(digits()).float().div(127.5).sub(1).unsqueeze(1)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    per_epoch = -(-len(data) // cfg["batch"])
    lr_sched = get_cosine_schedule_with_warmup(opt, cfg["warmup"], per_epoch * cfg["epochs"])
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)

    def batches():
        while True:
            for idx in torch.randperm(len(data)).split(cfg["batch"]):
                yield data[idx]

    steps, t0 = 0, time.monotonic()
    try:
        for x0 in timed(batches(), seconds):
            noise = torch.randn_like(x0)
            t = torch.randint(0, 1000, (len(x0),))
            loss = F.mse_loss(model(scheduler.add_noise(x0, noise, t), t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad()
            ema.step(model.parameters())
            steps += 1
    except _Budget:
        pass
    train_s = time.monotonic() - t0
    t0 = time.monotonic()
    ema.copy_to(model.parameters())
    model.eval()
    sampler = DPMSolverMultistepScheduler.from_config(scheduler.config)
    g = torch.Generator().manual_seed(1)
    out = []
    with torch.inference_mode():
        for i in range(0, n, 250):
            x = torch.randn((min(250, n - i), 1, 28, 28), generator=g)
            sampler.set_timesteps(CALLS if not smoke else 2)
            for t in sampler.timesteps:
                x = sampler.step(model(x, t).sample, t, x).prev_sample
            out.append(x)
    images = torch.cat(out)
    return {"steps": steps, "train_s": train_s, "sample_s": time.monotonic() - t0, "sampler": "dpm-solver++",
            "params": sum(p.numel() for p in model.parameters()),
            "images": ((images[:, 0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()}


RUNNERS = {"ddpm": run_ddpm, "ddp": run_ddp, "diffusers": run_diffusers}


# ----------------------------------------------------------------------------- scoring
class Judge:
    """FD of the shipped digit classifier's features against the 5,000 digits, and the confident share."""

    def __init__(self):
        import torch

        from ddpm.evaluation.features import extract_features, load_digit_classifier

        self.torch, self.net, self.extract = torch, load_digit_classifier(), extract_features
        f = self.extract(self.net, torch.from_numpy(digits()).unsqueeze(1))
        self.mu, self.sigma = f.mean(0), np.cov(f, rowvar=False)

    def __call__(self, images: np.ndarray) -> dict:
        from ddpm.evaluation.metrics import frechet_distance

        f, probs = self.extract(self.net, self.torch.from_numpy(images).unsqueeze(1), with_probs=True)
        fd = frechet_distance(f.mean(0), np.cov(f, rowvar=False), self.mu, self.sigma)
        return {"fd": fd, "confident": float((np.asarray(probs).max(1) >= 0.9).mean())}

    def floor(self, n: int) -> float:
        real = digits()[np.random.default_rng(0).permutation(5000)[:n]]
        return self(real)["fd"]


def one(name: str, cfg: dict, budget: float, out: Path, n: int, smoke: bool, judge: Judge) -> dict:
    """One tool at one budget, trained and sampled in a process of its own (threads, memory and imports apart)."""
    import hashlib

    key = hashlib.sha256(json.dumps([cfg, n, smoke], sort_keys=True).encode()).hexdigest()[:8]
    work = out / f"{cfg['kind']}-{key}-{budget:g}min"  # by configuration: the sweep's best is ddp-cpu's run
    if (work / "result.json").is_file():  # done by an earlier run of this command (under this name or another)
        r = {**json.loads((work / "result.json").read_text()), "tool": name}
        (work / "result.json").write_text(json.dumps(r, indent=1))
        return r
    work.mkdir(parents=True, exist_ok=True)
    spec = {"name": name, "cfg": cfg, "budget": budget, "n": n, "smoke": smoke}
    subprocess.run([sys.executable, "-m", "benchmarks.quality.peers", "--one", json.dumps(spec), "--out", str(work)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")})
    r = json.loads((work / "raw.json").read_text())
    r.update(judge(np.load(work / "images.npy")), tool=name, budget=budget, cfg=cfg)
    (work / "result.json").write_text(json.dumps(r, indent=1))
    return r


def _child(spec: dict, work: Path) -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    cfg = spec["cfg"]
    r = RUNNERS[cfg["kind"]](cfg, spec["budget"] * 60, work, spec["n"], spec["smoke"])
    np.save(work / "images.npy", r.pop("images"))
    (work / "raw.json").write_text(json.dumps(r))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="3,6,12,24", help="minutes of training, comma-separated")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"any of {', '.join([*TOOLS, *BEFORE])}")
    ap.add_argument("--n", type=int, default=1000, help="samples per model")
    ap.add_argument("--out", default="peers-runs", help="folder of the runs (a finished one is reused)")
    ap.add_argument("--sweep", action="store_true", help="train the ddp-cpu candidates at the first budget")
    ap.add_argument("--table", action="store_true", help="only the table and plot of every finished run in --out")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parse(ap, SMOKE, argv)
    if args.one:
        _child(json.loads(args.one), Path(args.out))
        return 0
    import tempfile

    out = Path(args.out or tempfile.mkdtemp(prefix="peers-smoke-"))
    budgets = [float(b) for b in args.budgets.split(",")]
    judge = Judge()
    tools = {k: dict({**TOOLS, **BEFORE}[k]) for k in args.tools.split(",")}
    if args.sweep:
        tools = {f"ddp-cpu-d{c['dim']}-lr{c['lr']:g}": {**TOOLS["ddp-cpu"], **c} for c in SWEEP}
        budgets = budgets[:1]
    if args.smoke:
        tools = {k: {**v, **SMOKE_SIZES.get(v["kind"], {})} for k, v in tools.items()}
    floor = judge.floor(args.n)
    if args.table:
        results = sorted((json.loads(p.read_text()) for p in out.glob("*/result.json")),
                         key=lambda r: (r["budget"], r["tool"]))
    else:
        results = [one(name, cfg, b, out, args.n, args.smoke, judge) for b in budgets for name, cfg in tools.items()]
    print(f"FD@{args.n} of the digit classifier's features to the 5,000 digits; floor ({args.n:,} real digits): "
          f"{floor:.1f}")
    print(f"{'tool':<24}{'budget':>7}{'steps':>8}{'s/step':>8}{'sampler':>14}{'FD':>9}{'/floor':>8}{'confident':>11}")
    for r in results:
        print(f"{r['tool']:<24}{r['budget']:>6g}m{r['steps']:>8}{r['train_s'] / max(r['steps'], 1):>8.3f}"
              f"{r['sampler']:>14}{r['fd']:>9.1f}{r['fd'] / floor:>8.1f}{100 * r['confident']:>10.0f}%")
    (out / "peers.json").write_text(json.dumps({"floor": floor, "n": args.n, "calls": CALLS, "results": results},
                                               indent=1))
    _plot(results, floor, out / "peers.png")
    print(f"table: {out / 'peers.json'}, plot: {out / 'peers.png'}", file=sys.stderr)
    return 0


def _plot(results, floor: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for tool in dict.fromkeys(r["tool"] for r in results):
        rs = sorted((r for r in results if r["tool"] == tool), key=lambda r: r["budget"])
        ax.plot([r["budget"] for r in rs], [r["fd"] for r in rs], "o-", label=tool)
    ax.axhline(floor, color="gray", ls="--", lw=1, label="real digits")
    ax.set_xlabel("minutes of training (2 CPU cores)")
    ax.set_ylabel("Fréchet distance (digit classifier)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
