"""The command line as tests run it: the test profile, and the pipeline started as a user starts it."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).resolve().parent / "profiles" / "tiny.yaml"


def wide() -> dict[str, str]:
    """This process's environment as it is now (a test may have changed it), with a wide terminal, so
    that rich does not wrap the lines the tests read."""
    return {**os.environ, "COLUMNS": "200"}


def _session_probe(device: str) -> str:
    import torch

    return _measured_probe("cuda" if device == "auto" and torch.cuda.is_available() else "cpu")


@functools.cache
def _measured_probe(device: str) -> str:
    from dataclasses import asdict

    from pipeline.estimate import measure_probe

    return json.dumps(asdict(measure_probe(device)))


def with_this_machines_probe(artifacts: Path) -> None:
    """Give an artifacts folder the throughput probe that a run measures once per folder before its
    estimate, measured once for the whole test session: each fresh folder would otherwise spend
    seconds measuring it again. Tests of the probe itself name their folder with ``--artifacts``
    among the arguments, so their folder measures its own. Best effort: a folder a test has made
    unwritable, or a file in its place, stays as the test made it."""
    from pipeline.estimate import probe_file

    for device in ("auto", "cpu"):
        path = probe_file(artifacts, device)
        if path.exists():
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_session_probe(device))
        except OSError:
            return


def pipeline_command(*args, artifacts: Path | None = None) -> list[str]:
    """``python -m pipeline ARGS [--artifacts ARTIFACTS]``, ARTIFACTS holding this machine's probe."""
    if artifacts is not None:
        with_this_machines_probe(Path(artifacts))
    return [sys.executable, "-m", "pipeline", *map(str, args), *(["--artifacts", str(artifacts)] if artifacts else [])]


def cli(*args, artifacts: Path | None = None) -> subprocess.CompletedProcess:
    """The pipeline's command line run to its end, its output captured."""
    return subprocess.run(pipeline_command(*args, artifacts=artifacts), capture_output=True, text=True, env=wide())


# Long enough that a signal sent once epoch 2 is done arrives mid-training, with epochs to spare.
INTERRUPTED_EPOCHS = 10
INTERRUPTED = ("--set", f"teacher.training.epochs={INTERRUPTED_EPOCHS}")


def started_teacher(artifacts: Path, *extra: str) -> subprocess.Popen:
    """A teacher run of INTERRUPTED_EPOCHS epochs (EXTRA added), started as a terminal's foreground
    job and returned once its second epoch is done."""
    import signal

    process = subprocess.Popen(
        pipeline_command("teacher", TINY, *INTERRUPTED, *extra, artifacts=artifacts), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A shell starts background jobs with SIGINT ignored, and Python keeps it so: restore it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in process.stdout:
        if f"epoch 2/{INTERRUPTED_EPOCHS}" in line:
            return process
    raise AssertionError(process.communicate()[1])
