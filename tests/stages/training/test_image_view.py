"""data.input_size: images read as their centred square, evaluated at timm's centre crop, the same
pixels predict feeds a deployed model; bad, grey and 16-bit files counted, not fatal."""

import numpy as np
import pytest
from PIL import Image

from stages.common.config import Augmentation, DataConfig
from stages.training.data import load_dataset
from stages.training.image_view import EvaluationView, centre_square


def _folder(root, size=(30, 20), per_class=3):
    rng = np.random.RandomState(0)
    for split, count in (("train", per_class), ("test", 2)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for j in range(count):
                pixels = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{j}.png")
    return root


def test_the_centre_square_of_a_wide_image_is_its_middle():
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, 5:15] = 200
    square = centre_square(Image.fromarray(pixels), 10)
    assert square.size == (10, 10) and np.all(np.asarray(square) == 200)


def test_evaluation_keeps_the_central_crop_pct_resized_to_the_input_size():
    pixels = np.zeros((16, 16, 1), np.uint8)
    pixels[4:12, 4:12] = 255
    view = EvaluationView(8, crop_pct=0.5, interpolation="bilinear")
    assert np.all(view.of_arrays(pixels[None])[0] == 255)
    assert view.of_arrays(np.zeros((3, 16, 16, 3), np.uint8)).shape == (3, 8, 8, 3)


def test_a_folder_with_an_input_size_holds_evaluated_test_images_and_stored_training_squares(tmp_path):
    root = _folder(tmp_path)
    data = load_dataset(DataConfig(dataset="folder", root=str(root), input_size=8, crop_pct=0.8,
                                   augmentation=Augmentation(crop_padding=0, random_resized_crop=(0.5, 1.0))))
    assert data.x_train.shape == (6, 10, 10, 3)  # stored at ceil(8 / 0.8)
    assert data.x_test.shape == (4, 8, 8, 3) and data.image_size == 8 and data.stored_side == 10
    assert data.as_evaluated(data.x_train[:2]).shape == (2, 8, 8, 3)


def test_predict_feeds_a_model_the_pixels_evaluation_scored(tmp_path):
    from stages.deploy.deployed import load_image

    root = _folder(tmp_path, size=(37, 23))
    cfg = DataConfig(dataset="folder", root=str(root), input_size=12, crop_pct=0.875, interpolation="bicubic")
    data = load_dataset(cfg)
    resize = data.view.entries(data.stored_side)
    first_test = sorted((root / "test" / "cat").iterdir())[0]
    pixels, notes = load_image(first_test, 12, 3, resize)
    assert np.array_equal(pixels, data.x_test[0])
    assert notes and "as evaluated" in notes[0]


def test_unreadable_grey_and_16_bit_files_and_test_only_classes_are_counted(tmp_path):
    root = _folder(tmp_path)
    (root / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((20, 30), 90, np.uint8)).save(root / "train" / "dog" / "grey.png")
    Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)).save(root / "train" / "dog" / "deep.png")
    (root / "test" / "emu").mkdir()
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "test" / "emu" / "0.png")
    data = load_dataset(DataConfig(dataset="folder", root=str(root), input_size=8))
    assert len(data.y_train) == 8 and len(data.y_test) == 4 and data.class_names == ("cat", "dog")
    notes = " | ".join(data.notes)
    assert "skipped 1 unreadable image file" in notes and "broken.png" in notes
    assert "converted 1 image" in notes and "scaled 1 16-bit image" in notes
    assert "left out 1 test or validation image of 1 class without training images (emu)" in notes


@pytest.mark.parametrize("settings, message", [
    ({"crop_pct": 0.9}, "set data.input_size too"),
    ({"augmentation": {"crop_padding": 0, "random_resized_crop": [0.5, 1.0]}}, "set data.input_size"),
    ({"input_size": 32, "augmentation": {"random_resized_crop": [0.5, 1.0]}}, "set augmentation.crop_padding to 0"),
    ({"input_size": 32, "augmentation": {"crop_padding": 0, "random_resized_crop": [0.9, 0.5]}}, "smallest area"),
])
def test_resizing_settings_that_cannot_work_are_refused(settings, message):
    from stages.common.profile import Profile

    with pytest.raises(ValueError, match=message):
        Profile.model_validate({"data": settings})


def test_cifar_arrays_can_feed_networks_at_another_size():
    data = load_dataset(DataConfig(dataset="digits", input_size=16, test_images=20, train_images=50))
    assert data.x_train.shape[1:] == (8, 8, 1) and data.x_test.shape[1:] == (16, 16, 1) and data.image_size == 16


@pytest.mark.parametrize("augmentation", [Augmentation(crop_padding=0, random_resized_crop=(0.3, 1.0)),
                                          Augmentation(crop_padding=1, horizontal_flip=True)])
def test_training_batches_reach_the_networks_at_the_input_size(augmentation):
    import torch

    from stages.training.loop import DeviceData

    data = load_dataset(DataConfig(dataset="digits", input_size=12, train_images=40, test_images=10,
                                   augmentation=augmentation))
    device_data = DeviceData(data, torch.device("cpu"))
    index = torch.arange(8)
    draws = device_data.draws(8, augmentation, torch.Generator().manual_seed(0))
    images, labels = device_data.training_batch(index, draws, augmentation)
    assert images.shape == (8, 1, 12, 12) and images.dtype == torch.float32 and torch.isfinite(images).all()
    assert torch.equal(labels, device_data.y_train[:8])


def test_a_teacher_normalized_otherwise_sees_the_pixels_the_student_sees(tmp_path):
    import torch

    from stages.nets.checkpoint import ModelSpec, load_model, save_model
    from stages.nets.teaching import Renormalized, teaching_teacher

    torch.manual_seed(0)
    spec = ModelSpec("resnet8", 10, 3, 8, 1.0, "batch", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    save_model(spec.build(), spec, tmp_path)
    student = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    teacher = teaching_teacher(tmp_path, 1.0, "batch", None, torch.device("cpu"), inputs=student)
    assert isinstance(teacher, Renormalized)
    pixels = torch.rand(4, 3, 8, 8)
    as_student = (pixels - torch.tensor(student[0]).view(1, 3, 1, 1)) / torch.tensor(student[1]).view(1, 3, 1, 1)
    as_teacher = (pixels - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        torch.testing.assert_close(teacher(as_student), load_model(tmp_path).eval()(as_teacher), rtol=1e-4, atol=1e-5)
    same = teaching_teacher(tmp_path, 1.0, "batch", None, torch.device("cpu"), inputs=(spec.mean, spec.std))
    assert not isinstance(same, Renormalized)
