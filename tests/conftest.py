import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR100_NPZ = Path(os.environ.get("STOCHKD_CIFAR100_NPZ", REPO.parent / "shared" / "datasets" / "cifar100.npz"))


@pytest.fixture
def cifar100_npz() -> Path:
    if not CIFAR100_NPZ.is_file():
        pytest.skip(f"CIFAR-100 .npz not found at {CIFAR100_NPZ} (set STOCHKD_CIFAR100_NPZ to its path)")
    return CIFAR100_NPZ
