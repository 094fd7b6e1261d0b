"""Which process group the ranks join, decided before torchrun starts them."""

import re

import pytest
import torch

from stages.common.distributed import backend_for, rank_rows
from stages.common.errors import PipelineError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this node has ``n`` visible GPUs."""
    def visible(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return visible


def test_cpu_processes_use_gloo_even_beside_gpus(gpus):
    gpus(0)
    assert backend_for("auto", 4) == "gloo"
    gpus(8)
    assert backend_for("cpu", 4) == "gloo"  # NCCL would need a GPU per process


def test_a_gpu_per_process_uses_nccl(gpus):
    gpus(4)
    assert backend_for("auto", 4) == backend_for("cuda", 2) == "nccl"


@pytest.mark.parametrize("visible, requested, nproc, message", [
    (1, "auto", 2, "--nproc-per-node 2: this node has 1 visible GPU and each process takes one; use "
                   "--nproc-per-node 1, or --device cpu to train on CPU processes"),
    (2, "cuda", 4, "--nproc-per-node 4: this node has 2 visible GPUs"),
    (0, "cuda", 2, "--device cuda: no CUDA device is visible"),
    (4, "cuda:1", 2, "--device cuda:1 with --nproc-per-node 2: each process takes a GPU of its own"),
])
def test_a_device_the_processes_cannot_share_is_refused_before_they_start(gpus, visible, requested, nproc,
                                                                           message):
    gpus(visible)
    with pytest.raises(PipelineError, match="^" + re.escape(message)):
        backend_for(requested, nproc)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 10, 80, 128])
@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_each_rank_computes_tensor_splits_slice_of_the_batch(rows, ranks):
    slices = [rank_rows(rows, rank, ranks) for rank in range(ranks)]
    batch = torch.arange(rows)
    assert [batch[a:b].tolist() for a, b in slices] == [part.tolist() for part in batch.tensor_split(ranks)]
    if rows >= ranks:
        assert all(b > a for a, b in slices)
