import math

import pytest
import torch

from stages.nets.models.plain import SkipBlock
from stages.mutual import Peers, mutual_loss
from stages.nets.stochastic_depth import drop_paths


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
    from stages.nets.architectures import build_model, resolve_skips

    proposed = build_model("mobilenet", 10, 3, 0.5, "batch", resolve_skips("mobilenet", 0.5, None))
    conventional = build_model("mobilenet", 10, 3, 1.0, "batch", resolve_skips("mobilenet", 1.0, None))
    assert drop_paths(proposed) and not drop_paths(conventional)
    assert not any(m.skip for m in conventional.modules() if isinstance(m, SkipBlock))


def test_sequential_update_steps_each_peer_from_the_others_latest_predictions():
    """DML's Algorithm 1 with plain SGD, checked against the two updates written out by hand."""
    from stages.mutual import peer_loss, sequential_update

    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    lr = 0.5
    start = {name: p.detach().clone() for name, p in Peers([a, b]).named_parameters()}

    def sgd(module, loss):
        grads = torch.autograd.grad(loss, list(module.parameters()))
        return [p.detach() - lr * g for p, g in zip(module.parameters(), grads)]

    # By hand: a learns from b's predictions, then b from a's *updated* predictions.
    a_new = sgd(a, peer_loss(a(x), b(x).unsqueeze(0), y, 1.0, 1.0))
    a_updated = torch.nn.functional.linear(x, *a_new)
    b_new = sgd(b, peer_loss(b(x), a_updated.unsqueeze(0), y, 1.0, 1.0))

    peers = Peers([a, b])
    optimizer = torch.optim.SGD(peers.parameters(), lr=lr)
    logits, loss = sequential_update(peers, 1.0, 1.0)(peers, optimizer, x, y, False)
    assert logits.shape == (2, 5, 3) and torch.isfinite(loss)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), a_new))
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(b.parameters(), b_new))
    # A simultaneous step would have moved b from a's old predictions: a different point.
    b_old = torch.nn.Linear(4, 3)
    with torch.no_grad():
        b_old.weight.copy_(start["peers.1.weight"])
        b_old.bias.copy_(start["peers.1.bias"])
        a_old = torch.nn.functional.linear(x, start["peers.0.weight"], start["peers.0.bias"])
    b_simultaneous = sgd(b_old, peer_loss(b_old(x), a_old.unsqueeze(0), y, 1.0, 1.0))
    assert not torch.allclose(b.weight, b_simultaneous[0], atol=1e-6)


def test_sequential_mutual_learning_trains_through_the_training_loop():
    import numpy as np

    from stages.common.config import Augmentation, TrainingConfig
    from stages.nets.architectures import build_model
    from stages.training.data import ImageDataset
    from stages.mutual import sequential_update
    from stages.training.loop import DeviceData, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 64)
    data = DeviceData(ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,)), torch.device("cpu"))
    torch.manual_seed(0)
    peers = Peers([build_model("resnet8", 4, 1, 0.5), build_model("resnet8", 4, 1, 0.5)])
    result = train(peers, data, TrainingConfig(epochs=2, batch_size=16, lr=0.05),
                   augmentation=Augmentation(crop_padding=0, horizontal_flip=False), seed=0,
                   update=sequential_update(peers, 1.0, 1.0))
    assert len(result.history) == 2 and all(np.isfinite(h["loss"]) for h in result.history)


def test_sequential_updates_under_torchrun_are_refused_in_one_line(monkeypatch, tmp_path):
    from stages.common import distributed
    from stages.common.config import DataConfig, MutualConfig
    from stages.common.errors import PipelineError
    from stages.context import StageContext
    from stages.mutual import train_peers

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    params = {"seed": 0, "data": DataConfig(dataset="digits"),
              "mutual": MutualConfig(peers=("resnet8", "resnet8"), update="sequential")}
    with pytest.raises(PipelineError, match="mutual.update = 'sequential' steps one peer at a time"):
        train_peers(StageContext(params=params, inputs={}, output=tmp_path, variant="proposed"))
