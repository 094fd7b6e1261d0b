"""A stand-in for pipeline.task_worker in the scheduler's tests: it behaves by the task's params
(sleep this long, fail, or note being stopped) and commits a real artifact when it succeeds."""

import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path

# The repository first: this file's folder, which Python puts first, holds tests/stages and
# tests/pipeline, which would otherwise stand in for the packages of the same names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
spec = pickle.loads(Path(sys.argv[1]).read_bytes())
task = spec["task"]
behaviour = task.params
log = Path(behaviour["log"])
stopped = []
for signum in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, and what the scheduler stops its tasks with
    signal.signal(signum, lambda *_: stopped.append(True))
started = time.time()
if behaviour.get("fail"):
    time.sleep(behaviour.get("fail_after", 0.0))
    print("Traceback (most recent call last):\nRuntimeError: boom", file=sys.stderr)
    sys.exit(1)
while time.time() - started < behaviour.get("seconds", 0.0) and not stopped:
    time.sleep(0.02)
with open(log, "a") as out:
    out.write(json.dumps({"task": task.id, "start": started, "end": time.time(), "stopped": bool(stopped),
                          "omp": os.environ.get("OMP_NUM_THREADS"),
                          "mps": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
                          "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": spec["device"]}) + "\n")
if stopped:
    print("stopped between two steps; checkpoint saved", file=sys.stderr)
    sys.exit(130)
from pipeline.store import ArtifactStore  # noqa: E402

store = ArtifactStore(Path(spec["root"]))
scratch = store.begin(task.stage, task.key)
(scratch / "out.txt").write_text(task.id)
store.commit(scratch, task.stage, task.key, {"stage": task.stage, "metrics": {}})
Path(spec["result"]).write_text(json.dumps({"ran": True, "wall_s": time.time() - started}))
