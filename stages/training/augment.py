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


def augmentation_draws(n: int, padding: int, flip: bool, width: int, generator: torch.Generator | None,
                       device: torch.device) -> torch.Tensor:
    """A batch's random crops and flips, (3, n) int64: for each image the first row of its crop, the
    column its first output column comes from, and the step to the next (-1 where it is mirrored).
    The offsets and flips are drawn on the CPU in the order of ``random_flip(random_crop(...))``, so
    the batch is the same; turning them into a start and a step here leaves the step one kernel to
    make each image's columns. For a GPU the tensor is left in pinned memory, so that its copy to the
    device does not block (a blocking copy would wait for the previous step to finish)."""
    draws = torch.zeros((3, n), dtype=torch.long)
    draws[2] = 1
    if padding:
        draws[0] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        draws[1] = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if flip:
        mirrored = (torch.rand(n, generator=generator) < 0.5).long()
        draws[1] += mirrored * (width - 1)
        draws[2] -= 2 * mirrored
    return draws.pin_memory() if device.type == "cuda" else draws


def pixel_grid(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The row and column positions of an image, shaped (1, height, 1) and (1, 1, width): made once
    per run, so that a step spends no kernel on them."""
    return (torch.arange(height, device=device).view(1, height, 1),
            torch.arange(width, device=device).view(1, 1, width))


def gathered_batch(padded: torch.Tensor, index: torch.Tensor, draws: torch.Tensor,
                   grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The images ``index`` of a ``padded_channels_last`` dataset, each cropped back to the size of
    ``grid`` (``pixel_grid``) and mirrored as ``draws`` (``augmentation_draws``) says, in one gather;
    (N, C, H, W) in channels-last memory. Device work only, no host-side decision, so a CUDA graph
    can hold it: one kernel for the rows, one for the columns, one for the gather."""
    n = len(index)
    rows_at, columns_at = grid
    top, first_column, column_step = (row.view(n, 1, 1) for row in draws.to(padded.device, non_blocking=True))
    # (n, 1, 1), (n, h, 1) and (n, 1, w) broadcast to (n, h, w) inside the gather.
    rows, columns = rows_at + top, torch.addcmul(first_column, column_step, columns_at)
    return padded[index.view(n, 1, 1), rows, columns].permute(0, 3, 1, 2)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float, ``(x / 255 - mean) / std`` per channel, in the memory format of
    ``images``. In place on the new float tensor: the same arithmetic, without three temporaries."""
    return images.float().div_(255.0).sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))
