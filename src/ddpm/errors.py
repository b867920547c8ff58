"""The one exception type for bad input: the CLI prints its message as one line and exits non-zero."""

import contextlib
import errno
import signal as _signal
from typing import Any, Iterator

NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a full quota, a file-size limit


class DDPMError(Exception):
    """Bad input or a broken file: a message meant for the user, never a bug in ddpm."""


class Interrupted(DDPMError):
    """Work stopped by a signal (Ctrl-C, SIGTERM) after keeping what it had done; ``exit_code`` is the shell's
    128 + the signal's number; ``resumable``: running the same call again continues it."""

    def __init__(self, message: str, signal_name: str = "SIGINT", resumable: bool = False):
        import signal

        super().__init__(message)
        self.exit_code = 128 + int(getattr(signal, signal_name, signal.SIGINT))
        self.resumable = resumable  # the same call (command) continues where it stopped


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill``) or SIGUSR1 (SLURM's warning before a preemption) raised where Ctrl-C
    raises KeyboardInterrupt, so that work stops the same way: what is finished is kept and the command exits
    128 + the signal's number (143, 138; see ``stopped_by``)."""

    def __init__(self, signal_name: str = "SIGTERM"):
        super().__init__(signal_name)
        self.signal_name = signal_name


def stopped_by(e: BaseException) -> str:
    """The signal behind a KeyboardInterrupt: "SIGTERM" or "SIGUSR1" for ``Terminated``, else "SIGINT" (Ctrl-C)."""
    return e.signal_name if isinstance(e, Terminated) else "SIGINT"


# The signals that stop work keeping what it has done (Ctrl-C aside): a scheduler's stop and SLURM's warning
STOP_SIGNALS = ("SIGTERM", "SIGUSR1")


def exit_code(signal_name: str) -> int:
    """The shell's exit status of a command stopped by ``signal_name``: 128 + its number (SIGINT 130, SIGTERM
    143, SIGUSR1 138)."""
    import signal

    return 128 + int(getattr(signal, signal_name))


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` says a write found no space (a full disk or quota, or a file-size limit)."""
    return isinstance(e, OSError) and e.errno in NO_SPACE


def signals_here(names):
    """The signals of ``names`` this platform has (Windows has no SIGUSR1), as ``signal.Signals``."""
    import signal

    return [getattr(signal, n) for n in names if hasattr(signal, n)]


@contextlib.contextmanager
def stop_requests(holder: Any) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGUSR1 set ``holder.stop_reason`` to the signal's name (a loop such as the Trainer's
    stops after its current step, and saves); a second SIGINT aborts. Outside the main thread: no handling."""
    def handler(signum, frame):
        if holder.stop_reason and signum == _signal.SIGINT:
            raise KeyboardInterrupt
        holder.stop_reason = _signal.Signals(signum).name

    try:
        old = {s: _signal.signal(s, handler) for s in signals_here(("SIGINT", *STOP_SIGNALS))}
    except ValueError:  # not the main thread: no signal handling
        yield
        return
    try:
        yield
    finally:
        for s, h in old.items():
            _signal.signal(s, h)
