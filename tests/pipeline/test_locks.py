import os
import platform
import subprocess
import sys

import pytest

from pipeline.locks import key_lock, remove_dead_scratch, scratch_name


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_lock_makes_the_second_taker_wait_and_names_the_holder(tmp_path):
    lock = tmp_path / ".lock-abc"
    seen = []
    with key_lock(lock):
        with pytest.raises(TimeoutError, match=str(os.getpid())):
            with key_lock(lock, on_wait=seen.append, timeout_s=0.2):
                pass
    assert seen and seen[0].startswith(f"{os.getpid()} {platform.node()}")
    assert not lock.exists()  # released on leaving the block


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    lock = tmp_path / ".lock-abc"
    lock.write_text(f"{dead_pid()} {platform.node()} 2026-01-01T00:00:00")
    with key_lock(lock, timeout_s=0.2):
        assert lock.read_text().startswith(str(os.getpid()))


def test_a_lock_held_on_another_host_is_never_taken_over(tmp_path):
    lock = tmp_path / ".lock-abc"
    lock.write_text(f"{dead_pid()} some-other-host 2026-01-01T00:00:00")
    with pytest.raises(TimeoutError):
        with key_lock(lock, timeout_s=0.2):
            pass


def test_scratch_of_dead_writers_is_removed_and_live_ones_kept(tmp_path):
    mine = tmp_path / scratch_name("k1", "aaaa")
    theirs = tmp_path / f".tmp-k2-{dead_pid()}-{platform.node()}-bbbb"
    legacy = tmp_path / ".tmp-k3-cccc"
    for folder in (mine, theirs, legacy):
        folder.mkdir()
    assert remove_dead_scratch(tmp_path) == [theirs]
    assert mine.is_dir() and legacy.is_dir() and not theirs.exists()


def test_a_lock_that_names_nobody_is_stale_only_after_a_while(tmp_path):
    lock = tmp_path / ".lock-abc"
    lock.write_text("")  # its writer died, or the disk was full, between creating it and naming itself
    with pytest.raises(TimeoutError):
        with key_lock(lock, timeout_s=0.2):  # a fresh empty lock: its writer may be naming itself now
            pass
    old = lock.stat().st_mtime - 60
    os.utime(lock, (old, old))
    with key_lock(lock, timeout_s=0.2):
        assert lock.read_text().startswith(str(os.getpid()))
