"""A rank that crashes under torchrun says so in one line and keeps its traceback in a log."""

import pytest

from stages.common.distributed import crash_logged
from stages.common.errors import PipelineError


@pytest.fixture
def rank_1(monkeypatch):
    for name, value in {"LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)


def test_a_crash_is_one_line_and_exit_1_with_the_traceback_in_the_log(tmp_path, rank_1, capsys):
    with pytest.raises(SystemExit) as ended, crash_logged(tmp_path / "logs"):
        raise RuntimeError("[pair.cc:545] Read error: Connection reset by peer.\nmore detail")
    assert ended.value.code == 1
    log = tmp_path / "logs" / "rank-1.log"
    assert capsys.readouterr().err.splitlines() == [
        f"error (rank 1): RuntimeError: [pair.cc:545] Read error: Connection reset by peer. (its traceback is in {log})"]
    text = log.read_text()
    assert text.startswith("Traceback") and "more detail" in text


@pytest.mark.parametrize("exc", [PipelineError("bad input"), KeyboardInterrupt()])
def test_bad_input_and_stops_are_left_to_their_own_handling(tmp_path, rank_1, exc):
    with pytest.raises(type(exc)), crash_logged(tmp_path / "logs"):
        raise exc
    assert not (tmp_path / "logs").exists()


def test_outside_torchrun_a_crash_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(RuntimeError), crash_logged(tmp_path / "logs"):
        raise RuntimeError("a bug")
    assert not (tmp_path / "logs").exists()


def test_a_ranks_error_line_is_one_write_where_another_rank_cannot_cut_it(monkeypatch):
    """Ranks share stderr, unbuffered under torchrun's children: print writes a line's text and its
    newline apart, and a full run once printed one rank's line run into the other's."""
    import io
    import sys

    from stages.common.distributed import error_line

    class Recording(io.RawIOBase):
        def __init__(self):
            self.writes = []

        def writable(self):
            return True

        def write(self, data):
            self.writes.append(bytes(data))
            return len(data)

    raw = Recording()
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(raw, write_through=True))
    print("error (rank 1): x", file=sys.stderr)
    assert raw.writes == [b"error (rank 1): x", b"\n"]  # the race the line must not have
    raw.writes.clear()
    error_line("error (rank 1): x")
    assert raw.writes == [b"error (rank 1): x\n"]
