"""Datasets stored as image files: Tiny ImageNet's official layout, and generic class folders.

Decoding tens of thousands of JPEGs takes a while on a small machine, and every stage reads the
data again; ``pack_npz`` writes the decoded arrays once as an .npz that ``data.root`` can name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class FolderReading:
    """How image files become arrays: resized (squashed) to ``side`` pixels, or with ``square``, as their
    centred square ``side`` pixels wide (see image_view); None keeps their size, which must then match."""
    side: int | None = None
    square: bool = False
    interpolation: str = "bilinear"


@dataclass
class ReadNotes:
    """What reading a set of files skipped or changed, for the one line a user gets about it."""
    unreadable: list[str] = field(default_factory=list)  # "path (why)"
    converted: int = 0  # grey, palette, RGBA, CMYK images turned into RGB
    scaled_16_bit: int = 0
    unknown_class: int = 0  # test images of classes without training images
    unknown_names: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        lines = []
        if self.unreadable:
            plural = "s" if len(self.unreadable) > 1 else ""
            lines.append(f"skipped {len(self.unreadable)} unreadable image file{plural} (first: {self.unreadable[0]})")
        if self.converted:
            lines.append(f"converted {self.converted} image{'s' if self.converted > 1 else ''} of another mode "
                         f"(grey, palette, RGBA, CMYK) to RGB")
        if self.scaled_16_bit:
            lines.append(f"scaled {self.scaled_16_bit} 16-bit image{'s' if self.scaled_16_bit > 1 else ''} to 8 bits")
        if self.unknown_class:
            plural = "s" if self.unknown_class > 1 else ""
            lines.append(f"left out {self.unknown_class} test or validation image{plural} of "
                         f"{len(self.unknown_names)} class{'es' if len(self.unknown_names) > 1 else ''} without "
                         f"training images ({', '.join(self.unknown_names[:3])}"
                         f"{', …' if len(self.unknown_names) > 3 else ''}), which no network here can predict")
        return lines


def read_image(path: Path, reading: FolderReading, notes: ReadNotes | None = None) -> np.ndarray | None:
    """uint8 (H, W, 3) pixels of one file as ``reading`` says, or None (noted) where it is unreadable."""
    from PIL import Image, UnidentifiedImageError

    from stages.training.image_view import centre_square

    try:
        with Image.open(path) as image:
            image.load()
            image, scaled = as_8_bit(image)
            if notes is not None:
                notes.scaled_16_bit += scaled
                notes.converted += image.mode != "RGB" and not scaled
            image = image.convert("RGB")
            if reading.square:
                image = centre_square(image, reading.side, reading.interpolation)
            elif reading.side is not None and image.size != (reading.side, reading.side):
                image = image.resize((reading.side, reading.side), Image.BILINEAR)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        if notes is None:
            raise DataError(f"{path}: not a readable image ({exc})") from exc
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].replace(f" '{path}'", "").replace(str(path), "")
        notes.unreadable.append(f"{path}: {reason[:80]}")
        return None


def read_images(paths: list[Path], reading: FolderReading | int | None,
                notes: ReadNotes | None = None) -> tuple[np.ndarray, list[int]]:
    """uint8 (N, H, W, 3) of the files that could be read, and their positions in ``paths``. With
    ``notes``, unreadable files are skipped and noted; without, the first one is an error."""
    if not isinstance(reading, FolderReading):
        reading = FolderReading(reading)
    arrays, kept = [], []
    for position, path in enumerate(paths):
        pixels = read_image(path, reading, notes)
        if pixels is None:
            continue
        if arrays and pixels.shape != arrays[0].shape:
            first = paths[kept[0]]
            raise DataError(f"{path}: {pixels.shape[1]}x{pixels.shape[0]} pixels, but {first} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; set data.image_size to resize them all")
        arrays.append(pixels)
        kept.append(position)
    if not arrays:
        side = reading.side or 1
        return np.zeros((0, side, side, 3), np.uint8), kept
    return np.stack(arrays), kept


def _read_split(paths: list[Path], labels: list[int], reading: FolderReading,
                notes: ReadNotes | None) -> tuple[np.ndarray, np.ndarray]:
    images, kept = read_images(paths, reading, notes)
    return images, np.asarray(labels, np.int64)[kept]


@dataclass(frozen=True)
class FileListing:
    """The image files of a dataset in folders, with their labels, before any is read."""
    train: tuple[list[Path], list[int]]
    test: tuple[list[Path], list[int]]
    class_names: tuple[str, ...]
    validation: tuple[list[Path], list[int]] | None = None  # a folder's own validation split


def list_class_folders(root: Path, notes: ReadNotes | None = None) -> FileListing:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``root/val/<class>/*``); with both
    ``test`` and ``val``, ``val`` is the validation split. Classes without a training folder are left
    out of the others with a note (with ``notes``), else refused."""
    train_dir = root / "train"
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    validation_dir = root / "val" if test_dir == root / "test" and (root / "val").is_dir() else None
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"data.root={root}: expected class folders under {train_dir} and under "
                        f"{root / 'test'} (or {root / 'val'})")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    for folder in (test_dir, validation_dir):
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes) if folder else []
        if unknown and notes is None:
            raise DataError(f"data.root={root}: {folder} has classes absent from {train_dir}: {', '.join(unknown[:5])}")
        if unknown:
            notes.unknown_class += sum(len(_images_in(folder / name)) for name in unknown)
            notes.unknown_names += [name for name in unknown if name not in notes.unknown_names]
    splits = []
    for folder in (train_dir, test_dir, validation_dir):
        if folder is None:
            splits.append(None)
            continue
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
        splits.append((paths, labels))
    return FileListing(splits[0], splits[1], tuple(classes), splits[2])


def _read_listing(listing: FileListing, reading: FolderReading | int | None, notes: ReadNotes | None) -> Arrays:
    if not isinstance(reading, FolderReading):
        reading = FolderReading(reading)
    x_train, y_train = _read_split(*listing.train, reading, notes)
    x_test, y_test = _read_split(*listing.test, reading, notes)
    return x_train, y_train, x_test, y_test, listing.class_names


def read_validation(listing: FileListing, reading: FolderReading, notes: ReadNotes | None
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """The folder's own validation split, read as ``reading`` says; None where it has none."""
    return None if listing.validation is None else _read_split(*listing.validation, reading, notes)


def load_class_folders(root: Path | FileListing, reading: FolderReading | int | None = None,
                       notes: ReadNotes | None = None) -> Arrays:
    """The images of ``list_class_folders`` (or of a listing already made), read as ``reading`` says."""
    listing = root if isinstance(root, FileListing) else list_class_folders(root, notes)
    return _read_listing(listing, reading, notes)


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


def list_tiny_imagenet(root: Path, notes: ReadNotes | None = None) -> FileListing:
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
    return FileListing((train_paths, train_labels), (val_paths, val_labels), class_names)


def load_tiny_imagenet(root: Path, reading: FolderReading | int | None = None,
                       notes: ReadNotes | None = None) -> Arrays:
    """The images of ``list_tiny_imagenet``, read as ``reading`` says."""
    return _read_listing(list_tiny_imagenet(root, notes), reading, notes)


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
