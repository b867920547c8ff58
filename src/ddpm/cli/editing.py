"""``ddpm inpaint`` (RePaint) and ``ddpm edit`` (SDEdit, the paper's Fig. 7): their options and the functions that
run them, each a resumable sampling job of edits (``sampling.edit_jobs``)."""

from __future__ import annotations

import argparse
import sys

from .flags import Commands, job_flags, load_run_of, positive_int, sampler_flags, sampling_settings

_IMAGES = ("the images to edit: an image file, a folder of them, an .npz of uint8 images [N, H, W, C] (as sample "
           "writes) or mnist:A-B (images A to B of the shipped digits); each resized (short side) and centre-cropped "
           "to the run's size")
_OUT = ("--out decides the format: FILE.png a figure, one row per input (the input, what the model starts from, then "
        "the --n completions), FILE.npz the completions alone (uint8 arr_0 [N, H, W, C], input by input, with each "
        "one's input index in 'input', its strength in 'strength' (edit) and its class in arr_1 (--class)), DIR/ one "
        "PNG per completion. Output j is drawn from seed --seed + j, so a killed job continues where it stopped "
        "(run the same command again) and torchrun shares it.")


def _strengths(text: str):
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers in [0, 1] separated by commas, got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"expected numbers in [0, 1] separated by commas, got {text!r}")
    return values


def _common(p) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("images", help=_IMAGES)
    p.add_argument("--n", type=positive_int, default=1, help="completions per input image")


def add_inpaint(c: Commands) -> None:
    from ..sampling.editing import MASKS

    p = c.add("inpaint", "fill in the masked part of images with a trained run (RePaint)",
              "RePaint (Lugmayr et al. 2022) with the run's EMA weights: Algorithm 2 where at every step the kept "
              "pixels come from the forward process of the input, q(x_{t-1} | x_0), and the rest from the model; "
              "each stretch of --jump steps is walked --resample times, going back up by the forward process "
              "between walks, so that the filled part agrees with the kept one (--resample 1: no going back). The "
              "kept pixels are returned exactly. " + _OUT,
              "ddpm inpaint --run ddpm-demo mnist:0-7 --mask right --n 4 --out filled.png; "
              "ddpm inpaint --run runs/celebahq photo.png --mask mask.png --n 8 --out fills/; "
              "ddpm inpaint --run ddpm-demo mnist:0-9 --mask bottom --class 8 --guidance 1 --out eights.png")
    _common(p)
    p.add_argument("--mask", required=True,
                   help="an image of the run's size, white (>= 128) = keep, black = fill in (gray, or with the "
                        f"images' channels); or a named mask of the part to fill in: {', '.join(MASKS)} (strokes: "
                        "random, different for each image)")
    p.add_argument("--jump", type=positive_int, default=10, help="RePaint's jump length j: steps walked again")
    p.add_argument("--resample", type=positive_int, default=10,
                   help="RePaint's r: each stretch walked r times (network calls about r times the steps)")
    job_flags(p)
    sampler_flags(p, samplers=("respaced", "ancestral"), default="respaced",
                  steps_help="respaced: steps of the chain (default 250, RePaint's; at most T)")


def add_edit(c: Commands) -> None:
    p = c.add("edit", "edit images with a trained run: noise them part-way and denoise (SDEdit, the paper's Fig. 7)",
              "SDEdit (Meng et al. 2022): each input x_0 is noised to x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps "
              "at t = --strength x T, then the reverse process of --sampler runs from there: small strengths keep "
              "the input, large ones keep only its coarse layout (the paper's Sec. 4.3 and Fig. 7), 0 returns it. "
              "The completions of one input share their x_t (and the strengths their eps), so --n 4 with several "
              "strengths draws the paper's figure. --class steers a class-conditional run (a 3 into an 8). " + _OUT,
              "ddpm edit --run ddpm-demo mnist:0-3 --strength 0.25,0.5,0.75,1 --n 4 --out fig7.png; "
              "ddpm edit --run ddpm-demo mnist:3 --strength 0.6 --class 8 --guidance 2 --n 8 --out three-to-8.png; "
              "ddpm edit --run runs/celebahq faces/ --strength 0.5 --sampler ddim --steps 100 --out edited/")
    _common(p)
    p.add_argument("--strength", type=_strengths, required=True,
                   help="t / T to noise to, in [0, 1]; several, comma-separated, give a row each")
    job_flags(p)
    sampler_flags(p)


def _run_job(args, make_edit, what: str) -> int:
    from ..data.pictures import load_images
    from ..runtime import choose_device, distributed
    from ..sampling.jobs import sample_job
    from ..sampling.outputs import check_output
    from .advice import count

    check_output(args.out, overwrite=args.overwrite, runs=[args.run])  # before anything is loaded
    device = choose_device(args.device)
    with distributed(device, args.dist_timeout) as rank:
        ckpt = load_run_of(args, device)
        images = load_images(args.images, ckpt.config.model.image_size, ckpt.config.model.in_channels)
        settings = sampling_settings(args, device, n=None)  # --n here: completions per input; n: the edit's outputs
        edit = make_edit(ckpt, images, settings)
        job, done = sample_job(args.out, ckpt, settings.replace(n=len(edit)), sampler=edit, chunk=args.chunk,
                               overwrite=args.overwrite)
    if rank == 0:
        again = f"; {done} of them were drawn by an earlier run of this job" if done else ""
        print(f"wrote {count(len(edit), what)} of {count(len(images), 'image')} ({edit.calls_text()}) "
              f"from {args.run} (step {ckpt.step}) to {args.out}{again}", file=sys.stderr)
    return 0


def cmd_inpaint(args) -> int:
    from ..sampling.edit_jobs import Edit
    from ..sampling.editing import RePaint, make_mask

    def make(ckpt, images, settings):
        c, s = images.shape[1], (images.shape[-2], images.shape[-1])
        T, k = ckpt.diffusion.T, settings.steps
        if settings.sampler == "ancestral" and k not in (None, T):
            raise ValueError(f"the ancestral sampler takes all T={T} steps; for {k} use --sampler respaced")
        if k is not None and k > T:
            raise ValueError(f"--steps {k}: the run has T={T} steps, so a chain takes at most {T}")
        steps = None if settings.sampler == "ancestral" else min(k or 250, T)
        editor = RePaint(ckpt.diffusion, steps, settings.spacing or "uniform", args.jump, args.resample)
        mask = make_mask(args.mask, len(images), c, s, seed=settings.seed)
        return Edit([editor], images, args.n, mask, settings.seed, about=f"{args.images} mask {args.mask}")

    return _run_job(args, make, "completion")


def cmd_edit(args) -> int:
    from ..sampling.edit_jobs import Edit
    from ..sampling.editing import SDEdit

    def make(ckpt, images, settings):
        sampler = settings.make_sampler(ckpt.diffusion)
        return Edit([SDEdit(sampler, s) for s in args.strength], images, args.n, None, settings.seed,
                    about=args.images)

    return _run_job(args, make, "edit")
