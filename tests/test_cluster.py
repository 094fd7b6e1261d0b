"""--cluster on a real Ray cluster: a head and two worker nodes on this machine (raylets of their own,
with their own resources and temp folders), which the command line joins by its address as it would
join a cloud cluster. STOCHKD_CLUSTER_COPY=1 makes every task receive its inputs and return its
artifact as bundles, as on nodes that share no folder with the head."""

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.commands import TINY, cli, pipeline_command
from tests.processes import sigint_ignored

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'): --cluster is untested")

pytestmark = pytest.mark.slow

# A training long enough to lose its node mid-way, with a checkpoint after every step: about a third of a
# second an epoch here, so that the rerun still trains (by many epochs) when its checkpoint has reached the
# head, however far the node got before the head printed the epoch its stop was sent at (eight epochs were
# not always enough in a full run: the head, busy, printed the epoch the stop came at late).
EPOCHS = 30
LONG_TEACHER = ("--set", f"teacher.training.epochs={EPOCHS}")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # The head takes no task (zero CPUs): every training lands on a worker node, one at a time each.
    with sigint_ignored():
        made = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        workers = [made.add_node(num_cpus=1) for _ in range(2)]
    made.wait_for_nodes()
    yield made, workers
    made.shutdown()


@pytest.fixture
def copying(monkeypatch):
    monkeypatch.setenv("STOCHKD_CLUSTER_COPY", "1")


def models(artifacts) -> dict[str, bytes]:
    """Every trained model's weights, by stage and key."""
    return {f"{path.parts[-3]}/{path.parts[-2]}": path.read_bytes()
            for path in sorted((artifacts / "store").glob("*/*/model.pt"))}


def test_a_sweep_on_the_cluster_equals_the_same_sweep_run_here(tmp_path, cluster, copying, monkeypatch):
    made, _ = cluster
    there = cli("sweep", TINY, "--over", "seed=0,1", "--cluster", made.address, artifacts=tmp_path / "cluster")
    assert there.returncode == 0, there.stdout + there.stderr
    assert re.search(r"teacher:teacher .* on \S+ [0-9a-f]{8}", there.stdout)  # progress names each task's node
    # A cluster task trains with the CPUs it asked for (cluster.cpus_per_task, 1); CPU arithmetic
    # follows the thread count, so the run here gets one thread too.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    here = cli("sweep", TINY, "--over", "seed=0,1", artifacts=tmp_path / "here")
    assert here.returncode == 0, here.stderr
    sweeps = [json.loads((root / "tiny" / "sweep-seed" / "sweep.json").read_text())
              for root in (tmp_path / "cluster", tmp_path / "here")]
    assert sweeps[0]["results"] == sweeps[1]["results"]
    trained = models(tmp_path / "cluster")
    assert len(trained) == 8 and trained == models(tmp_path / "here")  # per seed: teacher and three students
    assert not list((tmp_path / "cluster" / "store").glob("*/.resume-*"))  # every checkpoint gone with its task
    assert not list((tmp_path / "cluster" / "store").glob(".cluster-*"))  # the run's marker too
    again = cli("sweep", TINY, "--over", "seed=0,1", "--cluster", made.address, artifacts=tmp_path / "cluster")
    assert again.returncode == 0 and "▶" not in again.stdout  # all from the cache: nothing sent


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """LONG_TEACHER's weights from a run here with one thread, as a cluster task trains."""
    artifacts = tmp_path_factory.mktemp("here")
    done = subprocess.run(pipeline_command("teacher", TINY, *LONG_TEACHER, artifacts=artifacts), capture_output=True,
                          text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return models(artifacts)


def started_on_the_cluster(address: str, artifacts, *extra: str,
                           before: int = 2 * EPOCHS // 3) -> tuple[subprocess.Popen, str]:
    """LONG_TEACHER started on the cluster; returned at the first epoch before epoch ``before`` that its
    progress shows, with its node's id."""
    process = subprocess.Popen(
        pipeline_command("teacher", TINY, *LONG_TEACHER, *extra, "--cluster", address, artifacts=artifacts),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    read = []  # what the loop consumed, for the failure's message
    for line in process.stdout:
        read.append(line)
        found = re.search(rf"epoch (\d+)/{EPOCHS} .* on \S+ ([0-9a-f]{{8}})", line)
        if found and 1 <= int(found.group(1)) < before:
            return process, found.group(2)
    stdout, stderr = process.communicate()
    raise AssertionError(f"no progress line before epoch {before} of {EPOCHS} named a node:\n"
                         f"{''.join(read)[-4000:]}{stdout}\n{stderr[-4000:]}")


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def lose(made, node) -> None:
    """``node`` dies as a machine does, its worker processes with it: Ray's remove_node ends the node's own
    processes, and a worker that talks only to the head's actor goes on training without its raylet."""
    from ray._private import ray_constants

    [raylet] = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET]
    workers = descendants(raylet.process.pid)
    made.remove_node(node, allow_graceful=False)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_a_stopped_training_and_one_whose_node_dies_both_resume_and_end_identical(
        tmp_path, cluster, copying, uninterrupted):
    """SIGTERM mid-training: the task saves (no timed checkpoint is due) and its checkpoint reaches the
    head; the rerun resumes from it on the cluster, loses its node once a newer checkpoint has reached
    the head, is retried on the other node from that one, and ends with an uninterrupted run's weights."""
    made, workers = cluster
    # Stopped early, the stop saving (no timed checkpoint is due), so that the rerun has most of its epochs
    # left when its node is taken away.
    process, _ = started_on_the_cluster(made.address, tmp_path, "--checkpoint-every", "3600", before=EPOCHS // 3)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    stop = f"the stopped run's output:\n{stdout[-2000:]}\n{stderr[-2000:]}"  # where it stopped, for a failure
    assert process.returncode == 143 and "Traceback" not in stderr, stop
    assert "training resumes from its last checkpoint; rerun the same command" in stderr, stop
    resume = tmp_path / "store" / "teacher"
    reached = list(resume.glob(".resume-*/training.pt"))
    assert len(reached) == 1, stop  # its checkpoint reached the head
    [stopped_at] = reached
    done = json.loads(stopped_at.with_name("training.json").read_text())["done"]
    assert done < 2 / 3, f"the node stopped at {done:.0%} of its training, long after the stop\n{stop}"
    saved_at_stop = stopped_at.stat().st_mtime_ns

    try:
        process, node = started_on_the_cluster(made.address, tmp_path, "--checkpoint-every", "0")
    except AssertionError as failed:
        raise AssertionError(f"{failed}\n{stop}") from None
    deadline = time.monotonic() + 60
    while stopped_at.exists() and stopped_at.stat().st_mtime_ns == saved_at_stop and time.monotonic() < deadline:
        time.sleep(0.2)  # the rerun's own checkpoint has reached the head
    [doomed] = [w for w in workers if w.node_id.startswith(node)]
    lose(made, doomed)
    workers.remove(doomed)
    with sigint_ignored():
        workers.append(made.add_node(num_cpus=1))  # the cluster as it was, for any test after this one
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stdout + stderr
    [manifest] = resume.glob("*/manifest.json")
    resumed = json.loads(manifest.read_text())["metrics"]["train_resumed_at"]
    assert len(resumed) == 2, (resumed, stdout[-4000:], stderr[-4000:])  # resumed twice, never restarted
    assert models(tmp_path) == uninterrupted


def test_cluster_input_that_cannot_work_is_one_line_and_exit_2(tmp_path, cluster):
    made, _ = cluster
    unreachable = cli("teacher", TINY, "--cluster", "127.0.0.1:1", artifacts=tmp_path)
    assert unreachable.returncode == 2, unreachable.stderr
    assert re.fullmatch(r"error: --cluster 127\.0\.0\.1:1: no Ray cluster answered \(.*\); start one .*\n",
                        unreachable.stderr)
    no_gpu = cli("teacher", TINY, "--device", "cuda", "--cluster", made.address, artifacts=tmp_path)
    assert no_gpu.returncode == 2
    assert re.fullmatch(r"error: teacher:teacher: --device cuda trains on a GPU, and no node of the cluster at "
                        r"\S+ has one \(its nodes: .*\); add a GPU node, or drop --device\n", no_gpu.stderr)
    both = cli("teacher", TINY, "--cluster", made.address, "--jobs", "2", artifacts=tmp_path)
    assert both.returncode == 2 and "drop --jobs" in both.stderr
    assert not (tmp_path / "store" / "teacher").exists() or not any((tmp_path / "store" / "teacher").iterdir())
