"""The process the work runs in: threads, malloc, device, precision and the torchrun process group.

Training and sampling both import these; nothing here knows about models or runs.

Threads. OpenMP threads spin while they wait for work. On a machine where another process keeps the
cores busy they spin against it: measured here (benchmarks/speed/threads.py, 2 cores, a second PyTorch process
busy), mnist forwards took 6.8x their idle time with the default settings and 1.7x with
``OMP_WAIT_POLICY=PASSIVE``, which costs about 6-15% when the machine is idle. So the ``ddpm`` command
looks at the load for 0.2 s before torch loads and asks for passive waiting only when other processes
keep at least half a core busy; ``--threads N`` (default: the cores this process may use) and the user's
own OMP_* settings win.

Memory. PyTorch frees every activation at the end of a step and allocates it again in the next. glibc's malloc
serves blocks above its mmap threshold (128 KiB at start, rising with use to at most 32 MiB) with fresh
``mmap`` calls and hands freed memory at the top of the heap back to the kernel, so every step faults
its activations in again and the kernel zeroes each page first. Measured on this project's 2-core CPU
machine: a cifar10 training step at batch 8 took 24,400 page faults and 113 ms of system time; an mnist
step at batch 64, 15,700 faults and 53 ms of a 230 ms step. With both thresholds at 1 GiB, freed blocks
stay in the process and are reused: about 100 faults per step, peak memory unchanged (1,250 vs 1,265 MiB).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import time
from typing import Dict, Iterator, Optional, Tuple

__all__ = ["keep_freed_memory", "usable_cores", "busy_cores", "thread_settings", "configure_threads",
           "choose_device", "bf16_supported", "machine_class",
           "fast_cuda_math", "exact_cuda_math", "resolve_precision", "autocast", "Precision", "init_distributed",
           "rank_world", "barrier", "distributed", "close_distributed", "rank0_value", "rank0_flags", "shares",
           "accumulator_dtype"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):
        return False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Make glibc's malloc keep and reuse freed blocks below ``threshold`` bytes. True if it was applied.

    Nothing is changed off Linux/glibc, or where the user chose malloc settings through the environment
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES``): those win.
    """
    if not sys.platform.startswith("linux") or not _glibc():
        return False
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold))) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- threads
def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> Optional[Tuple[int, int]]:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return sum(v), v[3] + (v[4] if len(v) > 4 else 0)  # total, idle + iowait


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other processes keep busy, measured over ``interval`` seconds while this one sleeps
    (Linux; elsewhere the 1-minute load average)."""
    a = _cpu_times()
    if a is None:
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0
    time.sleep(interval)
    b = _cpu_times()
    if b is None:
        return 0.0
    total, idle = b[0] - a[0], b[1] - a[1]
    return (os.cpu_count() or 1) * (1 - idle / total) if total > 0 else 0.0


def thread_settings(threads: Optional[int] = None, *, busy: Optional[float] = None) -> Dict[str, str]:
    """The OpenMP environment for ``threads`` threads (None: the user's OMP_NUM_THREADS, else every usable
    core), with passive waiting when other processes keep at least half a core busy (``busy`` cores; measured
    when not given) and the user has not chosen a wait policy."""
    env: Dict[str, str] = {}
    if threads is not None or "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads or usable_cores())
    if not any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        if (busy_cores() if busy is None else busy) >= 0.5:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def configure_threads(threads: Optional[int] = None) -> Dict[str, str]:
    """Apply :func:`thread_settings` to this process. The wait policy can only take effect before torch is
    imported; after that, only the thread count is set (``torch.set_num_threads``). Returns what was set."""
    if "torch" in sys.modules:
        import torch

        n = threads or int(os.environ.get("OMP_NUM_THREADS", 0) or usable_cores())
        torch.set_num_threads(n)
        return {"threads": str(n)}
    env = thread_settings(threads)
    os.environ.update(env)
    return env


# ----------------------------------------------------------------------------- device and precision
def choose_device(name: str = "auto"):
    """``auto``: the GPU of this process's local rank (torchrun) or the first one, else the CPU. Under torchrun
    (WORLD_SIZE > 1) a CUDA process always uses ``cuda:LOCAL_RANK``: ``cuda`` means that one, and another index
    is refused (every rank would otherwise share one GPU)."""
    import torch

    from .errors import DDPMError

    world, local = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", local)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DDPMError(f"unknown device {name!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DDPMError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and world > 1:
        if dev.index is not None and dev.index != local:
            raise DDPMError(f"--device {name} under torchrun: each process uses the GPU of its local rank "
                            f"(this one cuda:{local}); pass --device cuda (or auto) and choose GPUs with "
                            "CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def bf16_supported(device) -> bool:
    """Whether bf16 matmuls/convolutions run natively on ``device`` (CPU: AVX-512 BF16 / AMX; CUDA: compute
    capability 8.0 or newer, Ampere on: ``torch.cuda.is_bf16_supported`` also counts the emulation of older GPUs,
    which is slower than fp16)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    if device.type == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def machine_class(device) -> str:
    """The class of machine that decides ddpm's speed on ``device``, as figures are labelled: "AVX-512 BF16" (a CPU
    with native bf16: training runs in bf16 autocast), "AVX-512" or "AVX2" (fp32 only: about 3x slower), or the
    GPU's name. Reads PyTorch's own view of the CPU (``ATEN_CPU_CAPABILITY`` and ``ONEDNN_MAX_CPU_ISA`` cap it)."""
    import torch

    if device.type == "cuda":
        return f"GPU ({torch.cuda.get_device_name(device)})"
    if device.type != "cpu":
        return device.type
    isa = torch.backends.cpu.get_cpu_capability()  # "AVX512", "AVX2", "DEFAULT", ...
    name = {"AVX512": "AVX-512", "AVX512_BF16": "AVX-512", "AMX": "AVX-512"}.get(isa, isa if isa != "DEFAULT" else
                                                                                     "no AVX2")
    return f"{name} BF16" if bf16_supported(device) else name


def fast_cuda_math(device, training: bool = False) -> None:
    """On CUDA: TF32 tensor cores for fp32 matmuls and convolutions (Ampere on; a 10-bit mantissa in the
    products, fp32 accumulation), and for training cuDNN's benchmark mode (it times the convolution algorithms
    once per shape). Nothing on other devices."""
    import torch

    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if training:
        torch.backends.cudnn.benchmark = True


@contextlib.contextmanager
def exact_cuda_math():
    """TF32 off for matmuls and cuDNN convolutions while measuring (features, metrics, bits/dim), restored after:
    an Ampere GPU's TF32 products (on for training and sampling, ``fast_cuda_math``) would move the numbers away
    from the CPU's, and make them depend on whether sampling ran first in the process."""
    import torch

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def resolve_precision(precision: str, device, training: bool = False) -> str:
    """'auto' -> 'bf16' where the hardware supports it natively; else, for training on a CUDA GPU, 'fp16' (with
    a gradient scaler: T4, V100); else 'fp32'."""
    if precision == "auto":
        if bf16_supported(device):
            return "bf16"
        return "fp16" if training and device.type == "cuda" else "fp32"
    return precision


def autocast(device, precision: str):
    """The autocast context for ``precision`` on ``device`` (fp32: none)."""
    import torch

    kind = resolve_precision(precision, device)
    if kind in ("bf16", "fp16"):
        return torch.autocast(device.type, dtype=torch.bfloat16 if kind == "bf16" else torch.float16)
    return contextlib.nullcontext()


class Precision:
    """How a training step runs its numbers: fp32, bf16 autocast, or fp16 autocast with a gradient scaler (the
    loss scaled up so small gradients survive fp16, the gradients scaled back before clipping; a step whose
    gradients overflowed is skipped and the scale lowered). fp32 master weights throughout."""

    def __init__(self, precision: str, device):
        import torch

        self.device, self.kind = device, resolve_precision(precision, device, training=True)
        self.scaler = torch.amp.GradScaler(device.type) if self.kind == "fp16" else None

    def autocast(self):
        return autocast(self.device, self.kind)

    def scale(self, loss):
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscale(self, optimizer) -> None:
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer) -> bool:
        """The optimizer's step; False if the scaler skipped it (fp16 gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before

    def skip(self) -> None:
        """A step given up before the optimizer (a non-finite loss): the scaler forgets it too."""
        if self.scaler is not None:
            self.scaler.update()

    def state_dict(self) -> Dict:
        return {} if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# ----------------------------------------------------------------------------- torchrun
DIST_TIMEOUT_MIN = 120.0  # NCCL's own default (10 min) is shorter than a checkpoint on a slow disk or a data build
CONNECT_TIMEOUT_MIN = 1.0  # how long the processes of a torchrun job wait for each other to join the group


def init_distributed(device, timeout_min: float = DIST_TIMEOUT_MIN) -> Tuple[int, int]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (nccl on GPUs, gloo on CPUs), whose collectives
    wait up to ``timeout_min`` minutes for a slow process before failing. (rank, world)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import datetime

        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            # torchrun's store outlives a restart of the workers (--max-restarts): the keys of this attempt get a
            # prefix of their own, or a restarted group would read its dead predecessors' addresses and hang
            store, rank, world = next(dist.rendezvous("env://"))
            store = dist.PrefixStore(f"ddpm/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
            # joining waits at most CONNECT_TIMEOUT_MIN (a peer that died while starting fails it, and torchrun
            # restarts the group); the collectives then wait up to timeout_min
            settable = hasattr(dist.distributed_c10d, "_set_pg_timeout")
            join = min(timeout_min, CONNECT_TIMEOUT_MIN) if settable else timeout_min
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank,
                                    world_size=world, timeout=datetime.timedelta(minutes=join))
            if settable:
                dist.distributed_c10d._set_pg_timeout(datetime.timedelta(minutes=timeout_min))
    return rank_world()


def rank_world() -> Tuple[int, int]:
    """(rank, world_size) of this process: (0, 1) unless torch.distributed is initialised."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def distributed(device, timeout_min: float = DIST_TIMEOUT_MIN) -> Iterator[int]:
    """The process group of a torchrun job (``init_distributed``) around a command's collective work; yields this
    process's rank. Torn down when the work succeeds; never on an error, where the other processes may be waiting
    in a collective (on NCCL, destroying the group then blocks until ``--dist-timeout``): the process exits, and
    torchrun stops the others."""
    rank, _ = init_distributed(device, timeout_min)
    yield rank
    close_distributed()


def close_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank0_value(value: int, device) -> int:
    """Rank 0's ``value`` in every process (itself, outside torchrun): for what each measures differently."""
    if rank_world()[1] == 1:
        return value
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.broadcast(t, 0)
    return int(t.item())


def rank0_flags(flags, device, combine: bool = False) -> list:
    """A list of booleans agreed by every process (itself, outside torchrun): rank 0's, or with ``combine`` those
    true in any process. For what each process would read differently, e.g. a directory listing that a shared
    file system caches."""
    if rank_world()[1] == 1:
        return [bool(f) for f in flags]
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=device)
    if combine:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    else:
        dist.broadcast(t, 0)
    return [bool(v) for v in t.tolist()]


def accumulator_dtype(device):
    """float64 where ``device`` has it, else float32 (MPS has no float64): the dtype of sums kept on a device."""
    import torch

    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def shares(total: int, parts: int) -> list:
    """Split range(total) into ``parts`` contiguous ranges whose sizes differ by at most one."""
    base, extra = divmod(total, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out
