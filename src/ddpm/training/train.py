"""A training run: the config of a new or resumed run directory (``plan_run``), and ``train_run``, which builds
the data, the network and the Trainer for it, restores its last checkpoint (or, fine-tuning, another run's
weights) and trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch

from ..atomic import atomic_write_text
from ..config import RunConfig, TrainConfig, make_run_config, overlay, with_classes
from ..data.sources import ImageData, load_data, resolve_source
from ..errors import DDPMError
from ..nn.unet import UNet
from ..run.directory import (
    IMPORTED_DATA,
    checkpoint_step,
    holds_run_config,
    is_run,
    list_checkpoints,
    load_checkpoint,
    read_config,
    run_lock,
    write_config,
)
from ..runtime import barrier, rank_world
from .budget import FitSteps
from .config_file import read_config_file
from .finetune import PROVENANCE, check_network, init_source, load_init_weights, source_defaults
from .reporting import check_log
from .resuming import resume_config
from .trainer import Trainer, learning_rate

__all__ = ["Trainer", "learning_rate", "train_run", "plan_run", "TrainResult"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- a training run
@dataclass
class TrainResult:
    """What ``train_run`` did: why it stopped ("done", "finished already", "time limit", a signal's name, ...),
    the step it reached and its newest checkpoint."""

    reason: str
    step: int
    checkpoint: Optional[Path]
    best: Optional[Dict[str, Any]] = None  # the step and FD of the best checkpoint (--eval-every)
    evaluations: int = 0  # evaluations done by this call, and the seconds they took
    eval_seconds: float = 0.0


def plan_run(run: Path, *, train: Dict[str, Any], diffusion: Dict[str, Any], preset: Optional[str] = None,
             resume: Union[bool, str] = False, model: Optional[Dict[str, Any]] = None,
             config_file=None) -> RunConfig:
    """The config of a training run in ``run``: a resumed run's saved config with the changes a resumed run
    may make (``resuming.resume_config``), or a new run's from its preset and the overrides (``model``: fields of
    the network, e.g. ``image_size``, ``in_channels``). ``config_file``: a TOML (or JSON) file of settings
    (``config.read_config_file``), under the explicit ones. A new run with ``init_from`` takes its network and
    (unless given) its diffusion and preset from there. Refuses, before anything is written: resuming what does not
    exist, overwriting an existing run, a new run without data, a network other than the one of ``init_from``.
    ``resume="auto"``: a new run where ``run`` holds none, else the resumed one (the same call starts a run and
    continues it after every restart)."""
    run = Path(run)
    if config_file is not None:
        file = read_config_file(config_file)
        train, diffusion = overlay(file["train"], train), overlay(file["diffusion"], diffusion)
        model, preset = overlay(file["model"], model), preset or file["preset"]
    given, train = train.get("data"), _resolved(train)
    fresh = _never_saved(run)
    if fresh is not None:  # stopped before its first checkpoint (out of memory, say): start it again, as asked
        log.info("%s stopped before its first checkpoint: starting it again with the settings given now", run)
        train = {**train, "data": train.get("data") or fresh.train.data}
        preset = preset or fresh.preset
    elif resume and is_run(run):
        saved = read_config(run)
        if given is not None and saved.train.data != IMPORTED_DATA and \
                resolve_source(saved.train.data) == train["data"]:
            train = {k: v for k, v in train.items() if k != "data"}  # the same source, however it is spelled
        if saved.train.data == IMPORTED_DATA:
            raise DDPMError(f"{run} holds weights imported from a diffusers pipeline, without the data, optimizer "
                            "and random states that a resumed run continues: sample, evaluate or export it")
        return resume_config(saved, train, diffusion, preset, model)
    if resume and resume != "auto" and not run.exists():
        raise DDPMError(f"{run} does not exist, so there is nothing to resume; start a new run with --data SRC "
                        "(without --resume)")
    # a run killed before it wrote its config holds only its lock file: --resume starts it afresh
    leftovers = {".lock"} if resume else set()
    if fresh is None and run.exists() and (not run.is_dir() or any(p.name not in leftovers for p in run.iterdir())):
        raise DDPMError(f"{run} already exists; pass --resume to continue it, or choose another --out")
    if train.get("data") is None:
        raise DDPMError("--data is required for a new run: 'mnist', a folder of images, or a CIFAR-10 archive")
    source = init_source(train["init_from"]) if train.get("init_from") else None
    if source is not None:
        preset, train, model, diffusion = _from_source(source, preset, train, model, diffusion)
    try:
        cfg = make_run_config(preset or ("mnist" if train["data"] == "mnist" else "cifar10"), train=train,
                              diffusion=diffusion, model=model)
    except ValueError as e:  # the network's own checks, e.g. an image size its levels cannot halve
        raise DDPMError(f"{e} (--image-size / --channels)") from None
    if source is not None:  # all but the classes, which come from the data
        check_network(dataclasses.replace(cfg.model, num_classes=source.model.num_classes), source)
        changed = source.changes(cfg.diffusion)
        if changed:
            log.warning("fine-tuning changes what the weights of %s were trained for (%s): they start out answering "
                        "the old question, so early samples are poor until the network has relearnt", source.path,
                        "; ".join(changed))
    return dataclasses.replace(cfg, data_as_given=given if given not in (None, cfg.train.data) else None)


def _from_source(source, preset, train, model, diffusion):
    """What a fine-tuning run takes from its ``--init-from`` source unless told: its recipe (preset), classes,
    network, diffusion and, for a learned variance, an objective that trains it."""
    preset = preset or source.preset or _recipe_for(source)
    if source.model.num_classes and train.get("class_cond") is None:
        log.info("--init-from %s is class-conditional (%d classes): so is this run (--class-cond)", source.path,
                 source.model.num_classes)
        train = {**train, "class_cond": True}
    if source.diffusion is None and diffusion.get("T") is None:
        from ..interop.diffusers import NO_SCHEDULER

        raise DDPMError(f"--init-from {source.path} {NO_SCHEDULER}")
    if train.get("objective") is None and source.default_objective() not in (None, "simple"):
        log.info("--init-from %s has a learned variance: this run trains it with --objective %s", source.path,
                 source.default_objective())
        train = {**train, "objective": source.default_objective()}
    model_defaults, diffusion_defaults = source_defaults(source)
    return preset, train, overlay(model_defaults, model), overlay(diffusion_defaults, diffusion)


def _recipe_for(source) -> str:
    """The preset whose recipe fits a diffusers source's network (it names none), said in the log."""
    from .finetune import nearest_preset

    preset = nearest_preset(source.model)
    log.info("--init-from %s names no recipe: its network is nearest in size to the %r preset's, so this run trains "
             "with that recipe (batch size, learning rate, EMA decay; --preset picks another)", source.path, preset)
    return preset


def _resolved(train: Dict[str, Any]) -> Dict[str, Any]:
    """``--data`` and ``--init-from`` made absolute: stored so, they name the same thing from any folder."""
    paths = {"data": resolve_source(train["data"]) if train.get("data") is not None else None,
             "init_from": str(Path(train["init_from"]).expanduser().resolve()) if train.get("init_from") else None}
    return {**train, **{k: v for k, v in paths.items() if v is not None}}


RUN_FILES = {".lock", "config.json", "metrics.csv", "checkpoints", "samples", "loss.png", "plan.json", "tensorboard",
             "skipped_images.txt"}


def agreed_checkpoints(run: Path, device) -> list:
    """The run's checkpoints up to the one every process resumes from: under torchrun rank 0's newest, broadcast
    (each node lists its own file system); a process that cannot see it fails, and so, together, do all the others,
    with one line naming the shared-file-system requirement, never a hang."""
    done = list_checkpoints(run)
    if rank_world()[1] == 1:
        return done
    import torch.distributed as dist

    step = torch.tensor([checkpoint_step(done[-1]) if done else -1], dtype=torch.int64, device=device)
    dist.broadcast(step, 0)
    s = int(step.item())
    mine = [p for p in done if checkpoint_step(p) <= s]
    ok = torch.tensor([int(s < 0 or (bool(mine) and checkpoint_step(mine[-1]) == s))], device=device)
    dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if not ok.item():
        raise DDPMError(f"a process cannot see checkpoint step {s} of {run}, which rank 0 resumes from: on several "
                        "nodes the run directory must be on a file system every node shares (the same path)")
    return mine if s >= 0 else []


def _never_saved(run: Path) -> Optional[RunConfig]:
    """The config of a run that stopped before its first checkpoint and holds nothing but what training writes
    (so starting it again, with any settings, loses nothing); else None."""
    if not holds_run_config(run) or list_checkpoints(run) or any(p.name not in RUN_FILES for p in run.iterdir()):
        return None
    try:
        return read_config(run)
    except DDPMError:
        return None


def _training_data(cfg: RunConfig, main: bool, progress: bool, cache_dir) -> ImageData:
    """The run's data, from the decoded cache. Every process opens it; where it is not built yet, the first process
    of each machine to get its lock builds it while that machine's others wait on the lock (not in a collective,
    whose timeout a long build could outlast): nodes with their own copy of the data build their own cache, once,
    and a restarted job finds it built."""
    data = load_data(cfg.train.data, channels=cfg.model.in_channels, image_size=cfg.model.image_size,
                     progress=progress and main, cache_dir=cache_dir, skip_bad=cfg.train.skip_bad_images,
                     **cfg.train.data_options())
    if len(data) == 0:
        raise DDPMError(f"data source {cfg.train.data!r} has no images")
    if data.skipped and main:
        log.warning("left out %d unreadable images of %s (--skip-bad-images; listed in skipped_images.txt)",
                    len(data.skipped), data.name)
    return data


def train_run(run: Path, cfg: RunConfig, *, device, progress: bool = True, cache_dir=None,
              on_step: Optional[Callable[[Trainer], None]] = None,
              evaluate: Optional[Callable[[Trainer], Optional[float]]] = None) -> TrainResult:
    """Build data, model and Trainer for ``cfg``, continue from the run's newest checkpoint if it has one, and
    train to ``cfg.train.steps``. Under torchrun every process runs this; only rank 0 writes to ``run``.
    ``cache_dir``: where the decoded cache lives (``cache.cache_root``); ``on_step`` and ``evaluate`` (e.g. an
    ``evaluation.watch.FDWatch``) go to ``Trainer.fit``."""
    run = Path(run)
    rank, world = rank_world()
    main = rank == 0
    diffusion = cfg.diffusion.build()  # validate everything before touching the disk
    check_log(cfg.train.log)
    done = agreed_checkpoints(run, device)
    if done and checkpoint_step(done[-1]) >= cfg.train.steps:
        return TrainResult("finished already", checkpoint_step(done[-1]), done[-1])
    data = _training_data(cfg, main, progress, cache_dir)
    cfg = with_classes(cfg, data.require_labels() if cfg.train.class_cond else None)
    torch.manual_seed(cfg.train.seed)
    model, provenance = UNet(cfg.model), None
    if cfg.train.init_from and not done:  # fine-tuning: a new run starts from these weights (its EMA too)
        provenance = load_init_weights(model, init_source(cfg.train.init_from), cfg.train.init_weights)
    trainer = Trainer(model, diffusion, data, cfg.train, device=device)
    with run_lock(run) if main else contextlib.nullcontext():  # a second trainer on this run is refused
        if done:
            ckpt = load_checkpoint(run, checkpoint_step(done[-1]) if world > 1 else None, with_optimizer=True)
            trainer.load(ckpt)
            if main:
                _say_what_resuming_changes(run, read_config(run).train, cfg.train, ckpt.step)
                _say_if_the_data_changed(data, ckpt)
        barrier()  # every process has checked the run directory before rank 0 writes to it
        if main:
            write_config(run, cfg)
            if provenance is not None:
                atomic_write_text(run / PROVENANCE, json.dumps(provenance, indent=2) + "\n")
            if data.skipped:
                atomic_write_text(run / "skipped_images.txt", "\n".join(data.skipped) + "\n")
            where = f"{world} processes ({device.type})" if world > 1 else str(device)
            what = f"class-conditional {cfg.preset} ({len(cfg.classes)} classes)" if cfg.classes else cfg.preset
            log.info("training %s (%.2fM parameters) on %s (%d images) for %d steps of %d on %s; run: %s",
                     what, sum(p.numel() for p in trainer.model.parameters()) / 1e6, data.name, len(data),
                     cfg.train.steps,
                     cfg.train.batch_size, where, run)
        if cfg.train.fit_steps and trainer.step < cfg.train.warmup:  # a run resumed after its warm-up is fitted
            on_step = FitSteps(run, cfg, time.monotonic(), then=on_step)
        reason = trainer.fit(run, progress=progress, on_step=on_step, evaluate=evaluate)
        barrier()  # rank 0 has written the last checkpoint before anyone returns
    last = list_checkpoints(run)
    return TrainResult(reason, trainer.step, last[-1] if last else None, trainer.best, trainer.evaluations,
                       trainer.eval_seconds)


def _say_if_the_data_changed(data: ImageData, ckpt) -> None:
    """One line when the data a resumed run reads is not what its checkpoint was trained on (files added, removed or
    changed since): training goes on, with the data as it is now."""
    then = ckpt.state.get("data")
    if not isinstance(then, dict) or (then.get("images"), then.get("key")) == (len(data), data.key):
        return
    what = (f"{then.get('images')} images then, {len(data)} now" if then.get("images") != len(data) else
            f"{len(data)} images, but its files' names, sizes or modification times changed")
    log.warning("the data %s changed since step %d was saved (%s): training continues on the data as it is now",
                data.name, ckpt.step, what)


def _say_what_resuming_changes(run: Path, saved: TrainConfig, new: TrainConfig, step: int) -> None:
    log.info("resuming %s from step %d", run, step)
    before, after = learning_rate(saved, step), learning_rate(new, step)
    if new.steps != saved.steps and not math.isclose(before, after, rel_tol=1e-3, abs_tol=1e-12):
        log.warning("the cosine learning-rate decay now ends at step %d instead of %d: the learning rate at step "
                    "%d goes from %.3g to %.3g and decays from there", new.steps, saved.steps, step, before, after)
