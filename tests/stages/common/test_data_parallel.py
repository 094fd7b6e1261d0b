"""The model as DistributedDataParallel wraps it, in two gloo processes on this CPU: the ranks'
gradients averaged where a batch splits unevenly, against one process on the whole batch, and
unused parameters expected only where blocks may be skipped."""

import os

import pytest
import torch
import torch.nn.functional as F

from tests.processes import on_two_gloo_ranks

ROWS = 5  # split 3 and 2 between the two ranks


def batch():
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3), torch.randn(ROWS, 4), torch.randint(0, 3, (ROWS,))


def rank_gradient(rank: int, weighed: bool, folder: str) -> None:
    from stages.common.distributed import SliceShare, data_parallel, rank_rows

    model, x, y = batch()
    share = SliceShare() if weighed else None
    net = data_parallel(model, torch.device("cpu"), share)
    start, stop = rank_rows(ROWS, rank, 2)
    if share is not None:
        share.set(stop - start, ROWS, 2)
    F.cross_entropy(net(x[start:stop]), y[start:stop]).backward()
    torch.save([p.grad for p in model.parameters()], os.path.join(folder, f"rank-{rank}.pt"))


@pytest.mark.parametrize("weighed", [True, False], ids=["weighed-by-slice", "ddp-plain-average"])
def test_uneven_slices_weighed_by_their_images_give_one_processs_gradient(tmp_path, weighed):
    on_two_gloo_ranks(rank_gradient, weighed, str(tmp_path))
    model, x, y = batch()
    F.cross_entropy(model(x), y).backward()
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank-{rank}.pt")
        same = all(torch.allclose(g, p.grad, atol=1e-7, rtol=1e-5) for g, p in zip(got, model.parameters()))
        assert same == weighed  # DDP's plain average of the 3-image and the 2-image means is another gradient


def rank_wrapping(rank: int, folder: str) -> None:
    from stages.common.distributed import data_parallel
    from stages.nets.architectures import build_model
    from stages.nets.stochastic_depth import use_drop_execution

    found = {}
    for execution in ("skip", "mask"):
        model = use_drop_execution(build_model("resnet8", 4, 1, 0.5), execution)
        found[execution] = data_parallel(model, torch.device("cpu")).find_unused_parameters
    found["no drops"] = data_parallel(build_model("resnet8", 4, 1, 1.0), torch.device("cpu")).find_unused_parameters
    torch.save(found, os.path.join(folder, f"rank-{rank}.pt"))


def test_unused_parameters_are_expected_only_where_blocks_may_be_skipped(tmp_path):
    """A skipped block's parameters get no gradient in that step; a masked one is computed (times 0)."""
    on_two_gloo_ranks(rank_wrapping, str(tmp_path))
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank-{rank}.pt") == {"skip": True, "mask": False, "no drops": False}
