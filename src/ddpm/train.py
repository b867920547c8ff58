"""Training: the Trainer (Algorithm 1 with the paper's recipe: Adam, warm-up, clipping, EMA) and ``train_run``.

The Trainer is given its model, diffusion, data and config and builds none of them. Its examples come
from ``ddpm.batches`` as pure functions of (seed, step, position in the global batch), so N processes
under torchrun (each taking a contiguous slice of the global batch, in ``grad_accum`` micro-batches) see
exactly the examples of one process: their averaged gradient is the one-process gradient up to the order
of floating-point sums, and a resumed run continues exactly.

``train_run`` builds a run from its config (data, network, Trainer), restores its last checkpoint when
resuming, and trains; ``plan_run`` decides the config of a new or resumed run directory.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import torch
from torch import nn

from .config import RunConfig, TrainConfig, make_run_config, resume_config, with_classes
from .atomic import atomic_write_text
from .batches import Batches, Prefetcher
from .data import ImageData, load_data
from .diffusion import GaussianDiffusion
from .errors import DDPMError
from .rng import derive_seed, rng_state, set_rng_state
from .reporting import Reporter, progress_bar
from .run import (IMPORTED_DATA, Checkpoint, checkpoint_step, is_run, list_checkpoints, load_checkpoint, read_config,
                  run_lock, save_checkpoint, step_name, write_config)
from .runtime import any_process, autocast, barrier, rank_world, shares
from .sampling import Ancestral, generate
from .unet import UNet
from .viz import save_grid

__all__ = ["Trainer", "learning_rate", "train_run", "plan_run", "TrainResult"]

log = logging.getLogger(__name__)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps (step is 0-based), then constant or cosine to 0 at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.lr_schedule == "cosine":
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr


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
        self.batches = Batches(data, seed=config.seed, batch_size=config.batch_size, T=diffusion.T,
                               hflip=data.hflip if config.hflip is None else config.hflip,
                               p_uncond=config.p_uncond if config.class_cond else None)
        self.step = 0  # number of optimisation steps done
        self.ema_updates = 0
        self.skipped = 0  # steps skipped for a non-finite loss or gradient (--skip-nonfinite)
        self.rank, self.world = rank_world()
        if self.world * config.grad_accum > config.batch_size:
            raise DDPMError(f"--batch-size {config.batch_size} is too small for {self.world} processes x "
                            f"--grad-accum {config.grad_accum}: each needs at least one example")
        self._ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids)  # the UNet has no buffers
        self._net = self._ddp or self.model  # what the training step calls
        if config.compile:
            self._net = torch.compile(self._net)
        self.log_acc = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
        self.stop_reason: Optional[str] = None  # set (e.g. by a signal) to stop after the current step
        self._prefetch: Optional[Prefetcher] = None  # the next step's batch, assembled while this one trains
        # per-timestep weights of L_simple under --snr-gamma; None: the paper's unweighted mean
        self.loss_weights = diffusion.min_snr_weights(config.snr_gamma).to(self.device) if config.snr_gamma else None

    # ------------------------------------------------------------------------- one step
    def micro_batches(self) -> list:
        """This process's micro-batches: positions of the global batch, ``grad_accum`` contiguous ranges."""
        mine = shares(self.config.batch_size, self.world)[self.rank]
        return [range(mine.start + r.start, mine.start + r.stop)
                for r in shares(len(mine), self.config.grad_accum) if len(r)]

    def lr_at(self, step: int) -> float:
        return learning_rate(self.config, step)

    def set_steps(self, steps: int) -> None:
        """Change the total number of steps of a run in progress. With a cosine decay, do it no later than the
        end of the warm-up: until then no learning rate depends on the total, so the run is the one it would have
        been with ``steps`` from the start."""
        if self.config.lr_schedule == "cosine" and self.step > self.config.warmup:
            raise ValueError(f"the cosine decay began at step {self.config.warmup}: the total can no longer change")
        self.config = dataclasses.replace(self.config, steps=steps)
        self.config.validate()

    def _loss_and_backward(self) -> torch.Tensor:
        """The global batch's mean loss (float64, summed over processes), its gradient accumulated.

        The loss of each micro-batch is weighted by its share of the global batch, so the summed (and,
        across processes, averaged by DDP) gradient is the gradient of the global batch's mean loss.
        """
        micro = self.micro_batches()
        if self._prefetch is None:
            self._prefetch = Prefetcher(self.batches, micro, self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (positions, (x0, t, noise, y)) in enumerate(zip(micro, self._prefetch.get(self.step))):
            x0, t, noise = x0.to(self.device), t.to(self.device), noise.to(self.device)
            y = None if y is None else y.to(self.device)
            sync = i == len(micro) - 1 or self._ddp is None
            with contextlib.nullcontext() if sync else self._ddp.no_sync():
                with autocast(self.device, self.config.precision):
                    per_example = self.diffusion.training_loss(self._net, x0, t, noise, y=y)
                    if self.loss_weights is not None:
                        per_example = per_example * self.loss_weights[t]
                    loss = per_example.mean()
                weight = len(positions) / self.config.batch_size
                (loss * (weight * self.world)).backward()
            total += loss.detach().double() * weight
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(total)
        return total

    def train_step(self) -> Dict[str, float]:
        """One step of Algorithm 1 + Adam + clipping + EMA. Returns loss, grad_norm, lr (and skipped)."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = self._loss_and_backward()
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
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.config.ema_decay)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)
        self.ema_updates += 1

    # ------------------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        """JSON-able trainer state that is not in the weights or the optimizer."""
        return {"ema_updates": self.ema_updates, "skipped": self.skipped, "rng": rng_state(),
                "log_acc": dict(self.log_acc)}

    def load(self, ckpt: Checkpoint) -> None:
        """Restore model, EMA, optimizer, step, RNGs and the metrics accumulator from a checkpoint."""
        self.model.load_state_dict(ckpt.model.state_dict())
        self.ema.load_state_dict(ckpt.ema_model.state_dict())
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.step = ckpt.step
        self.ema_updates = int(ckpt.state.get("ema_updates", ckpt.step))
        self.skipped = int(ckpt.state.get("skipped", 0))
        self.log_acc = dict(ckpt.state.get("log_acc", self.log_acc))
        if "rng" in ckpt.state:
            set_rng_state(ckpt.state["rng"])

    def save(self, run_dir: Path) -> Path:
        return save_checkpoint(run_dir, step=self.step, model=self.model, ema_model=self.ema,
                               optimizer=self.optimizer, state=self.state(), keep=self.config.keep)

    @torch.no_grad()
    def sample_grid(self, path: Path, n: Optional[int] = None) -> None:
        """EMA samples from a fixed seed, so grids at different steps are comparable."""
        shape = tuple(self.data.images.shape[1:])
        images = generate(self.ema, Ancestral(self.diffusion), n or self.config.n_samples, shape,
                          seed=derive_seed(self.config.seed, "grid"), device=self.device, progress=False)
        save_grid(images, path, scale=2 if shape[-1] < 64 else 1)

    # ------------------------------------------------------------------------- the loop
    def fit(self, run_dir: Path, *, progress: bool = True, on_step: Optional[Callable[["Trainer"], None]] = None) -> str:
        """Train until ``config.steps`` (or a signal, or ``time_limit``). Returns why it stopped: "done",
        "time limit", the signal's name, or "stopped by another process". Saves a checkpoint every
        ``save_every`` steps and whenever it stops. Under torchrun only rank 0 writes. ``on_step(trainer)`` is
        called after every step; it may change ``trainer.config`` (e.g. its ``steps``, see ``set_steps``)."""
        run_dir, main = Path(run_dir), self.rank == 0
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        reporter = Reporter(self, run_dir) if main else None
        first_step, start = self.step, time.monotonic()
        bar = progress_bar(progress and main, total=self.config.steps, initial=self.step)
        reason = "done"
        with _stop_on_signals(self):
            while self.step < self.config.steps:
                cfg = self.config
                out = self.train_step()
                if not out.get("skipped"):
                    acc = self.log_acc
                    self.log_acc = {"loss": acc["loss"] + out["loss"], "grad_norm": acc["grad_norm"] + out["grad_norm"],
                                    "n": acc["n"] + 1}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    row = reporter.row(out["lr"]) if main else None
                    self.log_acc = {"loss": 0.0, "grad_norm": 0.0, "n": 0}
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}")
                if bar is not None:
                    bar.update(1)
                if main:
                    self._periodic(run_dir)
                if on_step is not None:
                    on_step(self)
                    if bar is not None and bar.total != self.config.steps:
                        bar.total = self.config.steps
                        bar.refresh()
                if cfg.time_limit and time.monotonic() - start > cfg.time_limit * 60:
                    self.stop_reason = self.stop_reason or "time limit"
                if any_process(self.stop_reason is not None, self.device):
                    reason = self.stop_reason or "stopped by another process"
                    break
        if bar is not None:
            bar.close()
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
        if main:
            reporter.plot()
            if self.step != first_step or not list_checkpoints(run_dir):  # a finished run is not rewritten
                self.save(run_dir)
        return reason

    def _periodic(self, run_dir: Path) -> None:
        """The sample grid and checkpoint due after this step (rank 0)."""
        cfg = self.config
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            (run_dir / "samples").mkdir(exist_ok=True)
            self.sample_grid(run_dir / "samples" / f"{step_name(self.step)}.png")
        if self.step % cfg.save_every == 0 and self.step < cfg.steps:
            self.save(run_dir)


@contextlib.contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and save); a second SIGINT aborts."""
    def handler(signum, frame):
        if trainer.stop_reason and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_reason = signal.Signals(signum).name

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


# ----------------------------------------------------------------------------- a training run
@dataclass
class TrainResult:
    """What ``train_run`` did: why it stopped ("done", "finished already", "time limit", a signal's name, ...),
    the step it reached and its newest checkpoint."""

    reason: str
    step: int
    checkpoint: Optional[Path]


def plan_run(run: Path, *, train: Dict[str, Any], diffusion: Dict[str, Any], preset: Optional[str] = None,
             resume: bool = False, model: Optional[Dict[str, Any]] = None) -> RunConfig:
    """The config of a training run in ``run``: a resumed run's saved config with the changes a resumed run
    may make (``config.resume_config``), or a new run's from its preset and the overrides (``model``: fields of
    the network, e.g. ``image_size``, ``in_channels``). Refuses, before anything is written: resuming what does
    not exist, overwriting an existing run, a new run without data."""
    run = Path(run)
    if resume and is_run(run):
        saved = read_config(run)
        if saved.train.data == IMPORTED_DATA:
            raise DDPMError(f"{run} holds weights imported from a diffusers pipeline, without the data, optimizer "
                            "and random states that a resumed run continues: sample, evaluate or export it")
        return resume_config(saved, train, diffusion, preset, model)
    if resume and not run.exists():
        raise DDPMError(f"{run} does not exist, so there is nothing to resume; start a new run with --data SRC "
                        "(without --resume)")
    # a run killed before it wrote its config holds only its lock file: --resume starts it afresh
    leftovers = {".lock"} if resume else set()
    if run.exists() and (not run.is_dir() or any(p.name not in leftovers for p in run.iterdir())):
        raise DDPMError(f"{run} already exists; pass --resume to continue it, or choose another --out")
    if train.get("data") is None:
        raise DDPMError("--data is required for a new run: 'mnist', a folder of images, or a CIFAR-10 archive")
    try:
        return make_run_config(preset or ("mnist" if train["data"] == "mnist" else "cifar10"), train=train,
                               diffusion=diffusion, model=model)
    except ValueError as e:  # the network's own checks, e.g. an image size its levels cannot halve
        raise DDPMError(f"{e} (--image-size / --channels)") from None


def _training_data(cfg: RunConfig, main: bool, progress: bool, cache_dir) -> ImageData:
    """The run's data (from the decoded cache, which rank 0 builds first, if needed, while the others wait)."""
    if not main:
        barrier()
    data = load_data(cfg.train.data, channels=cfg.model.in_channels, image_size=cfg.model.image_size,
                     progress=progress and main, cache_dir=cache_dir, skip_bad=cfg.train.skip_bad_images)
    if main:
        barrier()
    if len(data) == 0:
        raise DDPMError(f"data source {cfg.train.data!r} has no images")
    if data.skipped and main:
        log.warning("left out %d unreadable images of %s (--skip-bad-images; listed in skipped_images.txt)",
                    len(data.skipped), data.name)
    return data


def train_run(run: Path, cfg: RunConfig, *, device, progress: bool = True, cache_dir=None,
              on_step: Optional[Callable[[Trainer], None]] = None) -> TrainResult:
    """Build data, model and Trainer for ``cfg``, continue from the run's newest checkpoint if it has one, and
    train to ``cfg.train.steps``. Under torchrun every process runs this; only rank 0 writes to ``run``.
    ``cache_dir``: where the decoded cache lives (``cache.cache_root``); ``on_step`` goes to ``Trainer.fit``."""
    run = Path(run)
    rank, world = rank_world()
    main = rank == 0
    diffusion = cfg.diffusion.build()  # validate everything before touching the disk
    done = list_checkpoints(run)
    if done and checkpoint_step(done[-1]) >= cfg.train.steps:
        return TrainResult("finished already", checkpoint_step(done[-1]), done[-1])
    data = _training_data(cfg, main, progress, cache_dir)
    cfg = with_classes(cfg, data.require_labels() if cfg.train.class_cond else None)
    torch.manual_seed(cfg.train.seed)
    trainer = Trainer(UNet(cfg.model), diffusion, data, cfg.train, device=device)
    with run_lock(run) if main else contextlib.nullcontext():  # a second trainer on this run is refused
        if done:
            ckpt = load_checkpoint(run, with_optimizer=True)
            trainer.load(ckpt)
            if main:
                _say_what_resuming_changes(run, read_config(run).train, cfg.train, ckpt.step)
        barrier()  # every process has checked the run directory before rank 0 writes to it
        if main:
            write_config(run, cfg)
            if data.skipped:
                atomic_write_text(run / "skipped_images.txt", "\n".join(data.skipped) + "\n")
            where = f"{world} processes ({device.type})" if world > 1 else str(device)
            what = f"class-conditional {cfg.preset} ({len(cfg.classes)} classes)" if cfg.classes else cfg.preset
            log.info("training %s (%.2fM parameters) on %s (%d images) for %d steps of %d on %s; run: %s",
                     what, trainer.model.num_parameters() / 1e6, data.name, len(data), cfg.train.steps,
                     cfg.train.batch_size, where, run)
        reason = trainer.fit(run, progress=progress, on_step=on_step)
        barrier()  # rank 0 has written the last checkpoint before anyone returns
    last = list_checkpoints(run)
    return TrainResult(reason, trainer.step, last[-1] if last else None)


def _say_what_resuming_changes(run: Path, saved: TrainConfig, new: TrainConfig, step: int) -> None:
    log.info("resuming %s from step %d", run, step)
    before, after = learning_rate(saved, step), learning_rate(new, step)
    if new.steps != saved.steps and not math.isclose(before, after, rel_tol=1e-3, abs_tol=1e-12):
        log.warning("the cosine learning-rate decay now ends at step %d instead of %d: the learning rate at step "
                    "%d goes from %.3g to %.3g and decays from there", new.steps, saved.steps, step, before, after)
