"""Fine-tuning: a new run that starts from the weights of another run or of a diffusers DDPM pipeline directory
(``--init-from``), on the same network, with a record of where its weights came from (``RUN/init_from.json``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import DiffusionConfig, UNetConfig
from ..errors import DDPMError
from ..nn.unet import UNet
from ..run.directory import IMPORTED_DATA, holds_run_config, load_checkpoint, read_config

__all__ = ["InitSource", "init_source", "network_mismatch", "check_network", "load_init_weights",
           "source_defaults", "nearest_preset", "PROVENANCE"]

PROVENANCE = "init_from.json"

# What fine-tuning may change in the network: dropout is a training setting, the weights do not depend on it.
_FREE = {"dropout"}


@dataclass(frozen=True)
class InitSource:
    """Where fine-tuning weights come from: ``kind`` "run" or "diffusers", the network and diffusion it was
    trained with, and a run's preset."""

    path: Path
    kind: str
    model: UNetConfig
    diffusion: Optional[DiffusionConfig]  # None: a bare diffusers unet/ folder, whose schedule is not known
    preset: Optional[str] = None
    objective: Optional[str] = None  # a run's training objective (a diffusers pipeline does not say)

    def default_objective(self) -> Optional[str]:
        """The objective a fine-tuning run takes unless told: the source run's; for an imported network with a
        learned variance, Improved DDPM's hybrid (L_simple alone would not train the variance)."""
        from ..diffusion.parameterisation import LEARNED

        if self.objective is not None:
            return self.objective
        return "hybrid" if self.diffusion is not None and self.diffusion.var_type in LEARNED else None

    def changes(self, diffusion: DiffusionConfig) -> List[str]:
        """What ``diffusion`` changes of what the source's network was trained for ("--predict eps here, v
        there"): fine-tuning may change it, but the weights start out answering the old question."""
        if self.diffusion is None:
            return []
        a, b = dataclasses.asdict(diffusion), dataclasses.asdict(self.diffusion)
        return [f"--{k.replace('_', '-')} {a[k]} here, {b[k]} there" for k in a if a[k] != b[k]]


def init_source(path) -> InitSource:
    """What ``path`` (a run directory, or a diffusers pipeline directory or its unet/ folder) holds, read from its
    configs alone (no weights)."""
    from ..interop.diffusers import read_diffusers_config

    path = Path(path).expanduser()
    if not path.is_dir():
        raise DDPMError(f"--init-from {path}: not a folder (expected a run directory or a diffusers pipeline "
                        "directory)")
    if holds_run_config(path):
        cfg = read_config(path)
        imported = cfg.train.data == IMPORTED_DATA  # its objective is not known: the config's is a placeholder
        return InitSource(path, "run", cfg.model, cfg.diffusion, cfg.preset, None if imported else cfg.train.objective)
    return InitSource(path, "diffusers", *read_diffusers_config(path, required=False))


def network_mismatch(ours: UNetConfig, theirs: UNetConfig) -> List[str]:
    """The network fields (other than dropout) in which ``ours`` differs from ``theirs``, as "name: ours vs
    theirs" phrases; empty when the weights fit."""
    names = {"image_size": "--image-size", "in_channels": "--channels", "num_classes": "classes (--class-cond)"}
    a, b = ours.to_dict(), theirs.to_dict()
    return [f"{names.get(k, 'model.' + k)} {a[k]!r} here, {b[k]!r} there" for k in a if k not in _FREE and a[k] != b[k]]


def check_network(ours: UNetConfig, source: InitSource) -> None:
    problems = network_mismatch(ours, source.model)
    if problems:
        raise DDPMError(f"--init-from {source.path} has another network than this run: {'; '.join(problems)} "
                        "(fine-tuning keeps the network: leave --image-size, --channels and a config file's [model] "
                        "unset to take it from there)")


def load_init_weights(model: UNet, source: InitSource, weights: str = "ema") -> Dict[str, Any]:
    """Load the ``weights`` ("ema" or "raw") of ``source`` into ``model`` (whose network must be the source's,
    dropout aside); returns the provenance to record: source, kind, weights, step."""
    from ..interop.diffusers import read_diffusers_unet

    check_network(model.config, source)
    if source.kind == "run":
        ckpt = load_checkpoint(source.path)
        net, step = (ckpt.ema_model if weights == "ema" else ckpt.model), ckpt.step
        imported = ckpt.state.get("imported_from")
    else:
        net = read_diffusers_unet(source.path)  # a pipeline holds one set of weights (its EMA, for google's)
        step, imported = None, None
    model.load_state_dict(net.state_dict())
    out = {"init_from": str(source.path.resolve()), "kind": source.kind, "weights": weights, "step": step}
    if source.kind == "run" and source.preset:
        out["preset"] = source.preset
    if imported:
        out["imported_from"] = imported
    return out


def source_defaults(source: InitSource) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The network fields (classes aside: they come from the data) and the diffusion a fine-tuning run takes from
    its source unless told otherwise."""
    model = dataclasses.asdict(source.model)
    model.pop("num_classes")
    return model, dataclasses.asdict(source.diffusion) if source.diffusion is not None else {}


def nearest_preset(model: UNetConfig) -> str:
    """The preset whose network is nearest ``model``'s in parameter count (by ratio): its recipe (batch size,
    learning rate, EMA decay) is the one made for a network of that size."""
    import math

    import torch

    from ..config import PRESETS

    def count(cfg: UNetConfig) -> int:
        with torch.device("meta"):  # shapes only: nothing is allocated
            return UNet(cfg).num_parameters()

    n = count(model)
    return min(PRESETS, key=lambda p: abs(math.log(count(PRESETS[p].model) / n)))
