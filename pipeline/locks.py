"""One lock per stage key, so that two runs of the same profile never build the same artifact at once.

A lock is a file created exclusively (``O_EXCL``) that names its holder: process id, host, start
time. A second run waits for it and says who holds it; a lock whose process has died on this host
is stale and taken over. Scratch folders that a dead process left behind are removed the same way.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

POLL_S = 1.0
# A lock file is empty only between its creation and the write of its holder, a moment; one that
# stays empty longer lost its writer in between.
UNNAMED_STALE_S = 10.0


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def holder_text() -> str:
    return f"{os.getpid()} {platform.node()} {time.strftime('%Y-%m-%dT%H:%M:%S')}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _dead_here(pid: str, host: str) -> bool:
    """True when ``pid`` on ``host`` names a process of this host that no longer runs."""
    return pid.isdigit() and host == platform.node() and not process_alive(int(pid))


def _stale(holder: str, path: Path) -> bool:
    """A lock whose process is gone: "<pid> <host> <time>" of a dead process here, or no holder long
    after its creation."""
    pid, host = (holder.split() + ["", ""])[:2]
    return _dead_here(pid, host) or (not holder and _age_s(path) > UNNAMED_STALE_S)


@contextmanager
def key_lock(path: Path, on_wait: Callable[[str], None] = lambda holder: None,
             timeout_s: float | None = None) -> Iterator[None]:
    """Hold the lock file ``path`` for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = path.read_text().strip()
            except OSError:
                continue  # released between our two calls: try again
            if _stale(holder, path):
                path.unlink(missing_ok=True)  # a stale lock: its process is gone
                continue
            if not told:
                on_wait(holder)
                told = True
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{path} is held by process {holder}")
            time.sleep(POLL_S)
            continue
        try:
            with os.fdopen(descriptor, "w") as lock:
                lock.write(holder_text())
        except OSError:
            path.unlink(missing_ok=True)  # a full disk: leave no lock that names nobody
            raise
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


SCRATCH_PREFIX = ".tmp-"


def scratch_name(key: str, token: str) -> str:
    """A scratch folder's name, carrying its writer's process id so a later run can tell it is dead."""
    return f"{SCRATCH_PREFIX}{key}-{os.getpid()}-{platform.node()}-{token}"


def dead_scratch(folder: Path) -> list[Path]:
    """The scratch folders in ``folder`` whose writer died on this host."""
    dead = []
    for scratch in folder.glob(f"{SCRATCH_PREFIX}*"):
        parts = scratch.name.split("-")
        # .tmp-<key>-<pid>-<host...>-<token>; the host may itself hold dashes.
        if len(parts) >= 5 and _dead_here(parts[2], "-".join(parts[3:-1])):
            dead.append(scratch)
    return dead


def remove_dead_scratch(folder: Path) -> list[Path]:
    """Remove the scratch folders in ``folder`` whose writer died on this host; returns them."""
    removed = dead_scratch(folder)
    for scratch in removed:
        shutil.rmtree(scratch, ignore_errors=True)
    return removed


def lock_held(path: Path) -> bool:
    """Whether the lock file ``path`` names a holder that may still run (a live process here, or any
    process on another host); a stale lock is free to take."""
    try:
        holder = path.read_text().strip()
    except OSError:
        return False
    return not _stale(holder, path)
