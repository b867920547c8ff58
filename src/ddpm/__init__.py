"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) as a package and CLI."""

from .checkpoint import load_checkpoint, save_checkpoint
from .diffusion import GaussianDiffusion
from .schedule import NoiseSchedule
from .unet import UNet, UNetConfig

__version__ = "0.1.0"

__all__ = ["NoiseSchedule", "GaussianDiffusion", "UNet", "UNetConfig", "load_checkpoint", "save_checkpoint",
           "__version__"]
