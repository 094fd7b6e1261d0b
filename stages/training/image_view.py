"""How an image reaches a network's input size, where the profile sets one (``data.input_size``): the
geometry that evaluation, calibration and ``predict`` share, so that the accuracy a run reports is
the accuracy of what ``predict`` does with an image file.

An image file is read as its centred square, ``stored`` pixels wide (``data.image_size``); arrays
(CIFAR, an .npz, a packed dataset) already are such squares. Evaluation keeps the central ``crop_pct``
of the square's side and resizes it to the input size, as timm evaluates (resize to
input / crop_pct, centre crop). Pillow does the resizing, with its antialiasing filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FILTERS = ("bilinear", "bicubic")


def _filter(name: str):
    from PIL import Image

    return {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[name]


def centre_square(image, side: int, interpolation: str = "bilinear"):
    """The centred square of a Pillow image (its short side), resized to ``side`` pixels."""
    width, height = image.size
    short = min(width, height)
    left, top = (width - short) / 2, (height - short) / 2
    if (width, height) == (side, side):
        return image
    return image.resize((side, side), _filter(interpolation), box=(left, top, left + short, top + short))


def stored_side(input_size: int, crop_pct: float) -> int:
    """The side images are stored at by default: the evaluation crop is then input_size pixels."""
    return math.ceil(input_size / crop_pct)


@dataclass(frozen=True)
class EvaluationView:
    """The centre ``crop_pct`` of a square image, resized to ``input_size``."""
    input_size: int
    crop_pct: float = 1.0
    interpolation: str = "bilinear"

    def of_image(self, image):
        """A Pillow image (square, as stored) as evaluation shows it."""
        width, height = image.size
        side_w, side_h = width * self.crop_pct, height * self.crop_pct
        left, top = (width - side_w) / 2, (height - side_h) / 2
        size = (self.input_size, self.input_size)
        if image.size == size and self.crop_pct == 1.0:
            return image
        return image.resize(size, _filter(self.interpolation), box=(left, top, left + side_w, top + side_h))

    def of_arrays(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) squares as evaluation shows them, (N, input_size, input_size, C)."""
        from PIL import Image

        n, _, _, channels = images.shape
        out = np.empty((n, self.input_size, self.input_size, channels), np.uint8)
        for i in range(n):
            pixels = images[i] if channels == 3 else images[i, :, :, 0]
            out[i] = np.asarray(self.of_image(Image.fromarray(pixels))).reshape(out.shape[1:])
        return out

    def entries(self, stored: int) -> dict:
        """What a deployed model's input contract says of it, for ``predict``."""
        return {"stored_side": stored, "crop_pct": self.crop_pct, "interpolation": self.interpolation}
