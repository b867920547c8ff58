"""Training options around the recipe: config files and --dry-run, fine-tuning (--init-from), TensorBoard."""

import json
import sys

import pytest
import torch

from ddpm.cli.commands import main
from ddpm.errors import DDPMError
from ddpm.run.directory import load_checkpoint
from ddpm.training.finetune import PROVENANCE
from ddpm.training.train import plan_run
from helpers import TINY, one_line_error, run, tiny_config, tiny_trainer

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- config files
def test_a_config_file_sets_what_the_flags_do_not(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('preset = "tiny"\n[train]\ndata = "mnist"\nsteps = 50\nlr = 5e-4\n'
                                     'ema_warmup = false\n[diffusion]\nT = 200\n[model]\nch = 8\n')
    code, out, err = run(capsys, "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "r", "--lr", "1e-3",
                         "--dry-run")
    assert code == 0 and not (tmp_path / "r").exists()  # a dry run writes nothing
    cfg = json.loads(out)
    assert cfg["preset"] == "tiny" and cfg["train"]["data"] == "mnist"
    assert cfg["train"]["lr"] == 1e-3  # the flag wins over the file
    assert cfg["train"]["steps"] == 50 and cfg["train"]["ema_warmup"] is False and cfg["diffusion"]["T"] == 200
    assert cfg["model"]["ch"] == 8 and cfg["train"]["batch_size"] == 16  # the rest: the preset's
    # without the file: the preset's defaults
    code, out, _ = run(capsys, "train", "--data", "mnist", "--preset", "tiny", "--out", tmp_path / "r", "--dry-run")
    assert json.loads(out)["train"]["lr"] == 1e-3 and json.loads(out)["train"]["ema_warmup"] is True


def test_a_runs_config_json_reproduces_the_run(tmp_path, capsys):
    assert main(["train", "--data", "mnist", "--out", str(tmp_path / "a"), "--steps", "2", *TINY,
                 "--loss", "l1"]) == 0
    code, out, _ = run(capsys, "train", "--config", tmp_path / "a" / "config.json", "--out", tmp_path / "b",
                       "--dry-run")
    assert code == 0 and json.loads(out) == json.loads((tmp_path / "a" / "config.json").read_text())


@pytest.mark.parametrize("text, pattern", [
    ('[train]\nstepz = 3\n', "unknown key train.stepz (did you mean train.steps?)"),
    ('[training]\nsteps = 3\n', "unknown key 'training'"),
    ('[train]\nsteps = "many"\n', "train.steps must be of type int, got 'many'"),
    ('[model]\nch_mult = 2\n', "model.ch_mult must be of type"),
    ('preset = "huge"\n', "unknown preset 'huge'"),
    ('[train\nsteps = 3\n', "is not valid TOML"),
])
def test_a_bad_config_file_is_one_line_naming_the_key(text, pattern, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(text)
    code, _, err = run(capsys, "train", "--config", tmp_path / "c.toml", "--data", "mnist", "--out", tmp_path / "r")
    assert code != 0 and pattern in one_line_error(err) and not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- fine-tuning
@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny run trained 4 steps, and the same weights written as a diffusers pipeline directory."""
    from ddpm.interop.diffusers import export_diffusers

    root = tmp_path_factory.mktemp("finetune")
    assert main(["train", "--data", "mnist", "--out", str(root / "run"), "--steps", "4", *TINY]) == 0
    ckpt = load_checkpoint(root / "run")
    export_diffusers(ckpt.ema_model, ckpt.config.diffusion, root / "pipe")
    return root


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("where, weights", [("run", "ema"), ("run", "raw"), ("pipe", "ema")])
def test_init_from_starts_from_those_weights_and_records_them(source, where, weights, tmp_path, monkeypatch):
    from ddpm.training import trainer as trainer_module

    started = {}
    real = trainer_module.Trainer.__init__

    def spy(self, model, *a, **kw):  # the weights the new run's Trainer is given
        started.update(_weights(model))
        real(self, model, *a, **kw)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", spy)
    out = tmp_path / "tuned"
    assert main(["train", "--init-from", str(source / where), "--init-weights", weights, "--data", "mnist",
                 "--out", str(out), "--steps", "2", "--quiet", "--batch-size", "4"]) == 0
    src = load_checkpoint(source / "run")
    expected = _weights(src.ema_model if weights == "ema" else src.model)
    assert started.keys() == expected.keys() and all(torch.equal(started[k], expected[k]) for k in expected)
    assert not all(torch.equal(src.ema_model.state_dict()[k], src.model.state_dict()[k]) for k in expected)
    record = json.loads((out / PROVENANCE).read_text())
    assert record["init_from"] == str((source / where).resolve()) and record["weights"] == weights
    assert record["kind"] == ("run" if where == "run" else "diffusers") and record["step"] == (4 if where == "run"
                                                                                               else None)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(source / where)
    assert cfg["preset"] == "tiny"  # a run's own; a pipeline names none: the preset of the nearest network size
    assert cfg["model"] == src.config.model.to_dict()  # the source's network
    assert load_checkpoint(out).step == 2


@pytest.mark.parametrize("extra, pattern", [
    ("model.toml", "model.ch 8 here, 4 there"),
    (["--image-size", "32", "--preset", "tiny"], "--image-size 32 here, 16 there"),
    (["--class-cond"], "classes (--class-cond) 10 here, 0 there"),
])
def test_init_from_another_network_is_a_clear_error(source, extra, pattern, tmp_path, capsys):
    if extra == "model.toml":
        (tmp_path / extra).write_text("[model]\nch = 8\n")
        extra = ["--config", tmp_path / extra]
    code, _, err = run(capsys, "train", "--init-from", source / "run", "--data", "mnist", "--out", tmp_path / "t",
                       "--steps", "2", "--quiet", "--T", "60", *extra)
    assert code != 0 and pattern in one_line_error(err)
    assert not (tmp_path / "t" / "config.json").exists()


def test_init_from_what_is_not_a_run_or_pipeline(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--init-weights", "raw", "--data", "mnist", "--out", tmp_path / "t")
    assert code != 0 and "--init-weights is for --init-from" in one_line_error(err)
    (tmp_path / "empty").mkdir()
    for where, pattern in ((tmp_path / "nothing", "not a folder"), (tmp_path / "empty", "not a diffusers DDPM")):
        code, _, err = run(capsys, "train", "--init-from", where, "--data", "mnist", "--out", tmp_path / "t")
        assert code != 0 and pattern in one_line_error(err)


def test_plan_run_takes_the_network_of_the_source(source, tmp_path):
    cfg = plan_run(tmp_path / "t", train={"data": "mnist", "init_from": str(source / "pipe")}, diffusion={})
    saved = load_checkpoint(source / "run").config.model
    assert cfg.model == saved and cfg.preset == "tiny"  # a pipeline of a tiny network: the tiny recipe
    assert cfg.diffusion.T == 60  # the source's schedule (from its scheduler_config.json), unless given
    assert plan_run(tmp_path / "t", train={"data": "mnist", "init_from": str(source / "run")},
                    diffusion={"T": 100}).diffusion.T == 100
    recipe = plan_run(tmp_path / "t", train={"data": "mnist", "init_from": str(source / "run")}, diffusion={},
                      preset="mnist")  # a preset picks the recipe; the network stays the source's
    assert recipe.model == saved and recipe.train.lr == 2e-3 and recipe.preset == "mnist"
    with pytest.raises(DDPMError, match="another network"):
        plan_run(tmp_path / "t", train={"data": "mnist", "init_from": str(source / "pipe")}, diffusion={},
                 model={"ch": 8})


# ----------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_hold_the_metrics_and_sample_grids(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "r"
    assert main(["train", "--data", "mnist", "--out", str(out), "--steps", "6", *TINY, "--log", "tensorboard",
                 "--sample-every", "3", "--n-samples", "4", "--val-fraction", "0.002"]) == 0
    assert main(["train", "--out", str(out), "--resume", "--steps", "8", "--quiet", "--log", "tensorboard"]) == 0
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    tags = acc.Tags()
    wanted = {"train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "held_out/loss",
              *(f"train/loss_q{i}" for i in range(4))}
    assert wanted <= set(tags["scalars"]) and tags["images"] == ["samples"]
    rows = [r for r in csv_rows(out / "metrics.csv")]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [int(r["step"]) for r in rows] == [2, 4, 6, 8]
    assert [e.value for e in loss] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
    assert [e.value for e in acc.Scalars("held_out/loss")] == pytest.approx([float(r["val_loss"]) for r in rows],
                                                                           rel=1e-5)  # csv: 6 digits
    grids = acc.Images("samples")
    assert [g.step for g in grids] == [3, 6] and grids[0].width > 16 and grids[0].encoded_image_string[:4] == \
        b"\x89PNG"


def csv_rows(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_tensorboard_missing_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", "--steps", "2", *TINY,
                       "--log", "tensorboard")
    assert code != 0 and "pip install 'ddpm-tool[tensorboard]'" in one_line_error(err)
    assert not (tmp_path / "r" / "config.json").exists()


def test_fit_steps_ends_a_cosine_decay_when_the_time_limit_does(tmp_path, monkeypatch):
    """At the end of the warm-up the run's length becomes what fits in --time-limit at the measured step time (a fake
    clock: 0.5 s per step, 60 s given), and config.json says so."""
    import ddpm.training.budget as budget
    from ddpm.run.directory import read_config, write_config
    from ddpm.training.budget import FitSteps

    cfg = tiny_config(steps=1000, warmup=10, lr_schedule="cosine", time_limit=1.0, fit_steps=True, save_every=1000)
    tr = tiny_trainer(cfg)
    monkeypatch.setattr(budget.time, "monotonic", lambda: 0.5 * tr.step)
    write_config(tmp_path, cfg)
    tr.fit(tmp_path, progress=False, on_step=FitSteps(tmp_path, cfg, started=0.0))
    fitted = 10 + int(0.97 * (60 - 0.5 * 10) / 0.5)
    assert tr.step == tr.config.steps == fitted == read_config(tmp_path).train.steps
    assert tr.lr_at(fitted - 1) < 0.01 * cfg.train.lr  # the decay ran to its end


def test_fit_steps_needs_a_time_limit(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", "mnist", "--out", tmp_path / "r", *TINY, "--fit-steps")
    assert code == 1 and "--fit-steps needs --time-limit" in one_line_error(err)
