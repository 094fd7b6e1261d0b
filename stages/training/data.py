"""Datasets as uint8 image arrays (N, H, W, C) with labels, from scikit-learn, torchvision or an .npz."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.common.config import DataConfig
from stages.common.errors import DataError
from stages.training.image_folders import (FolderReading, ReadNotes, list_class_folders, load_class_folders,
                                           load_tiny_imagenet, read_validation)
from stages.training.image_view import EvaluationView, stored_side
from stages.training.packed import ImageRows, is_packed, load_packed

NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "class_names")


@dataclass(frozen=True)
class ImageDataset:
    x_train: np.ndarray  # (N, H, W, C) uint8; for a packed dataset, its rows memory-mapped (ImageRows)
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, pixel values scaled to [0, 1], from the training images
    std: tuple[float, ...]
    # Held out from the training images (data.validation_images), or a folder's own val/ split.
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    # With data.input_size: how evaluation resizes an image. The test and validation images are held
    # already so resized; the training images as stored, for the augmentation to crop and resize.
    view: EvaluationView | None = None
    notes: tuple[str, ...] = ()  # what reading image files skipped or converted

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def image_size(self) -> int:
        """The networks' input size."""
        return self.view.input_size if self.view is not None else int(self.x_train.shape[1])

    @property
    def stored_side(self) -> int:
        """The side of the training images as stored."""
        return int(self.x_train.shape[1])

    def as_evaluated(self, images: np.ndarray) -> np.ndarray:
        """Stored uint8 images (N, H, W, C) as evaluation shows them (calibration images, for one)."""
        return images if self.view is None else self.view.of_arrays(images)

    def with_normalization(self, mean: tuple[float, ...], std: tuple[float, ...]) -> "ImageDataset":
        """The same images, normalized with a network's own constants (a pretrained network's)."""
        from dataclasses import replace

        return replace(self, mean=tuple(mean), std=tuple(std))

    def normalized(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 (N, C, H, W), normalized as the networks expect."""
        x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        # NumPy keeps the transposed (channels-last) strides; a strided example makes the ONNX
        # exporter add index arithmetic (Shape, Range, Gather) that some quantizers cannot follow.
        return np.ascontiguousarray((x - mean) / std)


VALIDATION_SEED = 1  # the permutation the validation split is drawn with (subsets use 0)


def image_counts(data: ImageDataset) -> dict[str, int]:
    """How many images each split of ``data`` holds, and its classes: what a model was trained and
    scored on, as the report states it."""
    counts: dict = {"train": len(data.y_train), "test": len(data.y_test), "classes": data.num_classes}
    if data.y_val is not None:
        counts["validation"] = len(data.y_val)
    if data.notes:
        counts["notes"] = list(data.notes)
    return counts


def balanced_subset(labels: np.ndarray, count: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Indices of ``count`` examples spread evenly over classes, chosen by a fixed permutation so
    that the subset is part of the data's identity and never varies with the training seed."""
    if count >= len(labels):
        return np.arange(len(labels))
    order = np.random.RandomState(seed).permutation(len(labels))
    per_class = [order[labels[order] == c] for c in range(num_classes)]
    base, extra = divmod(count, num_classes)
    chosen = [idx[: base + (1 if c < extra else 0)] for c, idx in enumerate(per_class)]
    return np.sort(np.concatenate(chosen))


def _channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units, in chunks so a large set is never copied to float."""
    total = np.zeros(images.shape[-1])
    squares = np.zeros(images.shape[-1])
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096].reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
        total += chunk.sum(axis=0)
        squares += np.square(chunk).sum(axis=0)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std == 0] = 1.0
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _load_digits() -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Pixel values run 0..16; scale them onto the uint8 range every other source uses.
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.2, stratify=digits.target, random_state=0)
    return x_train, y_train, x_test, y_test, tuple(str(n) for n in digits.target_names)


def _load_npz(path: Path) -> tuple[np.ndarray, ...]:
    import zipfile
    import zlib

    remake = f"an .npz is numpy.savez's zip of {', '.join(NPZ_ARRAYS)}"
    try:
        with open(path, "rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise DataError(f"data.root={path}: cannot be read ({exc.strerror or exc}); check its permissions") from exc
    # Anything else np.load would take for a .npy or, refused, a pickle, and say so in those terms.
    if magic != b"PK\x03\x04":
        raise DataError(f"data.root={path}: not an .npz archive (it does not start as a zip file does); {remake}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [name for name in NPZ_ARRAYS if name not in archive.files]
            if missing:
                raise DataError(f"data.root={path}: lacks array(s) {', '.join(missing)} "
                                f"(has: {', '.join(archive.files)}); an .npz needs {', '.join(NPZ_ARRAYS)}")
            arrays = {name: _plain_array(path, archive, name) for name in NPZ_ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        # Most often a copy that stopped short: the zip's directory, at its end, is missing.
        raise DataError(f"data.root={path}: not a readable .npz archive ({type(exc).__name__}: {exc}); it is "
                        f"truncated or damaged: copy it again") from exc
    class_names = tuple(str(n) for n in arrays["class_names"])
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim == 3:
            x = arrays[f"x_{split}"] = x[..., None]
        if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.dtype != np.uint8:
            raise DataError(f"data.root={path}: x_{split} must be uint8 images shaped (N, H, W, C) with "
                            f"C = 1 or 3, got {x.dtype} {tuple(x.shape)}")
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"data.root={path}: y_{split} must hold one integer label per image "
                            f"({len(x)}), got {y.dtype} {tuple(y.shape)}")
        if len(y) and (y.min() < 0 or y.max() >= len(class_names)):
            raise DataError(f"data.root={path}: y_{split} has labels in [{y.min()}, {y.max()}] but "
                            f"class_names lists {len(class_names)} classes")
        arrays[f"y_{split}"] = y.astype(np.int64)
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"data.root={path}: x_train images are {arrays['x_train'].shape[1:]} but "
                        f"x_test images are {arrays['x_test'].shape[1:]}")
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], class_names


def _plain_array(path: Path, archive, name: str) -> np.ndarray:
    try:
        return archive[name]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):  # numpy's words for an array of Python objects
            raise
        raise DataError(f"data.root={path}: {name} holds Python objects, which are not loaded (unpickling them "
                        f"could run code); save it as a plain array (class names as numpy.array(names, dtype=str))"
                        ) from exc


def _load_torchvision(name: str, root: Path, download: bool) -> tuple[np.ndarray, ...]:
    from torchvision import datasets

    dataset_cls = {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    try:
        train = dataset_cls(str(root), train=True, download=download)
        test = dataset_cls(str(root), train=False, download=download)
    except RuntimeError as exc:
        raise DataError(f"data.root={root}: no {name} in torchvision's layout there ({exc}); set "
                        f"data.download=true to fetch it, or point data.root at an .npz") from exc
    return (np.asarray(train.data, np.uint8), np.asarray(train.targets, np.int64),
            np.asarray(test.data, np.uint8), np.asarray(test.targets, np.int64), tuple(train.classes))


def resolve_root(cfg: DataConfig) -> Path | None:
    if cfg.root is None:
        return None
    root = Path(cfg.root).expanduser()
    if not root.exists() and not (cfg.download and root.suffix != ".npz"):
        raise DataError(f"data.root={cfg.root}: no such file or folder ({root.resolve()}); point "
                        f"data.root at the dataset (relative paths resolve from the current directory)")
    return root


# What an .npz named as CIFAR holds; reports and the paper's rows take data.dataset at its word.
CIFAR_FORMS = {"cifar10": ("CIFAR-10", 10, (32, 32, 3)), "cifar100": ("CIFAR-100", 100, (32, 32, 3))}


def _check_named_dataset(dataset: str, path: Path, arrays: tuple) -> None:
    if dataset not in CIFAR_FORMS:
        return
    title, classes, shape = CIFAR_FORMS[dataset]
    held = (len(arrays[4]), tuple(arrays[0].shape[1:]))
    if held != (classes, shape):
        raise DataError(f"data.root={path}: holds {held[0]} classes of {'x'.join(map(str, held[1]))} images, not "
                        f"{title}'s {classes} of {'x'.join(map(str, shape))}; set data.dataset: npz for another "
                        f"dataset, or point data.root at {title}")


def load_dataset(cfg: DataConfig) -> ImageDataset:
    root = resolve_root(cfg)
    view = None
    if cfg.input_size is not None:
        view = EvaluationView(cfg.input_size, cfg.crop_pct or 1.0, cfg.interpolation or "bilinear")
    # Files are read whole and resized (squashed) to data.image_size, or with an input size, as their
    # centred squares, wide enough for evaluation's crop.
    reading = FolderReading(cfg.image_size) if view is None else FolderReading(
        cfg.image_size or stored_side(view.input_size, view.crop_pct), square=True, interpolation=view.interpolation)
    notes = ReadNotes()
    packed = given_validation = None
    if cfg.dataset == "digits":
        arrays = _load_digits()
    elif root is not None and is_packed(root):
        arrays, packed, given_validation = load_packed(root)
        if cfg.image_size is not None and cfg.image_size != packed["side"]:
            raise DataError(f"data.image_size = {cfg.image_size}, but {root} was packed at {packed['side']} pixels; "
                            f"leave data.image_size out, or pack again with --image-size {cfg.image_size}")
    elif root is not None and root.suffix == ".npz":
        arrays = _load_npz(root)
        _check_named_dataset(cfg.dataset, root, arrays)
    elif cfg.dataset == "tiny_imagenet":
        arrays = load_tiny_imagenet(root, reading, notes)
    elif cfg.dataset == "folder":
        listing = list_class_folders(root, notes)
        arrays = load_class_folders(listing, reading, notes)
        given_validation = read_validation(listing, reading, notes)
    elif cfg.dataset in ("cifar10", "cifar100"):
        if root is None:
            raise DataError(f"data.root is not set for dataset {cfg.dataset!r}; point it at an .npz "
                            f"or a torchvision folder (with data.download=true to fetch it there)")
        arrays = _load_torchvision(cfg.dataset, root, cfg.download)
    else:
        raise DataError(f"data.dataset={cfg.dataset!r} needs data.root pointing at an .npz file")
    if cfg.classes is not None:
        arrays, given_validation = _some_classes(cfg.classes, arrays, given_validation, root)
    x_train, y_train, x_test, y_test, class_names = arrays
    x_val = y_val = None
    if given_validation is not None:
        if cfg.validation_images is not None:
            raise DataError(f"data.validation_images = {cfg.validation_images} holds images out of the training split, "
                            f"but data.root={root} has a validation split of its own (val/ beside test/); remove "
                            f"data.validation_images, or that folder")
        x_val, y_val = np.ascontiguousarray(given_validation[0]), given_validation[1]
    if cfg.validation_images is not None:
        if cfg.validation_images >= len(y_train):
            raise DataError(f"data.validation_images = {cfg.validation_images} leaves no training images (the "
                            f"training split has {len(y_train)}); hold out fewer")
        held_out = balanced_subset(y_train, cfg.validation_images, len(class_names), seed=VALIDATION_SEED)
        rest = np.setdiff1d(np.arange(len(y_train)), held_out)
        x_val, y_val = np.ascontiguousarray(x_train[held_out]), y_train[held_out]
        x_train, y_train = _rows(x_train, rest), y_train[rest]
    if cfg.train_images is not None:
        keep = balanced_subset(y_train, cfg.train_images, len(class_names))
        x_train, y_train = _rows(x_train, keep), y_train[keep]
    if cfg.test_images is not None:
        keep = balanced_subset(y_test, cfg.test_images, len(class_names))
        x_test, y_test = x_test[keep], y_test[keep]
    if packed is not None:
        # Reading a dataset larger than memory to count its pixels takes long: the pack counted them,
        # over its whole training split.
        mean, std = tuple(packed["mean"]), tuple(packed["std"])
        notes_lines = tuple(packed["notes"])
    else:
        mean, std = _channel_stats(x_train)
        x_train = np.ascontiguousarray(x_train)
        notes_lines = tuple(notes.lines())
    if view is not None:
        x_test = view.of_arrays(x_test)
        x_val = None if x_val is None else view.of_arrays(x_val)
    return ImageDataset(x_train, y_train, np.ascontiguousarray(x_test), y_test,
                        class_names, mean, std, x_val, y_val, view, notes_lines)


def _some_classes(classes: int | list[str], arrays: tuple, validation: tuple | None, root: Path | None):
    """``arrays`` (and a folder's own validation split) kept to data.classes, labels renumbered in its order."""
    x_train, y_train, x_test, y_test, class_names = arrays
    where = f" of data.root={root}" if root is not None else ""
    if isinstance(classes, int):
        if classes > len(class_names):
            raise DataError(f"data.classes = {classes}, but the dataset{where} has {len(class_names)} classes; "
                            f"ask for at most {len(class_names)}")
        chosen = list(range(classes))
    else:
        unknown = [name for name in classes if name not in class_names]
        if unknown:
            raise DataError(f"data.classes: {', '.join(map(repr, unknown))} is not a class of the dataset{where} "
                            f"(its classes begin {', '.join(map(repr, class_names[:5]))}); use its class names")
        chosen = [class_names.index(name) for name in classes]
    renumber = np.full(len(class_names), -1, dtype=np.int64)
    renumber[chosen] = np.arange(len(chosen))

    def kept(images, labels):
        index = np.flatnonzero(renumber[labels] >= 0)
        return _rows(images, index), renumber[labels[index]]

    subset = (*kept(x_train, y_train), *kept(x_test, y_test), tuple(class_names[c] for c in chosen))
    return subset, None if validation is None else kept(*validation)


def _rows(images, index: np.ndarray):
    """Rows of an image array: a copy, or for a memory-mapped dataset, an index into it."""
    return images.subset(index) if isinstance(images, ImageRows) else images[index]


def normalized_for(data: ImageDataset, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
                   where: str) -> ImageDataset:
    """``data`` normalized as a network expects (``where``.mean/std, a pretrained network's); as it is
    where they are null. Constants for RGB on grey images become their average, as timm sums a
    pretrained first convolution's RGB filters for one channel."""
    if mean is None or std is None:
        return data
    if len(mean) != data.in_channels:
        if data.in_channels == 1 and len(mean) == 3:
            mean, std = (sum(mean) / 3,), (sum(std) / 3,)
        else:
            raise DataError(f"{where}.mean has {len(mean)} channels, but the images have {data.in_channels}; give "
                            f"one value per channel")
    return data.with_normalization(tuple(mean), tuple(std))
