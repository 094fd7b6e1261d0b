"""bench/train_throughput.py's plain loop, the reference the benchmarks hold the pipeline's step
against, times real training steps: every step a full batch."""

import pytest
import torch
from torch import nn

from bench.train_throughput import CLASSES, reference_images_per_s, synthetic_data


class BatchSizes(nn.Module):
    """A linear classifier on mean pixels that notes the size of every batch it is given."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, classes)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(len(x))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("batches", [1, 2, 5])
def test_the_plain_loop_warms_up_and_times_full_batches_only(batches):
    model = BatchSizes(CLASSES)
    assert reference_images_per_s(model, synthetic_data(16 * batches), torch.device("cpu"), batch=16, steps=4) > 0
    assert model.seen == [16] * (3 + 4)  # three warm-up steps, four timed ones


def test_the_plain_loop_refuses_data_smaller_than_a_batch():
    with pytest.raises(ValueError, match="8 training images make no batch of 16"):
        reference_images_per_s(BatchSizes(CLASSES), synthetic_data(8), torch.device("cpu"), batch=16, steps=1)
