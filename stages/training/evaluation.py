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


def validation_metrics(model: nn.Module, data: ImageDataset, device: torch.device) -> dict[str, float]:
    """The accuracy on the held-out validation split, where the data has one."""
    if data.x_val is None:
        return {}
    return {"validation_accuracy": accuracy(predict(model, data.x_val, data.mean, data.std, device), data.y_val)}
