"""Datasets stored as image files: Tiny ImageNet's official layout, and generic class folders.

Decoding tens of thousands of JPEGs takes a while on a small machine, and every stage reads the
data again; ``pack_npz`` writes the decoded arrays once as an .npz that ``data.root`` can name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from stages.common.errors import DataError

# The files a class folder and predict both take as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff")

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]


def _images_in(folder: Path) -> list[Path]:
    """The image files in ``folder``; none where it is missing (a class without images is refused)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def as_8_bit(image):
    """(image, whether it was scaled): a 16-bit image scaled to 8 bits, since Pillow's own conversion
    clips its values at 255 and most of the image would turn white. Training data and predict both
    read images through this, so a deployed model sees pixels as it was trained on them."""
    from PIL import Image

    if image.mode != "I" and not image.mode.startswith("I;16"):
        return image, False
    wide = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8), mode="L"), True


def read_images(paths: list[Path], image_size: int | None) -> np.ndarray:
    """uint8 (N, H, W, 3); every image resized to ``image_size`` when given, else all must match."""
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as image:
                image = as_8_bit(image)[0].convert("RGB")
                if image_size is not None and image.size != (image_size, image_size):
                    image = image.resize((image_size, image_size), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except OSError as exc:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
        if arrays[-1].shape != arrays[0].shape:
            raise DataError(f"{path}: {arrays[-1].shape[1]}x{arrays[-1].shape[0]} pixels, but {paths[0]} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; set data.image_size to resize them all")
    if not arrays:
        return np.zeros((0, image_size or 1, image_size or 1, 3), np.uint8)
    return np.stack(arrays)


def load_class_folders(root: Path, image_size: int | None) -> Arrays:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val/<class>/*``)."""
    train_dir = root / "train"
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"data.root={root}: expected class folders under {train_dir} and under "
                        f"{root / 'test'} (or {root / 'val'})")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    unknown = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise DataError(f"data.root={root}: {test_dir} has classes absent from {train_dir}: {', '.join(unknown[:5])}")
    splits = []
    for folder in (train_dir, test_dir):
        paths, labels = [], []
        for index, name in enumerate(classes):
            found = _images_in(folder / name)
            paths += found
            labels += [index] * len(found)
        if not paths:
            raise DataError(f"data.root={root}: no images under {folder}")
        if folder == train_dir:
            _refuse_classes_without_images(root, labels, [train_dir / name for name in classes],
                                           ("remove the folder", "remove those folders"))
        splits += [read_images(paths, image_size), np.asarray(labels, np.int64)]
    return splits[0], splits[1], splits[2], splits[3], tuple(classes)


def _refuse_classes_without_images(root: Path, labels: list[int], folders: list[Path],
                                   removal: tuple[str, str]) -> None:
    """Every class is an output of the network: one without training images is a class it never learns."""
    present = set(labels)
    empty = [str(folder) for index, folder in enumerate(folders) if index not in present]
    if empty:
        many = len(empty) > 1
        raise DataError(f"data.root={root}: {len(empty)} class{'es have' if many else ' has'} no training images "
                        f"({', '.join(empty[:3])}{', …' if len(empty) > 3 else ''}); add "
                        f"{'their' if many else 'its'} images or {removal[many]}")


def load_tiny_imagenet(root: Path, image_size: int | None) -> Arrays:
    """The official layout: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` with
    ``val/val_annotations.txt``. The labelled validation split serves as the test split."""
    wnids_file, annotations = root / "wnids.txt", root / "val" / "val_annotations.txt"
    for required in (wnids_file, annotations, root / "train"):
        if not required.exists():
            raise DataError(f"data.root={root}: {required} is missing; is this Tiny ImageNet's folder "
                            f"(tiny-imagenet-200)?")
    wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_paths, train_labels = [], []
    for wnid in wnids:
        found = _images_in(root / "train" / wnid / "images")
        train_paths += found
        train_labels += [index[wnid]] * len(found)
    _refuse_classes_without_images(root, train_labels, [root / "train" / w / "images" for w in wnids],
                                   (f"remove its wnid from {wnids_file}", f"remove their wnids from {wnids_file}"))
    val_paths, val_labels = [], []
    for line_number, line in enumerate(annotations.read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{annotations}:{line_number}: expected 'file<TAB>wnid...' with a wnid from "
                            f"{wnids_file}, got {line[:60]!r}")
        val_paths.append(root / "val" / "images" / fields[0])
        val_labels.append(index[fields[1]])
    names = dict(line.split("\t", 1) for line in (root / "words.txt").read_text().splitlines()
                 if "\t" in line) if (root / "words.txt").exists() else {}
    class_names = tuple(names.get(w, w).split(",")[0].strip() for w in wnids)
    return (read_images(train_paths, image_size), np.asarray(train_labels, np.int64),
            read_images(val_paths, image_size), np.asarray(val_labels, np.int64), class_names)


def pack_npz(arrays: Arrays, destination: Path) -> None:
    """Writes the arrays beside ``destination`` and renames them into place, so an interrupted or
    failed write (a full disk) leaves no half-written .npz that data.root could name."""
    x_train, y_train, x_test, y_test, class_names = arrays
    partial = destination.with_name(f".{destination.name}.partial")
    try:
        with open(partial, "wb") as sink:
            np.savez(sink, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                     class_names=np.asarray(class_names))
        os.replace(partial, destination)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"{destination}: cannot write it ({exc.strerror or exc}); free space there or write "
                        f"elsewhere") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
