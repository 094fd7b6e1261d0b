"""bundle and unbundle: what a profile has produced, moved to another artifacts folder whole, or
refused in one line with nothing added."""

import io
import json
import tarfile
from pathlib import Path

import pytest

from pipeline.bundle import INDEX, pack, unpack
from stages.common.errors import ArtifactError
from pipeline.plan import build_plan
from pipeline.profiles import load_profile
from pipeline.store import ArtifactStore
from tests.commands import cli, TINY



@pytest.fixture
def produced(tmp_path):
    """A store where the tiny profile's teacher has finished and its student is half trained."""
    store = ArtifactStore(tmp_path / "here")
    plan = build_plan(load_profile(TINY))
    teacher = next(t for t in plan if t.stage == "teacher")
    scratch = store.begin("teacher", teacher.key)
    (scratch / "model.pt").write_bytes(b"weights" * 100)
    (scratch / "history.json").write_text("[]")
    store.commit(scratch, "teacher", teacher.key, {"stage": "teacher", "version": 1, "metrics": {}})
    student = next(t for t in plan if t.stage == "distill")
    resume = store.resume_folder("distill", student.key)
    resume.mkdir(parents=True)
    (resume / "training.pt").write_bytes(b"checkpoint")
    return store, plan, teacher, student


def test_a_bundle_moves_finished_work_and_checkpoints_to_another_store(produced, tmp_path):
    store, plan, teacher, student = produced
    index = pack(store, [t for t in plan if t.stage in ("teacher", "distill")], tmp_path / "b.tar", "tiny")
    assert [e["kind"] for e in index["entries"]] == ["artifact", "resume"]
    assert f"distill:{student.variant}" not in index["not_bundled"] and index["not_bundled"]
    there = ArtifactStore(tmp_path / "there")
    outcome = unpack(tmp_path / "b.tar", there)
    assert outcome["added"] == [teacher.id, f"{student.id} (training checkpoint)"]
    assert there.lookup("teacher", teacher.key).metrics == {}
    assert (there.resume_folder("distill", student.key) / "training.pt").read_bytes() == b"checkpoint"
    assert unpack(tmp_path / "b.tar", there)["present"] == [teacher.id, student.id]  # a second time adds nothing
    assert sorted(p.name for p in (there.root / "store").iterdir()) == ["distill", "teacher"]  # no scratch left


def rewrite(source: Path, target: Path, *, index=None, data=None, extra=None):
    """A copy of a bundle with its index edited, one member's bytes replaced, or a member added."""
    with tarfile.open(source) as old, tarfile.open(target, "w") as new:
        for member in old:
            payload = old.extractfile(member).read()
            if member.name == INDEX and index:
                payload = json.dumps(index(json.loads(payload))).encode()
            elif data and member.name.endswith(data[0]):
                payload = data[1]
            member.size = len(payload)
            new.addfile(member, io.BytesIO(payload))
        for name, payload in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            new.addfile(info, io.BytesIO(payload))


def nothing_added(store: ArtifactStore) -> bool:
    folder = store.root / "store"
    return not folder.exists() or not any(p.name != "shared" for p in folder.iterdir())


@pytest.mark.parametrize("damage, message", [
    ("truncated", "cannot be read"),
    ("not a tar", r"cannot be read \(file could not be opened successfully\); cut short, or not a tar file;"),
    ("tampered", "does not match its checksum"),
    ("outside", "a path leading outside the artifact store"),
    ("newer", "come from a newer stochkd-pipeline"),
    ("unlisted", "is not listed in bundle.json"),
])
def test_a_bad_bundle_is_refused_with_nothing_added(produced, tmp_path, damage, message):
    store, plan, *_ = produced
    good, bad = tmp_path / "good.tar", tmp_path / "bad.tar"
    pack(store, plan, good, "tiny")
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[:1500])  # cut inside the first artifact file
    elif damage == "not a tar":
        bad.write_text("a text file under a .tar name")
    elif damage == "tampered":
        rewrite(good, bad, data=("model.pt", b"weightz" * 100))
    elif damage == "outside":
        rewrite(good, bad, extra={"store/../../evil.sh": b"rm -rf ~"})
    elif damage == "newer":
        rewrite(good, bad, index=lambda index: {**index, "stage_versions": {**index["stage_versions"], "teacher": 99}})
    else:
        rewrite(good, bad, extra={"store/teacher/extra/file": b"x"})
    there = ArtifactStore(tmp_path / "there")
    with pytest.raises(ArtifactError, match=message) as refused:
        unpack(bad, there)
    assert str(refused.value).endswith("nothing was added") and "\n" not in str(refused.value)
    assert nothing_added(there) and not (tmp_path / "evil.sh").exists()


def test_bundle_and_unbundle_from_the_command_line(produced, tmp_path):
    store, *_ = produced

    done = cli("bundle", str(TINY), "--until", "distill", "-o", str(tmp_path / "b.tar"), "--artifacts",
               str(store.root))
    assert done.returncode == 0, done.stderr
    assert "1 finished tasks, 1 training checkpoints" in done.stdout and "not produced yet" in done.stdout
    done = cli("unbundle", str(tmp_path / "b.tar"), "--artifacts", str(tmp_path / "there"))
    assert done.returncode == 0 and "added 2 entries" in done.stdout
    done = cli("unbundle", str(tmp_path / "missing.tar"), "--artifacts", str(tmp_path / "there"))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "no such bundle" in done.stderr


def test_bundling_a_folder_where_the_profile_produced_nothing_is_refused_and_writes_no_file(tmp_path):
    empty = tmp_path / "elsewhere"
    done = cli("bundle", str(TINY), "-o", str(tmp_path / "b.tar"), "--artifacts", str(empty))
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0, done.stderr
    assert (f"{empty}: profile 'tiny' has produced nothing there yet (no finished task, no training checkpoint), "
            f"so no bundle was written") in done.stderr
    assert not (tmp_path / "b.tar").exists() and not list(tmp_path.glob(".b.tar.*"))


@pytest.mark.parametrize("place", ["folder", "under a file", "disk full"])
def test_a_bundle_that_cannot_be_written_there_is_one_line_and_leaves_nothing(produced, tmp_path, place,
                                                                               monkeypatch):
    store, plan, *_ = produced
    (tmp_path / "out").mkdir()
    (tmp_path / "notes.txt").write_text("a file")
    output = {"folder": tmp_path / "out", "under a file": tmp_path / "notes.txt" / "b.tar",
              "disk full": tmp_path / "out" / "b.tar"}[place]
    if place == "disk full":
        real_add = tarfile.TarFile.add

        def add_then_fill_the_disk(self, *args, **kwargs):
            real_add(self, *args, **kwargs)
            raise OSError(28, "No space left on device", str(tmp_path / "out" / ".partial"))

        monkeypatch.setattr(tarfile.TarFile, "add", add_then_fill_the_disk)
    with pytest.raises(ArtifactError) as refused:
        pack(store, plan, output, "tiny")
    assert str(refused.value) == {
        "folder": f"-o {output}: a folder; name the bundle's file, e.g. -o {output / 'run.tar'}",
        "under a file": f"-o {output}: {tmp_path / 'notes.txt'} is a file, not a folder; pass -o elsewhere",
        "disk full": f"-o {output}: cannot write the bundle (No space left on device); free space there, or pass "
                     f"-o elsewhere"}[place]
    assert list((tmp_path / "out").iterdir()) == [] and (tmp_path / "notes.txt").read_text() == "a file"
