"""The `ddpm` command line: parse, build, call one library function per command, print what it returned.

The options live in ``ddpm.cli.options``. Bad input raises DDPMError (or ValueError/OSError) and becomes one
line on stderr with a non-zero exit. Nothing heavy is imported before the thread settings are applied
(OpenMP reads them when torch loads).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..runtime import configure_threads, keep_freed_memory
from .advice import Projection, StderrHandler, failure, memory_line, one_of_many, train_end_line
from .editing import cmd_edit, cmd_inpaint
from .ema import cmd_ema
from .evaluate import cmd_eval
from .flags import early_threads, fields_of, load_run_of
from .measure import cmd_metrics
from .sample import cmd_sample


# ----------------------------------------------------------------------------- commands
def cmd_demo(args) -> int:
    from ..runtime import choose_device
    from .demo import run_demo

    res = run_demo(Path(args.out), minutes=args.minutes, steps=args.steps, n=args.n,
                   sampling_steps=args.sampling_steps, device=choose_device(args.device), progress=not args.quiet)
    print(f"demo finished in {res.minutes:.1f} min after {res.step} steps:")
    print("\n".join(f"  {path}{' ' * (27 - len(path.name))}{what}" for path, what in res.described()))
    if res.status == "finished":
        print("(for a longer run: ddpm demo --out NEW --minutes M, or ddpm train --data mnist --class-cond "
              "--snr-gamma 5 --out RUN, the full recipe)", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    import time

    from ..config import DiffusionConfig, TrainConfig
    from ..config.presets import levels_note
    from ..errors import exit_code
    from ..runtime import choose_device, distributed
    from ..training.train import plan_run, train_run

    run = Path(args.out)
    cfg = plan_run(run, train=fields_of(args, TrainConfig), diffusion=fields_of(args, DiffusionConfig),
                   preset=args.preset, resume=args.resume, config_file=args.config,
                   model={"image_size": args.image_size, "in_channels": args.channels})
    device = choose_device(args.device)
    note = levels_note(cfg)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        print(cfg.to_json(), end="")
        print(memory_line(cfg, device), file=sys.stderr)
        return 0
    watch = None
    if cfg.train.eval_every:  # its feature network is found (or refused) before training starts
        from ..evaluation.watch import FDWatch

        watch = FDWatch(cfg, run, device=device, cache_dir=args.cache_dir)
    t0 = time.monotonic()
    with distributed(device, args.dist_timeout) as rank:
        res = train_run(run, cfg, device=device, progress=not args.quiet, cache_dir=args.cache_dir,
                        on_step=None if args.quiet else Projection(), evaluate=watch)
    if rank == 0:
        print(train_end_line(run, res, time.monotonic() - t0), file=sys.stderr)
    # stopped by a signal: 128 + its number (130, 143, 138), so that `ddpm train ... && ddpm sample ...` stops and
    # a scheduler requeues; the same command with --resume auto then continues
    return exit_code(res.reason) if res.reason.startswith("SIG") else 0


def cmd_noise(args) -> int:
    from ..config import DiffusionConfig
    from ..data.pictures import load_image
    from ..errors import DDPMError
    from ..run.directory import read_config
    from ..sampling.outputs import check_picture_path
    from ..viz import NOISE_STEPS, noise_strip, save_picture

    out = check_picture_path(args.out, overwrite=args.overwrite)
    flags = fields_of(args, DiffusionConfig)
    if args.run is not None and flags:
        raise DDPMError(f"--run takes the schedule from the run; drop {', '.join('--' + k for k in flags)}")
    diffusion = (read_config(args.run).diffusion if args.run else DiffusionConfig(**flags)).build()
    steps = args.t if args.t is not None else sorted({round(t * diffusion.T / 1000) for t in NOISE_STEPS})
    save_picture(noise_strip(diffusion, load_image(args.image, args.size), steps, seed=args.seed), out)
    print(f"wrote the forward process of {args.image} at t = {', '.join(map(str, steps))} (T = {diffusion.T}) "
          f"to {out}", file=sys.stderr)
    return 0


def cmd_interpolate(args) -> int:
    from ..data.pictures import load_image
    from ..runtime import choose_device
    from ..sampling.interpolation import interpolate
    from ..sampling.outputs import check_picture_path
    from ..sampling.settings import weights
    from ..viz import interpolation_strip, save_picture

    out = check_picture_path(args.out, overwrite=args.overwrite)
    device = choose_device(args.device)
    ckpt = load_run_of(args, device)
    size, channels = ckpt.config.model.image_size, ckpt.config.model.in_channels
    xa, xb = (load_image(spec, size, channels) for spec in (args.a, args.b))
    mixed = interpolate(weights(ckpt, args.ema), ckpt.diffusion, xa, xb, args.t, n=args.n,
                        mix=args.mix, seed=args.seed, device=device, progress=not args.quiet)
    save_picture(interpolation_strip(xa, mixed, xb), out)
    print(f"wrote {args.n} {args.mix} mixtures of {args.a} and {args.b} encoded to t = {args.t} (of "
          f"{ckpt.diffusion.T}) to {out}", file=sys.stderr)
    return 0


def cmd_data(args) -> int:
    from ..config import DATA_OPTIONS, TrainConfig
    from ..data.sources import cache_info, load_data

    given = {k: getattr(args, k) for k in DATA_OPTIONS if getattr(args, k) is not None}
    options = TrainConfig(**given).data_options()
    info = cache_info(args.src, preset=args.preset, channels=args.channels, image_size=args.image_size,
                      cache_dir=args.cache_dir, **options)
    if args.action == "build":
        load_data(args.src, channels=info["channels"], image_size=info["size"], progress=not args.quiet,
                  cache_dir=args.cache_dir, skip_bad=args.skip_bad_images, **options)
        info = cache_info(args.src, channels=info["channels"], image_size=info["size"], cache_dir=args.cache_dir,
                          **options)
    print("\n".join(_describe_data(info, verify=args.verify)))
    return 0


def _describe_data(info: dict, verify: bool = False) -> list:
    """Lines that say what ``cache_info`` found (with ``verify``: every cache checked byte by byte)."""
    from ..data.cache import verify as check

    src = info["source"]
    lines = [f"{src.name}: {src.kind}, {info['images']} images" + (f" in {src.path}" if src.path else "")]
    if info.get("columns"):
        lines.append(f"image column {info['columns'][0]!r}, label column "
                     + (repr(info["columns"][1]) if info["columns"][1] else "none"))
    if info.get("classes"):
        names = info["classes"]
        lines.append(f"{len(names)} classes: {', '.join(names[:50])}{', ...' if len(names) > 50 else ''}")
    elif info.get("unlabelled"):
        lines.append(f"no classes: {info['unlabelled']}")
    if info["cache"] is None:
        return lines + ["shipped in the package and held in memory: no cache"]
    h, w = (info["size"], info["size"]) if isinstance(info["size"], int) else info["size"]
    size = f"{info['channels']}x{h}x{w} (channels x height x width)"
    lines.append(f"cache at {size}: {info['cache']} ({'built' if info['built'] else 'not built yet'})")
    for path, meta in info["caches"]:
        shape, gb = "x".join(map(str, meta["shape"][1:])), meta["bytes"] / 2**30
        problem = check(path, full=True) if verify else None
        lines.append(f"  {path.name}: {meta['n']} images of {shape}, {gb:.2f} GiB, {len(meta['skipped'])} skipped"
                     + (f", classes: {len(meta['classes'])}" if meta.get("classes") else "")
                     + (f"; DAMAGED: {problem}" if problem else ", intact" if verify else ""))
    return lines


def cmd_schedule(args) -> int:
    from ..diffusion.schedule import NoiseSchedule
    from ..sampling.outputs import check_picture_path
    from ..viz import plot_schedule

    out = check_picture_path(args.out, overwrite=args.overwrite)
    plot_schedule({f"linear (T={args.T})": NoiseSchedule.linear(args.T),
                   f"cosine (T={args.T})": NoiseSchedule.cosine(args.T)}, out)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from ..config import DiffusionConfig
    from ..interop.diffusers import import_diffusers
    from ..run.directory import read_config
    from ..sampling.outputs import check_new_folder

    out = check_new_folder(args.out)
    flags = fields_of(args, DiffusionConfig)
    import_diffusers(args.dir, out, DiffusionConfig(**flags) if flags else None)
    cfg = read_config(out)
    m, d = cfg.model, cfg.diffusion
    names = ", ".join((cfg.classes or ())[:10]) + (", ..." if m.num_classes > 10 else "")
    classes = (f"class-conditional ({m.num_classes} {'class' if m.num_classes == 1 else 'classes'}: {names})"
               if m.num_classes else "unconditional")
    print(f"imported {args.dir} into {out}: a UNet of base width {m.ch} (x{', x'.join(map(str, m.ch_mult))}) for "
          f"{m.height}x{m.width}x{m.in_channels} images, {classes}, predicting {d.predict}; T={d.T}, "
          f"{d.schedule} schedule, {d.var_type} variance", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from ..interop.diffusers import export_diffusers
    from ..sampling.outputs import check_new_folder
    from ..sampling.settings import weights

    out = check_new_folder(args.out)
    ckpt = load_run_of(args)
    export_diffusers(weights(ckpt, args.ema), ckpt.config.diffusion, out, ckpt.config.classes)
    how = (f"a class-conditional UNet, which DDPMPipeline cannot give classes: {out / 'README.md'} has the diffusers "
           "loop that does (class_labels=...)" if ckpt.config.classes else
           f"load it with diffusers.DDPMPipeline.from_pretrained({str(out)!r})")
    print(f"exported {args.run} (step {ckpt.step}, {args.weights or ('EMA' if args.ema else 'raw')} weights) to "
          f"{out}; {how}",
          file=sys.stderr)
    return 0


HANDLERS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "inpaint": cmd_inpaint, "edit": cmd_edit,
            "eval": cmd_eval, "metrics": cmd_metrics, "noise": cmd_noise,
            "interpolate": cmd_interpolate, "data": cmd_data, "schedule": cmd_schedule, "import": cmd_import,
            "export": cmd_export, "ema": cmd_ema}
COMMANDS = tuple(HANDLERS)


# ----------------------------------------------------------------------------- main
@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises ``Terminated`` (a KeyboardInterrupt) while a command runs, so that a scheduler's or ``kill``'s
    stop keeps what is finished and says so, as Ctrl-C does (training has handlers of its own, set around its
    loop)."""
    import signal

    from ..errors import STOP_SIGNALS, Terminated, signals_here

    def stop(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    try:
        old = {s: signal.signal(s, stop) for s in signals_here(STOP_SIGNALS)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv[:1] == ["--"]:  # `torchrun ... -m ddpm -- train ...`: the `--` keeps torchrun's parser off our flags
        argv = argv[1:]
    if any(a in COMMANDS for a in argv):  # a command will run: threads first, before torch loads
        configure_threads(early_threads(argv))
    from ..errors import DDPMError
    from .options import build_parser

    parser = build_parser(HANDLERS)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return int(e.code or 0)
    if getattr(args, "func", None) is None:  # `ddpm` alone: what there is to do, and a usage error's exit code
        parser.print_help()
        return 2
    keep_freed_memory()  # reuse freed activations instead of faulting them in again each step (runtime.py)
    lib = logging.getLogger("ddpm")
    if not any(isinstance(h, StderrHandler) for h in lib.handlers):
        lib.addHandler(StderrHandler())
        lib.setLevel(logging.INFO)
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except (KeyboardInterrupt, DDPMError, ValueError, OSError, RuntimeError) as e:
        code, line = failure(args, e)
        if code is None:
            raise
        print(one_of_many(line), file=sys.stderr, flush=True)
        return code
