"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) as a package and CLI.

The public names load on first use, so that ``import ddpm`` (and the ``ddpm`` command, before it has set
its thread options) does not import torch.
"""

from .lazy import lazy_names

__version__ = "0.1.0"

_PUBLIC = {"NoiseSchedule": "diffusion", "GaussianDiffusion": "diffusion", "UNet": "nn", "UNetConfig": "config",
           "load_checkpoint": "run", "save_checkpoint": "run"}

__all__ = [*_PUBLIC, "__version__"]

__getattr__, __dir__ = lazy_names(__name__, _PUBLIC, globals())
