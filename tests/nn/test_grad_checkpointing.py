"""--grad-checkpointing: the UNet recomputes each block's activations in the backward pass. The same loss and
gradients as without (dropout replayed exactly), and a run that uses it resumes bit-exactly."""

import torch

from ddpm import UNet
from helpers import TINY, run


def _grads(net, x, t, y=None, seed=0):
    net.zero_grad()
    torch.manual_seed(seed)  # the dropout masks
    loss = net(x, t, y).square().mean()
    loss.backward()
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


def test_same_loss_and_gradients_with_dropout_and_attention():
    torch.manual_seed(0)
    net = UNet(in_channels=1, image_size=8, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               dropout=0.3, num_groups=4, num_classes=3).train()
    x, t, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 5, 50, 99]), torch.tensor([0, 1, 2, 3])
    for name, p in net.named_parameters():  # zero-initialised output layers would hide most of the network
        torch.nn.init.normal_(p, std=0.2)
    loss_a, grads_a = _grads(net, x, t, y)
    net.grad_checkpointing = True
    recomputed = []
    hook = net.mid_block1.register_forward_pre_hook(lambda *_: recomputed.append(1))
    loss_b, grads_b = _grads(net, x, t, y)
    hook.remove()
    assert len(recomputed) == 2  # the block ran again in the backward pass: it was checkpointed
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    for k in grads_a:
        torch.testing.assert_close(grads_b[k], grads_a[k], rtol=1e-5, atol=1e-7, msg=k)
    assert any(g.abs().max() > 0 for g in grads_a.values())


def test_inference_ignores_it():
    net = UNet.from_preset("tiny").eval()
    net.grad_checkpointing = True
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 7])
    with torch.no_grad():
        a = net(x, t)
    net.grad_checkpointing = False
    with torch.no_grad():
        assert torch.equal(net(x, t), a)


def _weights(run_dir):
    from ddpm import load_checkpoint

    ckpt = load_checkpoint(run_dir)
    return ckpt.step, {k: v.clone() for k, v in ckpt.model.state_dict().items()}


def test_a_run_with_it_trains_like_one_without_and_resumes_bit_exactly(tmp_path, capsys):
    flags = [*TINY, "--precision", "fp32", "--save-every", "2"]
    assert run(capsys, "train", "--data", "mnist", "--out", tmp_path / "plain", "--steps", "4", *flags)[0] == 0
    assert run(capsys, "train", "--data", "mnist", "--out", tmp_path / "gc", "--steps", "4", *flags,
               "--grad-checkpointing")[0] == 0
    assert run(capsys, "train", "--data", "mnist", "--out", tmp_path / "cut", "--steps", "2", *flags,
               "--grad-checkpointing")[0] == 0
    assert run(capsys, "train", "--out", tmp_path / "cut", "--resume", "--steps", "4", "--quiet")[0] == 0
    step_p, plain = _weights(tmp_path / "plain")
    step_g, gc = _weights(tmp_path / "gc")
    step_c, cut = _weights(tmp_path / "cut")
    assert step_p == step_g == step_c == 4
    assert all(torch.equal(gc[k], cut[k]) for k in gc)  # resumed: bit-exact
    for k in plain:  # with against without: the same training to float tolerance
        torch.testing.assert_close(gc[k], plain[k], rtol=1e-4, atol=1e-6, msg=k)
    config = (tmp_path / "gc" / "config.json").read_text()
    assert '"grad_checkpointing": true' in config
