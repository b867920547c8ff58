"""The Trainer: the paper's recipe, deterministic data, exact resume, signals, checkpoints."""

import copy
import csv
import dataclasses
import os
import signal

import numpy as np
import pytest
import torch

from ddpm import load_checkpoint
from ddpm.config import make_run_config
from ddpm.errors import DDPMError
from ddpm.run.directory import list_checkpoints, write_config
from helpers import assert_same_state, tiny_config, tiny_data, tiny_trainer


def test_warmup_is_linear_then_constant():
    tr = tiny_trainer(tiny_config(lr=1e-3, warmup=4))
    assert [tr.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])


def test_every_image_once_per_epoch_and_batches_fixed_by_step():
    cfg = tiny_config(batch_size=5)
    tr = tiny_trainer(cfg, data=tiny_data(n=20))
    epoch = torch.cat([tr.batches.indices(s, range(5)) for s in range(4)])
    assert sorted(epoch.tolist()) == list(range(20))
    other = tiny_trainer(cfg, data=tiny_data(n=20))
    for s in (0, 7, 3):
        a, b = tr.batches.make(s), other.batches.make(s)
        assert all(torch.equal(u, v) for u, v in zip(a[:3], b[:3])) and a[3] is None  # unconditional: no labels
    # positions of a global batch can be produced in pieces (as data-parallel workers do)
    full = tr.batches.make(2)
    halves = [tr.batches.make(2, range(0, 3)), tr.batches.make(2, range(3, 5))]
    assert all(torch.equal(f, torch.cat([h[i] for h in halves])) for i, f in enumerate(full[:3]))


def test_label_dropout_share_and_determinism():
    """A class-conditional run's labels: the data's, or with probability p_uncond the null class, drawn from the
    example's own generator, so they depend on (seed, step, position) only."""
    from ddpm.data.batches import Batches

    data = tiny_data(n=40, classes=4)
    make = lambda seed=0: Batches(data, seed=seed, batch_size=50, T=100, hflip=False, p_uncond=0.3)  # noqa: E731
    batches = make()
    ys, idx = [], []
    for step in range(40):  # 2,000 examples
        _, _, _, y = batches.make(step)
        ys.append(y)
        idx.append(batches.indices(step, range(50)))
    y, idx = torch.cat(ys), torch.cat(idx)
    null = y == 4
    share, se = null.float().mean().item(), (0.3 * 0.7 / len(y)) ** 0.5
    assert abs(share - 0.3) < 5 * se, share
    assert torch.equal(y[~null], data.labels[idx[~null]])  # the rest keep their own label
    whole, parts = make().make(7), [make().make(7, range(0, 20)), make().make(7, range(20, 50))]
    assert torch.equal(whole[3], torch.cat([p[3] for p in parts]))  # however the batch is split
    assert not torch.equal(make(seed=1).make(7)[3], whole[3])
    # the unconditional draws are untouched by the label's: t, noise and flips as without labels
    plain = Batches(data, seed=0, batch_size=50, T=100, hflip=False).make(7)
    assert all(torch.equal(a, b) for a, b in zip(plain[:3], whole[:3])) and plain[3] is None


def test_ema_follows_its_formula_from_step_one():
    tr = tiny_trainer(tiny_config(ema_decay=0.9, ema_warmup=False))
    before = copy.deepcopy(tr.model.state_dict())
    tr.train_step()
    for k, ema in tr.ema.state_dict().items():
        expected = 0.9 * before[k] + 0.1 * tr.model.state_dict()[k]
        torch.testing.assert_close(ema, expected, rtol=1e-6, atol=1e-7)
    assert tr.ema_updates == 1


def test_gradient_clipping_bounds_the_update():
    tr = tiny_trainer(tiny_config(grad_clip=1e-3))
    out = tr.train_step().numbers()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in tr.model.parameters() if p.grad is not None))
    assert out["grad_norm"] > 1e-3 and norm.item() == pytest.approx(1e-3, rel=1e-4)


@pytest.mark.parametrize("gamma", [0.0, 5.0, 0.5])
def test_min_snr_weighting_follows_its_formula(gamma):
    """At step 0 the UNet's zero-initialised output layer makes eps_theta = 0, so the loss is known in closed form:
    mean_i w(t_i) * mean(eps_i^2), w = min(SNR, gamma) / SNR from the schedule's formula (numpy), 1 when off."""
    tr = tiny_trainer(tiny_config(snr_gamma=gamma, precision="fp32"))
    T = tr.diffusion.T
    betas = np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T)
    abar = np.cumprod(1 - betas)
    snr = abar / (1 - abar)
    w = np.minimum(snr, gamma) / snr if gamma else np.ones(T)
    _, t, noise, _ = tr.batches.make(0)
    expected = np.mean(w[t.numpy()] * noise.double().pow(2).flatten(1).mean(1).numpy())
    assert tr.train_step().numbers()["loss"] == pytest.approx(expected, rel=1e-6)
    if gamma:
        assert w.min() < 0.5 * w.max()  # the weighting matters for these t


def test_resume_is_bit_identical(tmp_path):
    cfg = tiny_config(steps=12)
    straight = tiny_trainer(cfg)
    straight.fit(tmp_path / "a", progress=False)

    first = tiny_trainer(make_run_config("tiny", train={**_train_dict(cfg), "steps": 7}, model={"dropout": 0.1}))
    first.fit(tmp_path / "b", progress=False)
    write_config(tmp_path / "b", cfg)
    resumed = tiny_trainer(cfg, seed=12345)  # a different init: everything must come from the checkpoint
    torch.manual_seed(999)  # and the global RNG too
    resumed.load(load_checkpoint(tmp_path / "b", with_optimizer=True))
    assert resumed.step == 7
    resumed.fit(tmp_path / "b", progress=False)
    assert_same_state(straight, resumed)


def _train_dict(cfg):
    import dataclasses

    return dataclasses.asdict(cfg.train)


def test_signal_saves_a_checkpoint_and_stops(tmp_path):
    tr = tiny_trainer(tiny_config(steps=50, save_every=100))
    real_step = tr.train_step

    def step_then_signal():
        out = real_step()
        if tr.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    tr.train_step = step_then_signal
    reason = tr.fit(tmp_path / "r", progress=False)
    assert reason == "SIGTERM" and tr.step == 3
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-00000003"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_checkpoints_keep_the_last_k_and_metrics(tmp_path):
    tr = tiny_trainer(tiny_config(steps=12, save_every=3, keep=2, log_every=3))
    tr.fit(tmp_path / "r", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-00000009", "step-00000012"]
    rows = (tmp_path / "r" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",") == ["step", "loss", "lr", "grad_norm", "img_per_s", "elapsed_s", "skipped", "loss_q0",
                                  "loss_q1", "loss_q2", "loss_q3", "val_loss", "fd", "fd_seconds"]
    assert [int(r.split(",")[0]) for r in rows[1:]] == [3, 6, 9, 12]
    assert (tmp_path / "r" / "loss.png").stat().st_size > 1000


def test_sample_grids_every_n_steps(tmp_path):
    from PIL import Image

    tr = tiny_trainer(tiny_config(steps=4, sample_every=2, n_samples=4))
    tr.fit(tmp_path, progress=False)
    grids = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert grids == ["step-00000002.png", "step-00000004.png"]
    assert Image.open(tmp_path / "samples" / grids[0]).size == (2 * (2 + 2 * (16 + 2)),) * 2  # 2x2 grid, x2


def test_a_finished_run_is_not_rewritten(tmp_path):
    tr = tiny_trainer(tiny_config(steps=3, save_every=3))
    tr.fit(tmp_path, progress=False)
    ckpt = list_checkpoints(tmp_path)[-1]
    before = (ckpt / "manifest.json").stat().st_mtime_ns
    assert tr.fit(tmp_path, progress=False) == "done"
    assert list_checkpoints(tmp_path) == [ckpt] and (ckpt / "manifest.json").stat().st_mtime_ns == before


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    tr = tiny_trainer(tiny_config())
    with torch.no_grad():
        tr.model.conv_out.weight.fill_(float("nan"))
    with pytest.raises(DDPMError, match="loss became nan at step 1"):
        tr.train_step()


def _poison(trainer, bad_steps):
    """Make the loss NaN at the given (1-based) steps, as a bad batch or a too-high lr would."""
    real = trainer.diffusion.training_loss

    def loss(*a, **k):
        out = real(*a, **k)
        return out * float("nan") if trainer.step + 1 in bad_steps else out
    trainer.diffusion.training_loss = loss


def test_nonfinite_step_stops_fit_and_keeps_the_last_checkpoint(tmp_path):
    cfg = tiny_config(steps=8, save_every=3, log_every=1)
    tr = tiny_trainer(cfg)
    (tmp_path / "r").mkdir()
    write_config(tmp_path / "r", cfg)
    _poison(tr, {5})
    with pytest.raises(DDPMError, match="the loss became nan at step 5.*--skip-nonfinite"):
        tr.fit(tmp_path / "r", progress=False)
    assert [p.name for p in list_checkpoints(tmp_path / "r")] == ["step-00000003"]
    assert load_checkpoint(tmp_path / "r").step == 3  # intact and loadable
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())  # the bad step changed nothing


def test_skip_nonfinite_skips_and_counts(tmp_path):
    tr = tiny_trainer(tiny_config(steps=6, log_every=2, skip_nonfinite=True))
    _poison(tr, {3, 4})
    tr.train_step(), tr.train_step()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in tr.ema.state_dict().items()}
    assert tr.train_step().numbers()["skipped"] and tr.train_step().numbers()["skipped"]
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in tr.ema.state_dict().items())
    tr2 = tiny_trainer(tiny_config(steps=6, log_every=2, skip_nonfinite=True))
    _poison(tr2, {3, 4})
    tr2.fit(tmp_path / "r", progress=False)
    rows = list(csv.DictReader(open(tmp_path / "r" / "metrics.csv")))
    assert [r["skipped"] for r in rows] == ["0", "2", "2"]
    assert rows[1]["loss"] == "nan"  # steps 3-4: nothing to average
    assert tr2.step == 6 and tr2.skipped == 2


def test_compiled_training_matches_eager(monkeypatch):
    """--compile (torch.compile) trains the same model as eager mode, to float tolerance (3 steps, fp32, no dropout).

    The network goes through dynamo and AOTAutograd (the graph capture, its backward and the trainer's handling of a
    compiled module) with the aot_eager backend: inductor's code generation takes a minute of C++ compiling here
    and is PyTorch's own business (benchmarks/gpu.sh runs it for real)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    runs = []
    for compile_ in (False, True):
        cfg = tiny_config(steps=3, precision="fp32", compile=compile_)
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dropout=0.0))
        tr = tiny_trainer(cfg)
        start = {k: v.clone() for k, v in tr.model.state_dict().items()}
        losses = [tr.train_step().numbers()["loss"] for _ in range(3)]
        runs.append(({k: v.clone() for k, v in tr.model.state_dict().items()}, losses))
    (eager, eager_losses), (compiled, compiled_losses) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert max((eager[k] - compiled[k]).abs().max().item() for k in eager) < 1e-4
    assert max((eager[k] - start[k]).abs().max().item() for k in eager) > 1e-3  # the steps moved the weights


def test_the_prefetcher_hands_out_exactly_the_batches_of_each_step():
    from ddpm.data.batches import Batches, Prefetcher

    data = tiny_data(n=30, classes=3)
    batches = Batches(data, seed=0, batch_size=6, T=50, hflip=True, p_uncond=0.2)
    pre = Prefetcher(batches, [range(0, 4), range(4, 6)], "cpu")
    try:
        for step in (0, 1, 2, 7, 8, 3):  # in order (prefetched) and out of order (drawn on the spot)
            got = pre.get(step)
            for positions, parts in zip([range(0, 4), range(4, 6)], got):
                want = batches.make(step, positions)
                assert all(torch.equal(a, b) for a, b in zip(parts, want))
    finally:
        pre.close()
