"""What running tasks on a Ray cluster costs against running them side by side here (--jobs), on one
machine, one mode after the other in one run:

    python bench/cluster_overhead.py                                   # the tests' tiny profile
    python bench/cluster_overhead.py profiles/cifar100_cpu.yaml --set teacher.training.epochs=1 \\
        --set student.training.epochs=1 --set data.train_images=5000

Each mode runs the profile's training stages (--until distill) from an empty artifacts folder, then
once more with every task cached (what is left is starting up: the command, and for a cluster joining
it). Modes: --jobs N (N = this machine's cores, one thread a task); --cluster local, where every task
works in the head's artifacts folder; and --cluster local with STOCHKD_CLUSTER_COPY=1, where every
task receives its inputs and returns its artifact as bundles, as on nodes that share no folder. A
cluster task asks for one CPU (cluster.cpus_per_task), so both run as many tasks at once with one
thread each. Per task: (mode's wall - its cached wall) - (--jobs's wall - its cached wall), over the
number of tasks. Figures printed, nothing asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(profile: str, extra: list[str], artifacts: Path, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "pipeline", "run", profile, "--until", "distill", "--artifacts", str(artifacts),
               *extra]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return wall


def task_seconds(artifacts: Path) -> list[float]:
    return [json.loads(p.read_text())["timings"]["wall_s"] for p in (artifacts / "store").glob("*/*/manifest.json")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", nargs="?", default=str(ROOT / "tests" / "profiles" / "tiny.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [item for pair in args.set for item in ("--set", pair)]
    cores = os.cpu_count() or 1
    modes = {f"--jobs {cores}": (["--jobs", str(cores)], {}),
             "--cluster local": (["--cluster", "local"], {}),
             "--cluster local, copied": (["--cluster", "local"], {"STOCHKD_CLUSTER_COPY": "1"})}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="cluster-overhead-") as scratch:
        for number, (name, (options, env_extra)) in enumerate(modes.items()):
            artifacts = Path(scratch) / f"mode{number}"
            env = {**os.environ, **env_extra}
            first = timed_run(args.profile, overrides + options, artifacts, env)
            cached = timed_run(args.profile, overrides + options, artifacts, env)
            seconds = task_seconds(artifacts)
            rows[name] = {"wall": first, "cached": cached, "tasks": len(seconds), "task_s": sum(seconds)}
            print(f"{name}: {first:.1f} s, {cached:.1f} s cached, {len(seconds)} tasks, "
                  f"{sum(seconds):.1f} s of task time", flush=True)
    base = rows[f"--jobs {cores}"]
    print(f"\n{Path(args.profile).name} {' '.join(args.set)} · {cores} cores")
    print("| mode | wall s | cached (start-up) s | tasks | task time s | per task vs --jobs s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        extra = ((row["wall"] - row["cached"]) - (base["wall"] - base["cached"])) / row["tasks"]
        print(f"| {name} | {row['wall']:.1f} | {row['cached']:.1f} | {row['tasks']} | {row['task_s']:.1f} | "
              f"{extra:+.1f} |")


if __name__ == "__main__":
    main()
