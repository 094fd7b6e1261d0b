"""Every kind of bad input through the real command line: one line naming what and where and what
to do, exit code 2, and every artifact cached before it still cached after it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.store import MANIFEST, ArtifactStore
from stages.common.checksums import sha256_file
from tests.commands import cli, TINY, with_this_machines_probe

pytestmark = pytest.mark.slow


def finished(artifacts: Path) -> set[str]:
    """Every finished artifact that passes its checksums. A case that forces a stage may replace
    an artifact by a new one under the same key; none may disappear or be left damaged."""
    store = ArtifactStore(artifacts)
    return {f"{m.parent.parent.name}/{m.parent.name}" for m in (artifacts / "store").glob("*/*/" + MANIFEST)
            if store.lookup(m.parent.parent.name, m.parent.name) is not None}


@pytest.fixture(scope="module")
def cached(tiny_pipeline):
    """The tiny profile built up to its engines, once for the whole module (conftest.tiny_pipeline)."""
    return tiny_pipeline[2]


@pytest.fixture
def artifacts(cached, tmp_path):
    """A private copy of the cached artifacts, for cases that tamper with them."""
    copy = tmp_path / "artifacts"
    shutil.copytree(cached, copy)
    return copy


def artifact_folder(artifacts: Path, stage: str, variant: str) -> Path:
    for manifest in (artifacts / "store" / stage).glob("*/" + MANIFEST):
        if json.loads(manifest.read_text())["variant"] == variant:
            return manifest.parent
    raise AssertionError(f"no {stage}:{variant}")


def resign(folder: Path) -> None:
    """Rewrite an artifact's checksums after editing it: an artifact altered by someone who also
    fixed its manifest, which only the stages' own checks can catch."""
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"] = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                         for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def npz(path: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (40, 8, 8, 1), dtype=np.uint8), "y_train": np.arange(40) % 4,
              "x_test": rng.integers(0, 255, (8, 8, 8, 1), dtype=np.uint8), "y_test": np.arange(8) % 4,
              "class_names": np.array(["a", "b", "c", "d"])}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def assert_one_line_exit_2(done, *fragments):
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# (case, command-line arguments after the profile, what the one line must say)
PROFILE_CASES = [
    ("unknown key", ["--set", "teacher.p_lst=0.5"],
     ["unknown key 'teacher.p_lst' (did you mean 'p_last'?)"]),
    ("wrong type", ["--set", "teacher.training.epochs=many"],
     ["teacher.training.epochs = 'many': Input should be a valid integer"]),
    ("p_n above 1", ["--set", "teacher.p_last=1.5"], ["teacher.p_last = 1.5: Input should be less than or equal to 1"]),
    ("p_n of 0", ["--set", "distill.p_last=0"], ["distill.p_last = 0: Input should be greater than 0"]),
    ("unknown network", ["--set", "student.arch=resnet999"], ["unknown network 'resnet999'; allowed: resnet8"]),
    ("unknown method", ["--set", "methods=[kd, xyz]"], ["methods.1 = 'xyz': Input should be 'kd' or 'dml'"]),
    ("missing dataset", ["--set", "data.dataset=cifar100", "--set", "data.root=/nowhere/c.npz"],
     ["data.root=/nowhere/c.npz: no such file (/nowhere/c.npz); point data.root at the .npz"]),
    ("profile name leading out of the artifacts folder", ["--set", "name=../../etc"],
     ["name = '../../etc': must be a plain folder name"]),
    ("TensorRT tuning batch outside the engine's batches",
     ["--set", "target.backend=tensorrt", "--set", "target.tensorrt.optimization_batch=500"],
     ["target.tensorrt.optimization_batch = 500 lies outside benchmark.batch_sizes [1, 8]"]),
]


@pytest.mark.parametrize("case, args, fragments", PROFILE_CASES, ids=[c[0] for c in PROFILE_CASES])
def test_bad_profile_values(cached, case, args, fragments):
    before = finished(cached)
    done = cli("run", str(TINY), *args, artifacts=cached)
    assert_one_line_exit_2(done, *fragments)
    assert finished(cached) == before


def test_yaml_syntax_error_names_line_and_column(cached, tmp_path):
    profile = tmp_path / "broken.yaml"
    profile.write_text("extends: " + str(TINY) + "\nteacher: {arch: resnet8\n")
    before = finished(cached)
    assert_one_line_exit_2(cli("run", str(profile), artifacts=cached),
                           f"{profile}: YAML syntax error at line 3, column 1")
    assert finished(cached) == before


NPZ_CASES = [
    ("lacks an array", {"y_test": None}, "lacks array(s) y_test"),
    ("labels outside the classes", {"y_train": np.arange(40) % 7},
     "y_train has labels in [0, 6] but class_names lists 4 classes"),
    ("images of the wrong shape", {"x_test": np.zeros((8, 6, 6, 1), np.uint8)}, "x_train images are"),
]


@pytest.mark.parametrize("case, overrides, fragment", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_malformed_npz(cached, tmp_path, case, overrides, fragment):
    path = npz(tmp_path / "bad.npz", **overrides)
    before = finished(cached)
    done = cli("run", str(TINY), "--set", "data.dataset=npz", "--set", f"data.root={path}", artifacts=cached)
    assert_one_line_exit_2(done, str(path), fragment)
    assert finished(cached) == before
    assert not list((cached / "store").glob("*/.tmp-*"))


def test_teacher_and_student_with_different_class_counts(artifacts):
    teacher = artifact_folder(artifacts, "teacher", "teacher")
    spec = json.loads((teacher / "model.json").read_text())
    (teacher / "model.json").write_text(json.dumps({**spec, "num_classes": 100}))
    resign(teacher)
    before = finished(artifacts)
    done = cli("distill", str(TINY), "--force", artifacts=artifacts)
    assert_one_line_exit_2(done, f"{teacher}: the teacher predicts 100 classes, but the student's data (digits) "
                                 f"has 10", "train it on the same data")
    assert finished(artifacts) == before


@pytest.mark.parametrize("damage, fragment", [
    ("missing", "model.onnx: ONNX model missing; rerun the export stage (stochkd-pipeline export PROFILE --force)"),
    ("corrupt", "model.onnx: not a valid ONNX model (Error parsing message"),
])
def test_onnx_missing_or_corrupt(artifacts, damage, fragment):
    exported = artifact_folder(artifacts, "export", "student")
    if damage == "missing":
        (exported / "model.onnx").unlink()
    else:
        (exported / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf" * 10)
    resign(exported)
    before = finished(artifacts)
    done = cli("quantize", str(TINY), "--force", artifacts=artifacts)
    assert_one_line_exit_2(done, fragment)
    assert finished(artifacts) == before


def test_an_onnx_file_that_fails_its_checksum_is_reported_and_rebuilt(artifacts):
    exported = artifact_folder(artifacts, "export", "student")
    (exported / "model.onnx").write_bytes(b"tampered")  # the manifest still has the old checksum
    done = cli("quantize", str(TINY), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(f"{exported}: model.onnx is missing or has the wrong size; rebuilding it") == 1
    assert (exported / "model.onnx").stat().st_size > 1000


def test_a_batch_the_engine_profile_does_not_cover(artifacts):
    engines = artifact_folder(artifacts, "engine", "student")
    record = json.loads((engines / "engines.json").read_text())
    # Recorded as a TensorRT engine built for batches 1..4 would be; the benchmark asks for 1 and 8.
    record["engines"]["fp32"]["settings"] = {"profiles": [[[1, 1, 8, 8], [4, 1, 8, 8], [4, 1, 8, 8]]]}
    (engines / "engines.json").write_text(json.dumps(record))
    resign(engines)
    before = finished(artifacts)
    done = cli("benchmark", str(TINY), artifacts=artifacts)
    assert_one_line_exit_2(done, "engine.fp32.ort.onnx: batch size 8 is outside this engine's optimization profiles "
                                 "(1..4); add 8 to benchmark.batch_sizes and rebuild the engine")
    assert before <= finished(artifacts)  # models benchmarked before the student's keep their results


def test_an_unwritable_artifacts_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = cli("teacher", str(TINY), artifacts=blocker / "artifacts")
    assert_one_line_exit_2(done, f"{blocker / 'artifacts'}: cannot write artifacts there (Not a directory); "
                                 f"pass --artifacts with a writable folder")


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB filesystem of its own (tmpfs), so that it can be filled up; mounting needs root."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip() or 'mount failed'}); the "
                    f"file-size-limit case covers the same path")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    filler = folder / "filler"
    # Unbuffered: the write that fills the disk fails by itself, with nothing left to fail at close.
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass
    return filler


def test_a_full_disk_gets_a_clear_error_and_the_cache_stays_consistent(cached, small_disk):
    artifacts = small_disk / "artifacts"
    shutil.copytree(cached / "store" / "teacher", artifacts / "store" / "teacher")  # the teacher trained
    with_this_machines_probe(artifacts)  # written while there is room (the commands below would write it)
    before = finished(artifacts)
    assert len(before) == 1
    filler = fill(small_disk)
    done = cli("distill", str(TINY), artifacts=artifacts)
    assert_one_line_exit_2(done, "No space left on device", "Free space")
    assert finished(artifacts) == before
    assert not list(artifacts.glob("store/*/.tmp-*")) and not list(artifacts.glob("store/*/.resume-*/*.partial-*"))
    filler.unlink()
    done = cli("distill", str(TINY), artifacts=artifacts)
    assert done.returncode == 0, done.stderr
    assert "3 ran, 1 from the cache" in done.stdout


def test_a_file_size_limit_gets_the_same_clear_error(artifacts):
    import resource
    import signal

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))  # below one ResNet-8's weights

    before = finished(artifacts)
    done = subprocess.run([sys.executable, "-m", "pipeline", "distill", str(TINY), "--force", "--artifacts",
                           str(artifacts)], capture_output=True, text=True, preexec_fn=limit_file_size)
    assert_one_line_exit_2(done, "File too large", "Free space")
    assert before <= finished(artifacts)
    assert not list(artifacts.glob("store/*/.tmp-*"))
