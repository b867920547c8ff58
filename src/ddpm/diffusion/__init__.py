"""The diffusion process itself: the noise schedule, the Gaussian forward and reverse processes with the
variational bound and bits/dim, and the KL and discretised-likelihood terms. Knows nothing of networks'
insides, data, runs or the command line."""

from .gaussian import VAR_TYPES, GaussianDiffusion, draw_normal, extract
from .losses import discretized_gaussian_log_likelihood, mean_bits_per_dim, normal_kl
from .schedule import NoiseSchedule

__all__ = ["NoiseSchedule", "GaussianDiffusion", "VAR_TYPES", "extract", "draw_normal", "normal_kl",
           "discretized_gaussian_log_likelihood", "mean_bits_per_dim"]
