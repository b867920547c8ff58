"""SamplingSettings: one object for how images are drawn; its key tells sample sets apart."""

import dataclasses

import pytest
import torch

from ddpm.sampling.generation import generate, sample_checkpoint
from ddpm.sampling.guidance import class_labels
from ddpm.sampling.samplers import DDIM
from ddpm.sampling.settings import SamplingSettings, weights


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from ddpm.cli.commands import main
    from ddpm.run.directory import load_checkpoint

    run = tmp_path_factory.mktemp("settings") / "run"
    assert main(["train", "--data", "mnist", "--class-cond", "--out", str(run), "--preset", "tiny", "--image-size",
                 "8", "--steps", "2", "--batch-size", "4", "--quiet"]) == 0
    return load_checkpoint(run)


def test_seeds_and_weights_and_sampler():
    s = SamplingSettings("ddim", steps=5, eta=0.5, seed=3, n=4)
    assert s.seeds == range(3, 7) and s.weights_name == "EMA" and s.replace(ema=False).weights_name == "raw"
    with pytest.raises(ValueError, match="no n"):
        SamplingSettings().seeds
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 6  # type: ignore[misc]
    fake = type("Ckpt", (), {"model": "raw net", "ema_model": "ema net"})()
    assert (weights(fake), weights(fake, ema=False), s.weights(fake), s.replace(ema=False).weights(fake)) == (
        "ema net", "raw net", "ema net", "raw net")


def test_the_key_changes_with_every_setting_that_changes_the_images_and_only_those(ckpt):
    base = SamplingSettings("ddim", steps=4, n=8, classes="all")
    key = base.key(ckpt)
    assert key == SamplingSettings("ddim", steps=4, n=8, classes="all", batch_size=3, progress=False).key(ckpt)
    for change in (dict(steps=5), dict(eta=1.0), dict(spacing="quadratic"), dict(guidance=1.0), dict(seed=1),
                   dict(n=9), dict(ema=False), dict(precision="bf16"), dict(classes=None)):
        assert base.replace(**change).key(ckpt) != key, change
    sampler = base.make_sampler(ckpt.diffusion)
    assert isinstance(sampler, DDIM) and (key["sampler"], key["steps"], key["first_seed"]) == ("ddim", 4, 0)


def test_sample_checkpoint_draws_the_classes_the_settings_ask_for(ckpt):
    s = SamplingSettings("ddim", steps=3, n=10, seed=2, classes="all", guidance=1.0, progress=False)
    labels = class_labels("all", ckpt.config.classes, 10)
    c, size = ckpt.config.model.in_channels, ckpt.config.model.image_size
    by_hand = generate(ckpt.ema_model, DDIM(ckpt.diffusion, 3, "uniform", 0.0), (c, size, size), s, labels=labels)
    assert torch.equal(sample_checkpoint(ckpt, s), by_hand)
    plain = s.replace(classes=None, guidance=0.0)  # no classes: the network's null class
    assert torch.equal(sample_checkpoint(ckpt, plain), generate(ckpt.ema_model, DDIM(ckpt.diffusion, 3, "uniform", 0.0),
                                                                (c, size, size), plain))
