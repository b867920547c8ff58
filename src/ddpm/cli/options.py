"""The options of the `ddpm` command line: one parser per command (eval's and metrics' live with them in
``measure``), the flags of train derived from the typed configs (``ddpm.config``), so that every option is
spelled and explained once. ``commands`` runs them.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

from .editing import add_edit, add_inpaint
from .ema import add_ema
from .evaluate import add_eval
from .flags import (
    Commands,
    Parser,
    checkpoint_flags,
    config_flags,
    data_flags,
    int_list,
    job_flags,
    positive_int,
    sampler_flags,
)
from .measure import add_metrics

EPILOG = """examples:
  ddpm demo                                         # train on the shipped digits, write samples (CPU, minutes)
  ddpm train --data mnist --preset tiny --out runs/tiny --steps 200
  ddpm train --data ~/cifar-10-python.tar.gz --preset cifar10 --out runs/cifar10
  ddpm train --out runs/cifar10 --resume            # continue exactly where it stopped
  ddpm sample --run runs/cifar10 --n 64 --out grid.png
  ddpm eval --run ddpm-demo --metrics bpd --n 100    # the paper's NLL bound, in bits/dim
  ddpm eval --run ddpm-demo --metrics fd --sampler ddim --steps 10,50,100
  ddpm eval --run runs/cifar10 --metrics fid,is,bpd  # the paper's Table 1: 50,000 samples, FID, IS, bits/dim
  ddpm metrics samples.npz --ref fid_stats_cifar10_train.npz   # FID of any images against shared statistics
  ddpm inpaint --run ddpm-demo mnist:0-7 --mask right --n 4 --out filled.png   # fill in with RePaint
  ddpm edit --run ddpm-demo mnist:0-3 --strength 0.25,0.5,0.75,1 --n 4 --out fig7.png   # SDEdit; the paper's Fig. 7
  ddpm noise photo.jpg --out strip.png              # the forward process as a picture
  ddpm import ./ddpm-cifar10-32 --out runs/paper    # a diffusers DDPM pipeline directory -> a run
  ddpm export --run ddpm-demo --format diffusers --out demo-diffusers

Run `ddpm COMMAND --help` for each command's options."""


def build_parser(handlers: Dict[str, Any]) -> argparse.ArgumentParser:
    """The parser of every command; ``handlers`` maps a command's name to the function that runs it."""
    from .. import __version__

    parser = Parser(prog="ddpm", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                    description="Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020): train, sample, "
                                "measure.")
    parser.add_argument("--version", action="version", version=f"ddpm {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    commands = Commands(parser, handlers)
    for add in (_demo, _train, _sample, add_inpaint, add_edit, add_eval, add_metrics, _noise, _interpolate, _data,
                _import, _export, _schedule, add_ema):
        add(commands)
    return parser


def _demo(c: Commands) -> None:
    from .demo import DEMO_DIR, DEMO_MIN_STEPS, DEMO_MINUTES, DEMO_SAMPLER, DEMO_SAMPLES

    p = c.add("demo", "train on the shipped MNIST digits and write samples (a few minutes on a CPU)",
              "Train the 'mnist' preset, class-conditional with min-SNR-5 loss weighting, on the 5,000 digits "
              "shipped in the package, then write EMA samples to RUN/samples.png (a row per digit) and "
              "RUN/samples.npz. A new demo says what it runs on, times this machine, then trains as many steps as "
              "fit in --minutes (so the learning-rate schedule runs to its end), but at least the "
              f"{DEMO_MIN_STEPS} its quality needs: a slower machine trains them anyway and says how long it "
              "takes. Run again, it continues a demo stopped early (e.g. by Ctrl-C); a finished one only draws "
              "its samples again.",
              "ddpm demo; ddpm demo --out long-demo --minutes 20")
    p.add_argument("--out", default=DEMO_DIR, help="run directory")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="time budget of the whole demo, training and "
                   "sampling (more: more steps, up to the recipe's 4,800)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"training steps, fixed (default: as many as fit in --minutes, at least {DEMO_MIN_STEPS}, at "
                        "most the mnist recipe's)")
    p.add_argument("--n", type=positive_int, default=DEMO_SAMPLES, help="number of samples to draw")
    p.add_argument("--sampling-steps", type=positive_int, default=DEMO_SAMPLER[1],
                   help=f"network calls per sample ({DEMO_SAMPLER[0]} sampler; 1000 = the full Algorithm 2)")


DATA_SOURCES = """data sources (--data; each recognised by what the path is, decoded once into the cache):
  mnist                           the 5,000 digits shipped in the package (labelled)
  ./my_images                     a folder of png/jpg/bmp/webp, searched recursively; ./pets/cat/*.jpg: labelled
  cifar-10-python.tar.gz[:test]   CIFAR-10, either official format, archive or extracted (labelled)
  bedroom_train_lmdb/             an LMDB of encoded images, as LSUN ships (needs ddpm-tool[lsun]: lmdb)
  images.zip                      a zip of images, read in place; labels from class folders in it or EDM's
                                  dataset.json
  ./hf_dataset  or  train.parquet  a Hugging Face dataset: a save_to_disk folder, parquet file(s) or a folder of
                                  them, with an image column and optionally a label column (ClassLabel names are
                                  the classes; --image-column/--label-column; needs ddpm-tool[hf]: pyarrow)
  samples.npz  or  images.npy     uint8 [N, H, W, C] (arr_0, labels arr_1; class names from classes.json beside)"""


def _resume_mode(text: str) -> str:
    if text != "auto":
        raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', not {text!r}")
    return text


def _train(c: Commands) -> None:
    from ..config import PRESETS, DiffusionConfig, TrainConfig

    p = c.add("train", "train a model (the paper's recipe by default)",
              "Train eps_theta with Algorithm 1. A new run needs --data and --out; `--out RUN --resume` continues "
              "an existing run bit-exactly (only how long it runs and how it reports may change). Unset options "
              "come from the preset (the paper's recipe for cifar10 and celebahq256). Ctrl-C saves and stops.\n\n"
              "presets:\n" + "\n".join(f"  {k:<12} {v.summary}" for k, v in PRESETS.items()) + "\n\n" + DATA_SOURCES,
              "ddpm train --data mnist --preset tiny --out runs/tiny --steps 200; "
              "ddpm train --data ./my_images --preset cifar10 --out runs/mine --batch-size 32; "
              "ddpm train --out runs/mine --resume --steps 100000; "
              "torchrun --nproc_per_node 8 --max-restarts 3 -m ddpm train --data cifar-10-python.tar.gz --out "
              "runs/c10 --resume auto --save-minutes 30; "
              "ddpm train --config cifar10.toml --out runs/c10 --dry-run; "
              "ddpm train --init-from runs/paper-cifar10 --data ./my_images --out runs/tuned --lr 2e-5")
    p.add_argument("--out", required=True, help="run directory (must not exist unless --resume [auto])")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="network and recipe (default: mnist for --data mnist, else cifar10)")
    p.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                   help="continue the run in --out from its last checkpoint; --resume auto: start it if --out holds "
                        "no run yet (or one stopped before its first checkpoint), else continue it, so that one "
                        "command serves a first start and every restart (torchrun --max-restarts, a scheduler's "
                        "requeue); a finished run exits 0")
    p.add_argument("--config", metavar="FILE.toml", default=None,
                   help="settings from a TOML file with the keys of RUN/config.json (preset = ..., [model], "
                        "[diffusion], [train]) or from a run's config.json; flags given here win")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration (JSON) and exit")
    data_flags(p)
    config_flags(p, TrainConfig, by_preset=True)
    config_flags(p.add_argument_group("diffusion (fixed for the life of a run)"), DiffusionConfig, by_preset=True)


def _data(c: Commands) -> None:
    p = c.add("data", "what a data source holds, and its decoded cache",
              "info: what SRC holds (images, classes) and whether a decoded cache of it exists at the preset's (or "
              "--image-size/--channels') size, and where. build: decode it into the cache now (in parallel, "
              "once), so that training starts at once. Every source but mnist is decoded once per size, channels "
              "and --resize into $DDPM_CACHE_DIR (default ~/.cache/ddpm) and memory-mapped from then on; a changed "
              "source gets a new cache. Delete the folder to clear it.\n\n" + DATA_SOURCES,
              "ddpm data info ./my_images --preset celebahq256; "
              "ddpm data build ~/lsun/bedroom_train_lmdb --image-size 256; "
              "ddpm data info cifar-10-python.tar.gz:test", device=False)
    p.add_argument("action", choices=("info", "build"), help="info, or build the cache")
    p.add_argument("src", help="a data source as for train (see 'data sources' above)")
    from ..config import PRESETS

    p.add_argument("--preset", choices=list(PRESETS), default=None, help="its size and channels (default: mnist for "
                                                                         "mnist, else cifar10)")
    data_flags(p)
    p.add_argument("--skip-bad-images", action="store_true", help="build: leave unreadable images out")
    from ..config import DATA_OPTIONS, TrainConfig

    config_flags(p, TrainConfig, skip=[f for f in TrainConfig.__dataclass_fields__ if f not in DATA_OPTIONS])
    p.add_argument("--verify", action="store_true", help="info: check every byte of the cache against its checksum")


def _sample(c: Commands) -> None:
    p = c.add("sample", "generate images from a trained run (Algorithm 2 or a faster sampler)",
              "Generate images with the run's EMA weights. --out decides the format: FILE.png a grid, FILE.npz a "
              "uint8 array arr_0 [N, H, W, C] (and arr_1, the classes asked for), DIR/ one PNG per image. Image i is "
              "the image of seed S+i whatever the batch size or number of processes. Where it will write is checked "
              "first; finished chunks are kept next to --out, so the same command run again after a kill or Ctrl-C "
              "continues. On N processes: torchrun --nproc_per_node=N -m ddpm -- sample ... (the -- keeps torchrun's "
              "own parser off ddpm's options).",
              "ddpm sample --run ddpm-demo --n 64 --out grid.png; "
              "ddpm sample --run ddpm-demo --n 100 --class all --guidance 1 --out digits.png; "
              "ddpm sample --run runs/cifar10 --seeds 0-49999 --out samples.npz --sampler dpm++ --steps 20; "
              "torchrun --nproc_per_node=4 -m ddpm -- sample --run runs/cifar10 --seeds 0-49999 --out samples.npz")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--n", type=positive_int, default=None, help="number of images: seeds --seed .. --seed + n - 1 "
                                                                  "(default: 64)")
    p.add_argument("--seeds", metavar="A-B", default=None, help="the images of seeds A to B (instead of --seed/--n): "
                                                                "image i depends on its seed alone")
    job_flags(p, "(and --trajectory, --gif, --progressive)", ", a grid row per class")
    sampler_flags(p)
    p.add_argument("--trajectory", metavar="PNG", help="also draw the reverse process of the first few samples: "
                                                       "x_t and the predicted x_0 at t = T, 0.8 T, ..., 1")
    p.add_argument("--gif", metavar="GIF", help="also animate the reverse process of the first few samples")
    p.add_argument("--progressive", metavar="PNG",
                   help="also draw progressive generation (the paper's Fig. 6): for the first 16 samples (drawn "
                        "again: the same images), x0 as predicted at the reverse steps --at, then the sample")
    p.add_argument("--at", metavar="K,K,...", default=None,
                   help="with --progressive: reverse steps 1..T (step 1 sees pure noise, T sees x_1; a sampler of "
                        "fewer steps shows its nearest); default every tenth, T/10, 2T/10, ..., T")


def _noise(c: Commands) -> None:
    from ..config import DiffusionConfig
    from ..viz import NOISE_STEPS

    p = c.add("noise", "draw the forward process: an image and its noised versions x_t",
              "x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for one image at several t (one eps for all), as a "
              "labelled strip. t = 0 is the image itself, t = T is x_T.",
              "ddpm noise photo.jpg --out strip.png; ddpm noise mnist:7 --out strip.png --schedule cosine; "
              "ddpm noise photo.jpg --out strip.png --run runs/cifar10 --t 0,10,100,1000", device=False)
    p.add_argument("image", help="an image file, or mnist:K for image K of the shipped digits (a digit K %% 10: "
                                 "mnist:7 is a seven)")
    p.add_argument("--out", required=True, help="the strip, a .png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if ddpm wrote it (never a file of yours)")
    p.add_argument("--t", type=int_list, default=None,
                   help=f"steps to show, separated by commas (default: {','.join(map(str, NOISE_STEPS))} for T = "
                        "1000, scaled to another T)")
    p.add_argument("--size", type=positive_int, default=128, help="resize the short side to this and centre-crop")
    p.add_argument("--seed", type=int, default=0, help="seed of eps")
    p.add_argument("--run", default=None, help="take the schedule from this run (else the flags below)")
    config_flags(p, DiffusionConfig, skip=("var_type",))


def _interpolate(c: Commands) -> None:
    from ..sampling.interpolation import MIXES

    p = c.add("interpolate", "mix two images in the latent x_t and decode the mixtures (the paper's Sec. 4.3)",
              "Encode images A and B to step --t of the forward process with the same noise, mix the two latents "
              "for lambda = 0 .. 1 and decode each mixture with the reverse process (the same noise for every "
              "one, so lambda 0 and 1 are the reconstructions of A and B); a strip A, the mixtures, B.",
              "ddpm interpolate --run ddpm-demo mnist:3 mnist:8 --t 500 --out strip.png; "
              "ddpm interpolate --run runs/celebahq a.png b.png --t 250 --mix linear --out strip.png")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("a", help="an image file, or mnist:K")
    p.add_argument("b", help="the other image")
    p.add_argument("--t", type=positive_int, default=500, help="the step to encode to (1..T; larger: the mixtures "
                                                                "share less of A and B)")
    p.add_argument("--out", required=True, help="the strip, a .png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if ddpm wrote it (never a file of yours)")
    p.add_argument("--n", type=lambda v: max(2, positive_int(v)), default=9, help="mixtures, lambda = 0 .. 1")
    p.add_argument("--mix", choices=MIXES, default="slerp",
                   help="slerp (along the great circle: keeps the noise's norm; measured clearer than linear) or "
                        "linear in x_t (the paper's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the encoding and decoding noise")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="use the EMA weights")
    checkpoint_flags(p)


def _import(c: Commands) -> None:
    from ..config import DiffusionConfig

    p = c.add("import", "turn a diffusers DDPM pipeline directory into a run (no diffusers needed)",
              "Read a diffusers DDPM pipeline directory (model_index.json, unet/, scheduler/; or a bare unet/ "
              "folder) whose UNet2DModel is of the DDPM family, and write a run directory that `ddpm sample` and "
              "`ddpm eval` use like any other. Weights: safetensors, or a .bin read with "
              "torch.load(weights_only=True).",
              "ddpm import ./ddpm-cifar10-32 --out runs/paper-cifar10; "
              "ddpm sample --run runs/paper-cifar10 --n 64 --out grid.png --sampler ddim --steps 50", device=False)
    p.add_argument("dir", help="a diffusers pipeline directory, or its unet/ folder")
    p.add_argument("--out", required=True, help="the run directory to create (must not exist)")
    config_flags(p.add_argument_group("the schedule of a bare unet/ folder (a pipeline's scheduler/ gives it)"),
                  DiffusionConfig)


def _export(c: Commands) -> None:
    p = c.add("export", "write a run as a diffusers DDPMPipeline directory",
              "Write RUN's weights (EMA by default) as a diffusers pipeline directory that "
              "DDPMPipeline.from_pretrained(DIR) loads.",
              "ddpm export --run ddpm-demo --format diffusers --out ddpm-demo-diffusers", device=False)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", required=True, choices=["diffusers"], help="the output format")
    p.add_argument("--out", required=True, help="the directory to create (must not exist)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True, help="export the EMA weights")
    checkpoint_flags(p)


def _schedule(c: Commands) -> None:
    p = c.add("schedule", "plot beta_t, alpha-bar_t and the signal-to-noise ratio of the schedules",
              "Plot the linear (the paper's) and cosine (improved DDPM) schedules side by side.",
              "ddpm schedule --out schedule.png --T 1000", device=False)
    p.add_argument("--out", required=True, help="the plot, a .png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if ddpm wrote it (never a file of yours)")
    p.add_argument("--T", type=positive_int, default=1000, help="number of diffusion steps")
