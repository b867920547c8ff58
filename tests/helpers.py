"""Small shared builders for the tests: a tiny data set, config and trainer, and the one-image oracle."""


import numpy as np
import torch

from ddpm.config import make_run_config
from ddpm.data.sources import ImageData
from ddpm.nn.unet import UNet
from ddpm.training.train import Trainer


def linear_schedule_np(T: int):
    """The paper's linear schedule in numpy float64, written out independently of ddpm (ends scaled by 1000 / T):
    (beta, abar, beta-tilde), each [T]."""
    beta = np.linspace(1e-4, 0.02, T) * 1000 / T
    abar = np.cumprod(1 - beta)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    return beta, abar, beta * (1 - abar_prev) / (1 - abar)


class OracleEps(torch.nn.Module):
    """The optimal eps-predictor for a data set of one image x*: eps = (x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t),
    from the closed form of q(x_t | x_0) (Eq. 4), in the dtype of x_t. With it the reverse process lands on x*
    and every KL term of the bound vanishes: an independent check of samplers and likelihoods."""

    def __init__(self, diffusion, x_star: torch.Tensor):
        super().__init__()
        self.abar, self.x_star = diffusion.schedule.alphas_cumprod, x_star

    def forward(self, xt, t, y=None):
        a = self.abar[t].to(xt.dtype).view(-1, *([1] * (xt.ndim - 1)))
        return (xt - a.sqrt() * self.x_star.to(xt.dtype)) / (1 - a).sqrt()


def tiny_data(n: int = 24, size: int = 16, channels: int = 1, seed: int = 0, classes: int = 0) -> ImageData:
    """Random images; with ``classes``, labelled image k -> class k % classes, named c0, c1, ..."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    if not classes:
        return ImageData(images=images, labels=None, name="random", hflip=True)
    return ImageData(images=images, labels=torch.arange(n) % classes, name="random", hflip=True,
                     classes=tuple(f"c{i}" for i in range(classes)))


def tiny_config(diffusion=None, **train):
    base = dict(steps=12, batch_size=6, warmup=4, save_every=5, log_every=3, sample_every=0, keep=2, val_fraction=0.0)
    base.update(train)
    return make_run_config("tiny", train=base, model={"dropout": 0.1}, diffusion=diffusion or {})


def tiny_trainer(cfg, data=None, seed=None):
    torch.manual_seed(cfg.train.seed if seed is None else seed)
    return Trainer(UNet(cfg.model), cfg.diffusion.build(), data or tiny_data(), cfg.train)


def assert_same_state(a: Trainer, b: Trainer):
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), f"model tensor {k} differs"
    for (k, v), (k2, v2) in zip(a.ema.state_dict().items(), b.ema.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), f"EMA tensor {k} differs"
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for pid in sa["state"]:
        for name, v in sa["state"][pid].items():
            assert torch.equal(v, sb["state"][pid][name]), f"optimizer state {pid}.{name} differs"
    assert a.step == b.step and a.ema_updates == b.ema_updates


class CodeRunningPickle:
    """Unpickling this runs code: it writes ./PWNED. A test that loads it must find no such file."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


# The CLI's flags for a tiny, quick run.
TINY = ["--preset", "tiny", "--batch-size", "4", "--log-every", "2", "--save-every", "3", "--sample-every", "0",
        "--quiet", "--T", "60"]


def run(capsys, *argv):
    """``ddpm ARGV`` in-process: (exit code, stdout, stderr)."""
    from ddpm.cli.commands import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    """The one line of a refused command's stderr (no traceback)."""
    lines = [x for x in err.strip().splitlines() if x.strip() and "%|" not in x]  # progress bars aside
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def stop_at_call(monkeypatch, owner, name: str, k: int, how: str = "SIGINT"):
    """Make ``owner.name`` stop the process at its k-th call, by Ctrl-C (a KeyboardInterrupt) or by a real SIGTERM
    sent to this process (which the ddpm command turns into a stop). Returns the real function."""
    import os
    import signal

    real, calls = getattr(owner, name), []

    def stopping(*a, **kw):
        calls.append(1)
        if len(calls) == k:
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, stopping)
    return real
