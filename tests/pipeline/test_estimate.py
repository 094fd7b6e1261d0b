"""Estimated wall times: from the data's shape, the networks' MACs and layers, and this machine's
probe; a damaged probe cache is one line and exit 2."""

import subprocess
import sys

import pytest

from stages.common.config import DataConfig
from pipeline.estimate import Probe, data_shape, estimate_plan, known_only, probe_file
from pipeline.plan import build_plan
from pipeline.profiles import load_profile
from tests.commands import TINY



def probe() -> Probe:
    return Probe(device="cpu", train_layer_s=1e-4, train_mac_s=1e-10, infer_layer_s=5e-5, infer_mac_s=4e-11)


def test_the_data_shape_is_known_without_loading_it(cifar100_npz):
    assert data_shape(DataConfig()) == (1437, 0, 360, 8, 1, 10)
    cifar = DataConfig(dataset="cifar100", root=str(cifar100_npz), train_images=20000, validation_images=5000)
    assert data_shape(cifar) == (20000, 5000, 10000, 32, 3, 100)
    some = DataConfig(dataset="cifar100", root=str(cifar100_npz), classes=10, validation_images=500)
    assert data_shape(some) == (4500, 500, 1000, 32, 3, 10)
    assert data_shape(DataConfig(classes=["3", "4"])) == (287, 0, 72, 8, 1, 2)  # of the digits' 1437 and 360


def test_more_epochs_cost_more_and_unknown_networks_stay_unknown():
    profile = load_profile(TINY)
    plan = build_plan(profile)
    measured = probe()
    estimates = estimate_plan(plan, measured, profile.data)
    assert all(seconds is not None and seconds > 0 for seconds in estimates.values())
    longer = load_profile(TINY, ["teacher.training.epochs=4"])
    teacher = next(t for t in build_plan(longer) if t.stage == "teacher")
    assert estimate_plan([teacher], measured, longer.data)["teacher:teacher"] > estimates["teacher:teacher"]
    assert set(known_only(plan, probe(), profile.data).values()) == {None, 3.0}  # only the report, a fixed cost
    assert known_only(plan, measured, profile.data) == estimates  # counted once, known after


def test_a_damaged_probe_cache_is_one_line_and_exit_2(tmp_path):
    path = probe_file(tmp_path, "auto")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    done = subprocess.run([sys.executable, "-m", "pipeline", "status", str(TINY), "--artifacts", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert str(path) in line and "unreadable throughput probe" in line and "delete it" in line


@pytest.mark.slow
def test_the_estimate_holds_within_two_times_on_the_quickstart(tmp_path):
    """The quickstart's training stages (epochs cut to keep the test short), estimated before they
    run and measured: each task and the whole within a factor of two."""
    import json

    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "--until", "distill", "--artifacts",
                           str(tmp_path), "--set", "teacher.training.epochs=6", "--set", "student.training.epochs=4"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "(an estimate)" in done.stdout
    timings = [json.loads(m.read_text())["timings"] for m in tmp_path.glob("store/*/*/manifest.json")]
    pairs = [(t["estimated_s"], t["wall_s"]) for t in timings if t.get("estimated_s")]
    assert len(pairs) == 5  # teacher, its analysis, student alone, KD, stochastic KD
    total_estimated, total_measured = sum(e for e, _ in pairs), sum(m for _, m in pairs)
    assert 0.5 <= total_measured / total_estimated <= 2.0, pairs


def test_side_by_side_replays_the_schedulers_order_with_a_gpu_per_task():
    from pipeline.estimate import side_by_side_seconds

    tasks = [t for t in build_plan(load_profile(TINY)) if t.stage in ("teacher", "analyze", "distill")]
    seconds = {"teacher:teacher": 10, "analyze:teacher": 1, "distill:student": 3, "distill:kd": 5,
               "distill:stochastic_kd": 5}
    never = lambda task: False  # noqa: E731
    assert side_by_side_seconds(tasks, seconds, 1, never) == 24  # one after another
    # teacher and student alone at once; at 10 s analyze and KD, then stochastic KD once analyze is done
    assert side_by_side_seconds(tasks, seconds, 2, never) == 16
    assert side_by_side_seconds(tasks, seconds, 3, never) == 15  # the three after the teacher at once
    # a task that runs alone (as a benchmark does) holds the others back
    assert side_by_side_seconds(tasks, seconds, 4, lambda task: task.stage == "analyze") == 16
    # the same work twice runs once, the second taken from the cache
    [kd] = [t for t in tasks if t.id == "distill:kd"]
    assert side_by_side_seconds(tasks + [kd], seconds, 4, never) == 15
    assert side_by_side_seconds(tasks, {**seconds, "distill:kd": None}, 4, never) is None


def test_what_jobs_change_is_said_beside_the_estimate(monkeypatch):
    from pipeline.cli_status import _side_by_side

    tasks = [t for t in build_plan(load_profile(TINY)) if t.stage in ("teacher", "distill")]
    seconds = {"teacher:teacher": 40, "distill:student": 10, "distill:kd": 20, "distill:stochastic_kd": 20}
    assert _side_by_side(tasks, seconds, 1, False, "cuda") == ""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert _side_by_side(tasks, seconds, 4, False, "cuda") == "; about 60 s with --jobs 4 on 4 GPUs, a GPU per task"
    assert _side_by_side(tasks, seconds, 2, False, "cuda") == "; about 60 s with --jobs 2 on 4 GPUs, a GPU per task"
    assert _side_by_side(tasks, seconds, 2, False, "cpu") != _side_by_side(tasks, seconds, 2, False, "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert "take turns" in _side_by_side(tasks, seconds, 4, False, "cuda")
    assert "--mps" in _side_by_side(tasks, seconds, 4, True, "cuda")
    assert "split the cores" in _side_by_side(tasks, seconds, 4, False, "cpu")


def test_compiled_or_captured_training_is_said_to_be_outside_the_estimate():
    """The probe times eager steps: a task that compiles its network, or captures its step on a GPU,
    has an estimate without its compile time or its faster steps, and the line before the run says so."""
    from pipeline.cli_status import _what_it_counts

    def training(*overrides):
        return [t for t in build_plan(load_profile(TINY, list(overrides))) if t.stage in ("teacher", "distill")]

    plain = training()
    assert _what_it_counts(plain, "cuda") == " (an estimate)"
    compiled = training("teacher.training.compile=true")
    assert _what_it_counts(compiled, "cpu") == (" (an estimate from eager steps: 1 task compiles or captures its "
                                                "training step, and it leaves out that compile time and the "
                                                "faster steps after it)")
    captured = training("student.training.capture_step=true")  # the student alone, KD and stochastic KD
    assert _what_it_counts(captured, "cpu") == " (an estimate)"  # a CPU runs the step eagerly
    assert "3 tasks compile or capture their training step" in _what_it_counts(captured, "cuda")
    imported = [t for t in training("teacher.training.compile=true", "teacher.checkpoint=/some/teacher.pt")
                if t.stage == "teacher"]
    assert _what_it_counts(imported, "cuda") == " (an estimate)"  # an imported teacher trains nothing
