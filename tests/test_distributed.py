"""Training under torchrun: two CPU processes (gloo) against one, on the tiny profile's teacher."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = Path(__file__).parent / "profiles" / "tiny.yaml"
pytestmark = pytest.mark.slow
# Stated tolerance: per-epoch training loss within 5 % of the single-process run. The global batch,
# its order, its augmentation and the seed are the same; on CPUs each rank's BatchNorm sees only its
# half of the batch (PyTorch synchronizes BatchNorm on GPUs only), and gradients are summed in
# another order.
LOSS_TOLERANCE = 0.05


def teacher(artifacts: Path, *extra: str) -> Path:
    done = subprocess.run([sys.executable, "-m", "pipeline", "teacher", str(TINY), "--artifacts", str(artifacts),
                           *extra], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    assert done.returncode == 0, done.stdout + done.stderr
    folders = [p for p in (artifacts / "store" / "teacher").iterdir()]
    assert len(folders) == 1, folders  # only rank 0 wrote, and nothing half-written stayed behind
    return folders[0]


def test_two_processes_train_like_one_and_cache_under_the_same_key(tmp_path):
    one = teacher(tmp_path / "one")
    two = teacher(tmp_path / "two", "--nproc-per-node", "2")
    assert one.name == two.name
    losses = [[epoch["loss"] for epoch in json.loads((f / "history.json").read_text())] for f in (one, two)]
    for single, parallel in zip(*losses):
        assert abs(parallel - single) <= LOSS_TOLERANCE * single
