"""The paper's UNet: shapes, preset sizes, determinism, dependence on t, gradient flow, overfitting."""

import pytest
import torch

from ddpm import GaussianDiffusion, NoiseSchedule, UNet
from ddpm.config import PRESETS, UNetConfig


def small(**kw):
    cfg = dict(in_channels=3, image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
               dropout=0.0, num_groups=8)
    cfg.update(kw)
    return UNet(**cfg)


@pytest.mark.parametrize("name, expected, tol", [("cifar10", 35.7e6, 0.01), ("celebahq256", 114e6, 0.03)])
def test_paper_preset_parameter_counts(name, expected, tol):
    with torch.device("meta"):
        net = UNet.from_preset(name)
    assert abs(net.num_parameters() - expected) <= tol * expected


def test_cifar10_preset_is_the_paper_architecture():
    cfg = PRESETS["cifar10"].model
    got = (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions, cfg.dropout)
    assert got == (128, (1, 2, 2, 2), 2, (16,), 0.1)
    with torch.device("meta"):
        net = UNet.from_preset("cifar10")
    assert net.num_parameters() == 35_746_307  # diffusers' google/ddpm-cifar10-32 port of the same network
    assert PRESETS["celebahq256"].model.ch_mult == (1, 1, 2, 2, 4, 4) and PRESETS["celebahq256"].model.dropout == 0.0
    assert 1_000 <= UNet.from_preset("tiny").num_parameters() <= 20_000


@pytest.mark.parametrize("name", ["tiny", "mnist"])
def test_small_presets_run(name):
    net = UNet.from_preset(name).eval()
    c, s = net.config.in_channels, net.config.image_size
    assert net(torch.randn(2, c, s, s), torch.tensor([0, 999])).shape == (2, c, s, s)


def test_output_shape_and_out_channels():
    x = torch.randn(3, 3, 16, 16)
    assert small()(x, torch.tensor([0, 5, 999])).shape == (3, 3, 16, 16)
    assert small(out_channels=6)(x, torch.tensor([1, 2, 3])).shape == (3, 6, 16, 16)
    assert small(ch_mult=(1, 2, 2), image_size=32)(torch.randn(1, 3, 32, 32), torch.tensor([3])).shape == (1, 3, 32, 32)


def _perturb_zero_layers(net):
    """Zero-initialised output layers make the initial output 0: give them small weights for these tests."""
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return net


def test_zero_initialised_output():
    net = small()
    assert net(torch.randn(2, 3, 16, 16), torch.tensor([3, 4])).abs().max() == 0
    assert net.conv_out.weight.abs().sum() == 0 and net.down[0].blocks[0].conv2.weight.abs().sum() == 0


def test_eval_is_deterministic_and_dropout_acts_in_train():
    net = _perturb_zero_layers(small(dropout=0.3)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 500])
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    assert not torch.equal(net(x, t), net(x, t))


@pytest.mark.parametrize("p", [0.1, 0.3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_a_share_p_independently_and_rescales(p, dtype):
    from ddpm.nn.unet import Dropout

    drop = Dropout(p).train()
    x = torch.ones(64, 16, 33, 31, dtype=dtype, requires_grad=True)  # an odd element count (not a multiple of 4)
    torch.manual_seed(0)
    y = drop(x)
    n, dropped = y.numel(), (y == 0)
    share = dropped.float().mean().item()
    assert abs(share - p) < 5 * (p * (1 - p) / n) ** 0.5  # binomial standard errors
    kept = y[~dropped].float()
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)), rtol=1e-2 if dtype == torch.bfloat16 else 1e-6)
    # neighbours (which share a 64-bit draw) are independent: both dropped with probability p^2
    flat = dropped.flatten()
    both = (flat[:-1] & flat[1:]).float().mean().item()
    assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / n) ** 0.5
    # the gradient is the same mask and scale; the same seed gives the same mask, another seed another
    y.float().sum().backward()
    assert torch.equal(x.grad == 0, dropped)
    torch.manual_seed(0)
    assert torch.equal(drop(x.detach()) == 0, dropped)
    assert not torch.equal(drop(x.detach()) == 0, dropped)
    assert torch.equal(drop.eval()(x), x)


def test_output_depends_on_t():
    net = _perturb_zero_layers(small()).eval()
    x = torch.randn(1, 3, 16, 16).expand(3, -1, -1, -1)
    out = net(x, torch.tensor([0, 1, 900]))
    assert (out[0] - out[1]).abs().max() > 1e-4 and (out[0] - out[2]).abs().max() > 1e-3


def test_gradients_reach_every_parameter():
    net = _perturb_zero_layers(small())
    d = GaussianDiffusion(NoiseSchedule.linear())
    loss = d.training_loss(net, torch.rand(4, 3, 16, 16) * 2 - 1).mean()
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", in_channels=3, ch=8, num_groups=4)
    d = GaussianDiffusion(NoiseSchedule.linear())
    x0 = torch.rand(4, 3, 16, 16) * 2 - 1
    t, noise = torch.randint(0, 1000, (4,)), torch.randn_like(x0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(300):
        loss = d.training_loss(net, x0, t, noise).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 5, (first, loss.item())


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="num_groups"):
        UNetConfig(ch=12, num_groups=32)
    with pytest.raises(ValueError, match="image_size=30"):
        UNetConfig(image_size=30, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        UNet.from_preset("huge")
    cfg = PRESETS["cifar10"].model
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg


def test_class_conditional_net_adds_a_label_embedding_with_a_null_class():
    torch.manual_seed(0)
    net = _perturb_zero_layers(small(num_classes=3)).eval()
    assert net.label_emb.num_embeddings == 4  # three classes and the null class
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        null = net(x, t, torch.full((4,), 3))
        assert torch.equal(net(x, t), null)  # no labels: the null class
        cat, dog = net(x, t, torch.zeros(4, dtype=torch.long)), net(x, t, torch.ones(4, dtype=torch.long))
    assert (cat - dog).abs().max() > 1e-3 and (cat - null).abs().max() > 1e-3
    plain = small()
    assert plain.label_emb is None
    with pytest.raises(ValueError, match="unconditional"):
        plain(x, t, torch.zeros(4, dtype=torch.long))


@pytest.fixture
def threads():
    """Run a test body at a given number of threads, restoring the suite's own afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_an_images_eps_does_not_depend_on_its_batch(threads, n_threads):
    """The demo's class-conditional network (random weights, so every layer matters), in eval mode: each image's eps
    computed in batches of every size from 1 to 19 equals, bit for bit, the same image's eps in one batch of 40, on
    1, 2 and 3 threads. (Before the 1x1 skip convolutions, the attention projections and SiLU were made
    batch-invariant, batches below 16 rounded otherwise on one thread, and odd ones on two.)"""
    import dataclasses

    threads(n_threads)
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(PRESETS["mnist"].model, num_classes=10)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
        x, t, y = torch.randn(40, 1, 28, 28), torch.randint(0, 1000, (40,)), torch.randint(0, 11, (40,))
        whole = net(x, t, y)
        for b in range(1, 20):
            parts = torch.cat([net(x[i:i + b], t[i:i + b], y[i:i + b]) for i in range(0, 40, b)])
            assert torch.equal(parts, whole), f"batch {b} on {n_threads} threads"


def test_invariant_length_cuts_every_threads_share_into_whole_vectors():
    from ddpm.nn.unet import invariant_length

    for threads in (1, 2, 3, 4, 7, 16):
        for n in (1, 63, 64, 65, 1000, 32768, 32769, 40 * 12544, 7 * 3136, 123457):
            m = invariant_length(n, threads)
            k = max(1, min(threads, -(-m // 32768)))  # how PyTorch's parallel_for shares m elements
            share = -(-m // k)
            assert m >= n and m % 64 == 0 and share % 64 == 0 and share * k == m
            assert m - n < 64 * threads * 2 or n < 32768  # a small pad
