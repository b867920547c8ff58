"""ddpm: Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) as a package and CLI.

The public names load on first use, so that ``import ddpm`` (and the ``ddpm`` command, before it has set
its thread options) does not import torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {"NoiseSchedule": "diffusion", "GaussianDiffusion": "diffusion", "UNet": "nn", "UNetConfig": "config",
           "load_checkpoint": "run", "save_checkpoint": "run"}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
