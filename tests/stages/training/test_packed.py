"""pack-dataset into a folder: memory-mapped arrays that train without being read into memory."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from stages.common.config import Augmentation, DataConfig, TrainingConfig
from stages.common.errors import DataError
from stages.training.data import load_dataset
from stages.training.image_folders import FolderReading, ReadNotes, list_class_folders
from stages.training.packed import ImageRows, pack_folder
from tests.commands import cli


def _folder(root, per_class=6):
    rng = np.random.RandomState(0)
    for split, count in (("train", per_class), ("test", 2)):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / split / name).mkdir(parents=True)
            for j in range(count):
                pixels = rng.randint(0, 256, (18, 26, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a class is its colour
                Image.fromarray(pixels).save(root / split / name / f"{j}.png")
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 cut")
    return root


def test_a_packed_folder_holds_what_reading_the_files_gives(tmp_path):
    root = _folder(tmp_path / "images")
    notes = ReadNotes()
    reading = FolderReading(12, square=True)
    described = pack_folder(list_class_folders(root, notes), tmp_path / "packed", reading, notes, workers=2)
    assert described["images"] == {"train": 18, "test": 6} and "skipped 1 unreadable" in described["notes"][0]
    packed = load_dataset(DataConfig(dataset="folder", root=str(tmp_path / "packed"), input_size=10))
    files = load_dataset(DataConfig(dataset="folder", root=str(root), input_size=10, image_size=12))
    assert isinstance(packed.x_train, ImageRows) and isinstance(packed.x_train.array, np.memmap)
    assert np.array_equal(packed.x_train[np.arange(18)], files.x_train)
    assert np.array_equal(packed.x_test, files.x_test) and np.array_equal(packed.y_train, files.y_train)
    assert packed.mean == pytest.approx(files.mean) and packed.std == pytest.approx(files.std)
    assert packed.notes == files.notes


def test_subsets_of_a_packed_dataset_are_indices_until_read(tmp_path):
    root = _folder(tmp_path / "images")
    notes = ReadNotes()
    pack_folder(list_class_folders(root, notes), tmp_path / "packed", FolderReading(12, square=True), notes)
    data = load_dataset(DataConfig(dataset="folder", root=str(tmp_path / "packed"), validation_images=3,
                                   train_images=9, input_size=12))
    assert isinstance(data.x_train, ImageRows) and len(data.x_train) == 9 and data.x_val.shape == (3, 12, 12, 3)
    rows = data.x_train[np.array([4, 0, 7])]
    assert np.array_equal(rows[1], data.x_train[np.array([0])][0])


def test_training_streams_a_packed_dataset_batch_by_batch(tmp_path):
    from stages.nets.architectures import build_model
    from stages.training.loop import DeviceData, train

    root = _folder(tmp_path / "images")
    notes = ReadNotes()
    pack_folder(list_class_folders(root, notes), tmp_path / "packed", FolderReading(12, square=True), notes)
    augmentation = Augmentation(crop_padding=0, random_resized_crop=(0.5, 1.0))
    data = load_dataset(DataConfig(dataset="folder", root=str(tmp_path / "packed"), input_size=8,
                                   augmentation=augmentation))
    device_data = DeviceData(data, torch.device("cpu"))
    assert device_data.x_train is None and device_data.streamed is data.x_train
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 3)
    result = train(model, device_data, TrainingConfig(epochs=2, batch_size=8, lr=0.05), augmentation=augmentation,
                   seed=0)
    assert result.epochs == 2 and np.isfinite(result.final_train_loss)
    padded = Augmentation(crop_padding=2)
    train(model, DeviceData(data, torch.device("cpu")), TrainingConfig(epochs=1, batch_size=8), augmentation=padded,
          seed=0)


def test_a_damaged_pack_is_one_line_and_a_repack_changes_the_key(tmp_path):
    from pipeline.fingerprint import data_identity

    root = _folder(tmp_path / "images")
    notes = ReadNotes()
    pack_folder(list_class_folders(root, notes), tmp_path / "packed", FolderReading(12, square=True), notes)
    cfg = DataConfig(dataset="folder", root=str(tmp_path / "packed"))
    before = data_identity(cfg)["content"]
    assert before.startswith("packed:")
    pack_folder(list_class_folders(root, ReadNotes()), tmp_path / "packed", FolderReading(14, square=True), ReadNotes())
    assert data_identity(cfg)["content"] != before
    description = json.loads((tmp_path / "packed" / "pack.json").read_text())
    with pytest.raises(DataError, match="was packed at 14 pixels"):
        load_dataset(DataConfig(dataset="folder", root=str(tmp_path / "packed"), image_size=description["side"] + 1))
    (tmp_path / "packed" / "x_train.npy").write_bytes(b"\x93NUMPY cut")
    with pytest.raises(DataError, match="a damaged packed dataset .*pack it again"):
        load_dataset(cfg)


def test_pack_dataset_writes_a_folder_and_an_interrupted_pack_leaves_nothing(tmp_path, monkeypatch):
    root = _folder(tmp_path / "images")
    done = cli("pack-dataset", "folder", str(root), str(tmp_path / "packed"), "--image-size", "12", "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert "18 training and 6 test images of 12x12, 3 classes; skipped 1 unreadable" in done.stdout
    refused = cli("pack-dataset", "folder", str(root), str(tmp_path / "other"))
    assert refused.returncode == 2 and "give --image-size N" in refused.stderr

    import stages.training.packed as packed

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(packed, "_write_split", interrupted)
    notes = ReadNotes()
    with pytest.raises(KeyboardInterrupt):
        pack_folder(list_class_folders(root, notes), tmp_path / "cut", FolderReading(12, square=True), notes)
    assert not (tmp_path / "cut").exists() and not list(tmp_path.glob(".cut*"))


def test_a_folder_of_its_own_validation_split_is_used_packed_or_not(tmp_path):
    root = _folder(tmp_path / "images")
    for name in ("cat", "dog", "emu"):
        (root / "val" / name).mkdir(parents=True)
        Image.fromarray(np.full((18, 26, 3), 9, np.uint8)).save(root / "val" / name / "0.png")
    files = load_dataset(DataConfig(dataset="folder", root=str(root), input_size=12))
    assert files.x_val.shape == (3, 12, 12, 3) and list(files.y_val) == [0, 1, 2] and len(files.y_test) == 6
    notes = ReadNotes()
    described = pack_folder(list_class_folders(root, notes), tmp_path / "packed", FolderReading(14, square=True), notes)
    assert described["images"] == {"train": 18, "test": 6, "val": 3}
    packed = load_dataset(DataConfig(dataset="folder", root=str(tmp_path / "packed"), input_size=12))
    assert np.array_equal(packed.x_val, load_dataset(DataConfig(dataset="folder", root=str(root), input_size=12,
                                                                image_size=14)).x_val)
    with pytest.raises(DataError, match="has a validation split of its own"):
        load_dataset(DataConfig(dataset="folder", root=str(root), validation_images=3))
