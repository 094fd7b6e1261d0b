"""Random resized crops (Inception-style, as torchvision's RandomResizedCrop draws them) for a whole
batch at once, on whatever device holds the images: the training augmentation of ImageNet models.

The crops are drawn on the CPU from the run's generator, like every other augmentation here, and
carried out on the device by one ``roi_align``: each image's box resized to the input size, with as
many samples per output pixel as the box has input pixels per output pixel, so a large box shrinks
without aliasing and a small one is interpolated bilinearly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

RATIO = (3 / 4, 4 / 3)
TRIES = 10  # torchvision's attempts at a box that fits, before it falls back to the whole image


def resized_crop_draws(n: int, side: int, scale: tuple[float, float], flip: bool,
                       generator: torch.Generator | None, device: torch.device,
                       ratio: tuple[float, float] = RATIO) -> torch.Tensor:
    """The boxes of a batch of ``n`` crops from square images ``side`` pixels wide, and their flips:
    float (5, n), rows x1, y1, x2, y2 (pixel edges) and mirrored (1.0 or 0.0).

    As torchvision draws one: an area fraction uniform in ``scale``, a log aspect ratio uniform in
    ``ratio``; the first of ten such boxes that fits, at a uniform position, else the whole image."""
    area = side * side
    target = area * torch.empty(n, TRIES).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(n, TRIES).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    widths = torch.round(torch.sqrt(target * aspect))
    heights = torch.round(torch.sqrt(target / aspect))
    fits = (widths > 0) & (widths <= side) & (heights > 0) & (heights <= side)
    first = torch.where(fits.any(1), fits.float().argmax(1), torch.full((n,), -1))
    rows = torch.arange(n)
    chosen = first.clamp(min=0)
    width = torch.where(first >= 0, widths[rows, chosen], torch.full((n,), float(side)))
    height = torch.where(first >= 0, heights[rows, chosen], torch.full((n,), float(side)))
    placing = torch.rand(2, n, generator=generator)
    left = torch.floor(placing[0] * (side - width + 1))
    top = torch.floor(placing[1] * (side - height + 1))
    mirrored = (torch.rand(n, generator=generator) < 0.5).float() if flip else torch.zeros(n)
    draws = torch.stack([left, top, left + width, top + height, mirrored])
    return draws.pin_memory() if device.type == "cuda" else draws


def resized_crops(images: torch.Tensor, draws: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, S, S) images cropped to their ``draws`` boxes (``resized_crop_draws``), resized to
    ``size`` and mirrored where drawn: float (N, C, size, size), pixel values 0-255."""
    from torchvision.ops import roi_align

    n = images.shape[0]
    draws = draws.to(images.device, non_blocking=True)
    boxes = torch.cat([torch.arange(n, device=images.device, dtype=torch.float32).view(n, 1), draws[:4].t()], 1)
    # sampling_ratio 0: per box, ceil(box size / output size) samples per output pixel (an area average).
    out = roi_align(images.float(), boxes, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
    return torch.where(draws[4].view(n, 1, 1, 1) > 0, out.flip(3), out)


def resized(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) images, resized to ``size`` x ``size`` with antialiasing; float, values 0-255."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
