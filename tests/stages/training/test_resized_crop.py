"""Random resized crops for a whole batch: torchvision's distribution of boxes, carried out by one roi_align."""

import math

import pytest
import torch

from stages.training.resized_crop import resized, resized_crop_draws, resized_crops


def test_boxes_fit_inside_the_image_with_areas_and_ratios_in_range():
    generator = torch.Generator().manual_seed(0)
    draws = resized_crop_draws(4000, 64, (0.2, 0.9), True, generator, torch.device("cpu"))
    left, top, right, bottom, mirrored = draws
    width, height = right - left, bottom - top
    assert (left >= 0).all() and (top >= 0).all() and (right <= 64).all() and (bottom <= 64).all()
    area = width * height / 64**2
    # Rounding a box to whole pixels moves its area a little past the range.
    assert area.min() > 0.2 - 0.05 and area.max() < 0.9 + 0.05
    ratio = width / height
    assert ratio.min() > 3 / 4 - 0.1 and ratio.max() < 4 / 3 + 0.1
    assert 0.45 < float(mirrored.mean()) < 0.55
    assert float(torch.log(ratio).mean()) == pytest.approx(0.0, abs=0.02)  # log-uniform about 1


def test_the_same_generator_draws_the_same_boxes():
    first = resized_crop_draws(16, 32, (0.08, 1.0), True, torch.Generator().manual_seed(3), torch.device("cpu"))
    again = resized_crop_draws(16, 32, (0.08, 1.0), True, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert torch.equal(first, again)


def test_a_whole_image_box_is_the_image_and_a_flip_mirrors_it():
    images = torch.randint(0, 256, (2, 3, 12, 12), dtype=torch.uint8)
    draws = torch.tensor([[0.0, 0.0], [0.0, 0.0], [12.0, 12.0], [12.0, 12.0], [0.0, 1.0]])
    out = resized_crops(images, draws, 12)
    assert torch.equal(out[0], images[0].float())
    assert torch.equal(out[1], images[1].float().flip(2))


def test_a_box_is_cropped_then_resized():
    images = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).to(torch.uint8)
    draws = torch.tensor([[2.0], [4.0], [6.0], [8.0], [0.0]])  # columns 2-5, rows 4-7
    out = resized_crops(images, draws, 2)
    # An area average of each 2x2 block of the box.
    expected = images.float()[:, :, 4:8, 2:6].view(1, 1, 2, 2, 2, 2).mean((3, 5))
    torch.testing.assert_close(out, expected)


def test_resizing_keeps_a_batch_at_its_size_and_scales_others():
    images = torch.rand(2, 3, 16, 16) * 255
    assert resized(images, 16) is images
    assert resized(images, 24).shape == (2, 3, 24, 24)
    assert math.isclose(float(resized(torch.full((1, 1, 8, 8), 7.0), 5).mean()), 7.0, rel_tol=1e-5)
