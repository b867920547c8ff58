"""The Trainer: Algorithm 1 with the paper's recipe (Adam, warm-up, clipping, EMA) and its loop.

The Trainer is given its model, diffusion, data and config and builds none of them. Its examples come
from ``ddpm.data.batches`` as pure functions of (seed, step, position in the global batch), so N processes
under torchrun (each taking a contiguous slice of the global batch, in ``grad_accum`` micro-batches) see
exactly the examples of one process: their averaged gradient is the one-process gradient up to the order
of floating-point sums, and a resumed run continues exactly. ``ddpm.training.train`` builds a training run around it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from ..atomic import BackgroundWrite
from ..config import TrainConfig, profiles
from ..data.batches import Batches, HeldOut, Prefetcher, held_out_split
from ..data.sources import ImageData
from ..diffusion.gaussian import GaussianDiffusion
from ..errors import DDPMError, stop_requests
from ..rng import derive_seed, rng_state, seed_step, set_rng_state
from ..run.directory import (
    Checkpoint,
    checkpoint_dir,
    list_checkpoints,
    snapshot,
    step_name,
    write_checkpoint,
)
from ..runtime import Precision, accumulator_dtype, fast_cuda_math, rank_world, shares
from ..sampling.settings import SamplingSettings
from ..viz import save_grid
from .optim import adam as _adam
from .optim import learning_rate
from .posthoc import PowerEMA
from .reporting import Reporter, progress_bar
from .reporting import plain_log as _plain
from .sharing import draw_shared
from .steps import StepResult, StepStats, accumulate, empty_log
from .timesteps import ImportanceSampler

__all__ = ["Trainer", "learning_rate"]

log = logging.getLogger(__name__)


class Trainer:
    """Trains ``model`` on ``data`` by Algorithm 1 with ``diffusion``'s parameterisation (eps, x0, mu or v, and a
    fixed or learned variance) and ``config``'s objective (L_simple, the bound or the hybrid), uniform or
    importance-sampled t, and Adam with clipping and an EMA of the weights.

    ``train_step()`` does one optimisation step; ``fit(run_dir)`` loops to ``config.steps`` with
    progress, metrics, sample grids, checkpoints and clean stops on SIGINT/SIGTERM.
    """

    def __init__(self, model: nn.Module, diffusion: GaussianDiffusion, data: ImageData, config: TrainConfig,
                 *, device: torch.device | str = "cpu"):
        self.config, self.diffusion, self.data = config, diffusion, data
        self.device = torch.device(device)
        fast_cuda_math(self.device, training=True)
        self.model = model.to(self.device).train()
        setattr(self.model, "grad_checkpointing", config.grad_checkpointing)  # UNet.forward reads it
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = _adam(self.model.parameters(), config.lr)
        self.precision = Precision(config.precision, self.device)
        train_idx, held_idx = held_out_split(len(data), config.val_fraction, config.seed)
        self.batches = Batches(data, seed=config.seed, batch_size=config.batch_size, T=diffusion.T,
                               hflip=data.hflip if config.hflip is None else config.hflip,
                               p_uncond=config.p_uncond if config.class_cond else None, index=train_idx)
        self.held_out = HeldOut(data, held_idx, seed=config.seed, T=diffusion.T, labelled=config.class_cond)
        self.step = 0  # number of optimisation steps done
        self.ema_updates = 0
        self.last_save = time.monotonic()  # when a checkpoint was last written (or training began): --save-minutes
        self.writer = BackgroundWrite()  # the checkpoint being written while training goes on
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
        self._net: Any = self._ddp or self.model  # what the training step calls (compiled, with --compile)
        if config.compile:
            self._net = torch.compile(self._net)
        self.log_acc = empty_log()
        self.stop_reason: Optional[str] = None  # set (e.g. by a signal) to stop after the current step
        self.stop_requested = False  # under torchrun: whether any process asked to stop, as of the last step
        self._prefetch: Optional[Prefetcher] = None  # the next step's batch, assembled while this one trains
        # per-timestep weights of L_simple under --snr-gamma; None: the paper's unweighted mean
        self.loss_weights = diffusion.min_snr_weights(config.snr_gamma).to(self.device) if config.snr_gamma else None
        diffusion.check_objective(config.objective)
        self.timesteps = ImportanceSampler(diffusion.T, config.seed, self.device) \
            if config.t_sampling == "importance" else None
        sigma_rels = profiles(config.ema_profiles)  # post-hoc EMA: power-function profiles and their snapshots
        self.profiles = PowerEMA(self.model, sigma_rels) if sigma_rels else None
        self.best: Optional[Dict[str, Any]] = None  # the step and FD of the lowest FD so far (--eval-every)
        self.eval_seconds, self.evaluations = 0.0, 0  # time spent in evaluations during fit, and how many

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
        self.config = dataclasses.replace(self.config, steps=steps)  # checked as it is made

    def _loss_and_backward(self) -> StepStats:
        """The global batch's mean loss and, for the log, the sums and counts of the per-example loss in the four
        quarters of t, and whether any process asks to stop (``StepStats``, summed over processes); its gradient
        accumulated. No host sync.

        The loss of each micro-batch is weighted by its share of the global batch, so the summed (and,
        across processes, averaged by DDP) gradient is the gradient of the global batch's mean loss.
        """
        micro = self.micro_batches()
        seed_step(self.config.seed, self.rank, self.step, self.device)  # dropout: its own stream per process
        if self._prefetch is None:
            self._prefetch = Prefetcher(self.batches, micro, self.device)
        stats = StepStats(self.config.batch_size if self.timesteps else 0, self.device)
        drawn = self.timesteps.draw(self.step, self.config.batch_size) if self.timesteps else None
        for i, (positions, (x0, t, noise, y)) in enumerate(zip(micro, self._prefetch.get(self.step))):
            if drawn is not None:  # the batch's uniform t replaced by the importance sampler's
                t = drawn[0][positions.start:positions.stop]
            x0, t, noise = x0.to(self.device), t.to(self.device), noise.to(self.device)
            y = None if y is None else y.to(self.device)
            sync = i == len(micro) - 1 or self._ddp is None  # DDP averages the gradients at the last micro-batch
            with self._ddp.no_sync() if not sync and self._ddp is not None else contextlib.nullcontext():
                with self.precision.autocast():
                    per_example = self.diffusion.training_loss(
                        self._net, x0, t, noise, y=y, loss=self.config.loss, objective=self.config.objective,
                        vlb_weight=self.config.vlb_weight)
                    stats.add_quarters(t, per_example, self.diffusion.T)
                    if drawn is not None:
                        stats.set_losses(positions, per_example)
                        per_example = per_example * drawn[1][positions.start:positions.stop].to(self.device)
                    if self.loss_weights is not None:
                        per_example = per_example * self.loss_weights[t]
                    loss = per_example.mean()
                weight = len(positions) / self.config.batch_size
                self.precision.scale(loss * (weight * self.world)).backward()
            stats.add_loss(loss, weight)
        if self.world > 1:  # the stop flag (and the losses) travel with the statistics: no collective of their own
            import torch.distributed as dist

            stats.vector[StepStats.STOP] = float(self.stop_reason is not None)
            dist.all_reduce(stats.vector)
        if drawn is not None and self.timesteps is not None:  # the global batch's losses, in position order:
            self.timesteps.update(drawn[0], stats.losses)  # every process updates alike, on the device
        return stats

    def train_step(self) -> StepResult:
        """One step of Algorithm 1 + Adam + clipping + EMA. Its ``StepResult`` holds tensors that stay on the device
        until ``numbers()`` reads them, so a step waits for the device once (the finiteness check, which also
        carries the processes' stop flag)."""
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        stats = self._loss_and_backward()
        total = stats.loss
        self.precision.unscale(self.optimizer)
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip)
        # under fp16 an overflowing gradient is the scaler's business (it skips the step and lowers its scale)
        finite_loss, finite_grad, self.stop_requested = torch.stack(
            [torch.isfinite(total), torch.isfinite(grad_norm), stats.stop > 0]).tolist()  # the step's one host sync
        overflow_ok = self.precision.scaler is not None and finite_loss
        if not (finite_loss and (finite_grad or overflow_ok)):
            what = "loss" if not finite_loss else "gradient norm"
            value = (total if what == "loss" else grad_norm).item()
            if not self.config.skip_nonfinite:
                raise DDPMError(f"the {what} became {value} at step {self.step + 1}; stopping with the last "
                                f"checkpoint intact (try a lower --lr, or --skip-nonfinite)")
            self.optimizer.zero_grad(set_to_none=True)  # the weights, Adam and the EMA stay as they were
            self.precision.skip()
            self.skipped += 1
            self.step += 1
            return StepResult(loss=float("nan"), grad_norm=float("nan"), lr=lr, quarters=None, skipped=True)
        if self.precision.step(self.optimizer):
            self._update_ema()
        self.step += 1
        return StepResult(loss=total, grad_norm=grad_norm.to(total.dtype), lr=lr, quarters=stats.quarters)

    def ema_decay(self) -> float:
        """The decay of the next EMA update: ``ema_decay``, or with ``ema_warmup`` min(ema_decay, (1 + n) / (10 + n))
        after n updates (so the average does not keep the initial weights for tens of thousands of steps)."""
        n = self.ema_updates
        return min(self.config.ema_decay, (1 + n) / (10 + n)) if self.config.ema_warmup else self.config.ema_decay

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """L_simple of the network (the one being trained) on the held-out images at their fixed (t, eps); nan
        without held-out images."""
        if not len(self.held_out):
            return float("nan")
        was = self.model.training
        self.model.eval()
        total = 0.0
        for x0, t, noise, y in self.held_out.batches(self.config.batch_size):
            x0, t, noise = x0.to(self.device), t.to(self.device), noise.to(self.device)
            with self.precision.autocast():
                per = self.diffusion.training_loss(self.model, x0, t, noise, loss=self.config.loss,
                                                   y=None if y is None else y.to(self.device),
                                                   objective=self.config.objective, vlb_weight=self.config.vlb_weight)
            total += per.to(accumulator_dtype(per.device)).sum().item()
        self.model.train(was)
        return total / len(self.held_out)

    @torch.no_grad()
    def _update_ema(self) -> None:
        """ema <- decay * ema + (1 - decay) * theta after every step taken (``ema_decay()``)."""
        torch._foreach_lerp_(list(self.ema.parameters()), list(self.model.parameters()), 1.0 - self.ema_decay())
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)
        self.ema_updates += 1
        if self.profiles is not None:
            self.profiles.update(self.model)

    # ------------------------------------------------------------------------- state
    def state(self) -> Dict[str, Any]:
        """JSON-able trainer state that is not in the weights or the optimizer."""
        return {"ema_updates": self.ema_updates, "skipped": self.skipped, "rng": rng_state(),
                "data": {"images": len(self.data), "key": self.data.key},  # a resume says if the data changed
                "log_acc": _plain(self.log_acc), "scaler": self.precision.state_dict(), "best": self.best,
                **({"timesteps": self.timesteps.state()} if self.timesteps else {}),
                **({"profile_updates": self.profiles.updates} if self.profiles else {})}

    def load(self, ckpt: Checkpoint) -> None:
        """Restore model, EMA, optimizer, step, RNGs and the metrics accumulator from a checkpoint."""
        self.model.load_state_dict(ckpt.model.state_dict())
        self.ema.load_state_dict(ckpt.ema_model.state_dict())
        if ckpt.optimizer_state is not None:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        self.step = ckpt.step
        self.ema_updates = int(ckpt.state.get("ema_updates", ckpt.step))
        self.skipped = int(ckpt.state.get("skipped", 0))
        self.log_acc = {**empty_log(), **ckpt.state.get("log_acc", {})}
        self.precision.load_state_dict(ckpt.state.get("scaler", {}))
        if "rng" in ckpt.state:
            set_rng_state(ckpt.state["rng"])
        if self.timesteps is not None and "timesteps" in ckpt.state:
            self.timesteps.load_state(ckpt.state["timesteps"])
        self.best = ckpt.state.get("best")
        if self.profiles is not None:
            if ckpt.profiles is None:
                raise DDPMError(f"checkpoint {ckpt.path} has no EMA profiles (it was trained without --ema-profiles)")
            self.profiles.load_state_dict(ckpt.profiles, int(ckpt.state.get("profile_updates", 0)))

    def save(self, run_dir: Path, background: bool = False) -> Path:
        """A checkpoint of this step. The weights, EMA and Adam state are copied to host memory here; with
        ``background`` they are written on a thread while training goes on (at most one write in flight: the next
        save, or the end of ``fit``, waits for it and raises what it raised), else before returning."""
        self.last_save = time.monotonic()
        snap = snapshot(step=self.step, model=self.model, ema_model=self.ema, optimizer=self.optimizer,
                        state=self.state(), profiles=self.profiles.state_dict() if self.profiles else None)
        self.writer.wait()
        write = functools.partial(write_checkpoint, run_dir, snap, keep=self.config.keep,
                                  keep_every=self.config.keep_every, best=self.best)
        if not background:
            return write()
        self.writer.start(write)
        return checkpoint_dir(run_dir, self.step)

    def draw(self, settings: SamplingSettings, *, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """EMA samples of ``settings``' seeds and sampler, uint8, in every process (``sharing.draw_shared``: under
        torchrun each process draws its share)."""
        return draw_shared(self.ema, self.diffusion, tuple(self.data.images.shape[1:]),
                           settings.replace(device=self.device), labels=labels)

    def grid_images(self, n: Optional[int] = None) -> torch.Tensor:
        """EMA samples (Algorithm 2) from fixed seeds, so that grids at different steps are comparable; uint8."""
        n = n or self.config.n_samples
        return self.draw(SamplingSettings(seed=derive_seed(self.config.seed, "grid"), n=n, progress=False))

    def sample_grid(self, path: Path, n: Optional[int] = None) -> torch.Tensor:
        """``grid_images`` saved as a PNG grid, and returned."""
        images = self.grid_images(n)
        save_grid(images, path, scale=2 if images.shape[-1] < 64 else 1)
        return images

    # ------------------------------------------------------------------------- the loop
    def fit(self, run_dir: Path, *, progress: bool = True,
            on_step: Optional[Callable[["Trainer"], None]] = None,
            evaluate: Optional[Callable[["Trainer"], Optional[float]]] = None) -> str:
        """Train until ``config.steps`` (or a signal, or ``time_limit``). Returns why it stopped: "done",
        "time limit", the signal's name, or "stopped by another process". Saves a checkpoint every
        ``save_every`` steps and whenever it stops. Under torchrun only rank 0 writes. ``on_step(trainer)`` is
        called after every step; it may change ``trainer.config`` (e.g. its ``steps``, see ``set_steps``).
        ``evaluate(trainer)`` is called by every process every ``eval_every`` steps and returns, in rank 0, a
        Fréchet distance (None elsewhere): it is logged (``fd``, ``fd_seconds``), and the checkpoint of the lowest is
        saved and kept as the run's best (``best``, RUN/best.json)."""
        run_dir, main = Path(run_dir), self.rank == 0
        if main:
            run_dir.mkdir(parents=True, exist_ok=True)
        reporter = Reporter(self, run_dir) if main else None
        first_step, start = self.step, time.monotonic()
        bar = progress_bar(progress and main, total=self.config.steps, initial=self.step)
        reason = "done"
        with stop_requests(self):
            while self.step < self.config.steps:
                cfg = self.config
                out = self.train_step()
                if not out.skipped:
                    self.log_acc = accumulate(self.log_acc, out)
                scored = self._evaluate(evaluate) if evaluate is not None and cfg.eval_every and \
                    self.step % cfg.eval_every == 0 else None
                if scored and reporter is not None:  # images/s counts training, not the evaluation
                    reporter.last_t += scored["fd_seconds"]
                if self.step % cfg.log_every == 0 or self.step == cfg.steps or scored is not None:
                    row = reporter.row(out.lr, self.held_out_loss(), scored or {}) if reporter is not None else None
                    self.log_acc = empty_log()
                    if bar is not None and row is not None:
                        fd = {"fd": f"{self.best['fd']:.2f}@{self.best['step']}"} if self.best else {}
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['img_per_s']:.1f}", **fd)
                if bar is not None:
                    bar.update(1)
                self._periodic(run_dir, reporter)
                if on_step is not None:
                    on_step(self)
                    if bar is not None and bar.total != self.config.steps:
                        bar.total = self.config.steps
                        bar.refresh()
                if cfg.time_limit and time.monotonic() - start > cfg.time_limit * 60:
                    self.stop_reason = self.stop_reason or "time limit"
                # one process stops at once; under torchrun all stop together, when any asked (as of this step)
                stopping = self.stop_requested if self.world > 1 else self.stop_reason is not None
                if stopping:
                    reason = self.stop_reason or "stopped by another process"
                    break
        if bar is not None:
            bar.close()
        if self._prefetch is not None:
            self._prefetch.close()
            self._prefetch = None
        self.writer.wait()
        if reporter is not None:
            reporter.close()
            if self.step != first_step or not list_checkpoints(run_dir):  # a finished run is not rewritten
                self.save(run_dir)
        return reason

    def _evaluate(self, evaluate: Callable[["Trainer"], Optional[float]]) -> Dict[str, float]:
        """One evaluation (every process calls it): in rank 0, ``{"fd", "fd_seconds"}`` and a new ``best`` when it is
        the lowest so far (``_periodic`` saves its checkpoint); ``{}`` elsewhere."""
        t0 = time.monotonic()
        fd = evaluate(self)
        seconds = time.monotonic() - t0
        self.eval_seconds, self.evaluations = self.eval_seconds + seconds, self.evaluations + 1
        if fd is None:
            return {}
        if self.best is None or fd < self.best["fd"]:
            cfg = self.config
            self.best = {"step": self.step, "fd": fd, "n": cfg.eval_n, "sampler": cfg.eval_sampler,
                         "steps": cfg.eval_steps or None}
        return {"fd": fd, "fd_seconds": seconds}

    def _periodic(self, run_dir: Path, reporter: Optional[Reporter]) -> None:
        """The sample grid (every process draws a share), EMA snapshots and the checkpoint (rank 0 writes) due after
        this step."""
        cfg = self.config
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            images = self.grid_images()
            if reporter is not None:
                (run_dir / "samples").mkdir(exist_ok=True)
                save_grid(images, run_dir / "samples" / f"{step_name(self.step)}.png",
                          scale=2 if images.shape[-1] < 64 else 1)
                reporter.grid(images)
        if self.profiles is not None and reporter is not None and \
                self.step % (cfg.ema_snapshot_every or cfg.save_every) == 0:
            self.profiles.write_snapshot(run_dir, self.step)
        new_best = self.best is not None and self.best["step"] == self.step  # an evaluation just found it
        due = self.step % cfg.save_every == 0 or new_best or (
            cfg.save_minutes > 0 and time.monotonic() - self.last_save >= cfg.save_minutes * 60)
        if reporter is not None and due and self.step < cfg.steps:  # rank 0 alone writes (and decides when)
            self.save(run_dir, background=True)
