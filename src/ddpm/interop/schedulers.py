"""diffusers scheduler configs <-> ddpm's DiffusionConfig: the same betas both ways (diffusers' linear ends are
absolute, ours are scaled by 1000/T), the same variance and prediction.

prediction_type epsilon / sample / v_prediction is ddpm's eps / x0 / v; ddpm's mu (the posterior mean) has no
diffusers counterpart. variance_type fixed_large / fixed_small / learned_range is ddpm's fixedlarge / fixedsmall /
learned-range. diffusers' ``learned`` reads the variance channels as sigma^2, ddpm's (the paper's, the official
code's) as log sigma^2: the two cannot stand for each other, so neither way is converted."""

from __future__ import annotations

from typing import Any, Dict

from ..config import DiffusionConfig
from ..errors import DDPMError

__all__ = ["diffusion_from_scheduler", "scheduler_config", "check_exportable"]

_PREDICT = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_THEIRS = {v: k for k, v in _PREDICT.items()}
_VARIANCE = {"fixedlarge": "fixed_large", "fixedsmall": "fixed_small", "learned-range": "learned_range"}


def check_exportable(diffusion: DiffusionConfig) -> None:
    """DDPMError unless a diffusers DDPMScheduler samples this diffusion as ddpm does."""
    if diffusion.predict not in _THEIRS:
        raise DDPMError(f"a model that predicts {diffusion.predict} (the posterior mean) has no diffusers counterpart "
                        "(prediction_type is epsilon, sample or v_prediction); it cannot be exported")
    if diffusion.var_type not in _VARIANCE:
        raise DDPMError(f"--var-type {diffusion.var_type}: diffusers' variance_type 'learned' reads the network's "
                        "variance channels as sigma^2, ddpm's as log sigma^2 (the paper's); it cannot be exported")


def diffusion_from_scheduler(cfg: Dict[str, Any], where: str = "scheduler/scheduler_config.json") -> DiffusionConfig:
    """A diffusers DDPMScheduler config -> DiffusionConfig with the same betas."""
    name = cfg.get("_class_name", "DDPMScheduler")
    if name not in ("DDPMScheduler", "DDIMScheduler"):
        raise DDPMError(f"{where}: unsupported scheduler {name!r} (DDPMScheduler or DDIMScheduler)")
    predict = _PREDICT.get(cfg.get("prediction_type", "epsilon"))
    if predict is None:
        raise DDPMError(f"{where}: unsupported prediction_type = {cfg['prediction_type']!r} (epsilon, sample or "
                        "v_prediction)")
    if cfg.get("trained_betas") is not None:
        raise DDPMError(f"{where}: unsupported trained_betas (use beta_schedule linear or squaredcos_cap_v2)")
    T = int(cfg.get("num_train_timesteps", 1000))
    names = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge", "fixed_small_log": "fixedsmall",
             "fixed_large_log": "fixedlarge", "learned_range": "learned-range"}
    var = names.get(cfg.get("variance_type", "fixed_small"))
    if var is None:
        why = (" (diffusers reads a learned variance as sigma^2, ddpm as log sigma^2)"
               if cfg.get("variance_type") == "learned" else "")
        raise DDPMError(f"{where}: unsupported variance_type = {cfg.get('variance_type')!r}{why}; ddpm takes "
                        "fixed_small, fixed_large or learned_range")
    schedule = cfg.get("beta_schedule", "linear")
    if schedule == "linear":  # diffusers' ends are absolute; ours are scaled by 1000/T
        scale = T / 1000
        return DiffusionConfig(T=T, schedule="linear", beta_start=float(cfg.get("beta_start", 1e-4)) * scale,
                               beta_end=float(cfg.get("beta_end", 0.02)) * scale, var_type=var, predict=predict)
    if schedule == "squaredcos_cap_v2":
        return DiffusionConfig(T=T, schedule="cosine", var_type=var, predict=predict)
    raise DDPMError(f"{where}: unsupported beta_schedule = {schedule!r} (linear or squaredcos_cap_v2)")


def scheduler_config(diffusion: DiffusionConfig) -> Dict[str, Any]:
    """DiffusionConfig -> a diffusers DDPMScheduler config with the same betas, variance and prediction."""
    check_exportable(diffusion)
    cfg: Dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": diffusion.T,
                           "variance_type": _VARIANCE[diffusion.var_type], "clip_sample": True,
                           "clip_sample_range": 1.0, "prediction_type": _THEIRS[diffusion.predict]}
    if diffusion.schedule == "cosine":
        cfg["beta_schedule"] = "squaredcos_cap_v2"
    else:
        scale = 1000 / diffusion.T
        cfg.update(beta_schedule="linear", beta_start=diffusion.beta_start * scale, beta_end=diffusion.beta_end * scale)
    return cfg
