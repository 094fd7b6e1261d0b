"""A closed terminal (an SSH session that drops) in the middle of training: the command gets SIGHUP,
stops between two steps with its progress saved, exits 129, leaves nothing running, and the rerun
ends with the weights of an uninterrupted run. The command runs in a pseudo-terminal of its own,
which the test closes, as sshd does."""

import fcntl
import os
import subprocess
import termios
import time
from pathlib import Path

import pytest

from tests.commands import INTERRUPTED, pipeline_command, TINY
from tests.processes import processes_naming

pytestmark = pytest.mark.slow


def teacher_command(artifacts: Path, *extra: str) -> list[str]:
    return pipeline_command("teacher", TINY, *INTERRUPTED, *extra, artifacts=artifacts)


def finished_teacher(artifacts: Path, *extra: str) -> Path:
    done = subprocess.run(teacher_command(artifacts, *extra), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    [folder] = (artifacts / "store" / "teacher").iterdir()
    return folder


def hung_up_in_training(artifacts: Path, *extra: str) -> int:
    """Runs the teacher in a terminal of its own, closes the terminal once a training checkpoint
    exists, and returns the command's exit code."""
    controller, terminal = os.openpty()

    def take_the_terminal() -> None:  # in the child, after setsid: the pty becomes its controlling terminal
        fcntl.ioctl(terminal, termios.TIOCSCTTY, 0)

    process = subprocess.Popen(teacher_command(artifacts, "--checkpoint-every", "0.2", *extra), stdin=terminal,
                               stdout=terminal, stderr=terminal, start_new_session=True,
                               preexec_fn=take_the_terminal, env={**os.environ, "TERM": "xterm", "COLUMNS": "120"})
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + 120
    while not list((artifacts / "store" / "teacher").glob(".resume-*/training.pt")):
        assert time.monotonic() < deadline and process.poll() is None, shown.decode(errors="replace")
        shown += _read_available(controller)
        time.sleep(0.05)
    os.close(controller)  # the hangup
    return process.wait(timeout=120)


def _read_available(fd: int) -> bytes:
    import select

    if select.select([fd], [], [], 0)[0]:
        try:
            return os.read(fd, 65536)
        except OSError:
            return b""
    return b""


# A task of --jobs is not run here: the scheduler passes a stop on to its tasks
# (tests/pipeline/test_scheduler.py), whose training saves and resumes as one process's does, and
# tests/test_gpu_window.py stops a real --jobs run and continues it from its checkpoint.
@pytest.mark.parametrize("extra", [(), ("--nproc-per-node", "2")], ids=["one process", "torchrun, two processes"])
def test_a_closed_terminal_stops_training_with_its_progress_saved(tmp_path, uninterrupted_teacher, extra):
    reference = uninterrupted_teacher(*extra)
    artifacts = tmp_path / "hung-up"
    assert hung_up_in_training(artifacts, *extra) == 129
    assert processes_naming(str(artifacts)) == []
    assert [p.name[:8] for p in (artifacts / "store" / "teacher").iterdir()] == [".resume-"]  # stopped, saved
    resumed = finished_teacher(artifacts, *extra)
    assert (resumed / "model.pt").read_bytes() == (reference / "model.pt").read_bytes()
