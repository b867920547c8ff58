"""ddpm.config: the one preset table, the typed configs and the rules of a resumed run."""

import dataclasses

import pytest

from ddpm.config import PRESETS, RunConfig, TrainConfig, UNetConfig, flag, make_run_config
from ddpm.errors import DDPMError
from ddpm.training.resuming import RESUMABLE, resume_config


def test_paper_recipe_is_the_default_for_paper_presets():
    cfg = make_run_config("cifar10", train={"data": "x"})
    t, d = cfg.train, cfg.diffusion
    assert (t.lr, t.batch_size, t.warmup, t.grad_clip, t.ema_decay, t.steps) == (2e-4, 128, 5000, 1.0, 0.9999, 800_000)
    assert (d.T, d.schedule, d.beta_start, d.beta_end, d.var_type) == (1000, "linear", 1e-4, 0.02, "fixedlarge")
    assert cfg.model.dropout == 0.1
    assert make_run_config("celebahq256", train={"data": "x"}).train.lr == 2e-5
    assert set(PRESETS) == {"cifar10", "celebahq256", "mnist", "tiny"}


def test_every_preset_is_a_network_a_recipe_and_a_diffusion():
    for name, p in PRESETS.items():
        cfg = make_run_config(name, train={"data": "mnist"})
        assert cfg.model == p.model and cfg.preset == name and p.summary
        for k, v in p.train.items():
            assert getattr(cfg.train, k) == v, (name, k)
        for k, v in p.diffusion.items():
            assert getattr(cfg.diffusion, k) == v, (name, k)
        assert set(p.train) <= {f.name for f in dataclasses.fields(TrainConfig)}


def test_overrides_win_and_none_means_unset():
    cfg = make_run_config("mnist", train={"data": "x", "lr": 5e-4, "steps": None}, diffusion={"T": 50},
                          model={"dropout": 0.2})
    assert (cfg.train.lr, cfg.train.steps, cfg.diffusion.T, cfg.model.dropout) == (5e-4, 4800, 50, 0.2)
    with pytest.raises(DDPMError, match="unknown preset 'huge'"):
        make_run_config("huge")
    with pytest.raises(DDPMError, match="--warmup must be a non-negative integer, got -1"):
        make_run_config("tiny", train={"warmup": -1})


def test_config_json_round_trip_and_unknown_fields():
    cfg = make_run_config("tiny", train={"data": "mnist"})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    bad = cfg.to_dict()
    bad["train"]["learning_rate"] = 1
    with pytest.raises(DDPMError, match="unknown TrainConfig field"):
        RunConfig.from_dict(bad)
    with pytest.raises(DDPMError, match="unknown UNet config field"):
        UNetConfig.from_dict({"chanels": 3})


def test_a_resumed_run_may_change_how_long_it_runs_never_what_it_computes():
    saved = make_run_config("tiny", train={"data": "mnist", "steps": 10})
    longer = resume_config(saved, {"steps": 20, "log_every": 5, "lr": None}, {})
    assert longer.train.steps == 20 and longer.train.log_every == 5 and longer.train.lr == saved.train.lr
    assert resume_config(saved, {"lr": saved.train.lr}, {}) == saved  # the same value is no change
    for train, diffusion in (({"lr": 1.0}, {}), ({"batch_size": 3}, {}), ({}, {"T": 7}), ({"data": "other"}, {})):
        with pytest.raises(DDPMError, match="cannot change it"):
            resume_config(saved, train, diffusion)
    with pytest.raises(DDPMError, match="--preset 'tiny'"):
        resume_config(saved, {}, {}, preset="mnist")
    assert "steps" in RESUMABLE and "batch_size" not in RESUMABLE and flag("batch_size") == "--batch-size"


def test_every_train_field_is_in_exactly_one_group_and_checked_when_made():
    import dataclasses as dc

    from ddpm.config import TRAIN_GROUPS, TrainConfig
    from ddpm.errors import DDPMError

    grouped = [name for names in TRAIN_GROUPS.values() for name in names]
    assert sorted(grouped) == sorted(f.name for f in dc.fields(TrainConfig)) and len(grouped) == len(set(grouped))
    with pytest.raises(DDPMError, match="--batch-size must be a positive integer, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(DDPMError, match="--grad-accum 9 is larger than --batch-size 8"):
        dc.replace(TrainConfig(batch_size=8), grad_accum=9)
