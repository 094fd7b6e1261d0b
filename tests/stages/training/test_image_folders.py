import numpy as np
import pytest
from PIL import Image

from stages.common.config import DataConfig
from stages.common.errors import DataError
from stages.training.data import load_dataset


def _image(path, color, size=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), color).save(path)


@pytest.fixture
def tiny_imagenet(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n")
    lines = []
    for i, wnid in enumerate(wnids):
        for j in range(4):
            _image(root / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", (40 * i, 10 * j, 0))
        _image(root / "val" / "images" / f"val_{i}.JPEG", (40 * i, 0, 0))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t7\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_tiny_imagenet_official_layout(tiny_imagenet):
    data = load_dataset(DataConfig(dataset="tiny_imagenet", root=str(tiny_imagenet)))
    assert data.x_train.shape == (12, 8, 8, 3) and data.x_test.shape == (3, 8, 8, 3)
    assert list(data.y_test) == [0, 1, 2]
    assert data.class_names == ("goldfish", "European fire salamander", "n01641577")
    assert data.x_test[1, 0, 0, 0] == 40  # the validation image of the second class


def test_tiny_imagenet_bad_annotation_names_the_line(tiny_imagenet):
    path = tiny_imagenet / "val" / "val_annotations.txt"
    path.write_text(path.read_text() + "val_9.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="val_annotations.txt:4: expected"):
        load_dataset(DataConfig(dataset="tiny_imagenet", root=str(tiny_imagenet)))


def test_class_folders_with_resizing(tmp_path):
    for split, count in (("train", 3), ("test", 1)):
        for name, color in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
            for j in range(count):
                _image(tmp_path / split / name / f"{j}.png", color, size=10 + j)
    with pytest.raises(DataError, match="set data.image_size"):
        load_dataset(DataConfig(dataset="folder", root=str(tmp_path)))
    data = load_dataset(DataConfig(dataset="folder", root=str(tmp_path), image_size=8))
    assert data.x_train.shape == (6, 8, 8, 3) and data.class_names == ("cat", "dog")
    assert np.all(data.x_test[data.y_test == 1][..., 1] == 255)


def test_missing_layout_is_explained(tmp_path):
    with pytest.raises(DataError, match="wnids.txt is missing"):
        load_dataset(DataConfig(dataset="tiny_imagenet", root=str(tmp_path)))
    with pytest.raises(DataError, match="expected class folders"):
        load_dataset(DataConfig(dataset="folder", root=str(tmp_path)))


def test_pack_dataset_writes_an_npz_the_pipeline_reads(tiny_imagenet, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "tiny.npz"
    done = subprocess.run([sys.executable, "-m", "pipeline", "pack-dataset", "tiny_imagenet", str(tiny_imagenet),
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "12 training and 3 test images of 8x8, 3 classes" in done.stdout
    packed = load_dataset(DataConfig(dataset="tiny_imagenet", root=str(out)))
    direct = load_dataset(DataConfig(dataset="tiny_imagenet", root=str(tiny_imagenet)))
    assert np.array_equal(packed.x_train, direct.x_train) and packed.class_names == direct.class_names


def test_pack_dataset_refuses_an_output_folder_that_is_not_there_before_decoding(tiny_imagenet, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "no such folder" / "tiny.npz"
    done = subprocess.run([sys.executable, "-m", "pipeline", "pack-dataset", "tiny_imagenet", str(tiny_imagenet),
                           str(out)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == (f"error: {out}: the folder {out.parent} does not exist; "
                                                            f"create it or write elsewhere")


def test_a_failed_write_leaves_no_partial_npz_and_says_so_in_one_line(tmp_path, monkeypatch):
    from stages.training import image_folders

    def disk_full(sink, **arrays):
        sink.write(b"PK\x03\x04 the first bytes of a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(image_folders.np, "savez", disk_full)
    arrays = (np.zeros((2, 8, 8, 3), np.uint8), np.zeros(2, np.int64), np.zeros((1, 8, 8, 3), np.uint8),
              np.zeros(1, np.int64), ("a", "b"))
    out = tmp_path / "packed.npz"
    with pytest.raises(DataError) as refused:
        image_folders.pack_npz(arrays, out)
    assert str(refused.value) == (f"{out}: cannot write it (No space left on device); free space there or write "
                                  f"elsewhere")
    assert list(tmp_path.iterdir()) == []


def test_folder_datasets_enter_keys_by_their_files(tiny_imagenet):
    from pipeline.fingerprint import data_identity

    cfg = DataConfig(dataset="tiny_imagenet", root=str(tiny_imagenet))
    before = data_identity(cfg)["content"]
    _image(tiny_imagenet / "train" / "n01443537" / "images" / "extra.JPEG", (1, 2, 3))
    assert data_identity(cfg)["content"] != before


def test_16_bit_images_in_class_folders_are_scaled_as_predict_scales_them(tmp_path):
    from stages.deploy.deployed import load_image
    from stages.training.image_folders import read_images

    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(wide).save(tmp_path / "depth.png")
    trained_on = read_images([tmp_path / "depth.png"], None)[0][0]
    assert np.array_equal(trained_on[..., 0], np.rint(wide / 257).astype(np.uint8))
    assert np.array_equal(trained_on, load_image(tmp_path / "depth.png", 8, 3)[0])


def test_a_class_without_training_images_is_refused_and_changes_the_key(tmp_path):
    from pipeline.fingerprint import data_identity

    for split in ("train", "test"):
        for name in ("cat", "dog"):
            _image(tmp_path / split / name / "0.png", (1, 2, 3))
    cfg = DataConfig(dataset="folder", root=str(tmp_path))
    before = data_identity(cfg)["content"]
    assert load_dataset(cfg).class_names == ("cat", "dog")
    (tmp_path / "train" / "emu").mkdir()  # a class the network would output and never learn
    assert data_identity(cfg)["content"] != before  # no file changed, and yet the classes did
    with pytest.raises(DataError, match=rf"^data.root={tmp_path}: 1 class has no training images "
                                        rf"\({tmp_path / 'train' / 'emu'}\); add its images or remove the folder$"):
        load_dataset(cfg)
    (tmp_path / "train" / "emu" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "yak").mkdir()
    with pytest.raises(DataError, match=r"2 classes have no training images \(.*emu, .*yak\); add their images "
                                        r"or remove those folders$"):
        load_dataset(cfg)


def test_a_tiny_imagenet_class_without_training_images_is_refused(tiny_imagenet):
    import shutil

    shutil.rmtree(tiny_imagenet / "train" / "n01629819")
    with pytest.raises(DataError, match=r"1 class has no training images \(.*n01629819/images\); add its images or "
                                        r"remove its wnid from .*wnids.txt$"):
        load_dataset(DataConfig(dataset="tiny_imagenet", root=str(tiny_imagenet)))
