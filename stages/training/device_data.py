"""The training images as a training step takes them: uint8 on the training device (or, for a packed
dataset, memory-mapped on the host and sent over batch by batch), each batch augmented, resized to
the networks' input size and normalized there."""

from __future__ import annotations

import torch

from stages.training.augment import (augmentation_draws, gathered_batch, normalize, padded_channels_last,
                                     pixel_grid)
from stages.training.data import ImageDataset
from stages.training.packed import ImageRows
from stages.training.resized_crop import resized, resized_crop_draws, resized_crops


class DeviceData:
    """A dataset held as uint8 tensors on the training device, with its normalization constants."""

    def __init__(self, data: ImageDataset, device: torch.device) -> None:
        self.device = device
        # A packed dataset stays memory-mapped on the host: each batch's rows are read and sent over.
        self.streamed = data.x_train if isinstance(data.x_train, ImageRows) else None
        self.x_train = None if self.streamed is not None else \
            torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous().to(device)
        self.stored_side = data.stored_side
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)
        self.input_size = data.image_size  # the networks'; the images are stored at data.stored_side

        # (padding, the padded training images, their pixel grid), made at the first batch.
        self._padded: tuple[int, torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last on the uint8 batch (a no-op after a crop) is a quarter of the bytes of float.
        return normalize(images.contiguous(memory_format=torch.channels_last), self.mean, self.std)

    def draws(self, n: int, augmentation, generator: torch.Generator) -> torch.Tensor | None:
        """The random crops and flips of a batch of ``n`` (see ``augmentation_draws``), or None
        without augmentation."""
        if augmentation.random_resized_crop is not None:
            return resized_crop_draws(n, self.stored_side, augmentation.random_resized_crop,
                                      augmentation.horizontal_flip, generator, self.device)
        if not (augmentation.crop_padding or augmentation.horizontal_flip):
            return None
        return augmentation_draws(n, augmentation.crop_padding, augmentation.horizontal_flip,
                                  self.stored_side, generator, self.device)

    def _streamed_rows(self, index: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, S, S) training images ``index``, read from the memory-mapped dataset."""
        rows = torch.from_numpy(self.streamed[index.cpu().numpy()])
        if self.device.type == "cuda":
            rows = rows.pin_memory()
        return rows.to(self.device, non_blocking=True).permute(0, 3, 1, 2)

    def training_batch(self, index: torch.Tensor, draws: torch.Tensor | None,
                       augmentation) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalized, augmented float images of the training images ``index``, and their labels:
        device work only, which a captured step holds."""
        images = self._streamed_rows(index) if self.streamed is not None else None
        if augmentation.random_resized_crop is not None:
            images = self.x_train[index] if images is None else images
            return self.prepare(resized_crops(images, draws, self.input_size)), self.y_train[index]
        if draws is None:
            images = self.x_train[index] if images is None else images
            return self.prepare(resized(images, self.input_size)), self.y_train[index]
        padding = augmentation.crop_padding
        if images is not None:  # padded batch by batch
            padded = padded_channels_last(images, padding)
            grid = pixel_grid(self.stored_side, self.stored_side, self.device)
            rows = torch.arange(len(index), device=self.device)
            cropped = gathered_batch(padded, rows, draws, grid)
            return self.prepare(resized(cropped, self.input_size)), self.y_train[index]
        if self._padded is None or self._padded[0] != padding:
            # Padded once for the whole run: each batch is then a single gather.
            self._padded = (padding, padded_channels_last(self.x_train, padding),
                            pixel_grid(*self.x_train.shape[2:], self.device))
        _, padded, grid = self._padded
        images = gathered_batch(padded, index, draws, grid)
        return self.prepare(resized(images, self.input_size)), self.y_train[index]
