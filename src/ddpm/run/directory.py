"""Run directories: config.json, checkpoints, the lock and metrics.csv. Safetensors for tensors, JSON for
everything else, never pickle; every file is written aside and renamed (``ddpm.atomic``).

A run directory::

    RUN/config.json                     the RunConfig (the one source of truth)
    RUN/checkpoints/step-00001000/      one checkpoint, written aside and renamed into place:
        model.safetensors               the trained weights
        ema.safetensors                 the EMA weights
        optimizer.safetensors           Adam's moments (+ its param_groups in state.json)
        state.json                      step, RNG states, EMA step count, ...
        manifest.json                   sha256 and size of every file above (written last)
    RUN/metrics.csv                     one row every --log-every steps (``ddpm.run.metrics``)
    RUN/loss.png, RUN/samples/step-00001000.png
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file
from torch import nn

from ..atomic import atomic_write_text, file_sha256, save_safetensors, written_aside
from ..config import RunConfig
from ..diffusion.gaussian import GaussianDiffusion
from ..errors import DDPMError, is_disk_full
from ..nn.unet import UNet

__all__ = ["Checkpoint", "save_checkpoint", "checkpoint_dir", "snapshot", "write_checkpoint", "Snapshot",
           "load_checkpoint", "list_checkpoints", "read_config", "write_config", "checkpoint_step", "step_name",
           "run_lock", "is_run", "holds_run_config", "IMPORTED_DATA",
           "BEST"]

log = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
CKPT_DIR = "checkpoints"
FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "ema-profiles.safetensors", "state.json")
BEST = "best.json"  # the step and FD of the checkpoint with the lowest FD logged while training (--eval-every)
IMPORTED_DATA = "imported"  # the train.data of a run imported from diffusers: it has no data, optimizer or RNGs


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. ``model`` and ``ema_model`` are in eval mode."""

    model: UNet
    ema_model: UNet
    diffusion: GaussianDiffusion
    config: RunConfig
    step: int
    path: Path
    state: Dict[str, Any] = field(default_factory=dict)
    optimizer_state: Optional[Dict[str, Any]] = None
    profiles: Optional[Dict[str, torch.Tensor]] = None  # with_optimizer: the post-hoc EMA profiles (--ema-profiles)


# ----------------------------------------------------------------------------- config.json
def is_run(path: PathLike) -> bool:
    """Whether ``path`` is a ddpm run directory (it holds a config.json)."""
    return (Path(path) / "config.json").is_file()


def holds_run_config(path: PathLike) -> bool:
    """Whether ``path``'s config.json is a ddpm run's (it names a preset): a diffusers unet/ folder holds a
    config.json too. False for a missing or unreadable one."""
    try:
        return "preset" in json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def write_config(run_dir: PathLike, config: RunConfig) -> None:
    atomic_write_text(Path(run_dir) / "config.json", config.to_json())


def read_config(run_dir: PathLike) -> RunConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise DDPMError(f"{run_dir} is not a ddpm run directory (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DDPMError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise DDPMError(f"{path} does not hold a JSON object")
    return RunConfig.from_dict(data)


# ----------------------------------------------------------------------------- optimizer <-> safetensors
def _optimizer_to_files(optimizer: torch.optim.Optimizer):
    """Split an optimizer state_dict into tensors (safetensors) and JSON-able metadata."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    state: Dict[int, Dict[str, Any]] = {}
    for key, v in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


# ----------------------------------------------------------------------------- save / list / load
def step_name(step: int) -> str:
    """The name of everything a run keeps per step (checkpoint folders, sample grids): ``step-00001000``."""
    return f"step-{int(step):08d}"


def checkpoint_dir(run_dir: PathLike, step: int) -> Path:
    """Where the checkpoint of ``step`` lives (written or to be written)."""
    return Path(run_dir) / CKPT_DIR / step_name(step)


@dataclass
class Snapshot:
    """A checkpoint's contents copied to host memory (``snapshot``): training may go on changing the originals
    while ``write_checkpoint`` writes these, on another thread if it likes."""

    step: int
    model: Dict[str, torch.Tensor]
    ema: Dict[str, torch.Tensor]
    optimizer: Optional[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]
    state: Dict[str, Any]
    profiles: Optional[Dict[str, torch.Tensor]] = None  # already host copies (PowerEMA.state_dict)


def snapshot(*, step: int, model: nn.Module, ema_model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
             state: Optional[Dict[str, Any]] = None, profiles: Optional[Dict[str, torch.Tensor]] = None) -> Snapshot:
    """Host copies of the weights, the EMA and Adam's state (always copies, also of CPU tensors), and the state."""
    def host(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in sd.items()}

    opt = None
    if optimizer is not None:
        tensors, meta = _optimizer_to_files(optimizer)
        opt = (host(tensors), json.loads(json.dumps(meta)))
    return Snapshot(int(step), host(model.state_dict()), host(ema_model.state_dict()), opt,
                    json.loads(json.dumps(state or {})), profiles)


def save_checkpoint(run_dir: PathLike, *, step: int, model: nn.Module, ema_model: nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None, state: Optional[Dict[str, Any]] = None,
                    keep: Optional[int] = None, keep_every: int = 0, best: Optional[Dict[str, Any]] = None) -> Path:
    """Write a checkpoint for ``step`` atomically (``written_aside``): a crash never leaves a half-written one.

    ``state`` is any JSON-able dict (RNG states, counters). Keeps the newest ``keep`` checkpoints and, with
    ``keep_every``, every one whose step is a multiple of it (milestones); of the others it removes only the
    files it writes (a folder holding anything else stays). Returns the checkpoint's folder.
    """
    snap = snapshot(step=step, model=model, ema_model=ema_model, optimizer=optimizer, state=state)
    return write_checkpoint(run_dir, snap, keep=keep, keep_every=keep_every, best=best)


def write_checkpoint(run_dir: PathLike, snap: Snapshot, *, keep: Optional[int] = None, keep_every: int = 0,
                     best: Optional[Dict[str, Any]] = None) -> Path:
    """``save_checkpoint`` of a ``snapshot``: safe to call on a thread of its own while training goes on. ``best``
    (``{"step", "fd", ...}``): the best checkpoint so far, never removed to keep ``keep``; written to RUN/best.json
    once its checkpoint is in place, when it is this one."""
    run_dir, step = Path(run_dir), snap.step
    final = checkpoint_dir(run_dir, step)
    try:
        # every temporary folder in checkpoints/ is a checkpoint's: those of any step killed mid-write go
        with written_aside(final, replace=True, stale=".tmp-*") as tmp:
            save_safetensors(snap.model, tmp / "model.safetensors")
            save_safetensors(snap.ema, tmp / "ema.safetensors")
            meta: Dict[str, Any] = {}
            if snap.optimizer is not None:
                tensors, meta = snap.optimizer
                save_safetensors(tensors, tmp / "optimizer.safetensors")
            if snap.profiles is not None:
                save_safetensors(snap.profiles, tmp / "ema-profiles.safetensors")
            payload = {"step": int(step), "optimizer": meta, **snap.state}
            (tmp / "state.json").write_text(json.dumps(payload))
            files = [f for f in FILES if (tmp / f).exists()]
            manifest = {f: {"sha256": file_sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in files}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    except OSError as e:
        if is_disk_full(e):
            last = list_checkpoints(run_dir)
            kept = (f"the last checkpoint, step {checkpoint_step(last[-1])}, is kept" if last
                    else "no checkpoint is kept")
            raise DDPMError(f"no space left on the device writing the checkpoint of step {step} ({e.strerror}: "
                            f"{final}); {kept}. Free some space and continue with: ddpm train --out {run_dir} "
                            "--resume") from None
        raise
    if best is not None and int(best["step"]) == step:
        atomic_write_text(run_dir / BEST, json.dumps(best, indent=1) + "\n")
    if keep is not None:
        for old in list_checkpoints(run_dir)[:-keep]:
            if best is not None and checkpoint_step(old) == int(best["step"]):
                continue
            if not (keep_every and checkpoint_step(old) % keep_every == 0):
                remove_checkpoint(old)
    return final


def remove_checkpoint(path: Path, files: Sequence[str] = (*FILES, "manifest.json")) -> None:
    """Remove a checkpoint folder's ``files`` (those ``save_checkpoint`` writes) and then the folder, if that leaves it
    empty: nothing ddpm did not write is ever removed."""
    for name in files:
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        pass


def list_checkpoints(run_dir: PathLike) -> List[Path]:
    """Finished checkpoint folders of a run, oldest first (temporary folders are never listed)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit():
            found.append((checkpoint_step(p), p))
    return [p for _, p in sorted(found)]


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint folder from its name (``step-00001000`` -> 1000)."""
    return int(Path(path).name[5:])


def verify_checkpoint(path: Path, required: Sequence[str] = ("model.safetensors", "ema.safetensors",
                                                            "state.json")) -> None:
    """Check every file of a checkpoint (or of named weights) against its manifest; raise DDPMError naming the first
    bad file."""
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DDPMError(f"checkpoint {path} is incomplete: manifest.json is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DDPMError(f"checkpoint {path} is damaged: manifest.json is not valid JSON") from None
    for name in required:
        if name not in manifest:
            raise DDPMError(f"checkpoint {path} is damaged: manifest.json does not list {name}")
    for name, info in manifest.items():
        f = path / name
        if not f.is_file():
            raise DDPMError(f"checkpoint {path} is damaged: {name} is missing")
        if f.stat().st_size != info.get("bytes") or file_sha256(f) != info.get("sha256"):
            raise DDPMError(f"checkpoint {path} is damaged: {name} does not match its checksum")


def _load_weights(path: Path, model: nn.Module) -> None:
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise DDPMError(f"cannot read {path}: {e}") from None
    missing, unexpected = set(model.state_dict()) - set(tensors), set(tensors) - set(model.state_dict())
    if missing or unexpected:
        raise DDPMError(f"{path} does not fit the configured model: missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]}")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise DDPMError(f"{path} does not fit the configured model: {str(e).splitlines()[-1].strip()}") from None


def _read_state(path: Path) -> Dict[str, Any]:
    try:
        state = json.loads((path / "state.json").read_text())
        int(state["step"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise DDPMError(f"checkpoint {path} is damaged: state.json is not a valid state") from None
    return state


@contextlib.contextmanager
def run_lock(run_dir: PathLike):
    """Hold RUN/.lock exclusively while training: a second trainer on the same run is refused, not
    interleaved. The lock dies with its process (even on SIGKILL), so a crash never leaves it held."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "a+")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise DDPMError(f"{run_dir} is being trained by {holder}; wait for it to finish or stop it first") from None
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()}")
        f.flush()
        yield
    finally:
        f.close()


def load_checkpoint(run_dir: PathLike, step: Optional[int] = None, *, map_location: Union[str, torch.device] = "cpu",
                    with_optimizer: bool = False) -> Checkpoint:
    """Load a run's newest intact checkpoint (or the one at ``step``).

    A damaged checkpoint (a file missing, truncated or changed since it was written) is never loaded:
    without ``step`` the newest intact one is used, with a warning on stderr naming what is wrong.
    Returns a :class:`Checkpoint` with ``model``, ``ema_model`` (both UNets, eval mode), ``diffusion``,
    ``config``, ``step``. Files are checked against their manifest; nothing is unpickled.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DDPMError(f"run directory {run_dir} does not exist")
    config = read_config(run_dir)
    candidates = list_checkpoints(run_dir)
    if step is not None:
        candidates = [p for p in candidates if p.name == step_name(step)]
        if not candidates:
            have = ", ".join(str(checkpoint_step(p)) for p in list_checkpoints(run_dir)) or "none"
            raise DDPMError(f"{run_dir} has no checkpoint at step {step} (it has: {have})")
    if not candidates:
        raise DDPMError(f"{run_dir} has no checkpoint yet")
    problems = []
    for path in reversed(candidates):  # the newest intact one; a damaged one is reported, never loaded
        try:
            verify_checkpoint(path)
            model, ema = UNet(config.model), UNet(config.model)
            _load_weights(path / "model.safetensors", model)
            _load_weights(path / "ema.safetensors", ema)
            state = _read_state(path)
            opt_state, profiles = None, None
            if with_optimizer and (path / "optimizer.safetensors").exists():
                opt_state = _optimizer_from_files(load_file(str(path / "optimizer.safetensors")),
                                                  state.get("optimizer", {}))
            if with_optimizer and (path / "ema-profiles.safetensors").exists():
                profiles = load_file(str(path / "ema-profiles.safetensors"))
        except DDPMError as e:
            if step is not None:
                raise
            problems.append(str(e))
            continue
        if problems:
            log.warning("%s; using the newest intact checkpoint, %s", "; ".join(problems), path.name)
        break
    else:
        raise DDPMError(f"no intact checkpoint in {run_dir}: {'; '.join(problems)}")
    model.to(map_location).eval()
    ema.to(map_location).eval()
    return Checkpoint(model=model, ema_model=ema, diffusion=config.diffusion.build(), config=config,
                      step=int(state["step"]), path=path, state=state, optimizer_state=opt_state, profiles=profiles)
