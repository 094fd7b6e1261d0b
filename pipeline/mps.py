"""``--mps``: the tasks that ``--jobs`` runs on one GPU share it through a private NVIDIA MPS daemon.

Without MPS a GPU runs the kernels of one process at a time and switches between processes, so small
trainings side by side take turns rather than overlap. Under MPS their kernels run together. The
daemon here is this run's own: its pipes live in the run's scratch folder (``CUDA_MPS_PIPE_DIRECTORY``)
and its logs in the artifact folder's ``logs/`` (``CUDA_MPS_LOG_DIRECTORY``), only the tasks started
with that environment connect to it, and it is told to quit when the run ends, however it ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from stages.common.errors import PipelineError

CONTROL = "nvidia-cuda-mps-control"


@contextmanager
def mps_daemon(pipes: Path, logs: Path, gpu: str | None = None) -> Iterator[dict[str, str]]:
    """Start the daemon for ``gpu`` (an index or UUID as CUDA_VISIBLE_DEVICES takes it; None: what this
    process sees) with its pipes in ``pipes`` (keep the path short: a UNIX socket's name has a limit of
    about 100 characters) and its logs in ``logs``; yield the environment a task needs to use it; make
    it quit afterwards.

    The daemon alone is given CUDA_VISIBLE_DEVICES. Its server numbers the GPUs it sees from 0, so a
    client that kept the variable would ask for a device by a number the server does not have; a task
    started with the environment yielded here must not have it (its GPU is the server's device 0)."""
    control = shutil.which(CONTROL)
    if control is None:
        raise PipelineError(f"--mps: {CONTROL} is not on PATH (it comes with the NVIDIA driver's utilities); "
                            f"install them, or drop --mps to let the tasks take turns on the GPU")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(pipes), "CUDA_MPS_LOG_DIRECTORY": str(logs)}
    for folder in (pipes, logs):
        folder.mkdir(parents=True, exist_ok=True)
    daemon_env = {**os.environ, **env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {})}
    started = subprocess.run([control, "-d"], env=daemon_env, capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        said = (started.stderr or started.stdout).strip().splitlines() or [f"exit code {started.returncode}"]
        raise PipelineError(f"--mps: {CONTROL} -d failed ({said[-1]}); its log is in {logs}. Drop --mps to "
                            f"let the tasks take turns on the GPU")
    try:
        yield env
    finally:
        # Clients have exited by now; "quit" stops the daemon and the server it started for them.
        subprocess.run([control], input="quit\n", env=daemon_env, capture_output=True, text=True, timeout=60)


def client_environment(daemon_env: dict[str, str]) -> dict[str, str]:
    """This process's environment for a task that uses the daemon ``mps_daemon`` yielded
    ``daemon_env`` for: its variables added, CUDA_VISIBLE_DEVICES removed (the server numbers its one
    GPU 0)."""
    env = {**os.environ, **daemon_env}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env
