"""Editing: RePaint against its paper's schedule and the oracle, SDEdit, masks, the edit's order and figure."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import GaussianDiffusion, NoiseSchedule
from ddpm.config import make_run_config
from ddpm.data.images import to_float, to_uint8
from ddpm.data.pictures import load_images
from ddpm.errors import DDPMError
from ddpm.nn.unet import UNet
from ddpm.rng import ImageGenerators
from ddpm.sampling.edit_jobs import Edit, inpaint, sdedit
from ddpm.sampling.editing import MASKS, RePaint, SDEdit, make_mask, named_mask, repaint_levels, sdedit_start
from ddpm.sampling.generation import generate
from ddpm.sampling.samplers import SAMPLERS, Ancestral, Respaced, make_sampler
from ddpm.sampling.settings import SamplingSettings as S
from helpers import OracleEps

T = 40


def random_net(**model):
    """A tiny UNet whose zero-initialised layers are not zero (else its output is 0 whatever it is given)."""
    torch.manual_seed(0)
    net = UNet(make_run_config("tiny", model={"image_size": 8, **model}).model).eval()
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "zero_init", False):
                for p in m.parameters():
                    p.normal_(0, 0.3)
    return net


@pytest.fixture(scope="module")
def net():
    return random_net()


@pytest.fixture(scope="module")
def diffusion():
    return GaussianDiffusion(NoiseSchedule.linear(T))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (3, 1, 8, 8), generator=g, dtype=torch.uint8)


def repaint_reference(t_T, jump_length, jump_n_sample):
    """RePaint's get_schedule_jump (guided_diffusion/scheduler.py of andreas128/RePaint, without its jump2/jump3
    options, which its configs leave at 1): the x indices it visits, -1 the image."""
    jumps = {j: jump_n_sample - 1 for j in range(0, t_T - jump_length, jump_length)}
    t, ts = t_T, []
    while t >= 1:
        t = t - 1
        ts.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] = jumps[t] - 1
            for _ in range(jump_length):
                t = t + 1
                ts.append(t)
    ts.append(-1)
    return ts


@pytest.mark.parametrize("K,j,r", [(250, 10, 10), (40, 10, 3), (20, 5, 1), (7, 10, 10), (30, 1, 2)])
def test_repaint_schedule_is_the_papers(K, j, r):
    levels = repaint_levels(K, j, r)
    assert levels == [t + 1 for t in repaint_reference(K, j, r)]  # its index t is level t + 1 (x_T: K)
    down = sum(b < a for a, b in zip(levels, levels[1:]))
    assert down == K + (r - 1) * j * len(range(0, K - j, j))
    assert all(abs(a - b) == 1 for a, b in zip(levels, levels[1:]))


def test_known_pixels_are_returned_exactly(net, diffusion, images):
    for name in ("right", "centre", "strokes"):
        mask = make_mask(name, len(images), 1, 8, seed=3)
        out = inpaint(net, diffusion, images, mask, steps=10, jump=3, resample=2, progress=False)
        keep = mask.expand_as(images).bool()
        assert torch.equal(out[keep], images[keep])
        assert not torch.equal(out[~keep], images[~keep])


def test_all_keep_gives_the_input(net, diffusion, images):
    out = inpaint(net, diffusion, images, torch.ones(1, 1, 8, 8), steps=8, jump=2, resample=3, n=2, progress=False)
    assert torch.equal(out, images.repeat_interleave(2, 0))


@pytest.mark.parametrize("steps", [None, 12])
def test_all_free_without_resampling_is_sampling(net, diffusion, images, steps):
    out = inpaint(net, diffusion, images, torch.zeros(1, 1, 8, 8), steps=steps, resample=1, n=2, seed=5,
                  progress=False)
    sampler = Ancestral(diffusion) if steps is None else Respaced(diffusion, steps)
    plain = generate(net, sampler, (1, 8, 8), S(seed=5, n=6, progress=False))
    assert torch.equal(out, plain)


def test_repaint_with_the_oracle_lands_on_the_image(diffusion):
    x_star = torch.rand(1, 1, 8, 8) * 2 - 1
    image = to_uint8(x_star)
    oracle = OracleEps(diffusion, to_float(image))
    out = inpaint(oracle, diffusion, image, make_mask("left", 1, 1, 8), steps=20, jump=4, resample=3, progress=False)
    assert (out.int() - image.int()).abs().max() <= 1  # the free half too: it is the only image there is


def test_sdedit_strength_zero_is_the_input_and_one_starts_at_the_top(net, diffusion, images):
    sampler = make_sampler("ddim", diffusion, steps=10)
    assert torch.equal(sdedit(net, sampler, images, 0.0, progress=False), images)
    assert sdedit_start(sampler, 0.0) is None and sdedit_start(sampler, 1.0) == 9
    assert sdedit_start(sampler, 0.5) == max(k for k, t in enumerate(sampler.indices) if t <= 19)
    assert SDEdit(sampler, 0.5).calls == sdedit_start(sampler, 0.5) + 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SDEdit(sampler, 1.5)


def test_sdedit_noises_by_eq_4_and_runs_the_rest_of_the_chain(net, diffusion, images):
    sampler = make_sampler("respaced", diffusion, steps=10)
    editor = SDEdit(sampler, 0.6)
    x0 = to_float(images)
    seeds = torch.tensor([7, 8, 9])
    xt = editor.noised(x0, noise_seeds=seeds)
    abar = diffusion.schedule.alphas_cumprod[editor.t].float()
    eps = (xt - abar.sqrt() * x0) / (1 - abar).sqrt()
    assert abs(float(eps.std()) - 1) < 0.25 and editor.t == sampler.indices[editor.start]
    with torch.no_grad():
        alone = sampler.run(net, xt.clone(), editor.start, generator=ImageGenerators([1, 2, 3]))
    edited = editor(net, x0.shape, known=x0, noise_seeds=seeds, generator=ImageGenerators([1, 2, 3]))
    assert torch.equal(edited, alone)


@pytest.mark.parametrize("name", SAMPLERS)
def test_sdedit_with_the_oracle_lands_on_the_image_with_every_sampler(diffusion, name):
    x_star = torch.rand(2, 1, 8, 8) * 2 - 1
    image = to_uint8(x_star)
    oracle = OracleEps(diffusion, to_float(image))
    sampler = make_sampler(name, diffusion, steps=None if name == "ancestral" else 8)
    out = sdedit(oracle, sampler, image, [0.3, 1.0], progress=False)
    assert (out.int() - image.repeat_interleave(2, 0).int()).abs().max() <= 1, name


def test_sdedit_completions_share_x_t(net, diffusion, images):
    """With a deterministic sampler, completions of one input that share x_t are the same image; other inputs
    are not."""
    out = sdedit(net, make_sampler("ddim", diffusion, steps=8), images, [0.5, 0.9], n=3, seed=2, progress=False)
    assert out.shape == (3 * 2 * 3, 1, 8, 8)
    groups = out.view(3, 2, 3, 1, 8, 8)
    assert torch.equal(groups[:, :, 0], groups[:, :, 1]) and torch.equal(groups[:, :, 0], groups[:, :, 2])
    assert not torch.equal(groups[0, 1, 0], groups[1, 1, 0])
    stochastic = sdedit(net, make_sampler("respaced", diffusion, steps=8), images, 0.9, n=2, progress=False)
    assert not torch.equal(stochastic[0], stochastic[1])


def test_edit_order_and_figure(net, diffusion, images):
    sampler = make_sampler("ddim", diffusion, steps=6)
    edit = Edit([SDEdit(sampler, s) for s in (0.0, 0.5)], images, n=2, seed=4)
    assert len(edit) == 12 and edit.parts(5) == (1, 0) and edit.parts(7) == (1, 1)
    every = edit.draw(net, range(12))
    part = edit.draw(net, range(5, 9))  # any span of the outputs draws the same images
    assert torch.equal(every[5:9], part)
    assert torch.equal(every[4:6], images[1:2].repeat(2, 1, 1, 1))  # input 1 at strength 0
    fig = edit.figure(every)
    assert fig.shape == (3 * 2 * 4, 1, 8, 8) and torch.equal(fig[0], images[0]) and torch.equal(fig[1], images[0])


def test_conditional_editing_passes_labels_and_guidance(diffusion, images):
    net = random_net(num_classes=3)
    sampler = make_sampler("ddim", diffusion, steps=5)
    a = sdedit(net, sampler, images, 0.8, labels=torch.tensor([0, 0, 0]), guidance=2.0, progress=False)
    b = sdedit(net, sampler, images, 0.8, labels=torch.tensor([2, 2, 2]), guidance=2.0, progress=False)
    assert a.shape == b.shape == images.shape and not torch.equal(a, b)


def test_named_masks():
    for name in MASKS:
        m = named_mask(name, 16, seed=1)
        assert m.shape == (16, 16) and 0 < m.mean() < 1, name
    assert named_mask("right", 16)[:, :8].all() and not named_mask("right", 16)[:, 8:].any()
    assert named_mask("bottom", 16)[:8].all() and not named_mask("bottom", 16)[8:].any()
    assert named_mask("centre", 16)[8, 8] == 0 and named_mask("centre", 16)[0, 0] == 1
    strokes = make_mask("strokes", 2, 1, 16, seed=0)
    assert not torch.equal(strokes[0], strokes[1])  # each image its own strokes
    with pytest.raises(DDPMError, match="unknown mask 'diagonal'"):
        make_mask("diagonal", 1, 1, 16)


def test_mask_files(tmp_path):
    a = np.zeros((8, 8), np.uint8)
    a[:, :4] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    m = make_mask(str(tmp_path / "m.png"), 2, 1, 8)
    assert m.shape == (2, 1, 8, 8) and m[0, 0, :, :4].all() and not m[0, 0, :, 4:].any()
    Image.fromarray(np.stack([a] * 3, -1)).save(tmp_path / "gray_rgb.png")  # equal channels: gray
    assert torch.equal(make_mask(str(tmp_path / "gray_rgb.png"), 2, 1, 8), m)
    rgb = np.stack([a, 255 - a, a], -1)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    assert make_mask(str(tmp_path / "rgb.png"), 1, 3, 8).shape == (1, 3, 8, 8)
    with pytest.raises(DDPMError, match="3 different channels; the run's images have 1"):
        make_mask(str(tmp_path / "rgb.png"), 1, 1, 8)
    with pytest.raises(DDPMError, match=r"is 8x8 \(height x width\); the run's images are 16x16"):
        make_mask(str(tmp_path / "m.png"), 1, 1, 16)
    with pytest.raises(ValueError, match="does not fit"):
        Edit([RePaint(GaussianDiffusion(NoiseSchedule.linear(T)), 5, jump=2)],
             torch.zeros(2, 1, 16, 16, dtype=torch.uint8), mask=torch.ones(2, 1, 8, 8))


def test_load_images(tmp_path):
    digits = load_images("mnist:3-5", 28, 1)
    assert digits.shape == (3, 1, 28, 28) and digits.dtype == torch.uint8
    assert torch.equal(load_images("mnist:4", 28, 1), digits[1:2])
    arr = np.random.default_rng(0).integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", arr_0=arr)
    assert torch.equal(load_images(str(tmp_path / "a.npz"), 12, 3), torch.from_numpy(arr).permute(0, 3, 1, 2))
    assert load_images(str(tmp_path / "a.npz"), 8, 1).shape == (2, 1, 8, 8)  # converted as any source is
    (tmp_path / "f").mkdir()
    for k in range(2):
        Image.fromarray(arr[k]).save(tmp_path / "f" / f"{k}.png")
    assert torch.equal(load_images(str(tmp_path / "f"), 12, 3), load_images(str(tmp_path / "a.npz"), 12, 3))
    assert torch.equal(load_images(str(tmp_path / "f" / "1.png"), 12, 3)[0], torch.from_numpy(arr[1]).permute(2, 0, 1))
    np.save(tmp_path / "bad.npy", np.zeros((2, 4, 4), np.float32))
    for bad, match in (("mnist:9-2", "mnist:A-B"), (str(tmp_path / "bad.npy"), "expected uint8 images"),
                       (str(tmp_path / "nothing.png"), "not found")):
        with pytest.raises(DDPMError, match=match):
            load_images(bad, 8, 1)
