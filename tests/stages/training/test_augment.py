import torch

from stages.training.augment import normalize, random_crop, random_flip


def test_random_crop_shifts_each_image_within_the_padding():
    images = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).repeat(32, 1, 1, 1)
    out = random_crop(images, 1, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    shifted = 0
    for img in out[:, 0]:
        # Every crop is the original shifted by at most one pixel, zeros filling the gap.
        found = any(torch.equal(img[max(0, -dy):4 - max(0, dy), max(0, -dx):4 - max(0, dx)],
                                images[0, 0, max(0, dy):4 - max(0, -dy), max(0, dx):4 - max(0, -dx)])
                    for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert found
        shifted += not torch.equal(img, images[0, 0])
    assert shifted > 0


def test_zero_padding_leaves_images_unchanged():
    images = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(random_crop(images, 0), images)


def test_random_flip_mirrors_about_half():
    images = torch.arange(4, dtype=torch.uint8).view(1, 1, 1, 4).repeat(400, 1, 1, 1)
    out = random_flip(images, torch.Generator().manual_seed(0))
    flipped = (out[:, 0, 0, 0] == 3).float().mean().item()
    assert 0.4 < flipped < 0.6
    assert all(torch.equal(o, images[0]) or torch.equal(o, images[0].flip(2)) for o in out)


def test_normalize_per_channel():
    images = torch.full((1, 2, 1, 1), 255, dtype=torch.uint8)
    out = normalize(images, torch.tensor([0.5, 0.0]), torch.tensor([0.5, 2.0]))
    assert torch.allclose(out.flatten(), torch.tensor([1.0, 0.5]))


def test_one_gather_from_the_padded_dataset_equals_crop_then_flip():
    from stages.training.augment import augmentation_draws, gathered_batch, padded_channels_last, pixel_grid

    data = torch.randint(0, 255, (50, 3, 8, 6), dtype=torch.uint8)  # not square: rows and columns differ
    index = torch.randperm(50, generator=torch.Generator().manual_seed(1))[:16]
    for padding, flip in ((4, True), (4, False), (0, True), (2, True)):
        expected = data[index]
        generator = torch.Generator().manual_seed(7)
        if padding:
            expected = random_crop(expected, padding, generator)
        if flip:
            expected = random_flip(expected, generator)
        draws = augmentation_draws(len(index), padding, flip, 6, torch.Generator().manual_seed(7), data.device)
        out = gathered_batch(padded_channels_last(data, padding), index, draws, pixel_grid(8, 6, data.device))
        assert torch.equal(out, expected)
        assert out.is_contiguous(memory_format=torch.channels_last)
