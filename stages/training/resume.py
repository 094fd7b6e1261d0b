"""Training checkpoints that let a killed or interrupted run go on where it stopped.

A checkpoint holds everything the rest of the run depends on: weights (BatchNorm statistics
included), optimizer state, the position in the epoch and that epoch's order of batches, every
random number generator the step draws from, and the running sums of the epoch's loss. Resuming
from one therefore gives the weights an uninterrupted run would have given, bit for bit where the
arithmetic is deterministic (the CPU).

It is written to a temporary name and renamed over the previous one, so a kill at any moment leaves
either the old or the new checkpoint, never half of one. Loading uses ``weights_only=True``: a
checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from stages.common.errors import STOP_SIGNALS, ArtifactError, PipelineError, detach_from_terminal
from stages.nets.checkpoint import UNREADABLE_TORCH_FILE, could_run_code, write_torch

FORMAT = 1


def save_state(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically, durable once this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    try:
        write_torch({**state, "format": FORMAT}, partial, durable=True)
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise PipelineError(f"{path}: cannot save the training checkpoint ({exc.strerror or exc}); the previous "
                            f"one is kept. Free space on that disk (or pass --artifacts elsewhere) and rerun "
                            f"the same command to resume") from exc
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power loss
    finally:
        os.close(directory)


def progress_file(checkpoint: Path) -> Path:
    """Beside each checkpoint, how far it stands, in JSON: ``status`` reads it without a framework."""
    return checkpoint.with_suffix(".json")


def save_progress(checkpoint: Path, epoch: int, step: int, epochs: int, steps_per_epoch: int,
                  images_per_second: float | None, device: str) -> None:
    target = progress_file(checkpoint)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps({"epoch": epoch, "step": step, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                                   "done": (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch),
                                   "images_per_second": images_per_second, "device": device}))
    os.replace(partial, target)


def load_state(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None when there is none. Partial files of killed writers are removed."""
    for name in (path.name, progress_file(path).name):
        for partial in path.parent.glob(f"{name}.partial-*"):
            partial.unlink(missing_ok=True)  # the caller holds the task's lock: their writer is gone
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_TORCH_FILE as exc:
        reason = "it holds more than tensors and could run code" if could_run_code(exc) else "unreadable"
        raise ArtifactError(f"{path}: training checkpoint refused ({reason}); delete it to start this "
                            f"stage over") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a training checkpoint of this version; delete it to start this "
                            f"stage over")
    return state


def rng_states(device: torch.device) -> dict[str, Any]:
    """The global generators a training step draws from (stochastic depth uses the CPU one)."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def restore_rng_states(states: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)


class StopRequest:
    """Set by Ctrl-C, SIGTERM or SIGHUP while a training loop runs, so the loop stops between two
    steps, after saving its checkpoint, instead of wherever the signal happened to land. ``signum`` is
    the signal that asked first. A second Ctrl-C stops at once; a second SIGTERM or SIGHUP changes
    nothing (what follows a SIGTERM that is not obeyed in time is SIGKILL, which no handler sees)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_interrupt() -> Iterator[StopRequest]:
    """Ctrl-C, SIGTERM and SIGHUP set the request the loop checks between two steps. One that came
    after the loop's last check is delivered again on leaving, to the handlers that were there before.
    After SIGHUP the terminal is gone: output that went to it is dropped from then on."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():  # handlers belong to the main thread
        yield request
        return
    previous: dict[int, Any] = {}

    def handle(signum, frame):
        if request.signum is None:
            request.signum = signum
        if signum == signal.SIGHUP:
            detach_from_terminal()
        if signum == signal.SIGINT:
            signal.signal(signum, previous[signum])  # the next Ctrl-C interrupts at once

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    for signum in (signal.SIGINT, *STOP_SIGNALS):
        if signal.getsignal(signum) is not signal.SIG_IGN:  # a background job's Ctrl-C, nohup's SIGHUP
            previous[signum] = signal.signal(signum, handle)
            if previous[signum] is None:  # installed outside Python: nothing to restore but the default
                previous[signum] = signal.SIG_DFL
    try:
        yield request
    except BaseException:
        restore()
        raise
    restore()
    if request:
        signal.raise_signal(request.signum)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or SIGHUP (``signum``) honoured between two steps, after the checkpoint was saved. Its
    message says where."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = signum
