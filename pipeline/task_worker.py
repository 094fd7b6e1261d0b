"""Runs one task of a plan in a process of its own, for ``--jobs``: the scheduler hands it the task
(pickled), the store's folder and the run's settings; it reports progress through a status file and
its outcome through a result file. Run as ``python -m pipeline.task_worker SPEC.pickle``.

Exit codes: 0 done, 2 a user-fixable error (its one line on stderr), 130, 143 or 129 stopped by
Ctrl-C, SIGTERM (the scheduler's, after another task failed) or SIGHUP with its training checkpoint
saved, 1 anything else.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path


# How often a task rewrites its status file while it only counts steps: a write and a rename cost about
# a millisecond, half a captured GPU step, and the scheduler polls it a few times a second anyway.
STATUS_EVERY_S = 0.5


def throttled_progress(publish, **extra):
    """A stage's progress callback that hands its latest state (with ``extra``) to ``publish``: at
    once when the description changes (an epoch ends), else at most every STATUS_EVERY_S seconds,
    and when the work ends."""

    @contextmanager
    def progress(description: str, total: int):
        state = {"description": description, "completed": 0, "total": total, **extra}
        published = [0.0]

        def send() -> None:
            publish(dict(state))
            published[0] = time.monotonic()

        def advance(steps: int = 1, description: str | None = None) -> None:
            state["completed"] += steps
            if description:
                state["description"] = description
            if description or time.monotonic() - published[0] >= STATUS_EVERY_S:
                send()

        send()
        try:
            yield advance
        finally:
            send()

    return progress


def status_progress(status: Path):
    """Progress kept in ``status`` (written aside and renamed, so the scheduler never reads half a
    line), as throttled_progress publishes it."""

    def write(state: dict) -> None:
        partial = status.with_name(status.name + ".partial")
        partial.write_text(json.dumps(state))
        os.replace(partial, status)

    return throttled_progress(write)


def main(argv: list[str]) -> int:
    spec = pickle.loads(Path(argv[0]).read_bytes())
    from stages.common.errors import PipelineError, exit_code_of, stop_signals_raise
    from pipeline.runner import Runner
    from pipeline.store import ArtifactStore

    task = spec["task"]
    store = ArtifactStore(Path(spec["root"]), warn=lambda message: print(f"warning: {message}", file=sys.stderr))
    runner = Runner(store, device=spec["device"], progress=status_progress(Path(spec["status"])),
                    checkpoint_interval_s=spec["checkpoint_interval_s"], estimates=spec.get("estimates"))
    try:
        with stop_signals_raise():  # the scheduler stops its tasks with SIGTERM, which background jobs still get
            inputs = {}
            for role, needed in task.needs.items():
                found = store.lookup(needed.stage, needed.key)
                if found is None:
                    raise PipelineError(f"{task.id}: its input {needed.id} is not in {store.root}; "
                                        f"rerun without --jobs")
                inputs[role] = found
            outcome = runner._execute(task, inputs, spec["forced"])
    except PipelineError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"{exc}", file=sys.stderr)
        return exit_code_of(exc)
    except Exception:  # noqa: BLE001 - reported whole, for the scheduler to quote its last line
        traceback.print_exc()
        return 1
    Path(spec["result"]).write_text(json.dumps({"ran": outcome.ran, "wall_s": outcome.wall_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
