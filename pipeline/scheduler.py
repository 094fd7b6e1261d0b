"""``--jobs N``: the tasks of a plan whose inputs are ready run at the same time, each in a process
of its own (pipeline.task_worker), at most N at once.

- On one GPU, several small trainings share it (taking turns, or overlapping under ``--mps``, see
  pipeline.mps); with several GPUs each running task gets a GPU of its own (``CUDA_VISIBLE_DEVICES``);
  on a CPU the cores are split between the running tasks.
- Benchmarks run alone: a latency measured next to another task measures the other task too.
- A task that fails stops the others (they get SIGTERM and save their training checkpoints), and
  the error names it. Ctrl-C and SIGTERM reach every task the same way.
- The store's per-key locks and atomic commits are what keep the cache right, as with two runs.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stages.common.errors import ArtifactError, PipelineError, Terminated
from pipeline.mps import client_environment, mps_daemon
from pipeline.plan import Task
from pipeline.registry import STAGES
from pipeline.runner import Outcome
from pipeline.store import ArtifactStore

POLL_S = 0.2


def runs_alone(task: Task) -> bool:
    """Measurements belong to the machine they ran on, with nothing else running on it."""
    return STAGES[task.stage].hardware == "machine"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return list(_gpus_nvidia_smi_lists())
    gpus = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.startswith("-"):
            break  # CUDA ignores the list from its first invalid entry on ("-1" hides every GPU)
        gpus.append(entry)
    return gpus


@functools.cache
def _gpus_nvidia_smi_lists() -> tuple[str, ...]:
    # Asked once a process: the estimate and the scheduler both want the list, and on a busy machine
    # nvidia-smi takes a noticeable part of a second.
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in done.stdout.splitlines() if line.strip()) if done.returncode == 0 else ()


def startable(waiting: list[Task], outcomes: dict[int, Outcome], running: Callable[[], list[Task]], forced,
              store: ArtifactStore, record: Callable[[dict[int, Outcome], Outcome], None]):
    """The waiting tasks whose inputs are done, in order; those found in the cache are recorded and
    taken off ``waiting`` on the way, not yielded. A task whose twin (the same stage and key under
    another name) is running (``running()``, asked anew for each task) waits for it, and then comes
    from the cache."""
    done = {(o.task.stage, o.task.key) for o in outcomes.values()}
    for task in list(waiting):
        if not all((t.stage, t.key) in done for t in task.needs.values()):
            continue
        if any((r.stage, r.key) == (task.stage, task.key) for r in running()):
            continue
        if task.id not in forced:
            artifact = store.lookup(task.stage, task.key)
            if artifact is not None:
                waiting.remove(task)
                record(outcomes, Outcome(task, artifact, ran=False, wall_s=0.0))
                continue
        yield task


@dataclass
class Running:
    task: Task
    process: subprocess.Popen
    status: Path
    result: Path
    stderr: Path
    gpu: str | None
    started: float = field(default_factory=time.monotonic)


class Scheduler:
    worker: tuple[str, ...] = ("-m", "pipeline.task_worker")  # what runs one task: python WORKER SPEC

    def __init__(self, store: ArtifactStore, jobs: int, *, device: str = "auto", checkpoint_interval_s: float = 60.0,
                 on_start: Callable[[Task], None] = lambda task: None,
                 on_done: Callable[[Outcome], None] = lambda outcome: None,
                 show: Callable[[list[tuple[str, dict]]], None] = lambda states: None,
                 gpus: list[str] | None = None, cores: int | None = None,
                 estimates: dict[str, float | None] | None = None, mps: bool = False) -> None:
        self.store, self.jobs, self.device, self.mps = store, jobs, device, mps
        self.task_env: dict[str, str] = {}  # what every task's environment adds (MPS's pipes)
        self.estimates = estimates or {}
        self.checkpoint_interval_s = checkpoint_interval_s
        self.on_start, self.on_done, self.show = on_start, on_done, show
        self.gpus = visible_gpus() if gpus is None else gpus
        self.cores = cores or os.cpu_count() or 1
        self.task_device = device
        if device.startswith("cuda:") and self.gpus:
            # --device cuda:N: every task on that GPU, which its process then sees as its only one.
            index = int(device.split(":", 1)[1])
            if index >= len(self.gpus):
                raise PipelineError(f"--device {device}: this machine shows {len(self.gpus)} CUDA device"
                                    f"{'s' if len(self.gpus) > 1 else ''} (cuda:0 to cuda:{len(self.gpus) - 1}); "
                                    f"choose one of them")
            self.gpus, self.task_device = [self.gpus[index]], "cuda"

    def run(self, tasks: list[Task], forced: set[str] = frozenset()) -> list[Outcome]:
        """Run ``tasks`` (each after the tasks it needs, matched by key); ``forced`` ids rerun."""
        outcomes: dict[int, Outcome] = {}
        waiting = list(tasks)
        running: list[Running] = []
        with tempfile.TemporaryDirectory(prefix="stochkd-jobs-") as scratch_name, ExitStack() as stack:
            scratch = Path(scratch_name)
            if self.mps:
                [gpu] = self.gpus  # one GPU, shared (the command line refuses --mps with more)
                self.task_env = stack.enter_context(mps_daemon(scratch / "mps", self.store.root / "logs" / "mps",
                                                               gpu))
            try:
                while waiting or running:
                    self._start_ready(waiting, running, outcomes, forced, scratch)
                    self.show([(r.task.id, _read_status(r.status)) for r in running])
                    finished = [r for r in running if r.process.poll() is not None]
                    for item in finished:
                        running.remove(item)
                        self._record(outcomes, self._finish(item))
                    if not finished:
                        time.sleep(POLL_S)
            except Terminated:
                _stop(running)  # SIGTERM may have come to this process alone (Kubernetes, docker stop)
                raise
            except KeyboardInterrupt:
                # Ctrl-C at the terminal reached every task already; a second one would cut their
                # checkpoints short, so they get time to stop on their own first.
                _stop(running, grace_s=10.0)
                raise
            except BaseException:
                _stop(running)
                raise
        return [outcomes[id(t)] for t in tasks]

    def _record(self, outcomes: dict[int, Outcome], outcome: Outcome) -> None:
        outcomes[id(outcome.task)] = outcome
        self.on_done(outcome)

    def _start_ready(self, waiting, running, outcomes, forced, scratch) -> None:
        for task in startable(waiting, outcomes, lambda: [r.task for r in running], forced, self.store,
                              self._record):
            alone = runs_alone(task)
            if len(running) >= self.jobs or (running and (alone or any(runs_alone(r.task) for r in running))):
                continue
            waiting.remove(task)
            running.append(self._launch(task, task.id in forced, scratch, running))
            if alone:
                return

    def _launch(self, task: Task, forced: bool, scratch: Path, running: list[Running]) -> Running:
        label = f"{task.stage}-{task.key[:12]}"
        paths = {name: scratch / f"{label}.{name}" for name in ("spec", "status", "result", "stderr")}
        paths["spec"].write_bytes(pickle.dumps({
            "task": task, "root": str(self.store.root), "device": self.task_device, "forced": forced,
            "checkpoint_interval_s": self.checkpoint_interval_s, "status": str(paths["status"]),
            "estimates": {task.id: self.estimates.get(task.id)},
            "result": str(paths["result"])}))
        # A benchmark, running alone, measures the GPU as a deployment has it: without MPS.
        sharing = bool(self.task_env) and not runs_alone(task)
        env = client_environment(self.task_env) if sharing else dict(os.environ)
        gpu = None
        if sharing:
            gpu = self.gpus[0]
        elif self.gpus and self.device != "cpu":
            # Every task gets a GPU: a free one, else the one running fewest tasks (more jobs than GPUs
            # share them round robin; a task given none would land on GPU 0 beside a pinned one).
            load = {g: sum(r.gpu == g for r in running) for g in self.gpus}
            gpu = min(self.gpus, key=lambda g: load[g])
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if not self.gpus or self.device == "cpu":
            # Each of the N tasks gets its share of the cores (a benchmark, running alone, all of them).
            share = self.cores if runs_alone(task) else max(1, self.cores // self.jobs)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(share)
        self.on_start(task)
        with open(paths["stderr"], "w") as stderr:
            process = subprocess.Popen([sys.executable, *self.worker, str(paths["spec"])],
                                       stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        return Running(task, process, paths["status"], paths["result"], paths["stderr"], gpu)

    def _finish(self, item: Running) -> Outcome:
        code = item.process.returncode
        if code == 0:
            result = json.loads(item.result.read_text())
            artifact = self.store.lookup(item.task.stage, item.task.key)
            if artifact is None:
                raise ArtifactError(f"{item.task.id} finished, but its artifact is not in {self.store.root}")
            return Outcome(item.task, artifact, ran=result["ran"], wall_s=result["wall_s"])
        text = item.stderr.read_text()
        lines = text.strip().splitlines() or [f"exit code {code}"]
        if code == 130:
            raise KeyboardInterrupt(lines[-1])
        if code in (143, 129):
            raise Terminated(lines[-1], code - 128)
        if code == 2:
            raise PipelineError(f"{item.task.id}: {lines[-1]}")
        log = write_failure_log(self.store, item.task, text)
        raise PipelineError(f"{item.task.id} failed ({lines[-1]}); the tasks running beside it were stopped with "
                            f"their checkpoints saved; its whole error is in {log}")


def write_failure_log(store: ArtifactStore, task: Task, text: str) -> Path:
    """A failed task's whole error, in ``artifacts/logs/``, where its one-line message points."""
    log = store.root / "logs" / f"{task.stage}-{task.variant or 'all'}-{task.key[:12]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(text)
    return log


def _read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _stop(running: list[Running], grace_s: float = 0.0) -> None:
    """SIGTERM to every running task (training saves its checkpoint and stops between two steps; a
    task started from a background shell ignores Ctrl-C but not this), then wait for them. With
    ``grace_s``, tasks first get that long to stop on their own."""
    deadline = time.monotonic() + grace_s
    for item in running:
        try:
            item.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for item in running:
        if item.process.poll() is None:
            try:
                item.process.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + 120
    for item in running:
        try:
            item.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            item.process.kill()
            item.process.wait()
