"""Samplers, one signature for all: ``sampler(model, shape, *, generator=None, progress=False, callback=None)``.

- ``ancestral``: Algorithm 2 over all T steps (``GaussianDiffusion.sample``).
- ``respaced``: Algorithm 2 over K of the T steps, with the betas recomputed for the kept steps
  (Nichol & Dhariwal 2021, Sec. 4): beta'_i = 1 - abar_{tau_i} / abar_{tau_{i-1}}.
- ``ddim``: Song et al. (2021), Eq. 12, with eta (0: deterministic; 1: DDPM-like noise).
- ``dpm++``: DPM-Solver++(2M) (Lu et al. 2022), the second-order multistep solver of the probability-flow ODE
  in its data-prediction form, with x0 clipped to [-1, 1]; good images in 15-25 network calls.
- ``sde-dpm++``: its stochastic twin, SDE-DPM-Solver++(2M), which adds fresh noise every step as Algorithm 2
  does (diffusers' "sde-dpmsolver++").

Every sampler returns x_0 in [-1, 1] and calls ``callback(t, x, pred_x0)`` after each step, where t
is the original (0-based) index of the step just taken. Samplers see the model as ``model(x_t, t)``, whatever it
predicts (eps, x0, mu or v; DDIM and the DPM-Solvers convert it to eps, Algorithm 2 uses a learned variance); for a
class-conditional network ``conditioning.Guided`` binds the labels and the guidance weight, so every sampler
works with classifier-free guidance. ``generate`` draws every image from its own generator (``rng.ImageGenerators``),
so image i depends on its seed and the sampler's settings only, not on the batch it is drawn in.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..diffusion.gaussian import Device, GaussianDiffusion, Model, Noise, draw_normal, extract, on_device
from ..diffusion.parameterisation import split_output, to_eps_x0
from ..diffusion.schedule import NoiseSchedule

__all__ = ["SAMPLERS", "SPACINGS", "make_sampler", "step_indices", "respace", "ddim_update", "Sampler", "Ancestral",
           "Respaced", "DDIM", "DPMSolverPP", "SDEDPMSolverPP", "default_steps",
           "model_eps"]

SAMPLERS = ("ancestral", "respaced", "ddim", "dpm++", "sde-dpm++")
SPACINGS = ("uniform", "quadratic")
Callback = Optional[Callable[[int, Tensor, Tensor], None]]


def step_indices(T: int, K: int, spacing: str = "uniform") -> List[int]:
    """K distinct increasing step indices in [0, T-1] that end at T-1.

    ``uniform``: round(linspace(0, T-1, K)); ``quadratic``: denser near 0, round((i/(K-1))^2 (T-1))
    (the DDIM paper's choice for CIFAR-10), nudged apart so that all K are distinct.
    """
    if isinstance(K, bool) or not isinstance(K, int) or not 1 <= K <= T:
        raise ValueError(f"the number of sampling steps must be an integer in [1, {T}], got {K!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if K == 1:
        return [T - 1]
    frac = [i / (K - 1) for i in range(K)]
    idx = [round(f * (T - 1)) if spacing == "uniform" else round(f * f * (T - 1)) for f in frac]
    for i in range(1, K):  # strictly increasing ...
        idx[i] = max(idx[i], idx[i - 1] + 1)
    idx[-1] = T - 1
    for i in range(K - 2, -1, -1):  # ... and still ending at T-1
        idx[i] = min(idx[i], idx[i + 1] - 1)
    return idx


class Sampler:
    """Base: holds the diffusion and the chosen steps; ``__call__`` draws x_T and runs the steps."""

    name = "sampler"

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform"):
        self.diffusion = diffusion
        self.steps = diffusion.T if steps is None else steps
        self.indices = step_indices(diffusion.T, self.steps, spacing)
        self.spacing = spacing

    def __repr__(self) -> str:
        return f"{type(self).__name__}(steps={self.steps}, spacing={self.spacing!r})"

    @torch.no_grad()
    def __call__(self, model: Model, shape: Sequence[int], *, generator: Noise = None,
                 progress: bool = False, callback: Callback = None, device: Device = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        x = draw_normal(tuple(shape), generator, torch.empty(0, device=device, dtype=dtype))  # x_T ~ N(0, I)
        return self.run(model, x, len(self.indices) - 1, generator=generator, progress=progress, callback=callback)

    @property
    def calls(self) -> int:
        """Network calls per image (a chain of all the steps; editing overrides it)."""
        return self.steps

    @torch.no_grad()
    def run(self, model: Model, x: Tensor, start: int, *, generator: Noise = None, progress: bool = False,
            callback: Callback = None) -> Tensor:
        """Steps ``start``, ``start - 1``, ..., 0 from ``x`` at the noise level of kept index ``start`` (SDEdit
        starts a chain part-way; ``__call__`` at the top, from x_T)."""
        self.reset()
        order = list(range(start, -1, -1))
        if progress:
            from tqdm.auto import tqdm

            order = tqdm(order, desc=f"sampling ({self.name})", unit="step", leave=False)
        for k in order:
            x, pred_x0 = self.step(model, x, k, generator)
            if callback is not None:
                callback(self.indices[k], x, pred_x0)
        return x.clamp(-1.0, 1.0)

    def reset(self) -> None:
        """Forget what earlier steps left (a multistep solver's history); called before each chain."""

    def step(self, model: Model, x: Tensor, k: int, generator: Noise) -> Tuple[Tensor,
                                                                               Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def respace(diffusion: GaussianDiffusion, indices: Sequence[int]) -> GaussianDiffusion:
    """The process over the kept steps tau_1 < ... < tau_K (Nichol & Dhariwal 2021, Sec. 4): betas
    beta'_k = 1 - abar_{tau_k} / abar_{tau_{k-1}}, with abar before tau_1 equal to 1. All T steps kept: the
    process itself (not a recomputed copy, so Algorithm 2 over all steps is exactly ``diffusion.sample``)."""
    if list(indices) == list(range(diffusion.T)):
        return diffusion
    abar = diffusion.schedule.alphas_cumprod[list(indices)]
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    # the respaced process is given eps (see _OriginalTimesteps); a learned-range variance interpolates between
    # the respaced betas' log beta and log beta-tilde, as improved-diffusion's respace.py does
    return GaussianDiffusion(NoiseSchedule(1.0 - abar / prev), var_type=diffusion.var_type, predict="eps")


def model_eps(diffusion: GaussianDiffusion, out: Tensor, x: Tensor, t: Tensor, keep_variance: bool = False) -> Tensor:
    """A network's output at (x_t, t) of ``diffusion`` as eps (with its variance channels, if asked and learned):
    what a sampler that works in eps needs, whatever the network predicts."""
    pred, var_values = split_output(out, x.shape[1], diffusion.learned)
    if diffusion.predict != "eps":
        pred, _ = to_eps_x0(diffusion.schedule, diffusion.predict, x, t, pred.to(x.dtype))
    return torch.cat([pred, var_values], 1) if keep_variance and var_values is not None else pred


class _OriginalTimesteps:
    """The model as the respaced process calls it: step k of the respaced chain is step tau_k of the original,
    the network sees the original t, and its output is read as eps by the original process."""

    def __init__(self, model: Model, timesteps: Tensor, diffusion: GaussianDiffusion):
        self.model, self.timesteps, self.diffusion = model, timesteps, diffusion

    def __call__(self, x: Tensor, k: Tensor) -> Tensor:
        t = on_device(self.timesteps, x.device)[k]
        return model_eps(self.diffusion, self.model(x, t), x, t, keep_variance=True)


class Respaced(Sampler):
    """Algorithm 2 on the respaced process over the kept indices tau_1 < ... < tau_K (all T: ancestral)."""

    name = "respaced"

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform"):
        super().__init__(diffusion, steps, spacing)
        self.process = respace(diffusion, self.indices)
        self.timesteps = torch.tensor(self.indices, dtype=torch.long)  # tau_k, the original index of step k

    def step(self, model: Model, x: Tensor, k: int, generator: Noise) -> Tuple[Tensor, Tensor]:
        t = torch.full((x.shape[0],), k, device=x.device, dtype=torch.long)
        if self.process is not self.diffusion:
            model = _OriginalTimesteps(model, self.timesteps, self.diffusion)
        return self.process.p_sample(model, x, t, generator=generator)


class Ancestral(Respaced):
    """Algorithm 2 over all T steps (the paper's sampler)."""

    name = "ancestral"

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform"):
        if steps not in (None, diffusion.T):
            raise ValueError(f"the ancestral sampler takes all T={diffusion.T} steps; for {steps} steps use "
                             "the respaced or ddim sampler")
        super().__init__(diffusion, None, spacing)


def ddim_update(x: Tensor, eps: Tensor, abar_t: Tensor, abar_prev: Tensor, eta: float = 0.0,
                noise: Optional[Tensor] = None, clip_denoised: bool = True) -> Tuple[Tensor, Tensor]:
    """One DDIM step (Song et al. 2021, Eq. 12) from x_t to x_prev. Returns ``(x_prev, pred_x0)``.

    x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) (clipped to [-1, 1]; eps re-derived to agree),
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev),
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z.
    """
    pred_x0 = (x - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
    if clip_denoised:
        pred_x0 = pred_x0.clamp(-1.0, 1.0)
        eps = (x - abar_t.sqrt() * pred_x0) / (1 - abar_t).sqrt()
    sigma = eta * ((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)).sqrt()
    x_prev = abar_prev.sqrt() * pred_x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0 and noise is not None:
        x_prev = x_prev + sigma * noise
    return x_prev, pred_x0


class DDIM(Sampler):
    """DDIM (Song et al. 2021) over the kept indices, with noise scale ``eta`` (0: deterministic)."""

    name = "ddim"

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform",
                 eta: float = 0.0, clip_denoised: bool = True):
        super().__init__(diffusion, steps, spacing)
        if not eta >= 0:
            raise ValueError(f"eta must be >= 0, got {eta!r}")
        self.eta, self.clip_denoised = float(eta), clip_denoised
        abar = diffusion.schedule.alphas_cumprod[self.indices]
        # abar at tau_k and at the step before it (1 before tau_1), float64 [K]
        self.alphas_cumprod, self.alphas_cumprod_prev = abar, torch.cat([abar.new_ones(1), abar[:-1]])

    def _model_eps(self, model: Model, x: Tensor, k: int) -> Tensor:
        t = torch.full((x.shape[0],), self.indices[k], device=x.device, dtype=torch.long)
        return model_eps(self.diffusion, model(x, t), x, t).to(x.dtype)

    def _abars(self, k: int, x: Tensor) -> Tuple[Tensor, Tensor]:
        kk = torch.full((x.shape[0],), k, dtype=torch.long, device=x.device)
        return extract(self.alphas_cumprod, kk, x), extract(self.alphas_cumprod_prev, kk, x)

    def step(self, model: Model, x: Tensor, k: int, generator: Noise) -> Tuple[Tensor, Tensor]:
        a, a_prev = self._abars(k, x)
        noise = draw_normal(x.shape, generator, x) if self.eta > 0 and k > 0 else None
        return ddim_update(x, self._model_eps(model, x, k), a, a_prev, self.eta, noise, self.clip_denoised)

    @torch.no_grad()
    def invert(self, model: Model, x0: Tensor, *, progress: bool = False) -> Tensor:
        """The deterministic DDIM encoder: run the eta = 0 ODE from x0 up to x_{T-1} over the same steps."""
        x = x0
        order = range(len(self.indices))
        if progress:
            from tqdm.auto import tqdm

            order = tqdm(order, desc="ddim inversion", unit="step", leave=False)
        for k in order:
            a, a_prev = self._abars(k, x)  # going up: from abar_prev (at tau_{k-1}) to abar (at tau_k)
            eps = self._model_eps(model, x, max(k - 1, 0))  # at k = 0, x is x0 and eps is taken at tau_1
            pred_x0 = (x - (1 - a_prev).sqrt() * eps) / a_prev.sqrt()
            x = a.sqrt() * pred_x0 + (1 - a).sqrt() * eps
        return x


class DPMSolverPP(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models", Algorithm 2) over the kept indices, x0 clipped to [-1, 1] (``clip_denoised``).

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t) and the data
    prediction x0_t = (x_t - sigma_t eps) / alpha_t, a step from s to t (h = lambda_t - lambda_s) is
    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) D, with D = x0_s on the first step (DPM-Solver++1, i.e.
    DDIM) and D = x0_s + (x0_s - x0_prev) h / (2 h_prev) after it (the multistep midpoint rule). The last step
    goes to sigma = 0 and returns x0 of the last network call (diffusers' final_sigmas_type "zero").
    """

    name = "dpm++"
    stochastic = False

    def __init__(self, diffusion: GaussianDiffusion, steps: Optional[int] = None, spacing: str = "uniform",
                 clip_denoised: bool = True):
        super().__init__(diffusion, default_steps(self.name, diffusion) if steps is None else steps, spacing)
        abar = diffusion.schedule.alphas_cumprod[self.indices]  # float64 [K]
        self.alpha, self.sigma = abar.sqrt(), (1 - abar).sqrt()
        self.lam = self.alpha.log() - self.sigma.log()
        self.clip_denoised = clip_denoised
        self._prev: Optional[Tuple[Tensor, Tensor]] = None  # (x0, lambda) of the step before

    def reset(self) -> None:
        self._prev = None

    def step(self, model: Model, x: Tensor, k: int, generator: Noise) -> Tuple[Tensor, Tensor]:
        t = torch.full((x.shape[0],), self.indices[k], device=x.device, dtype=torch.long)
        eps = model_eps(self.diffusion, model(x, t), x, t).to(x.dtype)
        x0 = (x - float(self.sigma[k]) * eps) / float(self.alpha[k])
        if self.clip_denoised:
            x0 = x0.clamp(-1.0, 1.0)
        if k == 0:  # to sigma = 0: the data prediction itself
            return x0, x0
        h = float(self.lam[k - 1] - self.lam[k])
        d = x0 if self._prev is None else x0 + (x0 - self._prev[0]) * (h / (2 * float(self.lam[k] - self._prev[1])))
        self._prev = (x0, self.lam[k])
        ratio, alpha_t = float(self.sigma[k - 1] / self.sigma[k]), float(self.alpha[k - 1])
        if not self.stochastic:
            return ratio * x - alpha_t * math.expm1(-h) * d, x0
        # SDE form: x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) D + sigma_t sqrt(1 - e^{-2h}) z
        z = draw_normal(x.shape, generator, x)
        x_next = ratio * math.exp(-h) * x - alpha_t * math.expm1(-2 * h) * d + \
            float(self.sigma[k - 1]) * math.sqrt(-math.expm1(-2 * h)) * z
        return x_next, x0


class SDEDPMSolverPP(DPMSolverPP):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, Sec. 5): the same multistep data prediction, with the noise of the
    reverse SDE added every step (fresh z per step and image; none at the last step, to sigma = 0)."""

    name = "sde-dpm++"
    stochastic = True


def default_steps(name: str, diffusion: GaussianDiffusion) -> int:
    """Network calls per image when none are asked for: 20 for the DPM-Solver++ samplers, all T otherwise."""
    return min(20, diffusion.T) if name in ("dpm++", "sde-dpm++") else diffusion.T


def make_sampler(name: str, diffusion: GaussianDiffusion, *, steps: Optional[int] = None,
                 eta: Optional[float] = None, spacing: Optional[str] = None) -> Sampler:
    """A sampler by name, all with the same call: ``sampler(model, shape, *, generator, progress, callback)``.

    ``steps`` (network calls) and ``spacing`` are for respaced, ddim and dpm++, ``eta`` for ddim only: an option
    the sampler would ignore is an error, never silently dropped.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
    if eta is not None and name != "ddim":
        raise ValueError(f"eta is an option of the ddim sampler; the {name} sampler has no use for it")
    if name == "ancestral":
        if spacing is not None:
            raise ValueError("spacing is an option of the respaced, ddim and dpm++ samplers; the ancestral sampler "
                             "takes every step")
        return Ancestral(diffusion, steps)
    if name == "respaced":
        return Respaced(diffusion, steps, spacing or "uniform")
    if name == "dpm++":
        return DPMSolverPP(diffusion, steps, spacing or "uniform")
    if name == "sde-dpm++":  # measured on the demo model: quadratic spacing helps the stochastic solver, not the ODE
        return SDEDPMSolverPP(diffusion, steps, spacing or "quadratic")
    return DDIM(diffusion, steps, spacing or "uniform", 0.0 if eta is None else eta)
