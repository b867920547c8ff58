"""The networks: the paper's UNet eps_theta(x_t, t[, y]) with its blocks and class embedding."""

from .unet import UNet, UNetConfig, timestep_embedding

__all__ = ["UNet", "UNetConfig", "timestep_embedding"]
