"""prune: what a store holds that the given profiles do not use is listed, and removed only when asked;
what they use, what they name by path, what a running process holds and the shared folder stay."""

import os
import platform
import subprocess
import sys

import pytest

from pipeline.locks import scratch_name
from pipeline.plan import build_plan
from pipeline.profiles import load_profile
from pipeline.prune import remove, size_text, survey
from pipeline.store import ArtifactStore
from tests.commands import TINY, wide
from tests.pipeline.test_locks import dead_pid

OLD_KEY, GIVEN_UP_KEY, HELD_KEY, IMPORTED_KEY = "a" * 24, "b" * 24, "c" * 24, "d" * 24


def finished(store, stage, key, variant, payload=b"weights"):
    scratch = store.begin(stage, key)
    (scratch / "model.pt").write_bytes(payload)
    return store.commit(scratch, stage, key, {"stage": stage, "variant": variant, "version": 1}).path


@pytest.fixture
def crowded(tmp_path):
    """The tiny profile's teacher finished and its first student half trained, beside what it does not
    use: an old setting's artifact, a checkpoint given up, a scratch folder of a killed run, an entry a
    rerun replaced, an artifact that a running process holds, and another teacher's artifact."""
    store = ArtifactStore(tmp_path / "artifacts")
    plan = build_plan(load_profile(TINY))
    teacher = next(t for t in plan if t.stage == "teacher")
    student = next(t for t in plan if t.stage == "distill")
    finished(store, "teacher", teacher.key, teacher.variant)
    store.resume_folder("distill", student.key).mkdir(parents=True)
    (store.resume_folder("distill", student.key) / "training.pt").write_bytes(b"x" * 3000)
    finished(store, "distill", OLD_KEY, "kd", b"y" * 5000)
    store.resume_folder("distill", GIVEN_UP_KEY).mkdir()
    (store.resume_folder("distill", GIVEN_UP_KEY) / "training.pt").write_bytes(b"z")
    (store.resume_folder("distill", GIVEN_UP_KEY) / "training.json").write_text('{"done": 0.37}')
    live_scratch = store.begin("distill", OLD_KEY)  # this process writes it: not an entry yet
    (store.root / "store" / "distill" / f".tmp-{OLD_KEY}-{dead_pid()}-{platform.node()}-0badc0de").mkdir()
    (store.root / "store" / "export" / f".old-{OLD_KEY}-12345678").mkdir(parents=True)
    finished(store, "export", HELD_KEY, "kd")
    store.lock_file("export", HELD_KEY).write_text(f"{os.getpid()} {platform.node()} 2026-01-01T00:00:00")
    imported = finished(store, "teacher", IMPORTED_KEY, "teacher")
    probe = store.shared_folder("estimate") / "probe-cpu.json"
    probe.parent.mkdir(parents=True)
    probe.write_text("{}")
    return store, teacher, student, live_scratch, imported, probe


def named(entries):
    return sorted((e.stage, e.key, e.kind) for e in entries)


def test_the_survey_sorts_what_the_profile_uses_from_what_it_does_not(crowded):
    store, teacher, student, live_scratch, imported, probe = crowded
    found = survey(store, [load_profile(TINY)])
    assert named(found.kept) == [("distill", student.key, "checkpoint"), ("teacher", teacher.key, "artifact")]
    assert named(found.unused) == sorted([
        ("distill", OLD_KEY, "artifact"), ("distill", GIVEN_UP_KEY, "checkpoint"), ("distill", OLD_KEY, "scratch"),
        ("export", OLD_KEY, "retired"), ("teacher", IMPORTED_KEY, "artifact")])
    assert named(found.held) == [("export", HELD_KEY, "artifact")]
    old = next(e for e in found.unused if e.key == OLD_KEY and e.kind == "artifact")
    assert old.task == "distill:kd" and old.size > 5000  # the weights and the manifest


def test_a_profile_keeps_the_store_folder_it_imports_its_teacher_from(crowded):
    store, *_, imported, _ = crowded
    importing = load_profile(TINY, [f"teacher.checkpoint={imported}"])
    assert ("teacher", IMPORTED_KEY) in {(e.stage, e.key) for e in survey(store, [importing]).kept}
    by_file = load_profile(TINY, [f"teacher.checkpoint={imported / 'model.pt'}"])
    assert ("teacher", IMPORTED_KEY) in {(e.stage, e.key) for e in survey(store, [by_file]).kept}


def test_removing_leaves_what_is_used_held_or_written_now(crowded):
    store, teacher, student, live_scratch, imported, probe = crowded
    found = survey(store, [load_profile(TINY)])
    removed, left = remove(store, found.unused + found.held)  # the held one as if a run took it meanwhile
    assert named(removed) == named(found.unused) and named(left) == named(found.held)
    assert all(not e.path.exists() for e in removed)
    assert store.lookup("teacher", teacher.key) is not None
    assert (store.resume_folder("distill", student.key) / "training.pt").is_file()
    assert live_scratch.is_dir() and probe.is_file() and store.lock_file("export", HELD_KEY).is_file()
    assert not list(store.root.glob("store/*/.old-*"))  # nothing half deleted left behind
    again = survey(store, [load_profile(TINY)])
    assert not again.unused and named(again.held) == named(found.held)


def prune(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", "prune", *map(str, args)], capture_output=True,
                          text=True, env=wide())


def test_prune_lists_first_and_deletes_only_when_told(crowded):
    store, teacher, *_ = crowded
    listed = prune(TINY, "--artifacts", store.root)
    assert listed.returncode == 0, listed.stderr
    for shown in ("distill:kd", "training checkpoint, 37% done", "left by a killed run", "replaced by a rerun"):
        assert shown in listed.stdout, listed.stdout
    assert "5 entries" in listed.stdout and "Rerun with --delete" in listed.stdout
    assert "a running process holds it" in listed.stderr + listed.stdout
    assert (store.root / "store" / "distill" / OLD_KEY).is_dir()  # listed, not removed
    deleted = prune(TINY, "--artifacts", store.root, "--delete")
    assert deleted.returncode == 0 and "removed 5 entries" in deleted.stdout, deleted.stdout + deleted.stderr
    assert not (store.root / "store" / "distill" / OLD_KEY).exists()
    assert store.lookup("teacher", teacher.key) is not None
    assert "nothing to remove" in prune(TINY, "--artifacts", store.root).stdout


def test_prune_of_a_folder_without_a_store_is_one_line(tmp_path):
    done = prune(TINY, "--artifacts", tmp_path / "elsewhere")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "holds no artifact store" in done.stderr and "--artifacts" in done.stderr


def test_sizes_read_in_the_largest_unit_that_fits():
    assert [size_text(n) for n in (512, 1536, 5 << 20, 3 << 30)] == ["512 B", "1.5 KiB", "5.0 MiB", "3.0 GiB"]
