"""The Gaussian diffusion process of Ho et al. (2020): forward q, reverse p_theta, the losses.

The model is never owned here: every method takes ``model(x_t, t) -> output`` as an argument (a
class-conditional one is called ``model(x_t, t, y)`` where labels ``y`` are given). The output is what
``predict`` names (eps, x0, mu or v; see ``parameterisation``), followed by C variance channels for a learned
variance.
Images are float tensors in [-1, 1], layout NCHW. ``t`` is an int64 tensor [B] of indices
0..T-1: index 0 is the paper's t = 1.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .losses import discretized_gaussian_log_likelihood, mean_bits_per_dim, normal_kl
from .parameterisation import LEARNED, PREDICTIONS, split_output, target, to_eps_x0, x0_from_eps
from .schedule import NoiseSchedule
from .tables import extract, on_device

__all__ = ["GaussianDiffusion", "VAR_TYPES", "OBJECTIVES", "extract", "on_device", "draw_normal", "Model",
           "Noise", "Device"]

Model = Callable[..., Tensor]  # (x_t, t) -> output, or (x_t, t, y) -> output
Noise = Any  # where noise comes from: None, a torch.Generator or rng.ImageGenerators (anything with randn)
Device = Union[str, torch.device, None]
VAR_TYPES = ("fixedlarge", "fixedsmall", "learned", "learned-range")
OBJECTIVES = ("simple", "vlb", "hybrid")


class GaussianDiffusion:
    """DDPM's forward and reverse processes over a :class:`NoiseSchedule`.

    ``var_type`` sets the reverse-process variance sigma_t^2 (Sec. 3.2): ``"fixedlarge"`` uses beta_t,
    ``"fixedsmall"`` uses beta-tilde_t (at index 0 both use log beta-tilde_1, the official code's convention:
    finite, and it sets the width of the discretised decoder); ``"learned"`` takes log sigma^2 from the
    network, ``"learned-range"`` interpolates between log beta_t and log beta-tilde_t by the network's output
    (Improved DDPM). ``predict``: what the network outputs, ``"eps"`` (the paper's), ``"x0"``, ``"mu"`` or
    ``"v"``.
    """

    def __init__(self, schedule: NoiseSchedule, var_type: str = "fixedlarge", predict: str = "eps"):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if var_type not in VAR_TYPES:
            raise ValueError(f"var_type must be one of {VAR_TYPES}, got {var_type!r}")
        if predict not in PREDICTIONS:
            raise ValueError(f"predict must be one of {PREDICTIONS}, got {predict!r}")
        self.schedule, self.var_type, self.predict = schedule, var_type, predict
        self.learned = var_type in LEARNED
        s = schedule
        if var_type == "fixedsmall":
            self.model_variance = s.posterior_variance
            self.model_log_variance = s.posterior_log_variance_clipped
        else:  # fixedlarge; for the learned ones, log beta_t is learned-range's upper end
            first = s.posterior_variance[1:2] if s.T > 1 else s.betas[:1]
            variance = torch.cat([first, s.betas[1:]])
            self.model_variance, self.model_log_variance = variance, variance.log()
        self.log_betas = s.betas.log()
        # sigma_t of Algorithm 2 taken from the float64 table, not exp'd per batch: an exp over a batch's
        # tensor rounds by where each row falls in it (see ``unet``), a table lookup does not
        self.model_std = (0.5 * self.model_log_variance).exp()

    @property
    def T(self) -> int:
        return self.schedule.T

    def __repr__(self) -> str:
        return f"GaussianDiffusion({self.schedule!r}, var_type={self.var_type!r}, predict={self.predict!r})"

    # ----------------------------------------------------------------------------- forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Eq. 4): (mean, variance, log_variance)."""
        s = self.schedule
        mean = extract(s.sqrt_alphas_cumprod, t, x0) * x0
        var = extract(1.0 - s.alphas_cumprod, t, x0)
        return mean, var, extract((1.0 - s.alphas_cumprod).log(), t, x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Optional[Tensor] = None) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Eq. 4; the tutorial's ``perturb_x``)."""
        if noise is None:
            noise = torch.randn_like(x0)
        s = self.schedule
        return extract(s.sqrt_alphas_cumprod, t, x0) * x0 + extract(s.sqrt_one_minus_alphas_cumprod, t, x0) * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q(x_{t-1} | x_t, x_0) = N(mu-tilde, beta-tilde I) (Eqs. 6-7): (mean, variance, log_variance)."""
        s = self.schedule
        mean = extract(s.posterior_mean_coef1, t, xt) * x0 + extract(s.posterior_mean_coef2, t, xt) * xt
        return mean, extract(s.posterior_variance, t, xt), extract(s.posterior_log_variance_clipped, t, xt)

    def predict_x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert Eq. 4: x0 = x_t / sqrt(abar_t) - sqrt(1/abar_t - 1) eps."""
        return x0_from_eps(self.schedule, xt, t, eps)

    # ----------------------------------------------------------------------------- reverse process
    def p_mean_variance(self, model: Model, xt: Tensor, t: Tensor, clip_denoised: bool = True) -> Dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t): dict(mean, variance, log_variance, std, pred_x0, eps) from ``model(x_t, t)``."""
        return self.p_from_output(model(xt, t), xt, t, clip_denoised)

    def p_from_output(self, out: Tensor, xt: Tensor, t: Tensor, clip_denoised: bool = True) -> Dict[str, Tensor]:
        """p_theta(x_{t-1} | x_t) from the network's output ``out`` at (x_t, t).

        For eps, unclipped, the mean is Eq. 11 in the tutorial's form, mu = reciprocal_sqrt_alphas * (x_t -
        remove_noise_coeff * eps) = 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - abar_t) eps); for x0 and v it is
        mu-tilde(x_t, x0) of Eq. 7, for mu the output itself. With ``clip_denoised`` it is mu-tilde(x_t, x0_hat)
        with the predicted x0 clipped to [-1, 1]: the same number wherever the clip changes nothing.
        """
        pred, var_values = split_output(out.to(xt.dtype), xt.shape[1], self.learned)
        eps, pred_x0 = to_eps_x0(self.schedule, self.predict, xt, t, pred)
        if clip_denoised:
            pred_x0 = pred_x0.clamp(-1.0, 1.0)
            mean, _, _ = self.q_posterior(pred_x0, xt, t)
        elif self.predict == "eps":
            s = self.schedule
            mean = extract(s.reciprocal_sqrt_alphas, t, xt) * (xt - extract(s.remove_noise_coeff, t, xt) * eps)
        elif self.predict == "mu":
            mean = pred
        else:
            mean, _, _ = self.q_posterior(pred_x0, xt, t)
        return {"mean": mean, **self._variance(var_values, xt, t), "pred_x0": pred_x0, "eps": eps}

    def _variance(self, var_values: Optional[Tensor], xt: Tensor, t: Tensor) -> Dict[str, Tensor]:
        """variance, log_variance and std of p_theta: the fixed tables, or from the network's variance values."""
        if var_values is None:
            return {"variance": extract(self.model_variance, t, xt),
                    "log_variance": extract(self.model_log_variance, t, xt),
                    "std": extract(self.model_std, t, xt)}
        if self.var_type == "learned":
            log_var = var_values
        else:  # learned-range: (v + 1)/2 log beta_t + (1 - v)/2 log beta-tilde_t (Improved DDPM, Eq. 15)
            frac = (var_values + 1) / 2
            log_var = frac * extract(self.log_betas, t, xt) + \
                (1 - frac) * extract(self.schedule.posterior_log_variance_clipped, t, xt)
        return {"variance": log_var.exp(), "log_variance": log_var, "std": (0.5 * log_var).exp()}

    @torch.no_grad()
    def p_sample(self, model: Model, xt: Tensor, t: Tensor, *, generator: Noise = None,
                 clip_denoised: bool = True, noise: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """One step of Algorithm 2: x_{t-1} = mu_theta + sigma_t z, with z = 0 where t == 0.

        Returns ``(x_prev, pred_x0)``.
        """
        out = self.p_mean_variance(model, xt, t, clip_denoised=clip_denoised)
        if noise is None:
            noise = draw_normal(xt.shape, generator, xt)
        nonzero = (t != 0).to(xt.dtype).reshape(-1, *([1] * (xt.ndim - 1)))  # no noise at the last step
        x_prev = out["mean"] + nonzero * out["std"] * noise
        return x_prev, out["pred_x0"]

    @torch.no_grad()
    def sample(self, model: Model, shape: Sequence[int], *, generator: Noise = None,
               progress: bool = False, callback: Optional[Callable[[int, Tensor, Tensor], None]] = None,
               device: Device = None, dtype: torch.dtype = torch.float32,
               clip_denoised: bool = True) -> Tensor:
        """Algorithm 2: start at x_T ~ N(0, I), apply p_sample for i = T-1 .. 0, return x_0 in [-1, 1].

        ``generator`` makes it reproducible (its device is used unless ``device`` is given);
        ``callback(i, x_i, pred_x0)`` is called after each step with the new x (index i).
        """
        if device is None:
            device = generator.device if generator is not None else torch.device("cpu")
        x = draw_normal(tuple(shape), generator, torch.empty(0, device=device, dtype=dtype))
        steps = range(self.T - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="sampling", unit="step", leave=False)
        for i in steps:
            t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
            x, pred_x0 = self.p_sample(model, x, t, generator=generator, clip_denoised=clip_denoised)
            if callback is not None:
                callback(i, x, pred_x0)
        return x.clamp(-1.0, 1.0)

    # ----------------------------------------------------------------------------- likelihood
    @torch.no_grad()
    def bits_per_dim(self, model: Model, x0: Tensor, *, y: Optional[Tensor] = None,
                     generator: Noise = None, clip_denoised: bool = True,
                     return_terms: bool = False, progress: bool = False) -> Union[Tensor, Dict[str, Tensor]]:
        """The variational bound of Eq. 5 for each image, in bits/dim: shape [B].

        L = KL(q(x_T|x0) || N(0, I)) + sum_{t>1} KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t)) - log p(x0|x1),
        with the discretised Gaussian decoder (bins of 2/255). Costs T model calls per batch.
        ``x0`` must lie on the 256-level grid of [-1, 1] (``data.to_float`` of uint8 images).
        With ``return_terms`` returns a dict: total [B], prior [B], terms [B, T] (index 0: decoder NLL).
        ``y``: the images' labels, for a class-conditional model.
        """
        terms = torch.zeros(x0.shape[0], self.T, dtype=torch.float64, device=x0.device)
        for i, bits, _ in self._bound_terms(model, x0, y, generator, clip_denoised, progress, "bits/dim"):
            terms[:, i] = bits
        prior = self.prior_bits_per_dim(x0)
        total = prior + terms.sum(1)
        return {"total": total, "prior": prior, "terms": terms} if return_terms else total

    @torch.no_grad()
    def rate_distortion(self, model: Model, x0: Tensor, *, y: Optional[Tensor] = None, generator: Noise = None,
                        clip_denoised: bool = True, progress: bool = False) -> Dict[str, Tensor]:
        """Rate and distortion along the reverse process (Sec. 4.3, Table 4, Fig. 5), per image.

        At reverse step k = 1..T the receiver holds x_t, t = T - k + 1 (model index T - k). ``rate[:, k-1]``: the
        bits/dim sent so far, the prior term L_T plus the KL terms L_{T-1} .. L_t (Algorithm 3's cost of x_t);
        ``rmse[:, k-1]``: the root mean squared error between x0 and x0_hat predicted from x_t, on the 0-255 scale;
        ``decoder_bpd`` [B]: the decoder term L_0 (the paper's distortion in bits/dim). The last rate plus L_0 is
        ``bits_per_dim``'s total for the same images and noise (the same draws: same ``generator`` state); also
        returned: ``prior`` [B], ``terms`` [B, T] and ``total`` [B], as ``bits_per_dim(..., return_terms=True)``.
        """
        b = x0.shape[0]
        rate = torch.zeros(b, self.T, dtype=torch.float64, device=x0.device)
        rmse, terms = torch.zeros_like(rate), torch.zeros_like(rate)
        sent = self.prior_bits_per_dim(x0)
        prior = sent.clone()
        for i, bits, pred_x0 in self._bound_terms(model, x0, y, generator, clip_denoised, progress, "rate/distortion"):
            k = self.T - 1 - i  # column of reverse step T - i
            rate[:, k] = sent
            err = (pred_x0.double() - x0.double()) * 127.5  # [-1, 1] -> the 0-255 scale
            rmse[:, k] = err.pow(2).flatten(1).mean(1).sqrt()
            terms[:, i] = bits
            if i > 0:
                sent = sent + bits
        return {"rate": rate, "rmse": rmse, "decoder_bpd": terms[:, 0], "prior": prior, "terms": terms,
                "total": prior + terms.sum(1)}

    def _bound_terms(self, model: Model, x0: Tensor, y: Optional[Tensor], generator: Noise, clip_denoised: bool,
                     progress: bool, desc: str) -> Iterator[Tuple[int, Tensor, Tensor]]:
        """The bound's terms from t = T down to 1: yields (index i, its bits/dim [B] in float64, x0_hat from x_t),
        each x_t drawn afresh from q(x_t | x0) (index T-1 first, so one generator gives the same draws to every
        caller)."""
        if y is not None:
            model = _with_labels(model, y)
        steps = range(self.T - 1, -1, -1)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc=desc, unit="step", leave=False)
        for i in steps:
            t = torch.full((x0.shape[0],), i, device=x0.device, dtype=torch.long)
            xt = self.q_sample(x0, t, draw_normal(x0.shape, generator, x0))
            out = self.p_mean_variance(model, xt, t, clip_denoised=clip_denoised)
            if i == 0:
                nats = -discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
            else:
                mean_q, _, logvar_q = self.q_posterior(x0, xt, t)
                nats = normal_kl(mean_q.double(), logvar_q.double(), out["mean"].double(),
                                 out["log_variance"].double())
            yield i, mean_bits_per_dim(nats), out["pred_x0"]

    def prior_bits_per_dim(self, x0: Tensor) -> Tensor:
        """KL(q(x_T | x0) || N(0, I)) per image in bits/dim: [B]."""
        t = torch.full((x0.shape[0],), self.T - 1, device=x0.device, dtype=torch.long)
        mean, _, logvar = self.q_mean_variance(x0.double(), t)
        kl = normal_kl(mean, logvar, torch.zeros_like(mean), torch.zeros_like(logvar))
        return mean_bits_per_dim(kl)

    # ----------------------------------------------------------------------------- training
    def min_snr_weights(self, gamma: float) -> Tensor:
        """Per-step weights of L_simple under min-SNR-gamma (Hang et al. 2023): min(SNR_t, gamma) / SNR_t with
        SNR_t = abar_t / (1 - abar_t); float32 [T]."""
        if not gamma > 0:
            raise ValueError(f"gamma must be positive, got {gamma!r}")
        abar = self.schedule.alphas_cumprod
        snr = abar / (1 - abar)
        return (snr.clamp(max=gamma) / snr).float()

    def check_objective(self, objective: str) -> None:
        """ValueError unless ``objective`` trains every output of the network: L_simple leaves a learned variance
        untrained, and the hybrid's bound term trains only a variance."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if objective == "simple" and self.learned:
            raise ValueError(f"L_simple does not train a {self.var_type} variance: use the objective vlb (the paper's "
                             "L) or hybrid (Improved DDPM's)")
        if objective == "hybrid" and not self.learned:
            raise ValueError("the hybrid objective trains a learned variance on the bound: use var_type learned or "
                             "learned-range (with a fixed variance, simple or vlb)")

    def training_loss(self, model: Model, x0: Tensor, t: Optional[Tensor] = None, noise: Optional[Tensor] = None,
                      *, y: Optional[Tensor] = None, generator: Noise = None,
                      loss: str = "l2", objective: str = "simple", vlb_weight: float = 0.001) -> Tensor:
        """The per-example loss [B] at steps ``t`` (default uniform) with noise ``noise`` (default N(0, I) from
        ``generator``); ``y``: the labels a class-conditional model is given.

        - ``simple``: Algorithm 1's L_simple in the model's parameterisation, ||target - output||^2 averaged over
          pixels: eps (the paper's), x0, v, or the posterior mean (Table 2's ||mu-tilde - mu_theta||^2);
          ``loss="l1"``: |target - output|.
        - ``vlb``: the bound's term at t in bits/dim (the official code's loss_type "kl"): KL(q(x_{t-1}|x_t, x0) ||
          p_theta(x_{t-1}|x_t)), and at index 0 the discretised decoder's -log p(x0|x1); trains mean and variance.
        - ``hybrid``: L_simple + ``vlb_weight`` T times that term computed with the mean's output detached, so the
          bound trains the variance only (Improved DDPM's L_hybrid, lambda = 0.001).
        """
        if loss not in ("l2", "l1"):
            raise ValueError(f"loss must be l2 or l1, got {loss!r}")
        self.check_objective(objective)
        b = x0.shape[0]
        if t is None:  # drawn where the generator lives (a CPU generator with CUDA data is common), then moved
            where = generator.device if isinstance(generator, torch.Generator) else x0.device
            t = torch.randint(0, self.T, (b,), device=where, generator=generator).to(x0.device)
        if noise is None:
            noise = draw_normal(x0.shape, generator, x0)
        xt = self.q_sample(x0, t, noise)
        out = model(xt, t) if y is None else model(xt, t, y)
        pred, var_values = split_output(out, x0.shape[1], self.learned)
        if objective == "vlb":
            return self._vlb_term(out, x0, xt, t)
        err = target(self.schedule, self.predict, x0, xt, t, noise) - pred.to(noise.dtype)
        simple = (err.pow(2) if loss == "l2" else err.abs()).flatten(1).mean(dim=1)
        if objective == "simple":
            return simple
        assert var_values is not None  # hybrid needs a learned variance (check_objective)
        frozen = torch.cat([pred.detach(), var_values], dim=1)  # the bound's gradient reaches the variance only
        return simple + vlb_weight * self.T * self._vlb_term(frozen, x0, xt, t)

    def _vlb_term(self, out: Tensor, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """The bound's term at each example's t from the network's output, in bits/dim [B] (float32)."""
        p = self.p_from_output(out.float(), xt.float(), t, clip_denoised=False)
        mean_q, _, logvar_q = self.q_posterior(x0.float(), xt.float(), t)
        kl = mean_bits_per_dim(normal_kl(mean_q, logvar_q, p["mean"], p["log_variance"]))
        return torch.where(t == 0, _decoder_bits(x0.float(), p["mean"], 0.5 * p["log_variance"], t == 0), kl)


def _decoder_bits(x0: Tensor, mean: Tensor, log_scale: Tensor, first: Tensor,
                  select: Optional[bool] = None) -> Tensor:
    """The discretised decoder's -log p(x0 | x1) in bits/dim [B] (float32) where ``first`` (the t = 0 rows; 0
    elsewhere). On a CPU (``select``) only those rows are computed, 1/T of a batch; on a GPU, choosing rows would
    wait for the device, so every row is, elementwise, the others given harmless values first (a wide Gaussian's
    bin probability underflows, and its gradient would be NaN even where it is not selected)."""
    def bits(x: Tensor, m: Tensor, s: Tensor) -> Tensor:
        return mean_bits_per_dim(-discretized_gaussian_log_likelihood(x, m, s, dtype=torch.float32))

    if x0.device.type == "cpu" if select is None else select:
        rows = first.nonzero().squeeze(1)
        out = torch.zeros(len(first), dtype=torch.float32, device=x0.device)
        return out.index_put((rows,), bits(x0[rows], mean[rows], log_scale[rows])) if len(rows) else out
    keep = first.reshape(-1, *([1] * (x0.ndim - 1)))
    masked = bits(x0, torch.where(keep, mean, x0), torch.where(keep, log_scale, torch.full_like(mean, -6.0)))
    return torch.where(first, masked, torch.zeros_like(masked))


def draw_normal(shape: Sequence[int], generator: Noise, like: Tensor) -> Tensor:
    """N(0, I) of ``shape`` on ``like``'s device/dtype, drawn from ``generator`` when given: a torch.Generator, or
    one generator per image (``rng.ImageGenerators``, anything with ``randn(shape, dtype)``)."""
    if generator is None:
        return torch.randn(shape, device=like.device, dtype=like.dtype)
    if hasattr(generator, "randn"):
        drawn: Tensor = generator.randn(shape, dtype=like.dtype)
        return drawn.to(like.device)
    out = torch.randn(shape, generator=generator, device=generator.device, dtype=like.dtype)
    return out.to(like.device)


def _with_labels(model: Model, y: Tensor) -> Model:
    """``model`` with its labels bound: ``(x_t, t) -> model(x_t, t, y)``."""
    return lambda xt, t: model(xt, t, y)
