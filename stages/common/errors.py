"""Errors a user can fix (the CLI prints their message on one line and exits with code 2), and
SIGTERM and SIGHUP, which end a command as Ctrl-C does (exit codes 143 and 129)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PipelineError(Exception):
    """Bad input: the message names the file, key or value at fault and how to fix it."""


def no_cuda_device(device: str = "cuda") -> PipelineError:
    """``--device cuda`` (or cuda:N) where no GPU is visible, refused the same way by every command."""
    return PipelineError(f"--device {device}: no CUDA device is visible; use --device cpu or auto")


class ProfileError(PipelineError):
    """A profile that cannot be read or does not validate."""


class DataError(PipelineError):
    """A dataset that is missing or malformed."""


class ArtifactError(PipelineError):
    """An artifact that is missing or cannot be used."""


# What a stop by each signal says of itself.
STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)", signal.SIGHUP: "hung up (SIGHUP)"}


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``), honoured as Ctrl-C is. SIGTERM is what a spot instance's
    preemption notice, ``timeout``, Slurm, Kubernetes and ``docker stop`` send before they kill;
    SIGHUP is what a closed terminal or SSH session sends. Training stops between two steps with its
    checkpoint saved; anything else unwinds, discarding half-written artifacts."""

    def __init__(self, message: str = STOP_WORDS[signal.SIGTERM], signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = signum


# Signals that stop a command the way Ctrl-C does, besides SIGINT itself.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def detach_from_terminal() -> None:
    """Standard input, output and error that were a terminal now point at /dev/null. After SIGHUP the
    terminal is gone and every write to it fails (EIO): the stop that follows must still save its
    checkpoint and unwind cleanly, so its messages go nowhere rather than raise. Files and pipes stay."""
    import os
    import stat

    null = os.open(os.devnull, os.O_RDWR)
    try:
        null_device = os.fstat(null).st_rdev
        for fd in (0, 1, 2):
            try:
                status = os.fstat(fd)
            except OSError:  # closed
                continue
            if stat.S_ISCHR(status.st_mode) and status.st_rdev != null_device:
                os.dup2(null, fd)
    finally:
        os.close(null)


@contextmanager
def stop_signals_raise() -> Iterator[None]:
    """Within this block SIGTERM and SIGHUP raise Terminated, so ``finally`` blocks and the store's
    cleanup run instead of the process vanishing (Python's default for both). A signal ignored when
    the block starts stays ignored: ``nohup`` ignores SIGHUP, a background job's shell may ignore more."""
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield
        return

    def raise_terminated(signum, frame):
        if signum == signal.SIGHUP:
            detach_from_terminal()
        raise Terminated(STOP_WORDS[signum], signum)

    previous = {signum: signal.signal(signum, raise_terminated) for signum in STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def stop_words(interrupt: KeyboardInterrupt) -> str:
    """How a stop says what stopped it: "interrupted" (Ctrl-C), "terminated (SIGTERM)", "hung up (SIGHUP)"."""
    return STOP_WORDS.get(int(getattr(interrupt, "signum", signal.SIGINT)), STOP_WORDS[signal.SIGINT])


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal, as a shell reports a process that the signal ended: 130, 143 or 129."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
