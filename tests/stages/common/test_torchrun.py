"""The exit code the command ends with when torchrun's ranks fail: the rank that failed first in
kind, not those that failed in its wake."""

import pytest
from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

from stages.common.torchrun import failed_ranks_code


def failures(*exitcodes: int) -> dict:
    return {rank: ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=code, error_file="")
            for rank, code in enumerate(exitcodes)}


@pytest.mark.parametrize("exitcodes, code", [
    ((1, -9), 137),    # rank 1 killed outright; rank 0's collective then lost its peer and crashed
    ((-15, -9), 137),  # ... or torchrun stopped rank 0 first
    ((2, -15), 2),     # rank 0's own verdict; torchrun stopped rank 1
    ((143, 2), 2),     # rank 1's verdict; rank 0 stopped by torchrun, between two steps
    ((1, -15), 1),     # a crash
    ((143, 143), 143),
    ((129, 129), 129), # a closed terminal: SIGHUP passed on to the ranks, which stopped between two steps
    ((129, -1), 129),  # ... or rank 1 was still starting, with Python's default for SIGHUP
])
def test_the_code_comes_from_the_rank_that_failed_first_in_kind(exitcodes, code, capsys):
    assert failed_ranks_code(failures(*exitcodes)) == code
    killed = [line for line in capsys.readouterr().err.splitlines() if "was killed" in line]
    assert killed == (["error: rank 1 was killed by SIGKILL; rerun the same command to resume from the last "
                       "training checkpoint"] if -9 in exitcodes else [])


def test_the_launcher_passes_a_signal_on_at_once_and_then_waits_for_torchrun(monkeypatch):
    """Popen.wait() would give torchrun 0.25 s to end on a KeyboardInterrupt (Terminated is one)
    before the launcher could tell it anything: the launcher polls instead."""
    import signal
    import subprocess

    from stages.common import distributed
    from stages.common.errors import Terminated

    events = []

    class Torchrun:  # a stand-in for the Popen of torchrun: the signal lands during the first poll
        def __init__(self, command, start_new_session):
            assert start_new_session and command[1:3] == ["-m", "stages.common.torchrun"]
            self.polls = 0

        def poll(self):
            self.polls += 1
            if self.polls == 1:
                raise Terminated("terminated (SIGTERM)")
            return 143 if events else None

        def send_signal(self, signum):
            events.append(signum)

        def wait(self, timeout=None):
            raise AssertionError("Popen.wait() delays the signal by its 0.25 s grace")

    monkeypatch.setattr(subprocess, "Popen", Torchrun)
    with pytest.raises(Terminated):
        distributed.relaunch(["teacher"], 2, "1", 0, "127.0.0.1", 29500)
    assert events == [signal.SIGTERM]
