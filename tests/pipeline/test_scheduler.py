"""--jobs: ready tasks side by side in processes of their own, benchmarks alone, a failure stopping
the others. The workers here are tests/scheduler_worker.py, which only sleep, fail or commit."""

import json
import os
import time
from pathlib import Path

import pytest

from stages.common.target_config import TargetConfig
from stages.common.errors import PipelineError, Terminated, stop_signals_raise
from pipeline.plan import Task
from pipeline.scheduler import Scheduler
from pipeline.store import ArtifactStore
from tests.commands import cli, TINY

WORKER = str(Path(__file__).resolve().parents[1] / "scheduler_worker.py")


def scheduler(tmp_path, jobs, **kwargs):
    runner = Scheduler(ArtifactStore(tmp_path / "artifacts"), jobs, **{"gpus": [], "cores": 8, **kwargs})
    runner.worker = (WORKER,)
    return runner


def events(tmp_path) -> dict[str, dict]:
    return {e["task"]: e for e in map(json.loads, (tmp_path / "log.jsonl").read_text().splitlines())}


def task(stage, variant, tmp_path, needs=None, **behaviour):
    params = {"log": str(tmp_path / "log.jsonl"), "name": variant, **behaviour}
    if stage == "benchmark":
        params["target"] = TargetConfig()
    return Task(stage, variant, params, needs or {})


def test_the_same_work_under_two_names_runs_once(tmp_path):
    twins = [Task("teacher", name, {"log": str(tmp_path / "log.jsonl"), "seconds": 0.3}) for name in ("a", "b")]
    outcomes = scheduler(tmp_path, 2).run(twins)
    assert [o.ran for o in outcomes] == [True, False]
    assert list(events(tmp_path)) == ["teacher:a"]


def overlap(a, b) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_ready_tasks_run_side_by_side_after_what_they_need(tmp_path):
    first = task("teacher", "teacher", tmp_path, seconds=0.2)
    students = [task("distill", name, tmp_path, {"teacher": first}, seconds=1.0) for name in ("a", "b")]
    outcomes = scheduler(tmp_path, 2).run([first, *students])
    assert [o.task.id for o in outcomes] == ["teacher:teacher", "distill:a", "distill:b"] and all(o.ran for o in outcomes)
    seen = events(tmp_path)
    assert seen["distill:a"]["start"] >= seen["teacher:teacher"]["end"]
    assert overlap(seen["distill:a"], seen["distill:b"])
    assert seen["distill:a"]["omp"] == "4"  # 8 cores split between 2 tasks
    again = scheduler(tmp_path, 2).run([first, *students])
    assert not any(o.ran for o in again)  # the second time, all from the cache


def test_more_jobs_than_gpus_share_the_gpus_round_robin_and_every_task_has_one(tmp_path):
    tasks = [task("teacher", name, tmp_path, seconds=0.6) for name in "abcd"]
    scheduler(tmp_path, 4, gpus=["0", "1"]).run(tasks)
    seen = events(tmp_path)
    assert sorted(e["gpus"] for e in seen.values()) == ["0", "0", "1", "1"]  # none left to land on GPU 0 unasked


def test_device_cuda_n_puts_every_task_on_that_gpu(tmp_path):
    tasks = [task("teacher", name, tmp_path, seconds=0.3) for name in "ab"]
    scheduler(tmp_path, 2, gpus=["0", "1", "2"], device="cuda:2").run(tasks)
    seen = events(tmp_path)
    # The task's process sees GPU 2 alone, as its cuda device.
    assert {(e["gpus"], e["device"]) for e in seen.values()} == {("2", "cuda")}
    with pytest.raises(PipelineError, match=r"--device cuda:3: this machine shows 3 CUDA devices"):
        scheduler(tmp_path, 2, gpus=["0", "1", "2"], device="cuda:3")


def test_a_task_writes_its_status_about_twice_a_second_not_every_step(tmp_path, monkeypatch):
    import pipeline.task_worker as worker

    writes = []
    real = os.replace
    monkeypatch.setattr(worker.os, "replace", lambda a, b: (writes.append(1), real(a, b)))
    with worker.status_progress(tmp_path / "status.json")("teacher", 5000) as advance:
        for _ in range(5000):
            advance(1)
        advance(0, "teacher · epoch 1/1")
    assert len(writes) <= 6  # the first, the epoch line, the last, and one per half second
    assert json.loads((tmp_path / "status.json").read_text())["completed"] == 5000


def test_a_benchmark_runs_alone_with_every_core(tmp_path):
    tasks = [task("teacher", "x", tmp_path, seconds=0.5), task("benchmark", "m", tmp_path, seconds=0.5),
             task("teacher", "y", tmp_path, seconds=0.5)]
    scheduler(tmp_path, 3).run(tasks)
    seen = events(tmp_path)
    assert not overlap(seen["benchmark:m"], seen["teacher:x"]) and not overlap(seen["benchmark:m"], seen["teacher:y"])
    assert seen["benchmark:m"]["omp"] == "8"


def test_a_failure_stops_the_others_and_names_the_task(tmp_path):
    # The failure comes once the slow task is past its start-up: a task stopped before it could do
    # anything has nothing to save or log.
    tasks = [task("teacher", "slow", tmp_path, seconds=30), task("teacher", "bad", tmp_path, fail=True, fail_after=1.0)]
    with pytest.raises(PipelineError, match=r"teacher:bad failed \(RuntimeError: boom\); the tasks running beside "
                                            r"it were stopped .* its whole error is in .*logs"):
        scheduler(tmp_path, 2).run(tasks)
    seen = events(tmp_path)
    assert seen["teacher:slow"]["stopped"] and seen["teacher:slow"]["end"] - seen["teacher:slow"]["start"] < 20
    store = ArtifactStore(tmp_path / "artifacts")
    assert all(store.lookup(t.stage, t.key) is None for t in tasks)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_to_the_scheduler_alone_stops_every_task_and_ends_terminated(tmp_path, monkeypatch,
                                                                                   signal_name):
    # Kubernetes and docker stop signal only the main process, as a closed terminal does a job whose
    # shell passes SIGHUP on: the tasks hear it from the scheduler.
    import os
    import signal
    import threading

    from stages.common import errors

    monkeypatch.setattr(errors, "detach_from_terminal", lambda: None)  # keep this test's output
    signum = getattr(signal, signal_name)
    tasks = [task("teacher", name, tmp_path, seconds=30) for name in ("a", "b")]
    sender = threading.Timer(1.5, os.kill, (os.getpid(), signum))
    sender.start()
    started = time.monotonic()
    with pytest.raises(Terminated) as stopped, stop_signals_raise():
        scheduler(tmp_path, 2).run(tasks)
    assert stopped.value.signum == signum
    sender.join()
    assert time.monotonic() - started < 8  # stopped at once, not after the grace Ctrl-C gets
    seen = events(tmp_path)
    assert seen["teacher:a"]["stopped"] and seen["teacher:b"]["stopped"]
    store = ArtifactStore(tmp_path / "artifacts")
    assert all(store.lookup(t.stage, t.key) is None for t in tasks)


MPS_CONTROL = """#!{python}
# A stand-in for nvidia-cuda-mps-control, strict about its use: "-d" starts the daemon, whose
# control pipe then lies in CUDA_MPS_PIPE_DIRECTORY; "quit" on standard input stops it; anything
# else, or a second daemon on the same pipes, fails.
import os, sys
from pathlib import Path

pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
logs = Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"))
record = Path(os.environ["MPS_STANDIN_RECORD"])
control = pipes / "control"
if sys.argv[1:] == ["-d"] and not control.exists() and logs.is_dir() and not os.environ.get("MPS_STANDIN_FAIL"):
    control.write_text("")
    (logs / "control.log").write_text("daemon started")
    with record.open("a") as out:
        out.write("start " + str(pipes) + " on " + os.environ.get("CUDA_VISIBLE_DEVICES", "every GPU") + "\\n")
    sys.exit(0)
if sys.argv[1:] == [] and sys.stdin.read().strip() == "quit" and control.exists():
    control.unlink()
    with record.open("a") as out:
        out.write("quit " + str(pipes) + "\\n")
    sys.exit(0)
print("daemon could not start", file=sys.stderr)
sys.exit(1)
"""


@pytest.fixture
def mps_control(tmp_path, monkeypatch):
    """The stand-in as the only nvidia-cuda-mps-control on PATH; returns the file it records its use in."""
    import sys

    folder = tmp_path / "bin"
    folder.mkdir()
    control = folder / "nvidia-cuda-mps-control"
    control.write_text(MPS_CONTROL.format(python=sys.executable))
    control.chmod(0o755)
    record = tmp_path / "mps.txt"
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("MPS_STANDIN_RECORD", str(record))
    return record


NVIDIA_SMI = """#!{python}
# A stand-in for nvidia-smi that answers only the query the scheduler makes, and records each call.
import os, sys
from pathlib import Path

with Path(os.environ["SMI_STANDIN_RECORD"]).open("a") as out:
    out.write(" ".join(sys.argv[1:]) + "\\n")
if sys.argv[1:] != ["--query-gpu=index", "--format=csv,noheader"]:
    print("unexpected arguments", file=sys.stderr)
    sys.exit(2)
print("0\\n1\\n2")
"""


def test_visible_gpus_follow_cuda_visible_devices_else_ask_nvidia_smi_once(tmp_path, monkeypatch):
    import sys

    from pipeline import scheduler

    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "nvidia-smi").write_text(NVIDIA_SMI.format(python=sys.executable))
    (folder / "nvidia-smi").chmod(0o755)
    record = tmp_path / "smi.txt"
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("SMI_STANDIN_RECORD", str(record))
    scheduler._gpus_nvidia_smi_lists.cache_clear()
    for listed, gpus in [("3,-1,2", ["3"]), ("-1,3", []), ("", []), ("0, 2", ["0", "2"])]:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
        assert scheduler.visible_gpus() == gpus, listed
    assert not record.exists()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert scheduler.visible_gpus() == ["0", "1", "2"] == scheduler.visible_gpus()
    assert record.read_text() == "--query-gpu=index --format=csv,noheader\n"  # asked once
    scheduler._gpus_nvidia_smi_lists.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert scheduler.visible_gpus() == []
    scheduler._gpus_nvidia_smi_lists.cache_clear()


def test_mps_tasks_share_one_private_daemon_that_quits_at_the_end(tmp_path, mps_control, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    tasks = [*(task("teacher", name, tmp_path, seconds=0.5) for name in ("a", "b")),
             task("benchmark", "m", tmp_path, seconds=0.1)]
    scheduler(tmp_path, 2, gpus=["3"], mps=True).run(tasks)
    seen = events(tmp_path)
    pipes = {seen["teacher:a"]["mps"], seen["teacher:b"]["mps"]}
    assert len(pipes) == 1 and None not in pipes
    [folder] = pipes
    assert mps_control.read_text() == f"start {folder} on 3\nquit {folder}\n"  # the daemon alone picks the GPU
    assert seen["teacher:a"]["gpus"] is None and seen["teacher:b"]["gpus"] is None  # the server's device 0
    assert seen["benchmark:m"]["mps"] is None and seen["benchmark:m"]["gpus"] == "3"  # measured without MPS
    assert not Path(folder).exists()  # in the run's scratch folder, removed with it


def test_mps_daemon_quits_when_a_task_fails_too(tmp_path, mps_control):
    tasks = [task("teacher", "slow", tmp_path, seconds=30), task("teacher", "bad", tmp_path, fail=True, fail_after=1.0)]
    with pytest.raises(PipelineError, match="teacher:bad failed"):
        scheduler(tmp_path, 2, gpus=["0"], mps=True).run(tasks)
    assert [line.split()[0] for line in mps_control.read_text().splitlines()] == ["start", "quit"]


def test_mps_without_its_control_program_or_failing_to_start_is_one_line(tmp_path, mps_control, monkeypatch):
    monkeypatch.setenv("MPS_STANDIN_FAIL", "1")
    with pytest.raises(PipelineError, match=r"--mps: nvidia-cuda-mps-control -d failed \(daemon could not start\); "
                                            r"its log is in .*artifacts/logs/mps\. Drop --mps"):
        scheduler(tmp_path, 2, gpus=["0"], mps=True).run([task("teacher", "a", tmp_path)])
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PipelineError, match="--mps: nvidia-cuda-mps-control is not on PATH"):
        scheduler(tmp_path, 2, gpus=["0"], mps=True).run([task("teacher", "a", tmp_path)])
    assert not (tmp_path / "log.jsonl").exists()  # no task started
    assert (tmp_path / "artifacts" / "logs" / "mps").is_dir()  # where the message says, after the run


@pytest.mark.slow
def test_the_real_pipeline_with_two_jobs_then_from_the_cache(tmp_path):
    """The tiny profile's training stages through pipeline.task_worker, two at a time; a second run
    without --jobs finds every task cached."""
    done = cli("run", TINY, "--until", "distill", "--jobs", "2", artifacts=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("✓") == 5  # teacher, analysis, student alone, KD, stochastic KD
    again = cli("run", TINY, "--until", "distill", artifacts=tmp_path / "a")
    assert again.returncode == 0 and "0 ran, 5 from the cache" in again.stdout
