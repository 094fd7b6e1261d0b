"""Errors a user can fix (the CLI prints their message on one line and exits with code 2), and
SIGTERM, which ends a command as Ctrl-C does (exit code 143)."""

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


class ProfileError(PipelineError):
    """A profile that cannot be read or does not validate."""


class DataError(PipelineError):
    """A dataset that is missing or malformed."""


class ArtifactError(PipelineError):
    """An artifact that is missing or cannot be used."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, honoured as Ctrl-C is: it is what a spot instance's preemption notice, ``timeout``,
    Slurm, Kubernetes and ``docker stop`` send before they kill. Training stops between two steps
    with its checkpoint saved; anything else unwinds, discarding half-written artifacts."""

    signum = signal.SIGTERM


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within this block SIGTERM raises Terminated, so ``finally`` blocks and the store's cleanup run
    instead of the process vanishing (Python's default for SIGTERM)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        yield
        return

    def raise_terminated(signum, frame):
        raise Terminated("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal, as a shell reports a process that the signal ended: 130 or 143."""
    return 128 + int(getattr(interrupt, "signum", signal.SIGINT))
