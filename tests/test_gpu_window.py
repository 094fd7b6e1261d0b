"""bench/gpu_window.sh on this machine, as two windows would run it on a GPU (the tiny profile on the
CPU, no CIFAR-100, a teacher of 400 epochs that no window finishes): the first window's budget stops
the teacher, fetch makes its bundle the row's, the next plan cuts it into pieces, and the second
window, on a machine with nothing left from the first, joins them and continues the teacher from
where the first stopped."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def window(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # The plan asks for the wheels the device lacks; this machine imports the project without them.
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    (wheels / "stand_in-0-py3-none-any.whl").touch()
    environment = {**os.environ, "PROFILE": "tests/profiles/tiny.yaml", "CIFAR100": "0", "DEVICE": "cpu",
                   "DEVICE_WHEELS": str(wheels), "UNTIL": "teacher", "EXTRA_ARGS": "--set teacher.training.epochs=400",
                   "WINDOW_TMP": str(tmp_path / "device"), "ROWS": str(tmp_path / "rows"),
                   "ROW_RESULTS": str(tmp_path / "results"), **env}
    done = subprocess.run(["bash", "bench/gpu_window.sh", *args], cwd=REPO, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def progress(call: Path) -> float:
    teacher = json.loads((call / "status.json").read_text())["tasks"][0]
    assert teacher["task"] == "teacher:teacher" and teacher["state"] == "resumable", teacher
    return teacher["checkpoint"]["done"]


def test_a_row_stopped_by_one_windows_budget_continues_from_its_bundle_in_the_next(tmp_path):
    from pipeline.estimate import Probe, probe_file, save_probe

    first, second = tmp_path / "first", tmp_path / "second"
    for artifacts in (first / "artifacts", second / "artifacts"):
        # The run's estimate measures this machine once per artifacts folder, which is not what is tested.
        save_probe(Probe("cpu", 1e-4, 1e-9, 1e-5, 1e-10), probe_file(artifacts, "cpu"))
    window(tmp_path, "1", BENCH="0", OUT=str(first / "call1"))
    window(tmp_path, "2", BUDGET_S="12", OUT=str(first / "call2"), ARTIFACTS=str(first / "artifacts"))
    stopped = progress(first / "call2")  # stopped by the budget, its checkpoint bundled
    window(tmp_path, "fetch", str(first / "call2"), "--until", "teacher")
    assert "| teacher:teacher | checkpoint |" in (tmp_path / "results" / "tiny.md").read_text()

    planned = window(tmp_path, "plan")
    assert "pieces written" in planned.stdout and (tmp_path / "rows" / "tiny" / "carry" / "piece-1").exists()
    subprocess.run(["rm", "-rf", str(tmp_path / "device")], check=True)  # a fresh machine
    window(tmp_path, "1", BENCH="0", OUT=str(second / "call1"))
    joined = window(tmp_path, "2", BUDGET_S="12", OUT=str(second / "call2"), ARTIFACTS=str(second / "artifacts"))
    assert "row.tar: OK" in joined.stdout and "+ teacher:teacher (training checkpoint)" in joined.stdout
    assert progress(second / "call2") > stopped
    window(tmp_path, "fetch", str(second / "call2"), "--until", "teacher")
    assert "| teacher:teacher | checkpoint |" in (tmp_path / "results" / "tiny.md").read_text()
