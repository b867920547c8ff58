"""The Trainer: Algorithm 1 with the paper's recipe (Adam, warm-up, gradient clipping, EMA).

The Trainer is given its model, diffusion, data and config and builds none of them. Every random
draw of a training example (which image, its flip, its t and its eps) is a pure function of
``(seed, step, position in the global batch)``, so the data position *is* the step: a resumed run
sees exactly the examples that a straight run would have seen, and N processes under torchrun
(each taking a contiguous slice of the global batch, in ``grad_accum`` micro-batches) see exactly
the examples of one process: their averaged gradient is the one-process gradient up to the order
of floating-point sums.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import csv
import hashlib
import math
import random
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .checkpoint import Checkpoint, list_checkpoints, save_checkpoint
from .config import TrainConfig
from .data import ImageData, to_float
from .diffusion import GaussianDiffusion
from .errors import DDPMError
from .samplers import Ancestral, generate
from .viz import plot_loss, save_grid

__all__ = ["Trainer", "derive_seed", "resolve_precision", "dist_info"]

METRICS = ("step", "loss", "lr", "grad_norm", "img_per_s", "elapsed_s", "skipped")


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 matmuls/convolutions run natively (CPU: AVX-512 BF16 / AMX; CUDA: Ampere or newer)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> 'bf16' where the hardware supports it natively, else 'fp32'."""
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def dist_info():
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _shares(total: int, parts: int) -> list:
    """Split range(total) into ``parts`` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed that depends on every part (stable across processes and Python versions)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def loss_weights(diffusion: GaussianDiffusion, snr_gamma: float) -> torch.Tensor:
    """Per-timestep weights of L_simple under min-SNR-gamma (gamma > 0): min(SNR_t, gamma) / SNR_t."""
    abar = diffusion.schedule.alphas_cumprod
    snr = abar / (1 - abar)
    return (snr.clamp(max=snr_gamma) / snr).float()


# ----------------------------------------------------------------------------- RNG state <-> JSON
def _rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [np_state[0], np_state[1].tolist(), *map(lambda v: v.item() if hasattr(v, "item") else v, np_state[2:])],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)
                                      for s in state["cuda"]])


def _adam(params, lr: float) -> torch.optim.Optimizer:
    """Adam, fused into one kernel where PyTorch has it (3x faster steps on a CPU for the cifar10 net)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older PyTorch or an unsupported device/dtype
        return torch.optim.Adam(params, lr=lr)


class Trainer:
    """Trains ``model`` as eps_theta on ``data`` with ``diffusion``'s L_simple (Algorithm 1).

    ``train_step()`` does one optimisation step; ``fit(run_dir)`` loops to ``config.steps`` with
    progress, metrics, sample grids, checkpoints and clean stops on SIGINT/SIGTERM.
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion, data: ImageData, config: TrainConfig,
                 *, device: torch.device | str = "cpu"):
        config.validate()
        self.config, self.diffusion, self.data = config, diffusion, data
        self.device = torch.device(device)
        self.model = model.to(self.device).train()
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = _adam(self.model.parameters(), config.lr)
        self.hflip = data.hflip if config.hflip is None else config.hflip
        self.step = 0  # number of optimisation steps done
        self.ema_updates = 0
        self.skipped = 0  # steps skipped for a non-finite loss or gradient (--skip-nonfinite)
        self.rank, self.world = dist_info()
        if self.world * config.grad_accum > config.batch_size:
            raise DDPMError(f"--batch-size {config.batch_size} is too small for {self.world} processes x "
                            f"--grad-accum {config.grad_accum}: each needs at least one example")
        self._ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)
        self._net = self._ddp or self.model  # what the training step calls
        if config.compile:
            self._net = torch.compile(self._net)
        self._perms: Dict[int, torch.Tensor] = {}
        self._log = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
        self._stop: Optional[str] = None
        self.bf16 = resolve_precision(config.precision, self.device) == "bf16"
        # per-timestep weights of L_simple under --snr-gamma; None: the paper's unweighted mean
        self.loss_weights = None
        if config.snr_gamma > 0:
            self.loss_weights = loss_weights(diffusion, config.snr_gamma).to(self.device)

    # ------------------------------------------------------------------------- the recipe
    def lr_at(self, step: int) -> float:
        """Linear warm-up to ``lr`` over ``warmup`` steps (step is 0-based), then constant or cosine to 0."""
        cfg = self.config
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        if cfg.lr_schedule == "cosine":
            progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
            return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return cfg.lr

    def example_indices(self, step: int, positions: range) -> torch.Tensor:
        """Dataset indices of the examples at ``positions`` of the global batch of ``step``.

        Example k = step * batch_size + position runs through a fresh permutation every epoch.
        """
        n, b = len(self.data), self.config.batch_size
        out = []
        for j in positions:
            k = step * b + j
            epoch = k // n
            if epoch not in self._perms:
                g = torch.Generator().manual_seed(derive_seed(self.config.seed, "epoch", epoch))
                self._perms = {epoch: torch.randperm(n, generator=g)}
            out.append(self._perms[epoch][k % n])
        return torch.stack(out)

    def make_batch(self, step: int, positions: Optional[range] = None):
        """(x0, t, noise) for ``step``: x0 float [B, C, H, W] in [-1, 1], t int64 [B], noise [B, C, H, W]."""
        positions = positions if positions is not None else range(self.config.batch_size)
        x0 = to_float(self.data.images[self.example_indices(step, positions)])
        ts, noises = [], []
        for j, pos in enumerate(positions):
            g = torch.Generator().manual_seed(derive_seed(self.config.seed, "example", step, pos))
            ts.append(torch.randint(0, self.diffusion.T, (1,), generator=g))
            flip = torch.rand((), generator=g) < 0.5
            noises.append(torch.randn(x0.shape[1:], generator=g))
            if self.hflip and flip:
                x0[j] = x0[j].flip(-1)
        t, noise = torch.cat(ts), torch.stack(noises)
        return x0.to(self.device), t.to(self.device), noise.to(self.device)

    def micro_batches(self) -> list:
        """This process's micro-batches: positions of the global batch, ``grad_accum`` contiguous ranges."""
        mine = _shares(self.config.batch_size, self.world)[self.rank]
        return [range(mine.start + r.start, mine.start + r.stop)
                for r in _shares(len(mine), self.config.grad_accum) if len(r)]

    def train_step(self) -> Dict[str, float]:
        """One step of Algorithm 1 + Adam + clipping + EMA. Returns loss, grad_norm, lr.

        The loss of each micro-batch is weighted by its share of the global batch, so the summed (and,
        across processes, averaged by DDP) gradient is the gradient of the global batch's mean loss.
        """
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        net = self._net
        micro = self.micro_batches()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, positions in enumerate(micro):
            x0, t, noise = self.make_batch(self.step, positions)
            sync = i == len(micro) - 1 or self._ddp is None
            with (contextlib.nullcontext() if sync else self._ddp.no_sync()):
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                    per_example = self.diffusion.training_loss(net, x0, t, noise)
                    if self.loss_weights is not None:
                        per_example = per_example * self.loss_weights[t]
                    loss = per_example.mean()
                weight = len(positions) / self.config.batch_size
                (loss * (weight * self.world)).backward()
            total += loss.detach().double() * weight
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        if not (torch.isfinite(total) and torch.isfinite(grad_norm)):
            what = "loss" if not torch.isfinite(total) else "gradient norm"
            value = (total if what == "loss" else grad_norm).item()
            if not self.config.skip_nonfinite:
                raise DDPMError(f"the {what} became {value} at step {self.step + 1}; stopping with the last "
                                f"checkpoint intact (try a lower --lr, or --skip-nonfinite)")
            self.optimizer.zero_grad(set_to_none=True)  # the weights, Adam and the EMA stay as they were
            self.skipped += 1
            self.step += 1
            return {"loss": float("nan"), "grad_norm": float("nan"), "lr": lr, "skipped": True}
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return {"loss": total.item(), "grad_norm": float(grad_norm), "lr": lr}

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * theta, every step from step 1."""
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, p, 1.0 - self.config.ema_decay)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)
        self.ema_updates += 1

    # ------------------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        """JSON-able trainer state that is not in the weights or the optimizer."""
        return {"ema_updates": self.ema_updates, "skipped": self.skipped, "rng": _rng_state(),
                "log_acc": dict(self._log)}

    def load(self, ckpt: Checkpoint) -> None:
        """Restore model, EMA, optimizer, step, RNGs and the metrics accumulator from a checkpoint."""
        self.model.load_state_dict(ckpt.model.state_dict())
        self.ema.load_state_dict(ckpt.ema_model.state_dict())
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.step = ckpt.step
        self.ema_updates = int(ckpt.state.get("ema_updates", ckpt.step))
        self.skipped = int(ckpt.state.get("skipped", 0))
        self._log = dict(ckpt.state.get("log_acc", self._log))
        if "rng" in ckpt.state:
            _set_rng_state(ckpt.state["rng"])

    def save(self, run_dir: Path) -> Path:
        return save_checkpoint(run_dir, step=self.step, model=self.model, ema_model=self.ema,
                               optimizer=self.optimizer, state=self.state(), keep=self.config.keep)

    # ------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_grid(self, path: Path, n: Optional[int] = None) -> None:
        """EMA samples from a fixed seed, so grids at different steps are comparable."""
        shape = tuple(self.data.images.shape[1:])
        images = generate(self.ema, Ancestral(self.diffusion), n or self.config.n_samples, shape,
                          seed=derive_seed(self.config.seed, "grid"), device=self.device, progress=False)
        save_grid(images, path, scale=2 if shape[-1] < 64 else 1)

    # ------------------------------------------------------------------------- the loop
    def fit(self, run_dir: Path, *, progress: bool = True, echo=print) -> str:
        """Train until ``config.steps`` (or a signal, or ``time_limit``). Returns why it stopped.

        Saves a checkpoint every ``save_every`` steps and whenever it stops.
        """
        run_dir = Path(run_dir)
        cfg = self.config
        main = self.rank == 0  # under torchrun only rank 0 writes: metrics, plots, grids, checkpoints
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        metrics = _MetricsFile(run_dir / "metrics.csv", self.step) if main else None
        start = last_t = last_plot = time.monotonic()
        first_step = last_step = self.step
        bar = _progress(progress and main, total=cfg.steps, initial=self.step)
        reason = "done"
        with _stop_on_signals(self):
            while self.step < cfg.steps:
                out = self.train_step()
                if not out.get("skipped"):
                    self._log["loss"] += out["loss"]
                    self._log["grad_norm"] += out["grad_norm"]
                    self._log["n"] += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.monotonic()
                    ips = (self.step - last_step) * cfg.batch_size / max(now - last_t, 1e-9)
                    n = self._log["n"]
                    row = {"step": self.step, "loss": self._log["loss"] / n if n else float("nan"), "lr": out["lr"],
                           "grad_norm": self._log["grad_norm"] / n if n else float("nan"), "img_per_s": ips,
                           "elapsed_s": now - start, "skipped": self.skipped}
                    if main:
                        metrics.append(row)
                        if now - last_plot > 30 or self.step == cfg.steps:  # drawing costs ~0.2 s: not every row
                            plot_loss(metrics.path, run_dir / "loss.png")
                            last_plot = now
                    self._log = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
                    last_t, last_step = now, self.step
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
                if bar is not None:
                    bar.update(1)
                if main and cfg.sample_every and self.step % cfg.sample_every == 0:
                    (run_dir / "samples").mkdir(exist_ok=True)
                    self.sample_grid(run_dir / "samples" / f"step-{self.step:08d}.png")
                if cfg.time_limit and time.monotonic() - start > cfg.time_limit * 60:
                    self._stop = self._stop or "time limit"
                if self._agree_to_stop():
                    reason = self._stop or "stopped by another process"
                    break
                if main and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.save(run_dir)
        if bar is not None:
            bar.close()
        if not main:
            return reason
        plot_loss(metrics.path, run_dir / "loss.png")
        if self.step == first_step and list_checkpoints(run_dir):  # nothing new to save
            return reason
        path = self.save(run_dir)
        if reason != "done":
            echo(f"stopped at step {self.step} ({reason}); checkpoint {path}. "
                 f"Continue with: ddpm train --out {run_dir} --resume")
        return reason

    def _agree_to_stop(self) -> bool:
        """Whether to stop now: this process was asked to, or (under torchrun) any process was."""
        if self.world == 1:
            return self._stop is not None
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self._stop else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class _MetricsFile:
    """RUN/metrics.csv. On resume, rows logged after the checkpoint's step are dropped first."""

    def __init__(self, path: Path, step: int):
        self.path = path
        rows = []
        if path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRICS)
            w.writeheader()
            w.writerows({k: r.get(k, "") for k in METRICS} for r in rows)

    def append(self, row: Dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=METRICS).writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def _progress(enabled: bool, **kw):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="training", unit="step", dynamic_ncols=True, **kw)


@contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and save); a second SIGINT aborts."""
    def handler(signum, frame):
        if trainer._stop and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer._stop = signal.Signals(signum).name

    try:
        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
