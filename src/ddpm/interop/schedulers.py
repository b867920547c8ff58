"""diffusers scheduler configs <-> ddpm's DiffusionConfig: the same betas both ways (diffusers' linear ends are
absolute, ours are scaled by 1000/T), the same variance."""

from __future__ import annotations

from typing import Any, Dict

from ..config import DiffusionConfig
from ..errors import DDPMError

__all__ = ["diffusion_from_scheduler", "scheduler_config"]


def diffusion_from_scheduler(cfg: Dict[str, Any], where: str = "scheduler/scheduler_config.json") -> DiffusionConfig:
    """A diffusers DDPMScheduler config -> DiffusionConfig with the same betas."""
    name = cfg.get("_class_name", "DDPMScheduler")
    if name not in ("DDPMScheduler", "DDIMScheduler"):
        raise DDPMError(f"{where}: unsupported scheduler {name!r} (DDPMScheduler or DDIMScheduler)")
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise DDPMError(f"{where}: unsupported prediction_type = {cfg['prediction_type']!r} (the DDPM UNet "
                        "predicts epsilon)")
    if cfg.get("trained_betas") is not None:
        raise DDPMError(f"{where}: unsupported trained_betas (use beta_schedule linear or squaredcos_cap_v2)")
    T = int(cfg.get("num_train_timesteps", 1000))
    var = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge", "fixed_small_log": "fixedsmall",
           "fixed_large_log": "fixedlarge"}.get(cfg.get("variance_type", "fixed_small"))
    if var is None:
        raise DDPMError(f"{where}: unsupported variance_type = {cfg.get('variance_type')!r} (fixed_small or "
                        "fixed_large)")
    schedule = cfg.get("beta_schedule", "linear")
    if schedule == "linear":  # diffusers' ends are absolute; ours are scaled by 1000/T
        scale = T / 1000
        return DiffusionConfig(T=T, schedule="linear", beta_start=float(cfg.get("beta_start", 1e-4)) * scale,
                               beta_end=float(cfg.get("beta_end", 0.02)) * scale, var_type=var)
    if schedule == "squaredcos_cap_v2":
        return DiffusionConfig(T=T, schedule="cosine", var_type=var)
    raise DDPMError(f"{where}: unsupported beta_schedule = {schedule!r} (linear or squaredcos_cap_v2)")


def scheduler_config(diffusion: DiffusionConfig) -> Dict[str, Any]:
    """DiffusionConfig -> a diffusers DDPMScheduler config with the same betas."""
    cfg: Dict[str, Any] = {"_class_name": "DDPMScheduler", "num_train_timesteps": diffusion.T,
                           "variance_type": "fixed_large" if diffusion.var_type == "fixedlarge" else "fixed_small",
                           "clip_sample": True, "clip_sample_range": 1.0, "prediction_type": "epsilon"}
    if diffusion.schedule == "cosine":
        cfg["beta_schedule"] = "squaredcos_cap_v2"
    else:
        scale = 1000 / diffusion.T
        cfg.update(beta_schedule="linear", beta_start=diffusion.beta_start * scale, beta_end=diffusion.beta_end * scale)
    return cfg
