"""What the pipeline's training step does beyond the network: the PyTorch operators that launch a
kernel to make the batch (gather, crops, flips, normalization, labels) and to count the step in the
epoch's sums (loss, hits, the non-finite check). A captured step replays each as a kernel of its own;
a minimal loop fed with ready, normalized images has none of them. Counted with torch.profiler on
the CPU: the operators are the same on a GPU.

    python bench/step_overhead_ops.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import synthetic_data  # noqa: E402

from stages.common.config import Augmentation  # noqa: E402
from stages.training.loop import DeviceData  # noqa: E402
from stages.training.run_state import RunState  # noqa: E402

# Operators that only describe a tensor differently: no kernel.
VIEWS = {"aten::view", "aten::expand", "aten::permute", "aten::unbind", "aten::detach", "aten::select",
         "aten::slice", "aten::alias", "aten::as_strided", "aten::reshape", "aten::chunk", "aten::_reshape_alias"}


def launched(run) -> list[str]:
    """The top-level operators ``run()`` calls that do work: views left out, and ``to`` only where it
    copies."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    names = []
    for event in prof.events():
        if not event.name.startswith("aten::") or event.cpu_parent is not None or event.name in VIEWS:
            continue
        if event.name == "aten::to" and not any(c.name == "aten::_to_copy" for c in event.cpu_children):
            continue
        names.append(event.name)
    return names


def step_overhead(batch: int = 128) -> tuple[list[str], list[str]]:
    """The kernel-launching operators that make a batch (crops and flips) and that count it."""
    data = DeviceData(synthetic_data(4 * batch), torch.device("cpu"))
    augmentation = Augmentation(crop_padding=4, horizontal_flip=True)
    index = torch.arange(batch)
    draws = data.draws(batch, augmentation, torch.Generator().manual_seed(0))
    data.training_batch(index, draws, augmentation)  # pads the images once, as the first step does
    run = RunState()
    run.start_epoch(torch.randperm(4 * batch), torch.device("cpu"))
    logits, loss, labels = torch.randn(batch, 100), torch.tensor(2.0), torch.randint(0, 100, (batch,))
    return (launched(lambda: data.training_batch(index, draws, augmentation)),
            launched(lambda: run.count(logits, loss, labels)))


def main() -> None:
    batch = 128
    made, counted = step_overhead(batch)
    print(f"the batch (crops and flips, batch {batch}): {len(made)} operators: {', '.join(made)}")
    print(f"the epoch's sums and the non-finite check: {len(counted)} operators: {', '.join(counted)}")
    print(f"in all: {len(made) + len(counted)} kernels a step beyond the network's")


if __name__ == "__main__":
    main()
