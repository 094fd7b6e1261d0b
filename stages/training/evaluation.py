"""Batched evaluation: logits for uint8 images, top-1 accuracy, and the validation split's."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stages.training.augment import normalize
from stages.training.data import ImageDataset


def predict(model: nn.Module, images: np.ndarray, mean, std, device: torch.device,
            batch_size: int | None = None) -> np.ndarray:
    """Logits for uint8 (N, H, W, C) images, batched, in inference mode. Batches of 1024 on a GPU;
    256 on a CPU, where larger ones measured slower (they leave the caches)."""
    batch_size = batch_size or (1024 if device.type == "cuda" else 256)
    model.to(device=device, memory_format=torch.channels_last).eval()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2)
            x = normalize(chunk.contiguous(memory_format=torch.channels_last), mean_t, std_t)
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def split_accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std,
                   device: torch.device) -> float:
    """Top-1 accuracy of ``model`` on uint8 ``images``.

    Under torchrun every rank must call it (the training stages do): each predicts its own slice of
    the images with rank 0's BatchNorm statistics, and the ranks add up their hits, so N processes
    share the work and each gets the figure of the model rank 0 saves."""
    from stages.common import distributed

    ranks = distributed.world_size()
    if ranks == 1:
        return accuracy(predict(model, images, mean, std, device), labels)
    distributed.take_rank_0_buffers(model)
    start, stop = distributed.rank_rows(len(images), distributed.rank(), ranks)
    hits = 0
    if stop > start:
        hits = int((predict(model, images[start:stop], mean, std, device).argmax(axis=1) == labels[start:stop]).sum())
    return sum(int(h) for [h] in distributed.gather([hits])) / len(images)


def validation_metrics(model: nn.Module, data: ImageDataset, device: torch.device) -> dict[str, float]:
    """The accuracy on the held-out validation split, where the data has one (see split_accuracy)."""
    if data.x_val is None:
        return {}
    return {"validation_accuracy": split_accuracy(model, data.x_val, data.y_val, data.mean, data.std, device)}


def accuracy_on_test(model: nn.Module, data: ImageDataset, device: torch.device) -> float:
    """The accuracy on the test split (see split_accuracy)."""
    return split_accuracy(model, data.x_test, data.y_test, data.mean, data.std, device)
