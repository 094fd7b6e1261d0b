"""What each torchrun rank computes of every batch, checked one rank at a time in this process (the
process group stood in for: no collective changes which rows or coins a rank takes)."""

import numpy as np
import pytest
import torch

from stages.common import distributed
from stages.common.config import Augmentation, TrainingConfig
from stages.common.errors import PipelineError
from stages.nets import stochastic_depth
from stages.nets.architectures import build_model
from stages.training.data import ImageDataset
from stages.training.loop import DeviceData, cross_entropy_loss, train

AUGMENT = Augmentation(crop_padding=2, horizontal_flip=True)
RECIPE = TrainingConfig(epochs=1, batch_size=16, lr=0.05)


def data(images: int) -> DeviceData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, images)
    return DeviceData(ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,)), torch.device("cpu"))


def as_rank(monkeypatch, rank: int, ranks: int) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: ranks)
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "data_parallel", lambda model, device, share=None: model)
    monkeypatch.setattr(distributed, "all_reduce_sum", lambda tensor: None)
    monkeypatch.setattr(distributed, "agree", lambda signum, save: (signum, save))


def trained(monkeypatch, images: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The per-row coins every stochastic block drew, and each step's rows: augmented image and label."""
    coins, rows = [], []
    draw = stochastic_depth.row_coins

    def recorded(*args):
        coins.append(draw(*args))
        return coins[-1]

    def loss(logits, images_, labels_):
        rows.append(torch.cat([images_.flatten(1), labels_.view(-1, 1).float()], dim=1))
        return cross_entropy_loss(logits, labels=labels_, images=images_)

    monkeypatch.setattr(stochastic_depth, "row_coins", recorded)
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 1, 0.5, "sample")
    train(model, data(images), RECIPE, augmentation=AUGMENT, seed=3, loss_fn=loss)
    return coins, rows


@pytest.mark.parametrize("ranks", [2, 3])
def test_the_ranks_images_labels_and_per_row_coins_together_are_one_processs(monkeypatch, ranks):
    """83 images in batches of 16: the last batch of 3 splits unevenly over two ranks."""
    with monkeypatch.context() as patch:
        whole_coins, whole_rows = trained(patch, 83)
    by_rank = []
    for rank in range(ranks):
        with monkeypatch.context() as patch:
            as_rank(patch, rank, ranks)
            by_rank.append(trained(patch, 83))
    assert len(whole_coins) == 6 * 2 and all(len(c) == len(whole_coins) for c, _ in by_rank)  # 6 steps, 2 blocks
    for step, whole in enumerate(whole_coins):
        assert torch.equal(torch.cat([c[step] for c, _ in by_rank]), whole)
    for step, whole in enumerate(whole_rows):
        assert torch.equal(torch.cat([r[step] for _, r in by_rank]), whole)


def test_a_last_batch_smaller_than_the_number_of_processes_is_refused_before_training(monkeypatch):
    as_rank(monkeypatch, 0, 2)
    steps = []
    with pytest.raises(PipelineError, match="training.batch_size 16 over 81 training images leaves a last batch of 1, "
                                            "which 2 processes cannot share"):
        train(build_model("resnet8", 4, 1, 1.0, "batch"), data(81), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=lambda *args: steps.append(1))
    assert not steps
