"""``ddpm sample``: images from a run as a resumable job, with pictures of the reverse process and of progressive
generation."""

from __future__ import annotations

import sys
from typing import Any, Dict

from .advice import count
from .flags import load_run_of, sampling_settings

PROGRESSIVE_ROWS = 16  # images in a --progressive strip at most (a row each)


def cmd_sample(args) -> int:
    from ..errors import DDPMError
    from ..runtime import choose_device, distributed
    from ..sampling.jobs import parse_seeds, reverse_process_pictures, sample_job
    from ..sampling.outputs import check_output, check_picture_path
    from ..sampling.progressive import default_reverse_steps, parse_reverse_steps, progressive_picture

    if args.seeds and args.n is not None:
        raise DDPMError("give --seeds A-B or --seed S --n N, not both")
    if args.at and not args.progressive:
        raise DDPMError("--at picks the reverse steps of --progressive STRIP.png; add it, or drop --at")
    seeds = parse_seeds(args.seeds) if args.seeds else range(args.seed, args.seed + (args.n or 64))
    check_output(args.out, overwrite=args.overwrite, runs=[args.run])  # before anything is loaded
    pictures: Dict[str, Any] = {
        "strip": args.trajectory and check_picture_path(args.trajectory, overwrite=args.overwrite, flag="--trajectory"),
        "gif": args.gif and check_picture_path(args.gif, ".gif", overwrite=args.overwrite, flag="--gif")}
    progressive = args.progressive and check_picture_path(args.progressive, overwrite=args.overwrite,
                                                          flag="--progressive")
    device = choose_device(args.device)
    with distributed(device, args.dist_timeout) as rank:
        ckpt = load_run_of(args, device)
        T = ckpt.diffusion.T
        at = parse_reverse_steps(args.at, T) if args.at else default_reverse_steps(T)
        settings = sampling_settings(args, device, seed=seeds.start, n=len(seeds))
        job, done = sample_job(args.out, ckpt, settings, overwrite=args.overwrite, chunk=args.chunk)
        if rank == 0 and (pictures["strip"] or pictures["gif"]):
            reverse_process_pictures(ckpt, settings, seeds=seeds[:4], **pictures)
        if rank == 0 and progressive:
            shown = progressive_picture(ckpt, settings, seeds=seeds[:PROGRESSIVE_ROWS], at=at, path=progressive)
    if rank == 0:
        again = f"; {done} of them were drawn by an earlier run of this job" if done else ""
        which = f"seeds {seeds.start}-{seeds.stop - 1}" if len(seeds) > 1 else f"seed {seeds.start}"
        print(f"wrote {count(len(seeds), 'sample')} ({which}) from {args.run} (step {ckpt.step}, "
              f"{settings.weights_name} weights) to {args.out}{again}", file=sys.stderr)
        for what, path in (("the reverse process of the first samples", args.trajectory), ("its animation", args.gif)):
            if path:
                print(f"wrote {what} to {path}", file=sys.stderr)
        c = ckpt.config.model.in_channels
        if c not in (1, 3) and (not args.out.endswith(".npz") or args.trajectory or args.gif or progressive):
            print(f"note: the images have {c} channels: pictures show {'the first' if c == 2 else 'the first 3'}"
                  f"{'' if c < 5 or args.out.endswith('.npz') else ', and so do the PNGs of a folder'}; an .npz keeps "
                  "every channel", file=sys.stderr)
        if progressive:
            print(f"wrote progressive generation (x0 predicted at reverse steps {','.join(map(str, shown))}) of the "
                  f"first {min(len(seeds), PROGRESSIVE_ROWS)} samples to {progressive}", file=sys.stderr)
    return 0
