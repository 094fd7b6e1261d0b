import numpy as np
import pytest

from stages.common.config import DataConfig
from stages.common.errors import DataError
from stages.training.data import balanced_subset, load_dataset


def _write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 255, (20, 6, 6, 3), dtype=np.uint8), "y_train": np.arange(20) % 4,
              "x_test": rng.integers(0, 255, (8, 6, 6, 3), dtype=np.uint8), "y_test": np.arange(8) % 4,
              "class_names": np.array(["a", "b", "c", "d"])}
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def test_digits_are_real_and_split_stratified():
    data = load_dataset(DataConfig(dataset="digits"))
    assert data.x_train.shape == (1437, 8, 8, 1) and data.x_test.shape == (360, 8, 8, 1)
    assert data.x_train.dtype == np.uint8 and data.num_classes == 10
    assert np.bincount(data.y_test).min() >= 35


def test_npz_loads_and_normalizes(tmp_path):
    data = load_dataset(DataConfig(dataset="npz", root=str(_write_npz(tmp_path / "d.npz"))))
    assert data.in_channels == 3 and data.num_classes == 4
    x = data.normalized(data.x_train)
    assert x.shape == (20, 3, 6, 6)
    assert np.allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5) and np.allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    ({"y_test": None}, "lacks array\\(s\\) y_test"),
    ({"y_train": np.arange(20) % 7}, "y_train has labels in \\[0, 6\\] but class_names lists 4 classes"),
    ({"x_test": np.zeros((8, 6, 6, 3), np.float32)}, "x_test must be uint8 images"),
    ({"x_test": np.zeros((8, 5, 5, 3), np.uint8)}, "x_train images are"),
    ({"y_train": np.arange(19) % 4}, "y_train must hold one integer label per image"),
    ({"class_names": np.array(["a", "b", "c", "d"], dtype=object)},
     "class_names holds Python objects, which are not loaded"),
])
def test_malformed_npz_names_the_problem(tmp_path, overrides, message):
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(dataset="npz", root=str(path)))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("damage, message", [
    ("cut in half", "not a readable .npz archive \\(BadZipFile: File is not a zip file\\); it is truncated or "
                    "damaged: copy it again"),
    ("one bit flipped in an array", "not a readable .npz archive \\(BadZipFile: Bad CRC-32"),
    ("a .npy renamed", "not an .npz archive \\(it does not start as a zip file does\\); an .npz is numpy.savez"),
    ("text", "not an .npz archive"),
])
def test_a_damaged_or_foreign_npz_is_one_error_naming_it(tmp_path, damage, message):
    good = _write_npz(tmp_path / "good.npz").read_bytes()
    path = tmp_path / "bad.npz"
    if damage == "cut in half":
        path.write_bytes(good[:len(good) // 2])
    elif damage == "one bit flipped in an array":
        at = good.index(b"x_test.npy") + 200  # inside the stored bytes of x_test, after its local header
        path.write_bytes(good[:at] + bytes([good[at] ^ 1]) + good[at + 1:])
    elif damage == "a .npy renamed":
        np.save(tmp_path / "one.npy", np.zeros(3))
        path.write_bytes((tmp_path / "one.npy").read_bytes())
    else:
        path.write_text("x_train,y_train\n")
    with pytest.raises(DataError, match=message) as info:
        load_dataset(DataConfig(dataset="npz", root=str(path)))
    assert str(info.value).startswith(f"data.root={path}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("dataset, expected", [("cifar100", "CIFAR-100's 100 of 32x32x3"),
                                               ("cifar10", "CIFAR-10's 10 of 32x32x3")])
def test_an_npz_named_as_cifar_that_holds_another_dataset_is_refused(tmp_path, dataset, expected):
    path = _write_npz(tmp_path / "d.npz")
    with pytest.raises(DataError) as refused:
        load_dataset(DataConfig(dataset=dataset, root=str(path)))
    assert str(refused.value) == (f"data.root={path}: holds 4 classes of 6x6x3 images, not {expected}; set "
                                  f"data.dataset: npz for another dataset, or point data.root at "
                                  f"{expected.split(chr(39))[0]}")


def test_missing_dataset_path_says_where(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path / "nowhere.npz")))


def test_torchvision_folder_without_data_suggests_download(tmp_path):
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(DataConfig(dataset="cifar100", root=str(tmp_path)))


def test_balanced_subset_spreads_over_classes():
    labels = np.arange(1000) % 10
    chosen = balanced_subset(labels, 105, 10)
    counts = np.bincount(labels[chosen], minlength=10)
    assert len(chosen) == 105 and counts.min() == 10 and counts.max() == 11
    assert np.array_equal(chosen, balanced_subset(labels, 105, 10))


def test_cifar100_npz_on_disk(cifar100_npz):
    data = load_dataset(DataConfig(dataset="cifar100", root=str(cifar100_npz), test_images=1000))
    assert data.x_train.shape == (50000, 32, 32, 3) and data.x_test.shape == (1000, 32, 32, 3)
    assert data.num_classes == 100 and data.class_names[0] == "apple"
    # The published CIFAR-100 training statistics.
    assert data.mean == pytest.approx((0.5071, 0.4865, 0.4409), abs=1e-4)
    assert data.std == pytest.approx((0.2673, 0.2564, 0.2762), abs=1e-4)


def test_a_validation_split_is_held_out_of_the_training_images_class_balanced():
    full = load_dataset(DataConfig(dataset="digits"))
    data = load_dataset(DataConfig(dataset="digits", validation_images=200, train_images=1000))
    assert len(data.y_val) == 200 and np.bincount(data.y_val).min() == 20  # 10 classes, 20 each
    assert len(data.y_train) == 1000
    rows = {tuple(x.ravel()) for x in data.x_train}
    assert not any(tuple(x.ravel()) in rows for x in data.x_val[:50])  # never trained on
    assert np.array_equal(data.x_test, full.x_test)  # the test split is untouched
    again = load_dataset(DataConfig(dataset="digits", validation_images=200, train_images=1000))
    assert np.array_equal(again.x_val, data.x_val)  # a fixed, seeded choice


def test_a_validation_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(DataError, match="data.validation_images = 1437 leaves no training images"):
        load_dataset(DataConfig(dataset="digits", validation_images=1437))


def test_some_classes_keep_their_images_numbered_in_the_subsets_order():
    full = load_dataset(DataConfig(dataset="digits"))
    data = load_dataset(DataConfig(dataset="digits", classes=["7", "2"]))
    assert data.class_names == ("7", "2") and data.num_classes == 2
    for x, y, whole_x, whole_y in ((data.x_train, data.y_train, full.x_train, full.y_train),
                                   (data.x_test, data.y_test, full.x_test, full.y_test)):
        assert np.array_equal(x[y == 0], whole_x[whole_y == 7]) and np.array_equal(x[y == 1], whole_x[whole_y == 2])
        assert len(y) == np.isin(whole_y, [7, 2]).sum()
    first = load_dataset(DataConfig(dataset="digits", classes=3, validation_images=30, train_images=300))
    assert first.class_names == ("0", "1", "2")
    assert np.bincount(first.y_val).tolist() == [10, 10, 10] and np.bincount(first.y_train).tolist() == [100] * 3


@pytest.mark.parametrize("classes, message", [
    (["7", "seven"], r"data\.classes: 'seven' is not a class of the dataset \(its classes begin '0', '1'"),
    (11, r"data\.classes = 11, but the dataset has 10 classes; ask for at most 10")])
def test_classes_the_dataset_does_not_have_are_named(classes, message):
    with pytest.raises(DataError, match=message):
        load_dataset(DataConfig(dataset="digits", classes=classes))


@pytest.mark.parametrize("classes, message", [(1, "at least 2 classes"), (["3"], "at least 2 classes"),
                                              (["3", "4", "3"], "names '3' more than once")])
def test_a_subset_that_is_no_classifier_is_refused_in_the_profile(classes, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(dataset="digits", classes=classes)
