"""Comparing two trained networks' weights (parameters and buffers), for the training tests."""

import torch


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def largest_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a.state_dict().values(),
                                                                          b.state_dict().values()))
