"""The command line as tests run it: the test profile, and the pipeline started as a user starts it."""

import os
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).resolve().parent / "profiles" / "tiny.yaml"


def wide() -> dict[str, str]:
    """This process's environment as it is now (a test may have changed it), with a wide terminal, so
    that rich does not wrap the lines the tests read."""
    return {**os.environ, "COLUMNS": "200"}


def pipeline_command(*args, artifacts: Path | None = None) -> list[str]:
    """``python -m pipeline ARGS [--artifacts ARTIFACTS]``."""
    return [sys.executable, "-m", "pipeline", *map(str, args), *(["--artifacts", str(artifacts)] if artifacts else [])]


def cli(*args, artifacts: Path | None = None) -> subprocess.CompletedProcess:
    """The pipeline's command line run to its end, its output captured."""
    return subprocess.run(pipeline_command(*args, artifacts=artifacts), capture_output=True, text=True, env=wide())
