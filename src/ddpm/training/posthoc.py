"""Post-hoc EMA (Karras et al. 2024, "Analyzing and improving the training dynamics of diffusion models", Sec. 3
and Appendix C.2): power-function EMAs of the weights tracked while training, snapshots of them saved every few
steps, and after training an EMA of any length rebuilt from the snapshots by least squares (their Algorithm 3).

A power-function EMA with exponent gamma averages the weights of steps 1..t with weights proportional to
tau^gamma: its update at step t is ``avg <- beta_t avg + (1 - beta_t) theta_t`` with
``beta_t = (1 - 1/t)^(gamma + 1)``. Its length is given as sigma_rel, the standard deviation of that profile
relative to t: ``sigma_rel^2 = (gamma + 1) / ((gamma + 2)^2 (gamma + 3))``. Unlike a constant decay, its length
grows with the run, so one sigma_rel suits any run length.

Snapshots live in ``RUN/ema-snapshots/step-XXXXXXXX.safetensors``: one tensor per profile and parameter
(``"0.05/<name>"``) and, in the file's metadata, the step, the number of updates t and the profiles.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, save_safetensors
from ..errors import DDPMError
from ..run.directory import step_name

__all__ = ["sigma_rel_to_gamma", "gamma_to_sigma_rel", "PowerEMA", "profile_overlap", "coefficients",
           "list_snapshots", "reconstruct", "SNAPSHOTS"]

SNAPSHOTS = "ema-snapshots"


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The exponent gamma of a power-function EMA of relative length ``sigma_rel`` (< 0.2887, gamma > 0).

    sigma_rel^2 = (g + 1) / ((g + 2)^2 (g + 3)), i.e. g^3 + 7 g^2 + (16 - s) g + (12 - s) = 0 with s = sigma_rel^-2;
    the cubic's largest real root."""
    s = float(sigma_rel) ** -2
    roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
    real = [r.real for r in roots if abs(r.imag) < 1e-9 * max(1.0, abs(r.real))]
    gamma = max(real)
    if not gamma > 0:
        raise ValueError(f"sigma_rel {sigma_rel} is too long for a power-function EMA (it must be < 0.2887)")
    return float(gamma)


def gamma_to_sigma_rel(gamma: float) -> float:
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


class PowerEMA:
    """Power-function EMAs of ``model``'s parameters, one per relative length in ``sigma_rels``."""

    def __init__(self, model: nn.Module, sigma_rels: Sequence[float]):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.gammas = tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)
        self.names = [name for name, _ in model.named_parameters()]
        self.averages = [[p.detach().clone() for p in model.parameters()] for _ in self.sigma_rels]
        self.updates = 0  # t: the number of updates so far

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """avg <- beta avg + (1 - beta) theta, beta = (1 - 1/t)^(gamma + 1), for every profile (t = 1: the weights)."""
        self.updates += 1
        t, params = self.updates, [p.detach() for p in model.parameters()]
        for gamma, avg in zip(self.gammas, self.averages):
            torch._foreach_lerp_(avg, params, 1.0 - (1.0 - 1.0 / t) ** (gamma + 1.0))

    def state_dict(self) -> Dict[str, torch.Tensor]:
        """Every profile's parameters as ``"<sigma_rel>/<name>"`` (host copies, contiguous)."""
        return {f"{s:g}/{n}": p.detach().to("cpu", copy=True).contiguous()
                for s, avg in zip(self.sigma_rels, self.averages) for n, p in zip(self.names, avg)}

    def load_state_dict(self, tensors: Dict[str, torch.Tensor], updates: int) -> None:
        want = {f"{s:g}/{n}" for s in self.sigma_rels for n in self.names}
        if set(tensors) != want:
            raise DDPMError("the checkpoint's EMA profiles are not those of --ema-profiles")
        with torch.no_grad():
            for s, avg in zip(self.sigma_rels, self.averages):
                for n, p in zip(self.names, avg):
                    p.copy_(tensors[f"{s:g}/{n}"])
        self.updates = int(updates)

    def profile(self, sigma_rel: float) -> Dict[str, torch.Tensor]:
        """One profile's weights as a state dict of the model."""
        avg = self.averages[self.sigma_rels.index(float(sigma_rel))]
        return dict(zip(self.names, avg))

    def write_snapshot(self, run_dir: Path, step: int) -> Path:
        """``RUN/ema-snapshots/step-XXXXXXXX.safetensors`` of this step, written aside and renamed."""
        return write_snapshot(run_dir, step, self.updates, self.sigma_rels, self.state_dict())


def write_snapshot(run_dir: Path, step: int, updates: int, sigma_rels: Sequence[float],
                   tensors: Dict[str, torch.Tensor]) -> Path:
    final = Path(run_dir) / SNAPSHOTS / f"{step_name(step)}.safetensors"
    final.parent.mkdir(parents=True, exist_ok=True)
    meta = {"step": str(int(step)), "t": str(int(updates)), "sigma_rels": json.dumps(list(sigma_rels))}
    with atomic_path(final) as tmp:
        save_safetensors(tensors, tmp, metadata=meta)
    return final


# ----------------------------------------------------------------------------- Algorithm 3
def profile_overlap(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """The inner product of two normalised power-function profiles (arrays broadcast): with
    p(tau; t, g) = (g + 1) tau^g / t^(g + 1) on (0, t],
    <p_a, p_b> = (g_a + 1)(g_b + 1) m^(g_a + g_b + 1) / ((g_a + g_b + 1) t_a^(g_a + 1) t_b^(g_b + 1)),
    m = min(t_a, t_b), computed in logarithms (the powers overflow for long runs)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    log = ((g_a + g_b + 1) * np.log(m) - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b)
           + np.log(g_a + 1) + np.log(g_b + 1) - np.log(g_a + g_b + 1))
    return np.exp(log)


def coefficients(t_in: Sequence[float], gamma_in: Sequence[float], t_out: Sequence[float],
                 gamma_out: Sequence[float]) -> np.ndarray:
    """The weights [len(t_in), len(t_out)] that combine the profiles (t_in, gamma_in) into each of the profiles
    (t_out, gamma_out) with the least squared error (the normal equations A x = b of the profiles' inner products),
    each column scaled to sum to 1 so that weights that agree give back that weight exactly."""
    ti, gi = np.asarray(t_in, np.float64)[:, None], np.asarray(gamma_in, np.float64)[:, None]
    a = profile_overlap(ti, gi, ti.T, gi.T)
    b = profile_overlap(ti, gi, np.asarray(t_out, np.float64)[None, :], np.asarray(gamma_out, np.float64)[None, :])
    x = np.linalg.solve(a, b)
    return x / x.sum(axis=0, keepdims=True)


def list_snapshots(run_dir: Path) -> List[Tuple[Path, int, int, Tuple[float, ...]]]:
    """(path, step, t, sigma_rels) of every snapshot of a run, by step."""
    from safetensors import safe_open

    found = []
    for p in sorted((Path(run_dir) / SNAPSHOTS).glob("step-*.safetensors")):
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
            found.append((p, int(meta["step"]), int(meta["t"]), tuple(json.loads(meta["sigma_rels"]))))
        except Exception:  # a file cut short by a kill is written again by the resumed run; skip it here
            continue
    return sorted(found, key=lambda s: s[1])


def reconstruct(run_dir: Path, sigma_rels: Iterable[float], *, step: Optional[int] = None,
                use: Optional[Sequence[float]] = None) -> Tuple[List[Dict[str, torch.Tensor]], Dict[str, Any]]:
    """EMA weights of each relative length in ``sigma_rels``, as they would be at the last snapshot (at or before
    ``step``), rebuilt from the run's snapshots (of the profiles ``use``, default all). Returns the state dicts
    (float32) and what was used: ``step``, ``t``, ``snapshots``, ``profiles``, ``coefficients``. Sums in float64,
    reading one snapshot at a time."""
    from safetensors.torch import load_file

    targets = [float(s) for s in sigma_rels]
    snaps = [s for s in list_snapshots(run_dir) if step is None or s[1] <= step]
    if not snaps:
        raise DDPMError(f"{run_dir} has no EMA snapshots{'' if step is None else f' at or before step {step}'}: "
                        "train it with --ema-profiles")
    have = snaps[-1][3]
    used = tuple(float(s) for s in (use or have))
    if any(u not in s[3] for u in used for s in snaps):
        raise DDPMError(f"not every snapshot holds the profiles {', '.join(map(str, used))}")
    basis = [(p, t, u) for p, _, t, _ in snaps for u in used]
    if len(basis) < 2:
        raise DDPMError("one snapshot of one profile cannot be reshaped: save more (--ema-snapshot-every)")
    x = coefficients([t for _, t, _ in basis], [sigma_rel_to_gamma(u) for _, _, u in basis],
                     [snaps[-1][2]] * len(targets), [sigma_rel_to_gamma(s) for s in targets])
    sums: List[Dict[str, torch.Tensor]] = [{} for _ in targets]
    row = 0
    for p, _, _, _ in snaps:
        tensors = load_file(str(p))
        for u in used:  # the rows of x: snapshot by snapshot, profile by profile
            prefix = f"{u:g}/"
            part = {k[len(prefix):]: v.to(torch.float64) for k, v in tensors.items() if k.startswith(prefix)}
            for acc, w in zip(sums, x[row].tolist()):
                for name, v in part.items():
                    acc[name] = acc[name] + w * v if name in acc else w * v
            row += 1
    info = {"step": snaps[-1][1], "t": snaps[-1][2], "snapshots": len(snaps), "profiles": list(used),
            "coefficients": x.tolist()}
    return [{k: v.to(torch.float32) for k, v in acc.items()} for acc in sums], info
