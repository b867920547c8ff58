"""Sampling jobs at scale: the images of a range of seeds, drawn chunk by chunk.

Image i of a job is the image of seed ``seeds[i]`` (``sampling.generate``), so a job can be cut anywhere. A chunk
is about a minute of sampling (measured; at least a batch, at most 1,000 images), so a kill costs little. Each
finished chunk is written aside and renamed into ``.<output>.parts/`` next to the output, with ``job.json`` saying
what the job is; the same command run again after a kill or Ctrl-C draws only the missing chunks, and under
torchrun each process draws its share of them (the missing chunks dealt out in turn). When every chunk is there the
output is assembled, streaming (memory does not grow with the number of images), and the parts are removed.
A job of other settings in the way is refused, never mixed in.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..atomic import written_aside
from ..diffusion.gaussian import Device
from ..errors import DDPMError, Interrupted, stopped_by
from ..rng import NOISE_SCHEME
from ..runtime import rank0_flags
from ..viz import Trajectory
from .outputs import PathLike, check_output, output_kind, write_folder, write_images, write_npz
from .settings import SamplingSettings

__all__ = ["JobSpec", "SampleJob", "parse_seeds", "reverse_process_pictures", "seconds_per_image", "CHUNK",
           "GRID_LIMIT"]

log = logging.getLogger(__name__)
CHUNK = 1000  # images per chunk: what a kill can cost at most
GRID_LIMIT = 10_000  # images in one PNG grid at most (for more, write .npz or a folder)


def parse_seeds(text: str) -> range:
    """``A-B`` (inclusive) or ``A``: the seeds of a job, as a range."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", text)
    if not m:
        raise DDPMError(f"--seeds {text!r}: expected a range of seeds such as 0-49999 (first-last), or one seed")
    a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
    if b < a:
        raise DDPMError(f"--seeds {text}: the last seed ({b}) comes before the first ({a})")
    return range(a, b + 1)


@dataclass(frozen=True)
class JobSpec:
    """What decides a job's images: the run and its checkpoint, the sampler's settings, the classes, the seeds, the
    device type (its generators) and the scheme that draws each image's noise. (Not the batch size, the number of
    processes or the device order: they change nothing.)"""

    run: str
    step: int
    ema: bool
    sampler: str
    steps: int
    eta: Optional[float]
    spacing: Optional[str]
    guidance: float
    classes: Optional[str]
    first_seed: int
    n: int
    precision: str
    chunk: int = CHUNK
    device: str = "cpu"  # CPU and CUDA generators give different noise for one seed: never mixed in one job
    noise: str = NOISE_SCHEME
    edit: Optional[str] = None  # an edit job's inputs, mask and editors (``Edit.describe``); None: sampling
    progressive: Optional[str] = None  # the reverse steps whose x0_hat the .npz keeps beside the samples ("100,200")

    def differences(self, other: Dict[str, Any]) -> List[str]:
        return [f"{k} {other.get(k)!r} (now {v!r})" for k, v in asdict(self).items() if other.get(k) != v]


class SampleJob:
    """The job ``spec`` writing ``out`` (a ``.png`` grid, an ``.npz`` or a folder of PNGs); ``figure(images)``, if
    given, lays out a PNG's images (with the number per row); ``records`` (name: array [n]) go into an ``.npz``
    beside ``arr_0`` and ``arr_1``."""

    def __init__(self, out: PathLike, spec: JobSpec,
                 figure: Optional[Callable[[torch.Tensor], Tuple[torch.Tensor, int]]] = None,
                 records: Optional[Dict[str, np.ndarray]] = None):
        self.out, self.spec, self.kind, self.figure = Path(out), spec, output_kind(out), figure
        self.records = records or {}  # more per-image arrays for an .npz (an edit's input and strength)
        self.parts = self.parts_of(Path(out))
        if self.kind == "png" and spec.n > GRID_LIMIT:
            raise DDPMError(f"a PNG grid of {spec.n} images is too large (at most {GRID_LIMIT}); write FILE.npz or a "
                            "folder")

    @staticmethod
    def parts_of(out: Path) -> Path:
        out = Path(out)
        return out.parent / f".{out.name}.parts"

    @property
    def chunks(self) -> List[range]:
        c, n = self.spec.chunk, self.spec.n
        return [range(i, min(i + c, n)) for i in range(0, n, c)]

    def _chunk_file(self, k: int) -> Path:
        return self.parts / f"chunk-{k:06d}.npz"

    def prepare(self, *, overwrite: bool = False, main: bool = True) -> int:
        """Check, before any sampling, that the job can write its output, and set up (or find) its parts. Returns how
        many images earlier runs of the same job have already drawn."""
        found = read_job(self.parts) if self.parts.is_dir() else None
        diff = self.spec.differences(found) if found is not None else []
        if found is not None and found.get("device") not in (None, self.spec.device) and not overwrite:
            raise DDPMError(f"{self.parts} holds a job started on {found['device']}: {found['device']} and "
                            f"{self.spec.device} draw different noise for one seed, so its images cannot be mixed "
                            f"with these; finish it with --device {found['device']}, or pass --overwrite")
        if diff and not overwrite:
            raise DDPMError(f"{self.parts} holds a job with other settings in the way of this one ("
                            f"{'; '.join(diff[:3])}); delete it, run that job again, or pass --overwrite")
        check_output(self.out, overwrite=overwrite, runs=[self.spec.run])
        if diff and main:
            self.remove_parts()
        if not self.parts.is_dir() and main:  # the folder appears with its job.json (other processes may be looking)
            with written_aside(self.parts) as tmp:
                (tmp / "job.json").write_text(json.dumps(asdict(self.spec), indent=1) + "\n")
        return sum(len(r) for k, r in enumerate(self.chunks) if self._chunk_file(k).is_file())

    def missing(self, rank: int = 0, world: int = 1, device: Device = None) -> List[int]:
        """The chunks this process still has to draw: the missing ones as rank 0 sees them (its listing broadcast:
        on a shared file system each node may see another), dealt out in turn, so that after a resume every process
        has its share of what is left (never one process drawing while the others wait)."""
        there = rank0_flags([self._chunk_file(k).is_file() for k in range(len(self.chunks))], device or "cpu")
        return [k for k, done in enumerate(there) if not done][rank::world]

    def run(self, draw: Callable[[range], Tuple[Any, ...]], *, rank: int = 0,
            world: int = 1, bar: Any = None, chunks: Optional[List[int]] = None) -> None:
        """Draw this process's missing chunks (``chunks``, as ``missing`` dealt them out before anyone wrote):
        ``draw(span)`` returns the uint8 images [len(span), C, H, W] of the job's images ``span``, their labels
        (or None) and optionally more arrays of one row per image for the .npz (name: [len(span), ...])."""
        for k in self.missing(rank, world) if chunks is None else chunks:
            images, labels, *extra = draw(self.chunks[k])
            write_images(images, self._chunk_file(k), labels=labels, extra=extra[0] if extra else None)
            if bar is not None:
                bar.set_postfix(chunks=f"{k + 1}/{len(self.chunks)}")

    def finished(self) -> Tuple[int, int]:
        """(chunks, images) finished so far, by every process."""
        done = [r for k, r in enumerate(self.chunks) if self._chunk_file(k).is_file()]
        return len(done), sum(len(r) for r in done)

    def interrupted(self, signal_name: str) -> Interrupted:
        """The error that says what an interrupted job keeps (``resumable``: the same call continues it)."""
        chunks, images = self.finished()
        return Interrupted(f"stopped by {signal_name}: {chunks} of {len(self.chunks)} chunks ({images:,} of "
                           f"{self.spec.n:,} images) are kept in {self.parts}", signal_name, resumable=True)

    def _pieces(self, key: str) -> Iterator[np.ndarray]:
        for k in range(len(self.chunks)):
            with np.load(self._chunk_file(k), allow_pickle=False) as z:
                yield z[key]

    def assemble(self, wait_s: float = 0.0) -> Path:
        """Write the output from the finished chunks (streaming) and remove the parts. ``wait_s``: how long to wait
        for chunks that other processes wrote to appear here (a shared file system's cached listing)."""
        import time

        deadline = time.monotonic() + wait_s
        while True:
            todo = [k for k in range(len(self.chunks)) if not self._chunk_file(k).is_file()]
            if not todo or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        if todo:
            raise DDPMError(f"{self.parts}: chunks {todo[:5]} are not drawn yet"
                            + (f" (waited {wait_s:.0f} s for the other processes' chunks to appear)" if wait_s else ""))
        with np.load(self._chunk_file(0), allow_pickle=False) as z:
            shape, labelled = z["arr_0"].shape[1:], "arr_1" in z.files
            extra = {k: z[k].shape[1:] for k in z.files if k not in ("arr_0", "arr_1")}
        n = self.spec.n
        if self.kind == "npz":
            arrays: Dict[str, Tuple[Sequence[int], Any, Iterable[Any]]] = {
                "arr_0": ((n, *shape), np.uint8, self._pieces("arr_0"))}
            if labelled:
                arrays["arr_1"] = ((n,), np.int64, self._pieces("arr_1"))
            for name, rest in extra.items():
                arrays[name] = ((n, *rest), np.uint8, self._pieces(name))
            for name, values in self.records.items():
                arrays[name] = ((n,), values.dtype, [values])
            write_npz(self.out, arrays)
        elif self.kind == "png":
            images = torch.from_numpy(np.concatenate(list(self._pieces("arr_0")))).permute(0, 3, 1, 2)
            rows = len(set(np.concatenate(list(self._pieces("arr_1"))).tolist())) if labelled else 0
            nrow = n // rows if rows > 1 else None
            if self.figure is not None:
                images, nrow = self.figure(images)
            write_images(images, self.out, nrow=nrow)
        else:
            first = self.spec.first_seed
            write_folder(self.out, ((first + i, a) for i,
                                    a in enumerate(a for arr in self._pieces("arr_0") for a in arr)))
        self.remove_parts()
        return self.out

    def remove_parts(self) -> None:
        """Remove the job's parts: its job.json, chunks and leftovers of killed writes; nothing else (the folder
        stays if anything more is in it)."""
        if not self.parts.is_dir():
            return
        for f in self.parts.iterdir():
            if f.name == "job.json" or re.fullmatch(r"(\.)?chunk-\d{6}\.npz|\.chunk-\d{6}\.npz\.\w{8}\.tmp\.npz",
                                                    f.name):
                f.unlink(missing_ok=True)
        try:
            self.parts.rmdir()
        except OSError:
            pass


SHARED_FS_WAIT_S = 120.0  # how long rank 0 waits for other nodes' chunks to show in its listing (NFS caches it)
KILL_COST_S = 60.0  # what a kill may cost at most, in seconds of sampling


def seconds_per_image(model: nn.Module, sampler: Any, image_shape: Sequence[int], *, batch_size: int,
                      guidance: float = 0.0, device: Device = None,
                      precision: str = "fp32") -> float:
    """Seconds of sampling per image on this device: one network call at the batch size (timed after one to warm
    up) times the sampler's calls, over the images of the batch (guidance: the conditional and null halves run in
    one batch of twice the size)."""
    import time

    from ..runtime import autocast

    device = torch.device(device or "cpu")
    b = max(1, batch_size) * (2 if guidance else 1)
    x = torch.zeros((b, *image_shape), device=device)
    t = torch.full((b,), max(sampler.steps - 1, 0), dtype=torch.long, device=device)
    k = getattr(getattr(model, "config", None), "num_classes", 0)
    args = (x, t) if not k else (x, t, torch.full((b,), k, dtype=torch.long, device=device))
    model = model.to(device).eval()
    with torch.no_grad(), autocast(device, precision):
        seconds = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(*args)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - t0)
    return float(seconds[-1] * sampler.calls / (b // (2 if guidance else 1)))


def chunk_for_a_minute(model: nn.Module, sampler: Any, image_shape: Sequence[int], *, batch_size: int, n: int,
                       guidance: float = 0.0, device: Device = None,
                       precision: str = "fp32") -> int:
    """Images per chunk such that a kill costs about ``KILL_COST_S`` of work (``seconds_per_image``); at least a
    batch (it batches well) and at most CHUNK, and never more than the job."""
    if n <= batch_size:  # one batch: nothing to measure (a chunk is at least a batch)
        return n
    per_image = seconds_per_image(model, sampler, image_shape, batch_size=min(batch_size, n), guidance=guidance,
                                  device=device, precision=precision)
    return int(min(CHUNK, n, max(min(batch_size, n), round(KILL_COST_S / max(per_image, 1e-9)))))


def read_job(parts: Path) -> Dict[str, Any]:
    """What a job's ``job.json`` says ({} when it is missing or unreadable)."""
    try:
        found = json.loads((parts / "job.json").read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _earlier_chunk(out: PathLike) -> Optional[int]:
    """The chunk size of the job already under way at ``out`` (its job.json), if any."""
    try:
        return int(read_job(SampleJob.parts_of(Path(out)))["chunk"])
    except (KeyError, TypeError, ValueError):
        return None


def sample_job(out: PathLike, ckpt: Any, settings: SamplingSettings, *, sampler: Any = None,
               overwrite: bool = False, chunk: Optional[int] = None,
               progressive: Optional[Sequence[int]] = None) -> Tuple[SampleJob, int]:
    """Draw the images of ``settings`` (its seeds, classes, weights, ...) from a loaded run into ``out``, as a
    resumable job (under torchrun, shared between the processes; rank 0 assembles the output). ``sampler``
    replaces the one the settings make: a Sampler, or an ``Edit`` (its outputs, one seed each). ``progressive``:
    reverse steps whose x0_hat an .npz output keeps beside the samples (``progressive.Progressive``; its arrays
    ``x0hat_KKKK``). Returns the job and how many images earlier runs of it had drawn already."""
    from tqdm.auto import tqdm

    from ..runtime import barrier, rank_world
    from .generation import generate
    from .guidance import check_guidance, class_labels
    from .progressive import Progressive, progressive_key

    rank, world = rank_world()
    seeds, device, progress = settings.seeds, settings.device, settings.progress
    n, model = len(seeds), settings.weights(ckpt)
    sampler = sampler or settings.make_sampler(ckpt.diffusion)
    shape = ckpt.config.model.shape
    check_guidance(settings.guidance, ckpt.config.classes, settings.classes)  # bad requests fail before any write
    class_labels(settings.classes, ckpt.config.classes, n, range(0), warn=progress and rank == 0)
    edit = sampler if hasattr(sampler, "figure") else None
    if progressive and (edit is not None or output_kind(out) != "npz"):
        raise ValueError("a progressive job samples (no edit) into an .npz")
    if edit is not None and (len(edit) != n or seeds.start != edit.seed):
        raise ValueError(f"an edit of {len(edit)} outputs from seed {edit.seed} needs their seeds, not {seeds}")
    spec = _spec(out, ckpt, settings, sampler, chunk, edit=edit and edit.describe(),
                 progressive=progressive_key(progressive))
    job = SampleJob(out, spec, figure=edit and (lambda images: (edit.figure(images, device), edit.n + 2)),
                    records=edit.records() if edit is not None else None)
    done = job.prepare(overwrite=overwrite, main=rank == 0)
    barrier()
    todo = job.missing(rank, world, device)  # dealt out while no process writes, from rank 0's listing
    barrier()
    mine = sum(len(job.chunks[k]) for k in todo)
    with tqdm(total=mine, desc=f"sampling ({sampler.name}, {sampler.steps} steps)", unit="img", dynamic_ncols=True,
              disable=not progress or rank != 0) as bar:
        def draw(span: range) -> Tuple[Any, ...]:
            labels = class_labels(settings.classes, ckpt.config.classes, n, span)
            if edit is not None:
                return edit.draw(model, span, settings, labels=labels, bar=bar), labels
            kept = Progressive(sampler.indices, ckpt.diffusion.T, progressive) if progressive else None
            images = generate(model, sampler, shape, settings, seeds=seeds[span.start:span.stop], labels=labels,
                              bar=bar, collect=kept)
            return images, labels, kept.arrays() if kept is not None else None

        try:
            job.run(draw, rank=rank, world=world, bar=bar, chunks=todo)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM as Terminated: what is finished stays for the next run
            raise job.interrupted(stopped_by(e)) from None
    # every process says what it wrote, so rank 0 waits for chunks its own listing does not show yet
    written = rank0_flags([k in todo for k in range(len(job.chunks))], device or "cpu", combine=True)
    if rank == 0:
        job.assemble(wait_s=SHARED_FS_WAIT_S if any(written) and world > 1 else 0.0)
    if world > 1:  # the others go on once the output is there, and wait for it to show in their listing too
        barrier()
        _wait_for(job.out, SHARED_FS_WAIT_S)
    return job, done


def _spec(out: PathLike, ckpt: Any, settings: SamplingSettings, sampler: Any, chunk: Optional[int],
          **more: Any) -> JobSpec:
    """The job's spec: what ``settings.key`` says decides its images (run, sampler, classes, seeds, precision as it
    runs, never "auto", device), its chunk (given, an earlier run's, or about a minute of sampling) and ``more``."""
    from ..runtime import rank0_value

    key, n = settings.key(ckpt, sampler), len(settings.seeds)
    chunk = chunk or _earlier_chunk(out) or chunk_for_a_minute(
        settings.weights(ckpt), sampler, ckpt.config.model.shape, batch_size=settings.batch_size, n=n,
        guidance=settings.guidance, device=settings.device, precision=settings.precision)
    return JobSpec(**{f.name: key[f.name] for f in fields(JobSpec) if f.name in key}, ema=settings.ema,
                   chunk=rank0_value(chunk, settings.device or "cpu"), **more)


def _wait_for(path: Path, seconds: float) -> None:
    """Until ``path`` exists here (a shared file system's cached listing), at most ``seconds``."""
    import time

    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() >= deadline:
            raise DDPMError(f"{path} was written by rank 0 but does not show here after {seconds:.0f} s: is the "
                            "output folder on a file system every node shares?")
        time.sleep(0.5)


def reverse_process_pictures(ckpt: Any, settings: SamplingSettings, *, seeds: Sequence[int],
                             strip: Optional[PathLike] = None, gif: Optional[PathLike] = None) -> None:
    """The reverse process of the images of ``seeds`` (a few of ``settings.seeds``, from the first) as a strip
    and/or a GIF: they are the same images as a sampling job's of those seeds draws."""
    from .generation import sample_checkpoint
    from .guidance import class_labels

    sampler = settings.make_sampler(ckpt.diffusion)
    trajectory = Trajectory(sampler.indices, frames=40 if gif else 0, samples=len(seeds))
    labels = class_labels(settings.classes, ckpt.config.classes, len(settings.seeds), range(len(seeds)))
    sample_checkpoint(ckpt, settings.replace(progress=False), seeds=seeds, labels=labels, sampler=sampler,
                      callback=trajectory)
    if strip:
        trajectory.save_strip(strip)
    if gif:
        trajectory.save_gif(gif)
