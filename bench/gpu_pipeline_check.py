"""The pipeline's own commands on a GPU, end to end: what the unit tests cannot show there.

    python bench/gpu_pipeline_check.py                 # on a GPU machine
    python bench/gpu_pipeline_check.py --device cpu    # the same commands on a CPU (gloo instead of NCCL)

1. ``run profiles/quickstart.yaml --until distill --jobs 3`` with ``training.capture_step`` for the teacher and
   the students: the captured step (batch, augmentation and epoch sums inside the graph) through the CLI, and
   tasks side by side on one GPU (``--mps``: under the scheduler's MPS daemon). Prints each task's headline and
   the wall time.
2. A teacher under torchrun with one rank (``--nnodes 1:1``, so NCCL on a GPU), stopped with SIGTERM after its
   second epoch, then rerun: prints the exit codes, and whether the resumed ``model.pt`` equals an
   uninterrupted run's to the bit (and, when it does not, whether two uninterrupted runs do).

Nothing is asserted: every figure is printed, with exit codes, for results/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "profiles" / "quickstart.yaml"


def pipeline(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


def environment() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}


def run(command: list[str]) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment())
    return done.returncode, time.perf_counter() - start, done.stdout + done.stderr


def teacher_weights(artifacts: Path) -> dict[str, str]:
    """sha256 of each teacher's ``model.pt`` in ``artifacts``, by cache key."""
    return {folder.name: hashlib.sha256((folder / "model.pt").read_bytes()).hexdigest()[:16]
            for folder in sorted((artifacts / "store" / "teacher").glob("*")) if (folder / "model.pt").exists()}


def largest_difference(a: Path, b: Path) -> float:
    """The largest difference between the weights of the first teacher in two artifact folders."""
    sys.path.insert(0, str(REPO))
    from stages.nets.checkpoint import load_model

    left, right = (load_model(sorted((p / "store" / "teacher").glob("*/model.pt"))[0].parent).state_dict()
                   for p in (a, b))
    return max(float((left[k].float() - right[k].float()).abs().max()) for k in left
               if left[k].is_floating_point())


def captured_quickstart(device: str, work: Path, mps: bool) -> None:
    settings = ["--set", "teacher.training.capture_step=true", "--set", "student.training.capture_step=true"]
    artifacts = work / "quickstart"
    sharing = ["--mps"] if mps else []
    code, seconds, output = run(pipeline("run", str(QUICKSTART), "--until", "distill", "--jobs", "3", *sharing,
                                         "--device", device, "--artifacts", str(artifacts), *settings))
    print(f"1. run quickstart --until distill --jobs 3{' --mps' if mps else ''}, captured steps, --device {device}: "
          f"exit {code}, {seconds:.1f} s", flush=True)
    if code != 0:
        print(output[-4000:])
        return
    code, _, output = run(pipeline("status", str(QUICKSTART), "--json", "--artifacts", str(artifacts), *settings))
    if code != 0:
        print(output[-2000:])
        return
    for task in json.loads(output)["tasks"]:
        if task["state"] != "to run":  # the stages after distill are not part of this check
            print(f"   {task['task']:32} {task['state']:8} {task['headline'] or ''}")


def stopped_and_resumed(device: str, work: Path, epochs: int) -> None:
    settings = ["--device", device, "--nnodes", "1:1", "--set", f"teacher.training.epochs={epochs}",
                "--set", "teacher.training.capture_step=false"]

    def teacher(folder: str) -> tuple[int, float, str]:
        return run(pipeline("teacher", str(QUICKSTART), "--artifacts", str(work / folder), *settings))

    code, seconds, output = teacher("reference")
    print(f"2. teacher under torchrun, one rank, {epochs} epochs, uninterrupted: exit {code}, {seconds:.1f} s",
          flush=True)
    if code != 0:
        print(output[-4000:])
        return
    start = time.perf_counter()
    process = subprocess.Popen(pipeline("teacher", str(QUICKSTART), "--artifacts", str(work / "stopped"), *settings),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment())
    seen = []
    for line in process.stdout:
        seen.append(line)
        if f"epoch 2/{epochs}" in line:
            process.send_signal(signal.SIGTERM)
            break
    rest, _ = process.communicate(timeout=120)
    stopped_output = "".join(seen) + rest
    said = [line for line in stopped_output.splitlines() if "stop" in line.lower() or "error" in line.lower()]
    print(f"   SIGTERM after epoch 2: exit {process.returncode} after {time.perf_counter() - start:.1f} s; "
          + " | ".join(said[-3:]), flush=True)
    if process.returncode == 1 or "Traceback" in stopped_output:
        print(stopped_output[-4000:])
    code, seconds, output = teacher("stopped")
    print(f"   rerun: exit {code}, {seconds:.1f} s", flush=True)
    if code != 0:
        print(output[-4000:])
        return
    reference, resumed = teacher_weights(work / "reference"), teacher_weights(work / "stopped")
    print(f"   model.pt sha256, uninterrupted {reference}, stopped and resumed {resumed}: "
          + ("equal" if reference == resumed else "DIFFERENT"), flush=True)
    if reference != resumed:
        print(f"   largest weight difference {largest_difference(work / 'reference', work / 'stopped'):.3g}")
        teacher("again")
        again = teacher_weights(work / "again")
        print(f"   a second uninterrupted run: {again}: "
              + ("equal to the first" if again == reference else "different from the first too (GPU arithmetic "
                 f"is not repeatable here: largest difference "
                 f"{largest_difference(work / 'reference', work / 'again'):.3g})"), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=8, help="the stopped teacher's epochs (8: about 80 s on an H200)")
    parser.add_argument("--only", choices=["quickstart", "torchrun"], default=None)
    parser.add_argument("--mps", action="store_true", help="run the quickstart's tasks under --mps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.only in (None, "quickstart"):
            captured_quickstart(args.device, work, args.mps)
        if args.only in (None, "torchrun"):
            stopped_and_resumed(args.device, work, args.epochs)


if __name__ == "__main__":
    main()
