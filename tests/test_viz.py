"""Pictures: the forward-process strip shows the closed-form x_t; the trajectory keeps the right steps."""

import math

import numpy as np
import torch

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.viz import Trajectory, noise_strip


def test_noise_strip_panels_are_the_closed_form_x_t():
    d = GaussianDiffusion(NoiseSchedule.linear(100))
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(1, 16, 16, generator=g) * 2 - 1
    steps = [0, 10, 100]
    img = np.asarray(noise_strip(d, x0, steps, seed=3).convert("L"))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))  # the strip's documented eps
    scale, pad = 6, 4  # 96 // 16 pixels per pixel, 4 pixels between panels
    for j, t in enumerate(steps):
        # paper numbering: t = 0 is x_0, t >= 1 uses alpha-bar at the 0-based index t - 1
        a = 1.0 if t == 0 else float(np.prod(1 - np.linspace(1e-4 * 10, 0.02 * 10, 100)[:t]))
        expected = (math.sqrt(a) * x0 + math.sqrt(1 - a) * eps).clamp(-1, 1)
        expected = ((expected + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[0].numpy()
        x = pad + j * (16 * scale + pad)
        panel = img[pad:pad + 16 * scale:scale, x:x + 16 * scale:scale]
        assert np.abs(panel.astype(int) - expected.astype(int)).max() <= 1, f"t={t}"


def test_trajectory_keeps_the_steps_nearest_to_those_asked_for():
    indices = list(range(0, 1000, 10))  # a respaced chain: paper steps 1, 11, ..., 991
    traj = Trajectory(indices, keep=(1000, 500, 1), frames=5, samples=2)
    assert traj.strip_steps == [991, 501, 1]
    for i in reversed(indices):
        traj(i, torch.full((3, 1, 4, 4), float(i)), torch.zeros(3, 1, 4, 4))
    assert set(traj.kept) == set(traj.strip_steps) | set(traj.gif_steps)
    x, _ = traj.kept[501]
    assert x.shape[0] == 2 and x[0, 0, 0, 0] == 500  # the state after the step at index 500, first 2 samples
    assert len(traj.gif_steps) == 5 and traj.gif_steps[0] == 991 and traj.gif_steps[-1] == 1
