import math

import pytest
import torch

from stages.models.plain import SkipBlock
from stages.mutual import Peers, mutual_loss
from stages.stochastic_depth import drop_paths


def _log_softmax(values):
    total = math.log(sum(math.exp(v) for v in values))
    return [v - total for v in values]


def _kl(p_logits, q_logits):
    p, q = _log_softmax(p_logits), _log_softmax(q_logits)
    return sum(math.exp(a) * (a - b) for a, b in zip(p, q))


def test_mutual_loss_matches_hand_computation_for_three_peers():
    logits = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.5]]
    label = 1
    expected = 0.0
    for i, own in enumerate(logits):
        ce = -_log_softmax(own)[label]
        others = [other for j, other in enumerate(logits) if j != i]
        expected += ce + 0.5 * sum(_kl(other, own) for other in others) / len(others)
    value = mutual_loss(torch.tensor(logits).unsqueeze(1), torch.tensor([label]), temperature=1.0, weight=0.5)
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_each_peer_learns_only_from_the_others_detached_outputs():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    mutual_loss(Peers([a, b])(x), y, 1.0, 1.0).backward()
    grad_a = a.weight.grad.clone()
    a.weight.grad = None
    # Peer a's own DML loss alone, with b's outputs as fixed targets, gives the same gradient.
    own = torch.nn.functional.cross_entropy(a(x), y)
    target = torch.softmax(b(x).detach(), -1)
    own = own + (target * (target.log() - torch.log_softmax(a(x), -1))).sum(-1).mean()
    own.backward()
    assert torch.allclose(grad_a, a.weight.grad, atol=1e-6)


def test_proposed_peers_are_stochastic_and_conventional_ones_plain():
    from stages.architectures import build_model, resolve_skips

    proposed = build_model("mobilenet", 10, 3, 0.5, "batch", resolve_skips("mobilenet", 0.5, None))
    conventional = build_model("mobilenet", 10, 3, 1.0, "batch", resolve_skips("mobilenet", 1.0, None))
    assert drop_paths(proposed) and not drop_paths(conventional)
    assert not any(m.skip for m in conventional.modules() if isinstance(m, SkipBlock))
