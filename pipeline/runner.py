"""Runs a plan: each task is looked up in the store by its key, and run only when absent or forced.

The runner is the only code that touches the store: it hands each stage its inputs' folders and a
fresh output folder, and writes the manifest when the stage returns.
"""

from __future__ import annotations

import importlib
import shutil
from contextlib import ExitStack
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from stages.common import distributed
from stages.common.errors import ArtifactError
from pipeline.fingerprint import key_form
from stages.common.hardware import machine, package_versions
from pipeline.plan import Task
from pipeline.registry import STAGES
from pipeline.store import DISK_FULL, ArtifactStore
from stages.context import StageContext, StageInput, no_progress


@dataclass
class Outcome:
    task: Task
    artifact: StageInput
    ran: bool
    wall_s: float

    @property
    def headline(self) -> str:
        try:
            return STAGES[self.task.stage].headline(self.artifact.metrics)
        except (KeyError, TypeError, ValueError):
            return "(no summary)"


def resolve_stage(function: str) -> Callable[[StageContext], dict[str, Any]]:
    module_name, function_name = function.split(":")
    return getattr(importlib.import_module(module_name), function_name)


class Runner:
    def __init__(self, store: ArtifactStore, *, device: str = "auto", progress=no_progress,
                 on_start: Callable[[Task], None] = lambda task: None,
                 on_done: Callable[[Outcome], None] = lambda outcome: None,
                 on_wait: Callable[[Task, str], None] = lambda task, holder: None,
                 checkpoint_interval_s: float = 60.0, estimates: dict[str, float | None] | None = None,
                 lockstep: bool = False) -> None:
        self.store = store
        self.lockstep = lockstep  # tasks a stage can train together (a row) run in one process
        self.estimates = estimates or {}  # estimated seconds per task id, recorded beside the measured time
        self.checkpoint_interval_s = checkpoint_interval_s
        self.on_wait = on_wait
        self.device = device
        self.progress = progress
        self.on_start = on_start
        self.on_done = on_done

    def run(self, tasks: list[Task], forced: set[str] = frozenset()) -> list[Outcome]:
        """Run ``tasks`` (each after the tasks it needs); ``forced`` task ids rerun even if cached."""
        done: dict[int, Outcome] = {}
        for number, task in enumerate(tasks):
            if id(task) in done:
                continue  # trained in lockstep with an earlier one
            artifact = None
            if task.id not in forced and distributed.rank() == 0:
                artifact = self.store.lookup(task.stage, task.key)
            # Rank 0 alone decides; the other ranks read what it found or wrote.
            if distributed.broadcast(artifact is not None):
                outcome = Outcome(task, artifact or self._written_by_rank_0(task), ran=False, wall_s=0.0)
            elif len(row := self._row_of(task, tasks[number + 1:], done, forced)) > 1:
                for outcome in self._execute_row(row, done, forced):
                    done[id(outcome.task)] = outcome
                    self.on_done(outcome)
                continue
            else:
                outcome = self._execute(task, self._inputs(task, done), task.id in forced)
            done[id(task)] = outcome
            self.on_done(outcome)
        return [done[id(task)] for task in tasks]

    def _row_of(self, task: Task, later: list[Task], done: dict[int, Outcome], forced) -> list[Task]:
        """``task`` and the ``later`` tasks still to run that can train in lockstep with it (--lockstep):
        the same stage, the same data, seed and recipe (the stage's row_key), their inputs ready."""
        decl = STAGES[task.stage]
        if not self.lockstep or decl.together is None or distributed.world_size() > 1:
            return [task]
        row_key = resolve_stage(decl.row_key)
        shared = row_key(task.params)
        if shared is None:
            return [task]
        row, keys = [task], {task.key}
        for other in later:
            if other.stage != task.stage or id(other) in done or other.key in keys:
                continue
            theirs = row_key(other.params)
            if (theirs is not None and key_form(theirs) == key_form(shared)
                    and all(id(n) in done for n in other.needs.values())
                    and (other.id in forced or self.store.lookup(other.stage, other.key) is None)):
                row.append(other)
                keys.add(other.key)
        return row

    def _execute_row(self, row: list[Task], done: dict[int, Outcome], forced) -> list[Outcome]:
        """Train ``row`` in lockstep, each task under its own lock, scratch folder and manifest; those
        another run built meanwhile come from the cache."""
        with ExitStack() as locks:
            outcomes, building = [], []
            for task in row:
                locks.enter_context(self.store.lock(task.stage, task.key,
                                                    on_wait=lambda holder, t=task: self.on_wait(t, holder)))
                built = None if task.id in forced else self.store.lookup(task.stage, task.key)
                if built:
                    outcomes.append(Outcome(task, built, ran=False, wall_s=0.0))
                else:
                    building.append(task)
            if len(building) == 1:
                return [*outcomes, self._execute_here(building[0], self._inputs(building[0], done))]
            return [*outcomes, *self._execute_together(building, done)]

    def _inputs(self, task: Task, done: dict[int, Outcome]) -> dict[str, StageInput]:
        return {role: done[id(t)].artifact for role, t in task.needs.items()}

    def _written_by_rank_0(self, task: Task) -> StageInput:
        artifact = self.store.lookup(task.stage, task.key)
        if artifact is None:
            raise ArtifactError(f"rank {distributed.rank()} cannot see {self.store.folder(task.stage, task.key)}, "
                                f"which rank 0 wrote; on several nodes --artifacts must be a shared folder")
        return artifact

    def _execute(self, task: Task, inputs: dict[str, StageInput], forced: bool = False) -> Outcome:
        if distributed.rank() == 0:
            with self.store.lock(task.stage, task.key, on_wait=lambda holder: self.on_wait(task, holder)):
                # Another run may have built it while this one waited for the lock; the other ranks
                # learn whether this one builds it before they start training with it.
                built = None if forced else self.store.lookup(task.stage, task.key)
                distributed.broadcast(built is None)
                outcome = Outcome(task, built, ran=False, wall_s=0.0) if built else self._execute_here(task, inputs)
            distributed.barrier()
            return outcome
        builds = distributed.broadcast(None)
        if builds and task.stage in distributed.TRAINING_STAGES:
            # Every rank trains its slice of each batch; only rank 0's output is kept.
            with tempfile.TemporaryDirectory() as scratch:
                # They resume from rank 0's checkpoint too, but never write one.
                resolve_stage(STAGES[task.stage].function)(StageContext(
                    params=task.params, inputs=inputs, output=Path(scratch), variant=task.variant,
                    device=self.device, progress=no_progress,
                    checkpoints=self.store.resume_folder(task.stage, task.key)))
        distributed.barrier()
        return Outcome(task, self._written_by_rank_0(task), ran=builds, wall_s=0.0)

    def _execute_here(self, task: Task, inputs: dict[str, StageInput]) -> Outcome:
        stage_function = resolve_stage(STAGES[task.stage].function)
        self.on_start(task)
        scratch = self.store.begin(task.stage, task.key)
        started = datetime.now(timezone.utc)
        clock = time.perf_counter()
        try:
            metrics = stage_function(self._context(task, inputs, scratch))
            wall = time.perf_counter() - clock
            artifact = self.store.commit(scratch, task.stage, task.key, self._manifest(task, metrics, started, wall))
        except BaseException as exc:
            self.store.discard(scratch)
            _raise_disk_full(exc, self.store, [task])
            raise
        return Outcome(task, artifact, ran=True, wall_s=wall)

    def _execute_together(self, row: list[Task], done: dict[int, Outcome]) -> list[Outcome]:
        """The tasks of ``row`` trained by their stage's ``together`` function in one process; each is
        committed with its own manifest, which names the tasks it trained beside."""
        together = resolve_stage(STAGES[row[0].stage].together)
        scratches = {}
        try:
            for task in row:
                self.on_start(task)
                scratches[id(task)] = self.store.begin(task.stage, task.key)
            started = datetime.now(timezone.utc)
            clock = time.perf_counter()
            all_metrics = together([self._context(task, self._inputs(task, done), scratches[id(task)])
                                    for task in row])
            wall = time.perf_counter() - clock
            outcomes = []
            for task, metrics in zip(row, all_metrics):
                manifest = self._manifest(task, metrics, started, wall)
                manifest["timings"]["lockstep_with"] = [t.id for t in row if t is not task]
                artifact = self.store.commit(scratches.pop(id(task)), task.stage, task.key, manifest)
                outcomes.append(Outcome(task, artifact, ran=True, wall_s=wall))
            return outcomes
        except BaseException as exc:
            for scratch in scratches.values():
                self.store.discard(scratch)
            _raise_disk_full(exc, self.store, row)
            raise

    def _context(self, task: Task, inputs: dict[str, StageInput], scratch: Path) -> StageContext:
        return StageContext(params=task.params, inputs=inputs, output=scratch, variant=task.variant,
                            device=self.device, progress=self.progress, shared=self.store.shared_folder(task.stage),
                            checkpoints=self.store.resume_folder(task.stage, task.key),
                            checkpoint_interval_s=self.checkpoint_interval_s)

    def _manifest(self, task: Task, metrics: dict[str, Any], started: datetime, wall: float) -> dict[str, Any]:
        return {
            "stage": task.stage, "variant": task.variant, "version": STAGES[task.stage].version,
            "config": key_form(task.params), "inputs": {r: t.key for r, t in task.needs.items()},
            "metrics": metrics, "seed": task.params.get("seed"),
            "timings": {"started": started.isoformat(), "wall_s": wall,
                        **({"estimated_s": self.estimates[task.id]} if self.estimates.get(task.id) else {})},
            "versions": package_versions(), "machine": machine(), "device_requested": self.device,
        }


def _raise_disk_full(exc: BaseException, store: ArtifactStore, tasks: list[Task]) -> None:
    """A full disk, in one line naming what was lost (nothing finished) and how to go on."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        names = " and ".join(t.id for t in tasks)
        raise ArtifactError(
            f"{exc.filename or store.root}: cannot write {names} ({exc.strerror}); nothing of it "
            f"was kept and finished stages are intact. Free space (or pass --artifacts on another "
            f"disk) and rerun the same command; training resumes from its last checkpoint") from exc


def publish_report(outcomes: list[Outcome], destination: Path) -> Path | None:
    """Copy the report's files to ``destination`` (artifacts/<profile>/), where users look for them."""
    report = next((o for o in outcomes if o.task.stage == "report"), None)
    if report is None:
        return None
    destination.mkdir(parents=True, exist_ok=True)
    for name in report.artifact.manifest["files"]:
        shutil.copy(report.artifact.file(name), destination / name)
    return destination
