"""TensorBoard event files of a training run, where the ``tracking`` extra (tensorboard) is installed:
``tensorboard --logdir artifacts/`` then shows every run of every profile side by side, each under
its artifact's key (so the points of a sweep are told apart by their keys) and its model's name."""

from __future__ import annotations

from pathlib import Path


def write_tensorboard(history: list[dict[str, float]], folder: Path, run: str) -> bool:
    """Per-epoch scalars of ``history`` under ``folder/tensorboard/run``; False where TensorBoard is
    not installed (nothing is written then)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    with SummaryWriter(log_dir=str(folder / "tensorboard" / run)) as writer:
        for entry in history:
            for name, value in entry.items():
                if name != "epoch" and isinstance(value, (int, float)):
                    writer.add_scalar(name, value, int(entry["epoch"]))
    return True
