"""The training loop shared by the teacher and every student, and batched evaluation."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainingConfig
from pipeline.errors import PipelineError
from stages.augment import augmented_batch, normalize, padded_channels_last
from stages.checkpoint import save_model
from stages.context import no_progress
from stages.data import ImageDataset

# loss(model output, normalized images, labels) -> scalar. The output is the logits, or for a model
# that returns more (see WithGroups) a tuple whose first element is the logits.
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    return torch.device(preference)


def lr_factor(recipe: TrainingConfig, epoch: float) -> float:
    """LR multiplier at a (0-based, fractional) point of training: the schedule, times a linear
    warm-up over the first ``warmup_epochs``."""
    if recipe.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / recipe.epochs))
    else:
        factor = recipe.lr_gamma ** sum(epoch >= m for m in recipe.lr_milestones)
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        factor *= epoch / recipe.warmup_epochs
    return factor


@dataclass
class TrainResult:
    epochs: int
    wall_s: float
    images_per_second: float  # steady state: after the first step, which carries any compilation
    final_train_loss: float
    final_train_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    first_step_s: float = 0.0


class DeviceData:
    """A dataset held as uint8 tensors on the training device, with its normalization constants."""

    def __init__(self, data: ImageDataset, device: torch.device) -> None:
        self.device = device
        self.x_train = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous().to(device)
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)

        self._padded: tuple[int, torch.Tensor] | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last on the uint8 batch (a no-op after a crop) is a quarter of the bytes of float.
        return normalize(images.contiguous(memory_format=torch.channels_last), self.mean, self.std)

    def training_batch(self, index: torch.Tensor, augmentation, generator: torch.Generator) -> torch.Tensor:
        """The normalized, augmented float batch of the training images ``index``."""
        if not (augmentation.crop_padding or augmentation.horizontal_flip):
            return self.prepare(self.x_train[index])
        padding = augmentation.crop_padding
        if self._padded is None or self._padded[0] != padding:
            # Padded once for the whole run: each batch is then a single gather.
            self._padded = (padding, padded_channels_last(self.x_train, padding))
        images = augmented_batch(self._padded[1], index, padding, augmentation.horizontal_flip, generator)
        return self.prepare(images)


def train(model: nn.Module, data: DeviceData, recipe: TrainingConfig, *, augmentation, seed: int,
          loss_fn: LossFunction = cross_entropy_loss, progress=no_progress,
          label: str = "training") -> TrainResult:
    """SGD on the recipe's schedule. ``progress(description, total)`` is a context manager factory."""
    from pipeline import distributed

    device = data.device
    model.to(device=device, memory_format=torch.channels_last).train()
    # One fused kernel for the whole update on a GPU; PyTorch's default (foreach) elsewhere.
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, fused=True if device.type == "cuda" else None)
    bf16 = recipe.precision == "bf16" or (recipe.precision is None and device.type == "cuda")
    # Under torchrun each rank trains on its slice of every global batch (same order, same seed).
    ranks, rank = distributed.world_size(), distributed.rank()
    net = distributed.data_parallel(model, device) if ranks > 1 else model
    if recipe.compile:
        net = torch.compile(net)
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    history: list[dict[str, float]] = []
    first_step_s = None
    start = time.perf_counter()
    with progress(label, recipe.epochs * steps_per_epoch) as advance:
        for epoch in range(recipe.epochs):
            order = torch.randperm(n, generator=generator).to(device)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device)
            # The first batch whose loss is not finite, kept on the device: no sync per step.
            first_bad = torch.full((), -1, dtype=torch.long, device=device)
            for step in range(steps_per_epoch):
                warming = epoch < (recipe.warmup_epochs or 0)
                if step == 0 or warming:
                    # The LR changes once an epoch, and at every step while warming up.
                    point = epoch + (step + 1) / steps_per_epoch if warming else epoch
                    for group in optimizer.param_groups:
                        group["lr"] = recipe.lr * lr_factor(recipe, point)
                index = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                images, labels = data.training_batch(index, augmentation, generator), data.y_train[index]
                if ranks > 1:
                    images, labels = images.chunk(ranks)[rank], labels.chunk(ranks)[rank]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    output = net(images)
                    loss = loss_fn(output, images, labels)
                logits = output[0] if isinstance(output, tuple) else output
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(labels)
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()),
                                        torch.full_like(first_bad, step + 1), first_bad)
                # Logits are (B, C), or (peers, B, C) for models trained together: average over peers.
                hits = logits.detach().argmax(-1) == labels
                correct += hits.view(-1, len(labels)).float().mean(0).sum()
                advance(1)
                if first_step_s is None:
                    synchronize(device)
                    first_step_s = time.perf_counter() - start
            distributed.all_reduce_sum(loss_sum)
            distributed.all_reduce_sum(correct)
            epoch_loss = float(loss_sum) / n
            if not math.isfinite(epoch_loss):
                batch = int(first_bad) if int(first_bad) > 0 else "?"
                raise PipelineError(f"{label}: the loss became {epoch_loss} in epoch {epoch + 1}, batch {batch} of "
                                    f"{steps_per_epoch}; nothing was saved for this stage. Lower the learning rate "
                                    f"({recipe.lr}) or add training.warmup_epochs, and run again")
            history.append({"epoch": epoch + 1, "loss": epoch_loss, "train_accuracy": float(correct) / n,
                            "lr": optimizer.param_groups[0]["lr"]})
            advance(0, f"{label} · epoch {epoch + 1}/{recipe.epochs} · loss {epoch_loss:.3f}")
    wall = time.perf_counter() - start
    steps = recipe.epochs * steps_per_epoch
    steady = (recipe.epochs * n - min(n, recipe.batch_size)) / (wall - first_step_s) if steps > 1 else n / wall
    return TrainResult(recipe.epochs, wall, steady, history[-1]["loss"], history[-1]["train_accuracy"], history,
                       first_step_s)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WithGroups(nn.Module):
    """A network whose forward pass returns (logits, group feature maps), for attention transfer."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network.forward_with_groups(x)


def fit_and_save(ctx, spec, data: ImageDataset, recipe: TrainingConfig, *, augmentation, seed: int,
                 device: torch.device, loss_fn: LossFunction = cross_entropy_loss, with_groups: bool = False,
                 label: str) -> tuple[nn.Module, dict]:
    """Build ``spec``, train it, evaluate it on the test split and save it into ``ctx.output``.
    ``with_groups`` trains it with a forward pass that also returns its group feature maps."""
    torch.manual_seed(seed)
    model = spec.build()
    result = train(WithGroups(model) if with_groups else model, DeviceData(data, device), recipe, augmentation=augmentation, seed=seed,
                   loss_fn=loss_fn, progress=ctx.progress, label=label)
    test_accuracy = accuracy(predict(model, data.x_test, data.mean, data.std, device), data.y_test)
    save_model(model, spec, ctx.output)
    (ctx.output / "history.json").write_text(json.dumps(result.history, indent=1))
    return model, {
        "test_accuracy": test_accuracy,
        "final_train_loss": result.final_train_loss,
        "train_wall_s": result.wall_s,
        "train_images_per_second": result.images_per_second,
        "train_first_step_s": result.first_step_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "arch": spec.arch,
        "device": str(device),
    }


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
