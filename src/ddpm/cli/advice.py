"""What the command line tells a user beyond the results: the one line for a full disk or an allocation that
failed (with what is kept and what to change), and how long a long run will take. Only the CLI prints it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional, Tuple

__all__ = ["count", "duration", "Projection", "out_of_memory", "oom_line", "disk_full_line", "failure",
           "one_of_many", "say_if_long", "train_end_line", "StderrHandler"]


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 2 * 86400 else f"{seconds / 86400:.1f} days"


class Projection:
    """An ``on_step`` callback that, once the pace is known (``after_s`` seconds and at least 5 steps in), says how
    long the rest of the run will take, and how to shorten it, when that is ``worth_s`` seconds or more."""

    def __init__(self, after_s: float = 30.0, worth_s: float = 3600.0, clock=None, say=None):
        import time

        self.after_s, self.worth_s, self.clock = after_s, worth_s, clock or time.monotonic
        self.say = say or (lambda line: __import__("tqdm").tqdm.write(line, file=sys.stderr))
        self.start: Optional[float] = None
        self.first, self.said = 0, False

    def __call__(self, trainer) -> None:
        now = self.clock()
        if self.start is None:  # timed from the end of the first step: it carries start-up costs
            self.start, self.first = now, trainer.step
            return
        done = trainer.step - self.first
        if self.said or done < 5 or now - self.start < self.after_s:
            return
        self.said = True
        per = (now - self.start) / done
        left = (trainer.config.steps - trainer.step) * per
        if left >= self.worth_s:
            left_steps = trainer.config.steps - trainer.step
            self.say(f"ddpm: note: at {per:.2f} s per step, the {left_steps:,} steps left take "
                     f"about {duration(left)}. To train less: --steps N, a smaller --preset (mnist, tiny), "
                     "--time-limit MINUTES (it stops with a checkpoint), or a GPU")


LONG_S = 3600.0  # a sampling job this long gets a note, with what would shorten it, before it starts


def say_if_long(settings, ckpt, sampler) -> None:
    """Before a long sampling job (the paper's 50,000 samples over all T steps on a CPU: days): how long it takes
    here and how to look sooner."""
    from ..runtime import rank_world
    from ..sampling.jobs import seconds_per_image

    n, device = len(settings.seeds), settings.torch_device
    if n * sampler.calls < 100_000:  # e.g. 1,000 samples of 100 calls: minutes on any CPU; not worth timing
        return
    world = rank_world()[1]
    per = seconds_per_image(settings.weights(ckpt), sampler, ckpt.config.model.shape,
                            batch_size=min(settings.batch_size, n), guidance=settings.guidance, device=device,
                            precision=settings.precision)
    if per * n / world < LONG_S:
        return
    on = f"{world} processes on {device.type}" if world > 1 else str(device)
    print(f"ddpm: note: {n:,} samples of {sampler.calls:,} network calls each take about {duration(per * n / world)} "
          f"here ({per:.2f} s per image, {on}); a stopped job continues where it stopped. To look sooner: --n 2000 "
          "--sampler sde-dpm++ --steps 20 (compare FIDs only at equal n and settings), or more processes or GPUs "
          "(torchrun)", file=sys.stderr, flush=True)


def out_of_memory(e: BaseException) -> bool:
    import torch

    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text))


def oom_line(args) -> str:
    """The one line for an allocation that failed: the batch size that asked for it and what to change."""
    cmd = args.func.__name__[4:]
    batch = getattr(args, "batch_size", None)
    if cmd == "train" and batch is None:
        from ..run.directory import is_run, read_config

        try:
            batch = read_config(args.out).train.batch_size if is_run(args.out) else None
        except Exception:
            batch = None
    at = f" at batch size {batch}" if batch else ""
    smaller = f"--batch-size {max(1, batch // 2)}" if batch else "a smaller --batch-size"
    if cmd == "train":
        accum = getattr(args, "grad_accum", None) or 1
        return (f"out of memory{at}: add --grad-accum {accum * 2} (the same batch in {accum * 2} passes: the same "
                f"result in less memory), --grad-checkpointing (the same result, activations recomputed) or use "
                f"{smaller}, and run the command again (a run with checkpoints continues with --resume; --dry-run "
                "estimates the memory)")
    if cmd in ("sample", "eval", "demo", "interpolate"):
        return f"out of memory{at}: run again with {smaller} (the images do not change with the batch size)"
    return f"out of memory{at}"


def disk_full_line(args, e: OSError) -> str:
    """The one line for a write that found no space: where, and what is kept for the next run."""
    cmd = args.func.__name__[4:]
    where = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    if cmd in ("train", "demo"):
        from ..run.directory import checkpoint_step, list_checkpoints

        run = Path(args.out)
        last = list_checkpoints(run) if run.is_dir() else []
        again = f"ddpm train --out {run} --resume" if cmd == "train" else f"ddpm demo --out {run}"
        kept = (f"the last checkpoint, step {checkpoint_step(last[-1])}, is kept; free some space and continue with: "
                f"{again}" if last else "no checkpoint had been written; free some space and run the command again")
    elif cmd == "sample":
        from ..sampling.jobs import SampleJob

        out = Path(args.out)
        parts = SampleJob.parts_of(out)
        n = len(list(parts.glob("chunk-*.npz")))
        kept = (f"{count(n, 'finished chunk')} in {parts} {'is' if n == 1 else 'are'} kept; free some space and run "
                "the same command again to continue")
    else:
        kept = ("nothing half-written is kept (outputs are written aside and renamed whole); free some space and "
                "run again")
    return f"no space to write ({where}); {kept}"


# What a command stopped by a signal before it wrote anything keeps (its outputs are written whole, at the end).
_NOTHING_KEPT = {f"cmd_{c}": "; nothing was written (outputs are written whole, at the end)"
                 for c in ("eval", "metrics", "interpolate", "noise", "schedule", "import", "export")}


def failure(args, e: BaseException) -> Tuple[Optional[int], str]:
    """The exit code and the one line for an exception that ended a command; (None, "") for one to raise (a bug,
    or any error under ``--traceback``)."""
    import signal

    from ..errors import DDPMError, Interrupted, is_disk_full, stopped_by

    if isinstance(e, KeyboardInterrupt):
        name = stopped_by(e)
        return 128 + int(getattr(signal, name)), f"ddpm: stopped by {name}{_NOTHING_KEPT.get(args.func.__name__, '')}"
    if isinstance(e, Interrupted):
        return e.exit_code, f"ddpm: {e}" + ("; run the same command again to continue" if e.resumable else "")
    if getattr(args, "traceback", False):
        return None, ""
    if isinstance(e, RuntimeError) and not isinstance(e, DDPMError):
        if lost_peer(e):
            return 1, ("ddpm: error: another process of this torchrun job failed or was stopped (this one's collective "
                       "lost its peer); that process's own line says why")
        return (1, f"ddpm: error: {oom_line(args)}") if out_of_memory(e) else (None, "")
    return 1, f"ddpm: error: {disk_full_line(args, e) if isinstance(e, OSError) and is_disk_full(e) else e}"


def one_of_many(line: str) -> str:
    """``line`` (a failed command's ``ddpm: ...``) as one process of a torchrun job says it: with its rank, and
    written to torchrun's error file too (``TORCHELASTIC_ERROR_FILE``), so that the job's summary names the cause
    instead of "error_file: <N/A>". Alone, the line as it is."""
    import json
    import os
    import time

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return line
    line = line.replace("ddpm: ", f"ddpm: rank {os.environ.get('RANK', '?')}: ", 1)
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path and not os.path.exists(path):  # torchrun's format; the first error of the process wins
        try:
            with open(path, "w") as f:
                json.dump({"message": {"message": line, "extraInfo": {"py_callstack": line,
                                                                      "timestamp": str(int(time.time()))}}}, f)
        except OSError:
            pass
    return line


# What gloo and NCCL say when a collective's peer process died: not a fault of this process
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "remote worker crashing",
              "NCCL communicator was aborted", "Broken pipe")


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective's error for a peer process that died (under torchrun only)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(p in str(e) for p in _PEER_LOST)


def train_end_line(run: Path, res, seconds: float) -> str:
    """The one line that ends ``ddpm train``: what it did, and what to run next (``res`` a ``train.TrainResult``)."""
    from ..run.metrics import read_metrics

    if res.reason == "finished already":
        return (f"{run} has finished its {res.step} steps; nothing to train. To train further: ddpm train --out {run} "
                f"--resume --steps N (N > {res.step}; a cosine decay is then stretched to N)")
    if res.reason != "done":
        return (f"stopped at step {res.step} ({res.reason}); checkpoint {res.checkpoint}. "
                f"Continue with: ddpm train --out {run} --resume")
    rows = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    loss = f", loss {rows[-1]['loss']:.4f} at the end" if rows and "loss" in rows[-1] else ""
    best, which = "", ""
    if res.best is not None:
        share = f", {100 * res.eval_seconds / seconds:.0f}% of the time" if seconds > 0 else ""
        best = (f"; best checkpoint: step {res.best['step']} (FD@{res.best['n']} {res.best['fd']:.3f}; "
                f"{res.evaluations} evaluations, {res.eval_seconds / max(res.evaluations, 1):.1f} s each{share})")
        which = " --checkpoint best"
    return (f"trained {run} to step {res.step} in {duration(seconds)}{loss}; checkpoint {res.checkpoint}{best}. "
            f"Next: ddpm sample --run {run}{which} --n 64 --out samples.png")


class StderrHandler(logging.Handler):
    """The library's log records as lines on (the current) stderr: info plain, warnings as ``ddpm: warning:``."""

    def emit(self, record: logging.LogRecord) -> None:
        level = f"ddpm: {record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        print(level + record.getMessage(), file=sys.stderr)


def memory_line(cfg, device) -> str:
    """``--dry-run``'s estimate of a training step's memory on each process (``training.memory``)."""
    import os

    from ..runtime import resolve_precision
    from ..training.memory import estimate_step_memory

    t = cfg.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro = -(-t.batch_size // (world * t.grad_accum))
    precision = resolve_precision(t.precision, device)
    m = estimate_step_memory(cfg, micro_batch=micro, precision=precision, checkpointing=t.grad_checkpointing)
    return (f"memory of a training step, estimated: about {m['total']:,.0f} MiB per process = weights, gradients, "
            f"Adam and EMA {m['state']:,.0f} MiB ({m['parameters'] / 1e6:.2f}M parameters) + activations "
            f"{m['activations']:,.0f} MiB ({m['per_image']:,.1f} MiB per image x {micro} images per micro-batch: "
            f"--batch-size {t.batch_size} / {world} process{'es' if world > 1 else ''} / --grad-accum {t.grad_accum}"
            f"; {precision}, gradient checkpointing {'on' if t.grad_checkpointing else 'off'}). Too much: "
            + ("raise --grad-accum or lower --batch-size" if t.grad_checkpointing else
               "--grad-checkpointing, a higher --grad-accum or a lower --batch-size"))
