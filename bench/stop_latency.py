"""How long a training run takes to stop after SIGTERM, in one process and under torchrun: the tiny
test profile's teacher gets SIGTERM as soon as it prints the end of epoch 2, and every line it prints
afterwards is shown with the seconds since the signal (torchrun's own line says when it received it;
"interrupted: ..." says at which step training stopped).

    python bench/stop_latency.py                    # one process, then two under torchrun (gloo, CPU)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "profiles" / "tiny.yaml"


def stopped(*extra: str) -> None:
    with tempfile.TemporaryDirectory() as artifacts:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "teacher", str(TINY), "--artifacts", artifacts, "--device", "cpu",
             "--set", "teacher.training.epochs=20", "--checkpoint-every", "3600", *extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
        sent = None
        for line in process.stdout:
            if sent is not None:
                print(f"  +{time.monotonic() - sent:5.2f} s  {line.rstrip()[:150]}")
            elif "epoch 2/20" in line:
                process.send_signal(signal.SIGTERM)
                sent = time.monotonic()
                print(f"  SIGTERM after: {line.strip()}")
        print(f"  exit {process.wait()}")


def main() -> None:
    print("one process")
    stopped()
    print("torchrun, two processes")
    stopped("--nproc-per-node", "2")


if __name__ == "__main__":
    main()
