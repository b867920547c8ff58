"""Training the way practitioners expect: EMA warm-up, the held-out loss, the L1 loss, fp16 with a gradient
scaler, the loss in quarters of t, and exact resume with all of them on."""

import copy
import csv
import math

import pytest
import torch

from ddpm.config import PRESETS
from ddpm.data.batches import held_out_split
from ddpm.run.directory import load_checkpoint
from ddpm.training.train import plan_run, train_run
from helpers import tiny_config, tiny_data, tiny_trainer


def test_ema_warmup_follows_its_formula():
    """After n updates the next decay is min(decay, (1 + n) / (10 + n)): 0.1, 2/11, 3/12, ... then the decay."""
    tr = tiny_trainer(tiny_config(ema_decay=0.2, ema_warmup=True))
    for n, decay in enumerate([0.1, 2 / 11, 0.2, 0.2]):
        ema_before = copy.deepcopy(tr.ema.state_dict())
        tr.train_step()
        for k, ema in tr.ema.state_dict().items():
            expected = decay * ema_before[k] + (1 - decay) * tr.model.state_dict()[k]
            torch.testing.assert_close(ema, expected, rtol=1e-6, atol=1e-7)
    off = tiny_trainer(tiny_config(ema_decay=0.2, ema_warmup=False))
    assert [off.ema_decay()] == [0.2]


def test_ema_warmup_is_on_for_the_small_presets_and_off_for_the_papers():
    assert {name: p.train.get("ema_warmup", False) for name, p in PRESETS.items()} == {
        "cifar10": False, "celebahq256": False, "mnist": True, "tiny": True}


def test_held_out_split_sizes_and_exclusion():
    assert [len(held_out_split(n, 0.01, 0)[1]) for n in (50, 5000, 200_000)] == [1, 50, 1000]  # 1%, at most 1,000
    assert len(held_out_split(100, 0.0, 0)[1]) == 0
    train, held = held_out_split(300, 0.05, 3)
    assert sorted(train.tolist() + held.tolist()) == list(range(300))
    tr = tiny_trainer(tiny_config(val_fraction=0.25, batch_size=6), data=tiny_data(n=24))
    seen = torch.cat([tr.batches.indices(s, range(6)) for s in range(30)])  # 180 draws, over 10 epochs
    assert set(seen.tolist()) == set(tr.batches.index.tolist()) and not set(seen.tolist()) & set(
        held_out_split(24, 0.25, 0)[1].tolist())


def test_held_out_loss_is_at_fixed_pairs_and_analytic_at_init():
    """The output layer starts at zero, so eps_theta = 0 and L_simple on the held-out images is mean(eps^2) over
    their noise; another trainer of the same seed (another initialisation) holds out the same images at the same
    (t, eps), in batches of any size; after a step the loss moves, and measuring it twice gives the same value."""
    data = tiny_data(n=40)
    a = tiny_trainer(tiny_config(val_fraction=0.1), data=data)
    assert len(a.held_out) == 4
    (x0, t, noise, y), = list(a.held_out.batches(10))
    torch.testing.assert_close(x0, data.images[a.held_out.index].float() / 127.5 - 1) and y is None
    assert a.held_out_loss() == pytest.approx(noise.double().pow(2).mean().item(), rel=1e-6)
    b = tiny_trainer(tiny_config(val_fraction=0.1), data=data, seed=7)
    again = [torch.cat(parts) for parts in zip(*[(bt, bn) for _, bt, bn, _ in b.held_out.batches(3)])]
    assert torch.equal(again[0], t) and torch.equal(again[1], noise)  # the same pairs, in any batch size
    expected = noise.double().pow(2).mean().item()
    a.train_step()
    assert a.held_out_loss() == a.held_out_loss() != pytest.approx(expected, rel=1e-6)  # deterministic, and moves
    assert a.model.training  # measuring puts the network back into training mode
    assert math.isnan(tiny_trainer(tiny_config(val_fraction=0.0)).held_out_loss())


def test_l1_loss_is_mean_absolute_error():
    """eps_theta = 0 at step 0: L1 is mean |eps| and L2 mean eps^2 over the batch's own noise."""
    for loss, f in (("l1", torch.abs), ("l2", torch.square)):
        tr = tiny_trainer(tiny_config(loss=loss))
        _, _, noise, _ = tr.batches.make(0)
        assert tr.train_step().numbers()["loss"] == pytest.approx(f(noise.double()).mean().item(), rel=1e-6)


def test_loss_quarters_split_the_batch_by_t():
    tr = tiny_trainer(tiny_config(batch_size=16))
    _, t, noise, _ = tr.batches.make(0)
    per = noise.double().pow(2).flatten(1).mean(1)  # eps_theta = 0 at step 0
    q = tr.train_step().numbers()["quarters"]
    for i in range(4):
        inside = (t * 4 // tr.diffusion.T) == i
        assert q[4 + i] == inside.sum().item()
        assert q[i] == pytest.approx(per[inside].sum().item(), rel=1e-6)


def test_fp16_with_a_gradient_scaler_tracks_fp32():
    """fp16 autocast on CPU keeps fp32 master weights: after 6 Adam steps the weights' change from their
    initial values agrees with fp32's to 5%. fp16 rounds each product to 2^-11 (~5e-4) relative; Adam's update
    is lr * m / sqrt(v), so gradient errors of that order move each update by about as much, and over 6
    steps and a few layers they stay well inside 5% of the update (measured here: ~0.3%). The two must differ
    at all (fp16 did run), and the gradient scaler must be live (its scale is saved with the state)."""
    runs = {}
    for precision in ("fp32", "fp16"):
        tr = tiny_trainer(tiny_config(precision=precision, lr=1e-3, grad_clip=0.0))
        start = copy.deepcopy(tr.model.state_dict())
        losses = [tr.train_step().numbers()["loss"] for _ in range(6)]
        runs[precision] = (tr, start, losses)
    (a, start, la), (b, _, lb) = runs["fp32"], runs["fp16"]
    assert la != lb and la == pytest.approx(lb, rel=1e-3)
    delta_a = torch.cat([(v - start[k]).flatten() for k, v in a.model.state_dict().items()])
    delta_b = torch.cat([(v - start[k]).flatten() for k, v in b.model.state_dict().items()])
    assert (delta_a - delta_b).norm() / delta_a.norm() < 0.05
    assert b.precision.scaler is not None and b.state()["scaler"]["scale"] == 65536.0
    assert a.precision.scaler is None and all(p.dtype == torch.float32 for p in b.model.parameters())


def test_an_fp16_overflow_is_skipped_by_the_scaler_not_an_error():
    tr = tiny_trainer(tiny_config(precision="fp16"))
    tr.train_step()
    tr.precision.scaler.update(new_scale=3e38)  # the scaled loss overflows fp16: inf gradients
    model, ema = copy.deepcopy(tr.model.state_dict()), copy.deepcopy(tr.ema.state_dict())
    out = tr.train_step().numbers()
    assert math.isfinite(out["loss"]) and not out["skipped"]
    assert all(torch.equal(v, model[k]) for k, v in tr.model.state_dict().items())  # the step was not taken
    assert all(torch.equal(v, ema[k]) for k, v in tr.ema.state_dict().items()) and tr.ema_updates == 1
    assert tr.precision.scaler.get_scale() == pytest.approx(1.5e38, rel=1e-6)  # and the scale came down, by half
    for _ in range(200):  # it halves until the scaled gradients fit fp16, and training goes on
        tr.train_step()
        if tr.ema_updates == 2:
            break
    assert tr.ema_updates == 2 and tr.precision.scaler.get_scale() < 65504


def _rows(run):
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_resume_is_bit_exact_with_every_new_option_on(tmp_path, precision):
    """A fine-tuned run (weights from another run) with EMA warm-up, a held-out share and the L1 loss, stopped at
    step 7 and resumed to 12, ends with the weights, EMA, optimizer and metrics of the run trained straight."""
    src = tmp_path / "src"
    train_run(src, plan_run(src, train={"data": "mnist", "steps": 5, "val_fraction": 0.0}, diffusion={},
                            preset="tiny"), device=torch.device("cpu"), progress=False)
    opts = {"data": "mnist", "init_from": str(src), "ema_warmup": True, "val_fraction": 0.002, "loss": "l1",
            "precision": precision, "log_every": 3, "save_every": 5}
    straight = tmp_path / "straight"
    train_run(straight, plan_run(straight, train={**opts, "steps": 12}, diffusion={}), device=torch.device("cpu"),
              progress=False)
    parts = tmp_path / "parts"
    train_run(parts, plan_run(parts, train={**opts, "steps": 7}, diffusion={}), device=torch.device("cpu"),
              progress=False)
    cfg = plan_run(parts, train={"steps": 12}, diffusion={}, resume=True)
    train_run(parts, cfg, device=torch.device("cpu"), progress=False)
    a, b = load_checkpoint(straight, with_optimizer=True), load_checkpoint(parts, with_optimizer=True)
    assert a.step == b.step == 12
    for x, y in ((a.model, b.model), (a.ema_model, b.ema_model)):
        assert all(torch.equal(u, v) for u, v in zip(x.state_dict().values(), y.state_dict().values()))
    assert a.state["scaler"] == b.state["scaler"] and a.state["ema_updates"] == b.state["ema_updates"] == 12
    # rows average the steps since the row before; the stopped run wrote one more, at step 7
    drop = lambda r: {k: v for k, v in r.items() if k not in ("img_per_s", "elapsed_s")}  # noqa: E731
    rows_a, rows_b = {r["step"]: r for r in _rows(straight)}, {r["step"]: r for r in _rows(parts)}
    assert list(rows_a) == ["3", "6", "9", "12"] and list(rows_b) == ["3", "6", "7", "9", "12"]
    assert all(drop(rows_a[s]) == drop(rows_b[s]) for s in ("3", "6", "12"))
    assert rows_a["9"]["val_loss"] == rows_b["9"]["val_loss"]  # a function of the weights alone
    assert all(math.isfinite(float(r["val_loss"])) for r in rows_b.values())  # 10 of the 5,000 digits held out
