"""Interpolation in x_t (the paper's Sec. 4.3): the ends are the reconstructions of A and B; slerp keeps the norm."""

import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule, UNet
from ddpm.sampling.interpolation import interpolate, mix_latents, reconstruct


def _net():
    torch.manual_seed(0)
    net = UNet.from_preset("tiny").eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


@pytest.mark.parametrize("mix", ["linear", "slerp"])
def test_lambda_0_and_1_are_the_reconstructions_of_a_and_b(mix):
    d = GaussianDiffusion(NoiseSchedule.linear(T=60))
    net = _net()
    g = torch.Generator().manual_seed(1)
    xa, xb = torch.rand(1, 16, 16, generator=g) * 2 - 1, torch.rand(1, 16, 16, generator=g) * 2 - 1
    out = interpolate(net, d, xa, xb, 30, n=5, mix=mix, seed=3)
    assert out.shape == (5, 1, 16, 16) and out.dtype == torch.uint8
    assert torch.equal(out[0], reconstruct(net, d, xa, 30, seed=3)[0])
    assert torch.equal(out[-1], reconstruct(net, d, xb, 30, seed=3)[0])
    assert not torch.equal(out[2], out[0]) and not torch.equal(out[2], out[-1])


def test_mixtures():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 8, 8, generator=g), torch.randn(3, 8, 8, generator=g)
    lin = mix_latents(a, b, [0, 0.25, 1])
    torch.testing.assert_close(lin[1], 0.75 * a + 0.25 * b)
    sl = mix_latents(a, b, [0, 0.5, 1], "slerp")
    assert torch.equal(sl[0], a) and torch.equal(sl[2], b)
    # two independent noises are nearly orthogonal: the linear midpoint has ~1/sqrt(2) of their norm, slerp all of it
    assert mix_latents(a, b, [0.5])[0].norm() < 0.8 * a.norm()
    assert abs(sl[1].norm() / a.norm() - 1) < 0.1
    with pytest.raises(ValueError, match="mix must be one of"):
        mix_latents(a, b, [0.5], "cubic")
