"""Processes in tests: which of a stopped command's processes still run, two ranks of a process group,
and SIGINT ignored as a background job has it."""

import contextlib
from pathlib import Path


def processes_naming(text: str, with_pid: bool = False) -> list[str]:
    """Command lines of this machine's processes that contain ``text``; ``with_pid``: each as "PID
    COMMAND LINE ENVIRONMENT"."""
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            line = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if with_pid:
                line = f"{folder.name} {line} {(folder / 'environ').read_bytes().replace(bytes(1), b' ').decode()}"
        except OSError:  # the process ended meanwhile
            continue
        if text in line:
            found.append(line)
    return found


@contextlib.contextmanager
def sigint_ignored():
    """As in a job that a shell script starts with ``&``: SIGINT ignored, which processes started
    meanwhile inherit (a Ray cluster's nodes and their workers: SIGINT is how Ray cancels a task)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def on_two_gloo_ranks(function, *args) -> None:
    """``function(rank, *args)`` in two processes of one gloo process group, seen as torchrun's ranks
    (RANK, WORLD_SIZE and LOCAL_RANK set). ``function`` must be importable: a module-level function."""
    import torch.multiprocessing as mp

    mp.spawn(_gloo_rank, args=(free_port(), function, args), nprocs=2)


def _gloo_rank(rank: int, port: int, function, args) -> None:
    import os
    import sys

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    dist.init_process_group("gloo", rank=rank, world_size=2)
    function(rank, *args)
    dist.barrier()
    # Ended here, past Python's and C++'s teardown: now and then a spawned gloo process aborted in
    # it ("terminate called without an active exception", SIGABRT) after its work was done and
    # written, with or without destroy_process_group, and that would fail the test.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
