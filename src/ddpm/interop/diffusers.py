"""Move DDPM weights to and from Hugging Face diffusers pipeline directories, without diffusers.

A diffusers DDPM pipeline directory (e.g. a local copy of google/ddpm-cifar10-32) holds
``model_index.json``, ``unet/config.json`` + ``unet/diffusion_pytorch_model.safetensors`` (or ``.bin``)
and ``scheduler/scheduler_config.json``. Its ``UNet2DModel`` is the paper's network when its config
is of the DDPM family (DownBlock2D / AttnDownBlock2D / UpBlock2D / AttnUpBlock2D, one attention head,
sinusoidal time embedding without the sin/cos flip and with frequency shift 1, TF-SAME strided-conv
down-sampling); then every weight has one place in :class:`ddpm.UNet`:

    time_embedding.linear_1/2         temb.0/2
    down_blocks.i.resnets.j           down.i.blocks.j    (time_emb_proj -> temb_proj, conv_shortcut -> skip)
    down_blocks.i.attentions.j        down.i.attns.j     (to_q/to_k/to_v -> qkv stacked, to_out.0 -> proj_out)
    down_blocks.i.downsamplers.0      down.i.resample
    mid_block.resnets.0/attentions.0/resnets.1   mid_block1/mid_attn/mid_block2
    up_blocks.i...                    up.i...            (i = 0 is the lowest resolution in both)
    conv_norm_out                     norm_out

    label_emb                         class_embedding    (a class-conditional run: num_class_embeds = K + 1, the
                                                         null class last; class_embed_type None)

Old checkpoints name the attention weights query/key/value/proj_attn; both spellings are read. A
conditional run's class names travel in ``classes.json`` beside ``model_index.json`` (diffusers ignores it).
Weights are read as safetensors, or a ``.bin`` only through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from ..atomic import written_aside
from ..config import DiffusionConfig, RunConfig, make_run_config
from ..errors import DDPMError
from ..nn.unet import Level, UNet, UNetConfig
from ..run.directory import IMPORTED_DATA, holds_run_config, save_checkpoint, write_config
from .schedulers import diffusion_from_scheduler, scheduler_config
from .usage import usage

__all__ = ["read_diffusers", "read_diffusers_config", "import_diffusers", "export_diffusers", "to_diffusers_state_dict",
           "from_diffusers_state_dict", "unet_config_to_diffusers", "unet_config_from_diffusers"]

WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
CLASSES = "classes.json"  # a conditional run's class names, beside model_index.json

# Config fields whose value must be exactly this for the network to be the paper's (absent: the default).
_REQUIRED = {
    "act_fn": "silu",
    "time_embedding_type": "positional",
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "center_input_sample": False,
    "downsample_padding": 0,
    "mid_block_scale_factor": 1,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "upsample_type": "conv",
    "downsample_type": "conv",
    "attn_norm_num_groups": None,
    "norm_eps": 1e-6,
}


# ----------------------------------------------------------------------------- configs
def unet_config_from_diffusers(cfg: Dict[str, Any], where: str = "unet/config.json") -> UNetConfig:
    """A diffusers UNet2DModel config -> UNetConfig, or DDPMError naming the first unsupported field."""
    name = cfg.get("_class_name", "UNet2DModel")
    if name != "UNet2DModel":
        raise DDPMError(f"{where}: _class_name is {name!r}; only UNet2DModel (the DDPM UNet) is supported")
    for key, want in _REQUIRED.items():
        if key in cfg and cfg[key] != want:
            raise DDPMError(f"{where}: unsupported {key} = {cfg[key]!r} (the DDPM UNet has {want!r})")
    if "down_block_types" not in cfg or "block_out_channels" not in cfg:
        raise DDPMError(f"{where} is not a diffusers UNet2DModel config (it has no down_block_types and "
                        "block_out_channels)")
    downs, ups = list(cfg.get("down_block_types", [])), list(cfg.get("up_block_types", []))
    chans = [int(c) for c in cfg.get("block_out_channels", [])]
    if not downs or len(downs) != len(ups) or len(chans) != len(downs):
        raise DDPMError(f"{where}: down_block_types, up_block_types and block_out_channels must have one entry "
                        f"per level (got {len(downs)}, {len(ups)}, {len(chans)})")
    for kind, names, ok in (("down_block_types", downs, ("DownBlock2D", "AttnDownBlock2D")),
                            ("up_block_types", ups, ("UpBlock2D", "AttnUpBlock2D"))):
        for n in names:
            if n not in ok:
                raise DDPMError(f"{where}: unsupported {kind} entry {n!r} (supported: {', '.join(ok)})")
    size = cfg.get("sample_size", 32)
    if isinstance(size, (list, tuple)):  # (height, width)
        if len(size) != 2:
            raise DDPMError(f"{where}: unsupported sample_size = {size!r} (a size, or height and width)")
        size = (int(size[0]), int(size[1]))
    else:
        size = int(size)
    levels = len(chans)
    res = [min(size if isinstance(size, tuple) else (size,)) // 2**i for i in range(levels)]
    attn = {res[i] for i, n in enumerate(downs) if n == "AttnDownBlock2D"}
    attn_up = {res[levels - 1 - i] for i, n in enumerate(ups) if n == "AttnUpBlock2D"}
    if attn != attn_up:
        raise DDPMError(f"{where}: unsupported up_block_types {ups!r}: attention must be at the same resolutions "
                        f"going up as going down ({sorted(attn)})")
    ch = chans[0]
    if any(c % ch for c in chans):
        raise DDPMError(f"{where}: unsupported block_out_channels {chans!r}: each must be a multiple of the first")
    head_dim = cfg.get("attention_head_dim")
    if head_dim is not None:
        for i, n in enumerate(downs):
            if n == "AttnDownBlock2D" and head_dim != chans[i]:
                raise DDPMError(f"{where}: unsupported attention_head_dim = {head_dim!r}: the DDPM UNet has one "
                                f"attention head (attention_head_dim null or {chans[i]})")
        if head_dim != chans[-1]:  # the middle block's attention
            raise DDPMError(f"{where}: unsupported attention_head_dim = {head_dim!r}: the DDPM UNet has one "
                            f"attention head (attention_head_dim null or {chans[-1]})")
    in_ch, out_ch = int(cfg.get("in_channels", 3)), int(cfg.get("out_channels", 3))
    embeds = cfg.get("num_class_embeds")
    if embeds is not None and (not isinstance(embeds, int) or embeds < 2):
        raise DDPMError(f"{where}: unsupported num_class_embeds = {embeds!r} (K classes + the null class, K >= 1)")
    try:
        return UNetConfig(in_channels=in_ch, out_channels=None if out_ch == in_ch else out_ch, image_size=size,
                          ch=ch, ch_mult=tuple(c // ch for c in chans),
                          num_res_blocks=int(cfg.get("layers_per_block", 2)),
                          attn_resolutions=tuple(sorted(attn, reverse=True)), dropout=float(cfg.get("dropout", 0.0)),
                          num_groups=int(cfg.get("norm_num_groups", 32)), num_classes=(embeds or 1) - 1)
    except ValueError as e:
        raise DDPMError(f"{where}: {e}") from None


def unet_config_to_diffusers(cfg: UNetConfig) -> Dict[str, Any]:
    """UNetConfig -> a diffusers UNet2DModel config of the DDPM family."""
    res = cfg.resolutions
    attn = [r in cfg.attn_resolutions for r in res]
    return {
        "_class_name": "UNet2DModel",
        "sample_size": cfg.image_size if isinstance(cfg.image_size, int) else list(cfg.image_size),
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels or cfg.in_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "freq_shift": 1,
        "flip_sin_to_cos": False,
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg.ch * m for m in cfg.ch_mult],
        "layers_per_block": cfg.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": 0,
        "downsample_type": "conv",
        "upsample_type": "conv",
        "dropout": cfg.dropout,
        "act_fn": "silu",
        "attention_head_dim": None,
        "norm_num_groups": cfg.num_groups,
        "norm_eps": 1e-6,
        "resnet_time_scale_shift": "default",
        "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": cfg.num_classes + 1 if cfg.num_classes else None,
    }


# ----------------------------------------------------------------------------- weights
def _maps(model: UNet):
    """ddpm -> diffusers module prefixes: ({plain module: name}, [(attention block, name)])."""
    plain = {"temb.0": "time_embedding.linear_1", "temb.2": "time_embedding.linear_2", "conv_in": "conv_in",
             "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    embeddings = {"label_emb": "class_embedding"} if model.label_emb is not None else {}
    attn = [("mid_attn", "mid_block.attentions.0")]

    def resblock(ours: str, theirs: str, block) -> None:
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2")):
            plain[f"{ours}.{a}"] = f"{theirs}.{b}"
        if not isinstance(block.skip, torch.nn.Identity):
            plain[f"{ours}.skip"] = f"{theirs}.conv_shortcut"

    for side, levels in (("down", model.down), ("up", model.up)):
        for i, level in enumerate(levels):
            assert isinstance(level, Level)
            theirs = f"{side}_blocks.{i}"
            for j, block in enumerate(level.blocks):
                resblock(f"{side}.{i}.blocks.{j}", f"{theirs}.resnets.{j}", block)
            for j in range(len(level.attns)):
                attn.append((f"{side}.{i}.attns.{j}", f"{theirs}.attentions.{j}"))
            if level.resample is not None:
                plain[f"{side}.{i}.resample.conv"] = f"{theirs}.{side}samplers.0.conv"
    resblock("mid_block1", "mid_block.resnets.0", model.mid_block1)
    resblock("mid_block2", "mid_block.resnets.1", model.mid_block2)
    return plain, attn, embeddings


def to_diffusers_state_dict(model: UNet) -> Dict[str, torch.Tensor]:
    """ddpm.UNet weights under diffusers' UNet2DModel names (current attention spelling)."""
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out: Dict[str, torch.Tensor] = {}
    plain, attn, embeddings = _maps(model)
    for ours, theirs in plain.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = sd.pop(f"{ours}.{p}")
    for ours, theirs in embeddings.items():
        out[f"{theirs}.weight"] = sd.pop(f"{ours}.weight")
    for ours, theirs in attn:
        for p in ("weight", "bias"):
            out[f"{theirs}.group_norm.{p}"] = sd.pop(f"{ours}.norm.{p}")
            q, k, v = sd.pop(f"{ours}.qkv.{p}").chunk(3, dim=0)
            out[f"{theirs}.to_q.{p}"], out[f"{theirs}.to_k.{p}"] = q.contiguous(), k.contiguous()
            out[f"{theirs}.to_v.{p}"] = v.contiguous()
            out[f"{theirs}.to_out.0.{p}"] = sd.pop(f"{ours}.proj_out.{p}")
    if sd:  # pragma: no cover - a module the map does not know
        raise RuntimeError(f"weights with no diffusers name: {sorted(sd)[:5]}")
    return out


def from_diffusers_state_dict(tensors: Dict[str, torch.Tensor], cfg: UNetConfig, where: str = "unet") -> UNet:
    """A UNet with ``cfg`` holding the diffusers weights ``tensors``; DDPMError names a missing or misfit one."""
    src = dict(tensors)
    state: Dict[str, torch.Tensor] = {}
    model = UNet(cfg)
    plain, attn, embeddings = _maps(model)

    def take(name: str, *aliases: str) -> torch.Tensor:
        for n in (name, *aliases):
            if n in src:
                return src.pop(n)
        raise DDPMError(f"{where}: weight {name} is missing")

    for ours, theirs in plain.items():
        for p in ("weight", "bias"):
            state[f"{ours}.{p}"] = take(f"{theirs}.{p}")
    for ours, theirs in embeddings.items():
        state[f"{ours}.weight"] = take(f"{theirs}.weight")
    for ours, theirs in attn:
        for p in ("weight", "bias"):
            state[f"{ours}.norm.{p}"] = take(f"{theirs}.group_norm.{p}")
            qkv = [take(f"{theirs}.to_{n}.{p}", f"{theirs}.{old}.{p}")
                   for n, old in (("q", "query"), ("k", "key"), ("v", "value"))]
            state[f"{ours}.qkv.{p}"] = torch.cat(qkv, dim=0)
            state[f"{ours}.proj_out.{p}"] = take(f"{theirs}.to_out.0.{p}", f"{theirs}.proj_attn.{p}")
    if src:
        raise DDPMError(f"{where}: unexpected weight(s) {', '.join(sorted(src)[:3])}: not a DDPM-family UNet2DModel")
    expected = model.state_dict()
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DDPMError(f"{where}: the weight for {k} has shape {tuple(v.shape)}, but config.json implies "
                            f"{tuple(expected[k].shape)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise DDPMError(f"{path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DDPMError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise DDPMError(f"{path} is not a JSON object")
    return d


def _read_weights(unet_dir: Path) -> Dict[str, torch.Tensor]:
    st, bin_ = unet_dir / WEIGHTS, unet_dir / WEIGHTS_BIN
    if st.is_file():
        from safetensors.torch import load_file

        try:
            return load_file(str(st))
        except Exception as e:
            raise DDPMError(f"cannot read {st}: {e}") from None
    if bin_.is_file():
        from ..safeload import load_tensors

        return load_tensors(bin_, "UNet weights")
    raise DDPMError(f"{unet_dir} has no weights ({WEIGHTS} or {WEIGHTS_BIN})")


def _unet_dir(root: Path) -> Path:
    if not root.is_dir():
        raise DDPMError(f"{root} is not a folder (expected a diffusers pipeline directory or its unet/ folder)")
    if holds_run_config(root):
        raise DDPMError(f"{root} is a ddpm run, not a diffusers directory: use it as it is (e.g. ddpm sample "
                        f"--run {root}), or write it as one with ddpm export")
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    if not (unet_dir / "config.json").is_file():
        raise DDPMError(f"{root} is not a diffusers DDPM directory: no unet/config.json or config.json")
    return unet_dir


NO_SCHEDULER = ("has no scheduler/scheduler_config.json, so the noise schedule its UNet was trained with is unknown: "
                "give it with --T (and --schedule, --beta-start, --beta-end unless linear from 1e-4 to 0.02 at T=1000)")


def _configs(root: Path, diffusion: Optional[DiffusionConfig] = None,
             required: bool = True) -> Tuple[Path, UNetConfig, Optional[DiffusionConfig]]:
    unet_dir = _unet_dir(root)
    cfg = unet_config_from_diffusers(_read_json(unet_dir / "config.json"), str(unet_dir / "config.json"))
    sched = root / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        if diffusion is not None:
            raise DDPMError(f"{root} has its own schedule ({sched}); drop --T and the other schedule flags")
        return unet_dir, cfg, diffusion_from_scheduler(_read_json(sched), str(sched))
    if diffusion is None and required:
        raise DDPMError(f"{root} {NO_SCHEDULER}")
    return unet_dir, cfg, diffusion


def read_diffusers_config(path: os.PathLike, diffusion: Optional[DiffusionConfig] = None,
                          required: bool = True) -> Tuple[UNetConfig, Optional[DiffusionConfig]]:
    """The network and diffusion of a diffusers DDPM pipeline directory (or a bare ``unet/`` folder), from its
    configs alone. A bare UNet folder has no scheduler: its diffusion must be given (``diffusion``), else it is a
    DDPMError (or, unless ``required``, None)."""
    return _configs(Path(path), diffusion, required)[1:]


def read_diffusers(path: os.PathLike, diffusion: Optional[DiffusionConfig] = None) -> Tuple[UNet, DiffusionConfig]:
    """Read a diffusers DDPM pipeline directory (or a bare ``unet/`` folder, with its ``diffusion``): the UNet and
    its diffusion."""
    unet_dir, cfg, found = _configs(Path(path), diffusion)
    assert found is not None  # required: _configs refuses a folder without it
    model = from_diffusers_state_dict(_read_weights(unet_dir), cfg, where=str(unet_dir))
    return model, found


def read_diffusers_unet(path: os.PathLike) -> UNet:
    """The UNet of a diffusers DDPM pipeline directory or bare ``unet/`` folder, whatever its schedule."""
    unet_dir, cfg, _ = _configs(Path(path), required=False)
    return from_diffusers_state_dict(_read_weights(unet_dir), cfg, where=str(unet_dir))


def import_diffusers(path: os.PathLike, run_dir: os.PathLike, diffusion: Optional[DiffusionConfig] = None) -> Path:
    """Write a run directory (config + one checkpoint, model = EMA = the imported weights) from ``path`` (a bare
    ``unet/`` folder with the ``diffusion`` it was trained with)."""
    run_dir = Path(run_dir)
    model, diffusion = read_diffusers(path, diffusion)
    preset = "cifar10" if model.config.in_channels == 3 else "mnist"
    k = model.config.num_classes
    base = make_run_config(preset, train={"data": IMPORTED_DATA, "class_cond": bool(k)})
    cfg = RunConfig(preset=preset, model=model.config, diffusion=diffusion, train=base.train,
                    classes=_read_classes(Path(path), k) if k else None)
    with written_aside(run_dir) as tmp:
        write_config(tmp, cfg)
        save_checkpoint(tmp, step=0, model=model, ema_model=model, state={"imported_from": str(Path(path).resolve())})
    return run_dir


def _read_classes(root: Path, k: int) -> Tuple[str, ...]:
    """The class names of a conditional pipeline: ``classes.json`` (as ddpm export writes it), else "0".."K-1"."""
    path = root / CLASSES
    if not path.is_file():
        return tuple(str(i) for i in range(k))
    try:
        names = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DDPMError(f"{path} is not valid JSON: {e}") from None
    if not (isinstance(names, list) and len(names) == k and all(isinstance(n, str) for n in names)):
        raise DDPMError(f"{path} must list the names of the {k} classes of unet/config.json")
    return tuple(names)


def export_diffusers(model: UNet, diffusion: DiffusionConfig, out_dir: os.PathLike,
                     classes: Optional[Sequence[str]] = None) -> Path:
    """Write a diffusers DDPMPipeline directory (model_index.json, unet/, scheduler/) for ``model``; a
    class-conditional model's class names go to ``classes.json``."""
    from ..atomic import save_safetensors
    from .schedulers import check_exportable

    check_exportable(diffusion)
    out = Path(out_dir)
    with written_aside(out) as tmp:
        (tmp / "unet").mkdir()
        (tmp / "scheduler").mkdir()
        save_safetensors(to_diffusers_state_dict(model), tmp / "unet" / WEIGHTS)
        (tmp / "unet" / "config.json").write_text(json.dumps(unet_config_to_diffusers(model.config), indent=2) + "\n")
        config = json.dumps(scheduler_config(diffusion), indent=2) + "\n"
        (tmp / "scheduler" / "scheduler_config.json").write_text(config)
        index = {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"],
                 "unet": ["diffusers", "UNet2DModel"]}
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if model.config.num_classes:
            names = list(classes or (str(i) for i in range(model.config.num_classes)))
            (tmp / CLASSES).write_text(json.dumps(names, indent=1) + "\n")
        (tmp / "README.md").write_text(usage(out, model.config, names if model.config.num_classes else None))
    return out
