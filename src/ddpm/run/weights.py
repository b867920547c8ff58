"""Which weights of a run a command uses: a checkpoint by step, the latest, the best (the lowest Fréchet distance
logged while training, ``RUN/best.json``), or named weights that ``ddpm ema`` rebuilt (``RUN/weights/NAME/``).

A run's named weights::

    RUN/weights/ema-0.07/ema.safetensors    the weights
    RUN/weights/ema-0.07/info.json          how they were made (sigma_rel, step, snapshots, coefficients)
    RUN/weights/ema-0.07/manifest.json      sha256 and size of both (what names the samples drawn with them)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from ..atomic import file_sha256, save_safetensors, written_aside
from ..errors import DDPMError
from .directory import (
    BEST,
    Checkpoint,
    PathLike,
    _load_weights,
    list_checkpoints,
    load_checkpoint,
    remove_checkpoint,
    verify_checkpoint,
)

__all__ = ["read_best", "best_line", "checkpoint_spec", "resolve_step", "write_named", "list_named",
           "load_run"]

NAMED = "weights"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def read_best(run_dir: PathLike) -> Optional[Dict[str, Any]]:
    """``{"step", "fd", ...}`` of the run's best checkpoint, or None where it has none (trained without
    --eval-every, or before its first evaluation)."""
    try:
        best = json.loads((Path(run_dir) / BEST).read_text())
        int(best["step"])
        return best
    except (OSError, ValueError, KeyError, TypeError):
        return None


def best_line(run_dir: PathLike) -> str:
    best = read_best(run_dir)
    return "" if best is None else f"best: step {best['step']} (FD@{best.get('n', '?')} {best['fd']:.3f}; " \
        "--checkpoint best)"


def checkpoint_spec(text: str) -> Union[str, int]:
    """--checkpoint's value: "best", "latest" or a step."""
    if text in ("best", "latest"):
        return text
    try:
        step = int(text)
    except ValueError:
        raise ValueError(f"--checkpoint takes best, latest or a step, got {text!r}") from None
    if step < 0:
        raise ValueError(f"--checkpoint takes best, latest or a step, got {text!r}")
    return step


def resolve_step(run_dir: PathLike, spec: Union[str, int, None]) -> Optional[int]:
    """The step of ``spec`` (None: the newest intact checkpoint)."""
    if spec is None or spec == "latest":
        return None
    if spec == "best":
        best = read_best(run_dir)
        if best is None:
            raise DDPMError(f"{run_dir} has no best checkpoint: train it with --eval-every N, which keeps the "
                            "checkpoint of the lowest FD as best")
        return int(best["step"])
    return int(spec)


# ----------------------------------------------------------------------------- named weights
def _named_dir(run_dir: PathLike, name: str) -> Path:
    if not _NAME.match(name):
        raise DDPMError(f"weights name {name!r}: use letters, digits, '.', '-' and '_'")
    return Path(run_dir) / NAMED / name


def write_named(run_dir: PathLike, name: str, tensors: Dict[str, torch.Tensor], info: Dict[str, Any]) -> Path:
    """Save weights under ``RUN/weights/NAME/`` (written aside and renamed; the same name is replaced)."""
    final = _named_dir(run_dir, name)
    with written_aside(final, replace=_remove_named) as tmp:
        save_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp / "ema.safetensors")
        (tmp / "info.json").write_text(json.dumps(info, indent=1) + "\n")
        manifest = {f: {"sha256": file_sha256(tmp / f), "bytes": (tmp / f).stat().st_size}
                    for f in ("ema.safetensors", "info.json")}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return final


def _remove_named(folder: Path) -> None:
    """Named weights replaced: only the files ``write_named`` writes (a folder holding anything else stays, and the
    rename over it fails, naming it)."""
    remove_checkpoint(folder, files=("ema.safetensors", "info.json", "manifest.json"))
    if folder.exists():
        raise DDPMError(f"{folder} holds files ddpm did not write; move them, or choose other --sigma-rel") from None


def list_named(run_dir: PathLike) -> List[str]:
    root = Path(run_dir) / NAMED
    return sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []


def load_run(run_dir: PathLike, *, checkpoint: Union[str, int, None] = None, weights: Optional[str] = None,
             map_location: Union[str, torch.device] = "cpu") -> Checkpoint:
    """A run's checkpoint as ``checkpoint`` says (best, latest or a step), or, with ``weights``, its named weights
    (``ddpm ema``'s) in place of the EMA weights: a Checkpoint whose ``ema_model`` holds them, ``step`` is theirs
    and ``path`` their folder (so the samples drawn with them are told apart)."""
    if weights is None:
        return load_checkpoint(run_dir, resolve_step(run_dir, checkpoint), map_location=map_location)
    if checkpoint not in (None, "latest"):
        raise DDPMError("--weights names weights of their own: drop --checkpoint")
    folder = _named_dir(run_dir, weights)
    if not (folder / "manifest.json").is_file():
        have = list_named(run_dir)
        raise DDPMError(f"{run_dir} has no weights named {weights!r}"
                        + (f" (it has {', '.join(have)})" if have else "; make them with: ddpm ema --run "
                           f"{run_dir} --sigma-rel 0.07"))
    verify_checkpoint(folder, required=("ema.safetensors", "info.json"))
    info = json.loads((folder / "info.json").read_text())
    if not list_checkpoints(run_dir):
        raise DDPMError(f"{run_dir} has no checkpoint yet")
    ckpt = load_checkpoint(run_dir, map_location="cpu")
    _load_weights(folder / "ema.safetensors", ckpt.ema_model)
    ckpt.ema_model.to(map_location)
    ckpt.model.to(map_location)
    ckpt.step, ckpt.path = int(info.get("step", ckpt.step)), folder
    return ckpt
