"""diffusers import/export: a UNet2DModel and our UNet give the same outputs after a round trip."""

import json
import pickle

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

from ddpm import load_checkpoint  # noqa: E402
from ddpm.cli.commands import main  # noqa: E402
from ddpm.config import DiffusionConfig  # noqa: E402
from ddpm.errors import DDPMError  # noqa: E402
from ddpm.interop.diffusers import export_diffusers, import_diffusers, read_diffusers  # noqa: E402
from helpers import CodeRunningPickle  # noqa: E402

# google/ddpm-cifar10-32's UNet config (the paper's CIFAR-10 network)
CIFAR10 = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
               block_out_channels=(128, 256, 256, 256),
               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
               attention_head_dim=None, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
               dropout=0.1)
SMALL = dict(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
             down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
             attention_head_dim=None, norm_eps=1e-6, norm_num_groups=8, downsample_padding=0, flip_sin_to_cos=False,
             freq_shift=1)


def randomised(unet):
    """Non-zero random weights everywhere (diffusers zero-initialises nothing we could hide behind, but be sure)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return unet.eval()


def pipeline_dir(tmp_path, cfg, scheduler=None, name="pipe"):
    unet = randomised(UNet2DModel(**cfg))
    sched = scheduler or DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                       beta_end=0.02, variance_type="fixed_small")
    path = tmp_path / name
    DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(path)
    return unet, path


def outputs(model, cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    c, s = cfg["in_channels"], cfg["sample_size"]
    x = torch.randn(3, c, s, s, generator=g)
    t = torch.tensor([0, 517, 999])
    with torch.no_grad():
        out = model(x, t)
    return out.sample if hasattr(out, "sample") else out


@pytest.mark.parametrize("cfg", [CIFAR10, SMALL], ids=["cifar10", "small-1ch"])
def test_import_gives_diffusers_outputs_and_export_loads_back(cfg, tmp_path):
    theirs, path = pipeline_dir(tmp_path, cfg)
    run = import_diffusers(path, tmp_path / "run")
    ckpt = load_checkpoint(run)
    ref = outputs(theirs, cfg)
    assert ref.abs().max().item() > 0.05 and ref.std().item() > 1e-3  # real outputs, not zeros or constants
    assert (outputs(ckpt.ema_model, cfg) - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert ckpt.diffusion.T == 1000 and ckpt.config.diffusion.var_type == "fixedsmall"
    if cfg is CIFAR10:
        assert ckpt.model.num_parameters() == sum(p.numel() for p in theirs.parameters()) == 35_746_307

    out = export_diffusers(ckpt.ema_model, ckpt.config.diffusion, tmp_path / "exported")
    pipe = DDPMPipeline.from_pretrained(out)
    assert (outputs(pipe.unet.eval(), cfg) - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    ours_betas = ckpt.diffusion.schedule.betas.float()
    assert torch.allclose(pipe.scheduler.betas, ours_betas, rtol=1e-5, atol=1e-8)


def test_schedule_of_another_length_keeps_diffusers_betas(tmp_path):
    sched = DDPMScheduler(num_train_timesteps=250, beta_schedule="linear", beta_start=2e-4, beta_end=0.03,
                          variance_type="fixed_large")
    _, path = pipeline_dir(tmp_path, SMALL, sched)
    model, diffusion = read_diffusers(path)
    ours = diffusion.build().schedule.betas.float()
    assert diffusion.var_type == "fixedlarge" and torch.allclose(ours, sched.betas, rtol=1e-6, atol=1e-9)
    cos = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    _, path = pipeline_dir(tmp_path, SMALL, cos, name="cos")
    assert torch.allclose(read_diffusers(path)[1].build().schedule.betas.float(), cos.betas, rtol=1e-5, atol=1e-7)


def test_bare_unet_folder_and_legacy_bin_weights(tmp_path):
    unet = randomised(UNet2DModel(**SMALL))
    folder = tmp_path / "unet"
    unet.save_pretrained(folder, safe_serialization=False)  # diffusion_pytorch_model.bin
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(DDPMError, match="has no scheduler/scheduler_config.json.*--T"):  # never a guessed schedule
        read_diffusers(folder)
    model, diffusion = read_diffusers(folder, DiffusionConfig(T=250))
    assert diffusion.T == 250
    assert (outputs(model, SMALL) - outputs(unet, SMALL)).abs().max().item() < 1e-4


def test_importing_a_bare_unet_folder_asks_for_its_schedule(tmp_path, capsys):
    unet = randomised(UNet2DModel(**SMALL))
    unet.save_pretrained(tmp_path / "unet")
    assert main(["import", str(tmp_path / "unet"), "--out", str(tmp_path / "run")]) == 1
    assert "--T" in capsys.readouterr().err and not (tmp_path / "run").exists()
    assert main(["import", str(tmp_path / "unet"), "--out", str(tmp_path / "run"), "--T", "300"]) == 0
    assert load_checkpoint(tmp_path / "run").config.diffusion.T == 300
    _, path = pipeline_dir(tmp_path, SMALL)
    assert main(["import", str(path), "--out", str(tmp_path / "r2"), "--T", "300"]) == 1  # it has its own
    assert "has its own schedule" in capsys.readouterr().err


def test_an_exported_conditional_run_comes_with_a_diffusers_loop_that_works(tmp_path, capsys):
    """DDPMPipeline cannot pass classes: the export's README gives the loop that does, and it runs as written."""
    import re

    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "2", "--class-cond", "--preset", "tiny",
                 "--batch-size", "4", "--T", "30", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 0
    assert "README.md has the diffusers loop" in capsys.readouterr().err
    code = re.search(r"```python\n(.*?)```", (tmp_path / "x" / "README.md").read_text(), re.S).group(1)
    scope = {}
    exec(code, scope)
    images = scope["images"]
    assert images.shape == (4, 1, 16, 16) and images.dtype == torch.uint8
    # the loop's first guided eps is ddpm's own guided eps for the same x, t and class
    ckpt = load_checkpoint(run)
    from ddpm.sampling.guidance import Guided

    x, t = torch.randn(2, 1, 16, 16), torch.tensor([29, 29])
    unet = scope["unet"]
    with torch.no_grad():
        y, null = torch.tensor([0, 0]), torch.tensor([10, 10])
        theirs = 2 * unet(x, t, class_labels=y).sample - unet(x, t, class_labels=null).sample
        ours = Guided(ckpt.ema_model, y, 10, 1.0)(x, t)
    assert (theirs - ours).abs().max().item() < 1e-4


def test_fine_tuning_from_a_diffusers_folder_takes_a_recipe_that_fits_and_its_classes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "2", "--class-cond", "--preset", "tiny",
                 "--batch-size", "4", "--T", "30", "--quiet"]) == 0
    assert main(["export", "--run", str(run), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 0
    assert main(["train", "--init-from", str(tmp_path / "x"), "--data", "mnist", "--out", str(tmp_path / "tuned"),
                 "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    from ddpm.config import PRESETS

    assert cfg["preset"] == "tiny" and cfg["train"]["batch_size"] == PRESETS["tiny"].train.get("batch_size")
    assert cfg["train"]["ema_decay"] == PRESETS["tiny"].train.get("ema_decay") != 0.9999
    assert cfg["train"]["class_cond"] is True and cfg["diffusion"]["T"] == 30


def test_old_attention_names_are_read(tmp_path):
    unet = randomised(UNet2DModel(**SMALL))
    _, path = pipeline_dir(tmp_path, SMALL)
    from safetensors.torch import load_file, save_file

    f = path / "unet" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(f))
    renamed = {}
    for k, v in sd.items():
        for new, old in ((".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."),
                         (".to_out.0.", ".proj_attn.")):
            k = k.replace(new, old)
        renamed[k] = v
    save_file(renamed, str(f))
    model, _ = read_diffusers(path)
    theirs = UNet2DModel.from_pretrained(path / "unet").eval()  # diffusers converts the old names itself
    assert (outputs(model, SMALL) - outputs(theirs, SMALL)).abs().max().item() < 1e-4
    del unet


@pytest.mark.parametrize("field, value, named", [
    ("down_block_types", ["CrossAttnDownBlock2D", "AttnDownBlock2D"], "CrossAttnDownBlock2D"),
    ("attention_head_dim", 8, "attention_head_dim"),
    ("time_embedding_type", "fourier", "time_embedding_type"),
    ("resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"),
    ("flip_sin_to_cos", True, "flip_sin_to_cos"),
    ("up_block_types", ["UpBlock2D", "AttnUpBlock2D"], "up_block_types"),
])
def test_configs_outside_the_family_are_named(field, value, named, tmp_path):
    _, path = pipeline_dir(tmp_path, SMALL)
    cfg_path = path / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[field] = value
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DDPMError, match=named):
        read_diffusers(path)



def test_a_pickle_in_place_of_weights_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, path = pipeline_dir(tmp_path, SMALL)
    (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with open(path / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv_in.weight": CodeRunningPickle()}, f)
    with pytest.raises(DDPMError, match="is not a PyTorch file of plain tensors") as e:
        read_diffusers(path)
    assert "weights_only" not in str(e.value)
    assert not (tmp_path / "PWNED").exists()


def test_import_and_export_through_the_cli(tmp_path, capsys):
    theirs, path = pipeline_dir(tmp_path, SMALL)
    assert main(["import", str(path), "--out", str(tmp_path / "run")]) == 0
    assert main(["sample", "--run", str(tmp_path / "run"), "--n", "2", "--out", str(tmp_path / "s.png"),
                 "--sampler", "ddim", "--steps", "3"]) == 0
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 0
    pipe = DDPMPipeline.from_pretrained(tmp_path / "x")
    assert (outputs(pipe.unet.eval(), SMALL) - outputs(theirs, SMALL)).abs().max().item() < 1e-4
    capsys.readouterr()
    assert main(["import", str(path), "--out", str(tmp_path / "run")]) == 1  # never over an existing run
    assert "exists" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--steps", "5", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "imported from a diffusers pipeline" in err and "Traceback" not in err
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "diffusers", "--out", str(tmp_path / "x")]) == 1


def test_a_class_conditional_unet_gives_diffusers_outputs_both_ways(tmp_path):
    """num_class_embeds = K + 1 (the null class last), class_embed_type None: diffusers' class embedding is added to
    the time embedding exactly where ours is, so given labels both networks agree, imported and exported."""
    cfg = {**SMALL, "num_class_embeds": 4}
    theirs, path = pipeline_dir(tmp_path, cfg)
    (path / "classes.json").write_text(json.dumps(["cat", "dog", "owl"]))
    ckpt = load_checkpoint(import_diffusers(path, tmp_path / "run"))
    assert ckpt.config.model.num_classes == 3 and ckpt.config.classes == ("cat", "dog", "owl")
    assert ckpt.config.train.class_cond
    g = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(4, 1, 16, 16, generator=g), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        ref = theirs(x, t, class_labels=y).sample
        ours = ckpt.ema_model(x, t, y)
        other = ckpt.ema_model(x, t, torch.tensor([1, 2, 3, 0]))
    err = (ours - ref).abs().max().item()
    assert err < 1e-4 * max(1.0, ref.abs().max().item())
    assert (other - ref).abs().max().item() > max(5e-4, 20 * err)  # the labels matter, far beyond the tolerance
    out = export_diffusers(ckpt.ema_model, ckpt.config.diffusion, tmp_path / "exported", ckpt.config.classes)
    pipe = DDPMPipeline.from_pretrained(out)
    assert pipe.unet.config.num_class_embeds == 4 and pipe.unet.config.class_embed_type is None
    with torch.no_grad():
        back = pipe.unet.eval()(x, t, class_labels=y).sample
    assert (back - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog", "owl"]


@pytest.mark.parametrize("predict, var_type", [("eps", "fixedlarge"), ("x0", "fixedsmall"), ("v", "learned-range"),
                                               ("eps", "learned-range")])
def test_an_export_samples_in_diffusers_as_in_ddpm(tmp_path, predict, var_type):
    from ddpm.nn.unet import UNet, UNetConfig

    learned = var_type == "learned-range"
    net = randomised(UNet(UNetConfig(in_channels=1, out_channels=2 if learned else None, image_size=16, ch=16,
                                     ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), num_groups=8)))
    if learned:  # variance values inside [-1, 1], as a trained learned-range model gives
        with torch.no_grad():
            net.conv_out.weight[1:].mul_(0.05)
    cfg = DiffusionConfig(T=30, predict=predict, var_type=var_type)
    pipe = DDPMPipeline.from_pretrained(export_diffusers(net, cfg, tmp_path / "x"))
    assert pipe.scheduler.config.prediction_type == {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[predict]
    d = cfg.build()
    g = torch.Generator().manual_seed(3)
    x = ours = torch.randn(2, 1, 16, 16, generator=g)
    with torch.no_grad():
        for t in range(29, -1, -1):
            tt = torch.full((2,), t)
            out = pipe.unet(x, tt).sample
            x = pipe.scheduler.step(out, t, x, generator=torch.Generator().manual_seed(t)).prev_sample
            z = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(t))
            ours, _ = d.p_sample(net, ours, tt, noise=z)
    assert x.std() > 1e-3 and (ours - x).abs().max().item() < 1e-4 * max(1.0, x.abs().max().item())


def test_what_diffusers_cannot_sample_is_not_exported_or_imported(tmp_path):
    from ddpm.nn.unet import UNet, UNetConfig

    net = UNet(UNetConfig(in_channels=1, image_size=16, ch=16, ch_mult=(1, 2), num_res_blocks=1, num_groups=8))
    with pytest.raises(DDPMError, match="predicts mu .*no diffusers counterpart"):
        export_diffusers(net, DiffusionConfig(T=30, predict="mu"), tmp_path / "a")
    with pytest.raises(DDPMError, match="reads the network's variance channels as sigma\\^2"):
        export_diffusers(net, DiffusionConfig(T=30, var_type="learned"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    _, path = pipeline_dir(tmp_path, {**SMALL, "out_channels": 2},
                           DDPMScheduler(num_train_timesteps=1000, variance_type="learned"))
    with pytest.raises(DDPMError, match="unsupported variance_type = 'learned'"):
        import_diffusers(path, tmp_path / "run")


def test_a_v_prediction_learned_range_pipeline_imports_as_such(tmp_path):
    theirs, path = pipeline_dir(tmp_path, {**SMALL, "out_channels": 2}, DDPMScheduler(
        num_train_timesteps=1000, variance_type="learned_range", prediction_type="v_prediction"))
    ckpt = load_checkpoint(import_diffusers(path, tmp_path / "run"))
    assert (ckpt.config.diffusion.predict, ckpt.config.diffusion.var_type) == ("v", "learned-range")
    assert ckpt.config.model.out_channels == 2
    cfg = {**SMALL, "out_channels": 2}
    assert (outputs(ckpt.ema_model, cfg) - outputs(theirs, cfg)).abs().max().item() < 1e-4
