"""Batched augmentation and normalization on uint8 image tensors, on whatever device holds them.

The whole batch is cropped and flipped with tensor indexing, so training has no per-image Python
work and no DataLoader workers (which only cost time on a 2-core machine or a fast GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad (N, C, H, W) by ``padding`` and crop each image back to H x W at a random offset."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device="cpu").to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n, 1, 1), generator=generator, device="cpu").to(images.device)
    rows = (torch.arange(h, device=images.device).view(1, h, 1) + dy).expand(n, h, w)
    cols = (torch.arange(w, device=images.device).view(1, 1, w) + dx).expand(n, h, w)
    batch = torch.arange(n, device=images.device).view(n, 1, 1).expand(n, h, w)
    # Advanced indexing over (batch, rows, cols) gathers (N, H, W, C); move channels back.
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    flip = torch.rand(images.shape[0], generator=generator, device="cpu") < 0.5
    flip = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(flip, images.flip(3), images)


def padded_channels_last(images: torch.Tensor, padding: int) -> torch.Tensor:
    """A whole (N, C, H, W) dataset zero-padded once and stored (N, H + 2p, W + 2p, C), the layout
    ``gathered_batch`` gathers from."""
    return F.pad(images, (padding,) * 4).permute(0, 2, 3, 1).contiguous()


def augmentation_draws(n: int, padding: int, flip: bool, generator: torch.Generator | None,
                       device: torch.device) -> torch.Tensor:
    """A batch's random crop offsets and flips, (3, n) int64: rows, columns, mirrored. Drawn on the
    CPU in that order, which is that of ``random_flip(random_crop(...))``, so the batch is the same;
    for a GPU the tensor is left in pinned memory, so that its copy to the device does not block (a
    blocking copy would wait for the previous step to finish)."""
    draws = torch.zeros((3, n), dtype=torch.long)
    if padding:
        draws[0] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        draws[1] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if flip:
        draws[2] = torch.rand(n, generator=generator) < 0.5
    return draws.pin_memory() if device.type == "cuda" else draws


def gathered_batch(padded: torch.Tensor, index: torch.Tensor, draws: torch.Tensor, padding: int,
                   flip: bool) -> torch.Tensor:
    """The images ``index`` of a ``padded_channels_last`` dataset, each cropped back to its size at
    the offset ``draws`` gives and (with ``flip``) mirrored where it says, in one gather; (N, C, H, W)
    in channels-last memory. Device work only, no host-side decision, so a CUDA graph can hold it."""
    n = len(index)
    h, w = padded.shape[1] - 2 * padding, padded.shape[2] - 2 * padding
    device = padded.device
    dy, dx, mirrored = (row.view(n, 1, 1) for row in draws.to(device, non_blocking=True))
    columns = torch.arange(w, device=device).view(1, 1, w)
    if flip:
        columns = torch.where(mirrored.bool(), w - 1 - columns, columns)
    rows = (torch.arange(h, device=device).view(1, h, 1) + dy).expand(n, h, w)
    cols = (columns + dx).expand(n, h, w)
    return padded[index.view(n, 1, 1).expand(n, h, w), rows, cols].permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, ``(x / 255 - mean) / std`` per channel, in the memory format of
    ``images``. In place on the new float tensor: the same arithmetic, without three temporaries."""
    return images.float().div_(255.0).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
