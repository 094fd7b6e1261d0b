"""Accuracy measured by two torchrun ranks, each on its slice of the images: the figure one process
gives for rank 0's model, on both ranks."""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from stages.nets.architectures import build_model
from stages.training.evaluation import predict, split_accuracy
from tests.processes import on_two_gloo_ranks

CPU = torch.device("cpu")
MEAN, STD = (0.5,), (0.25,)


def case(rank: int = 0):
    """A model with BatchNorm statistics, 37 images and labels; rank 1's statistics differ, as on CPUs
    each rank's follow its own slices."""
    torch.manual_seed(0)
    model = build_model("resnet8", 4, 1, 1.0, "batch")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_mean.add_(3.0 * rank)
    images = np.random.default_rng(0).integers(0, 256, (37, 8, 8, 1), dtype=np.uint8)
    labels = np.random.default_rng(1).integers(0, 4, 37)
    return model, images, labels


def rank_accuracy(rank: int, folder: str) -> None:
    model, images, labels = case(rank)
    Path(folder, f"rank-{rank}.txt").write_text(repr(split_accuracy(model, images, labels, MEAN, STD, CPU)))


def test_the_ranks_share_the_images_and_report_rank_0s_models_accuracy(tmp_path):
    on_two_gloo_ranks(rank_accuracy, str(tmp_path))
    model, images, labels = case(0)
    one_process = split_accuracy(model, images, labels, MEAN, STD, CPU)
    assert [float((tmp_path / f"rank-{r}.txt").read_text()) for r in (0, 1)] == [one_process] * 2
    drifted, _, _ = case(1)  # rank 1's own statistics would have given another figure
    mixed = np.concatenate([predict(model, images[:19], MEAN, STD, CPU), predict(drifted, images[19:], MEAN, STD, CPU)])
    assert float((mixed.argmax(1) == labels).mean()) != one_process
