import json

from pipeline.store import MANIFEST, ArtifactStore


def _commit(store, key="k1", content=b"weights"):
    scratch = store.begin("teacher", key)
    (scratch / "model.pt").write_bytes(content)
    return store.commit(scratch, "teacher", key, {"metrics": {"test_accuracy": 0.5}})


def test_commit_then_lookup(tmp_path):
    store = ArtifactStore(tmp_path)
    _commit(store)
    found = store.lookup("teacher", "k1")
    assert found.metrics == {"test_accuracy": 0.5}
    manifest = json.loads((found.path / MANIFEST).read_text())
    assert manifest["files"]["model.pt"]["bytes"] == 7 and len(manifest["files"]["model.pt"]["sha256"]) == 64
    assert not list((tmp_path / "store" / "teacher").glob(".tmp-*"))


def test_absent_key_is_a_miss(tmp_path):
    assert ArtifactStore(tmp_path).lookup("teacher", "nope") is None


def test_tampered_or_incomplete_entries_are_misses_with_a_warning(tmp_path):
    warnings = []
    store = ArtifactStore(tmp_path, warn=warnings.append)
    entry = _commit(store).path
    (entry / "model.pt").write_bytes(b"weightz")
    assert store.lookup("teacher", "k1") is None
    assert store.lookup("teacher", "k1") is None  # looked up again under its lock before the rebuild
    assert len(warnings) == 1 and "does not match its checksum" in warnings[-1]
    (entry / MANIFEST).unlink()
    assert store.lookup("teacher", "k1") is None
    assert len(warnings) == 2 and "manifest missing" in warnings[-1]


def test_unfinished_work_never_appears_under_its_key(tmp_path):
    store = ArtifactStore(tmp_path)
    scratch = store.begin("teacher", "k2")
    (scratch / "model.pt").write_bytes(b"half")
    assert store.lookup("teacher", "k2") is None
    store.discard(scratch)
    assert not scratch.exists()


def test_forced_rerun_replaces_the_entry(tmp_path):
    store = ArtifactStore(tmp_path)
    _commit(store, content=b"old")
    _commit(store, content=b"newer")
    found = store.lookup("teacher", "k1")
    assert (found.path / "model.pt").read_bytes() == b"newer"
    assert [p.name for p in (tmp_path / "store" / "teacher").iterdir()] == ["k1"]
