"""SIGTERM and SIGHUP end a command as Ctrl-C does, and a closed terminal stops taking output."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stages.common import errors
from stages.common.errors import Terminated, exit_code_of, stop_signals_raise


@pytest.fixture
def detached(monkeypatch) -> list[int]:
    """Records detach_from_terminal's calls instead of pointing this test process's output at /dev/null."""
    calls: list[int] = []
    monkeypatch.setattr(errors, "detach_from_terminal", lambda: calls.append(1))
    return calls


@pytest.mark.parametrize("signum, code, message, detaches", [
    (signal.SIGTERM, 143, "terminated (SIGTERM)", False),
    (signal.SIGHUP, 129, "hung up (SIGHUP)", True),
])
def test_a_stop_signal_raises_terminated_with_its_own_exit_code(signum, code, message, detaches, detached):
    before = signal.getsignal(signum)
    with pytest.raises(Terminated, match=message.replace("(", r"\(").replace(")", r"\)")) as stopped:
        with stop_signals_raise():
            os.kill(os.getpid(), signum)
    assert stopped.value.signum == signum and exit_code_of(stopped.value) == code
    assert detached == ([1] if detaches else [])
    assert signal.getsignal(signum) is before


def test_a_signal_ignored_before_stays_ignored(detached):
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup leaves it
    try:
        with stop_signals_raise():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN and detached == []
    finally:
        signal.signal(signal.SIGHUP, previous)


DETACH = """
import os, sys
from stages.common.errors import detach_from_terminal
controller, terminal = os.openpty()
os.dup2(terminal, 1)                     # output on a terminal
log = open(sys.argv[1], "w")
os.dup2(log.fileno(), 2)                 # errors in a file
detach_from_terminal()
null = os.stat(os.devnull).st_rdev
print(os.fstat(1).st_rdev == null, os.fstat(2).st_rdev == null, file=sys.stderr, flush=True)
print("to the terminal that is gone", flush=True)  # no error
"""


def test_detaching_points_a_terminal_at_dev_null_and_leaves_a_file(tmp_path):
    log = tmp_path / "errors.txt"
    done = subprocess.run([sys.executable, "-c", DETACH, str(log)], capture_output=True, text=True,
                          cwd=Path(__file__).parents[3])
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["True", "False"]
