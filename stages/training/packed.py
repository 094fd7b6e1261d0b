"""A packed dataset: image files decoded once into memory-mappable arrays, so that a dataset larger
than memory trains without decoding a JPEG per step.

``pack-dataset DATASET ROOT OUT --image-size N`` writes the folder ``OUT``: ``x_train.npy`` and
``x_test.npy`` (uint8, N x N x 3 centred squares, as data.input_size reads files), ``y_*.npy`` and
``pack.json`` (class names, the training images' channel statistics, what was skipped or converted).
It decodes in worker processes, writes straight into the memory-mapped files and renames the finished
folder into place, so an interrupted pack leaves nothing that data.root could name. Stages open the
arrays memory-mapped: training reads each batch's rows (the operating system caches what fits).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from stages.common.errors import DataError
from stages.training.image_folders import FileListing, FolderReading, ReadNotes, read_image

PACK_FILE = "pack.json"
FORMAT = 1


def is_packed(root: Path) -> bool:
    return root.is_dir() and (root / PACK_FILE).is_file()


def _decode(job: tuple[Path, FolderReading]) -> tuple[np.ndarray | None, ReadNotes]:
    notes = ReadNotes()
    return read_image(job[0], job[1], notes), notes


class _Statistics:
    """Per-channel sums over the training images as they are written, for their mean and std."""

    def __init__(self) -> None:
        self.total = np.zeros(3)
        self.squares = np.zeros(3)
        self.count = 0

    def add(self, pixels: np.ndarray) -> None:
        values = pixels.reshape(-1, 3).astype(np.float64) / 255.0
        self.total += values.sum(0)
        self.squares += np.square(values).sum(0)
        self.count += len(values)

    def mean_std(self) -> tuple[list[float], list[float]]:
        mean = self.total / max(self.count, 1)
        std = np.sqrt(np.maximum(self.squares / max(self.count, 1) - mean**2, 0.0))
        std[std == 0] = 1.0
        return mean.tolist(), std.tolist()


def _write_split(folder: Path, split: str, paths: list[Path], labels: list[int], reading: FolderReading,
                 notes: ReadNotes, workers: int, statistics: _Statistics | None, advance) -> int:
    side = reading.side
    target = folder / f"x_{split}.npy"
    images = np.lib.format.open_memmap(target, mode="w+", dtype=np.uint8, shape=(len(paths), side, side, 3))
    kept: list[int] = []
    jobs = [(path, reading) for path in paths]
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("spawn").Pool(workers)
        results = pool.imap(_decode, jobs, chunksize=32)
    else:
        pool, results = None, map(_decode, jobs)
    try:
        for position, (pixels, seen) in enumerate(results):
            notes.unreadable += seen.unreadable
            notes.converted += seen.converted
            notes.scaled_16_bit += seen.scaled_16_bit
            if pixels is not None:
                images[len(kept)] = pixels
                if statistics is not None:
                    statistics.add(pixels)
                kept.append(position)
            advance(1)
    finally:
        if pool is not None:
            pool.terminate()
    images.flush()
    del images
    if len(kept) < len(paths):  # unreadable files leave rows at the end: keep the written ones only
        written = np.load(target, mmap_mode="r")
        compact = np.lib.format.open_memmap(folder / f"x_{split}.tmp.npy", mode="w+", dtype=np.uint8,
                                            shape=(len(kept), side, side, 3))
        for start in range(0, len(kept), 4096):
            stop = min(start + 4096, len(kept))
            compact[start:stop] = written[start:stop]
        compact.flush()
        del compact, written
        os.replace(folder / f"x_{split}.tmp.npy", target)
    np.save(folder / f"y_{split}.npy", np.asarray(labels, np.int64)[kept])
    return len(kept)


def pack_folder(listing: FileListing, destination: Path, reading: FolderReading, notes: ReadNotes,
                workers: int = 1, progress=None) -> dict:
    """Decode ``listing`` into the packed folder ``destination``; returns its description."""
    partial = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    total = len(listing.train[0]) + len(listing.test[0]) + len((listing.validation or ([], []))[0])
    statistics = _Statistics()
    try:
        partial.mkdir(parents=True)
        with (progress or _no_progress)(f"packing {destination.name}", total) as advance:
            splits = [("train", listing.train), ("test", listing.test)]
            splits += [("val", listing.validation)] if listing.validation is not None else []
            counts = {split: _write_split(partial, split, *paths_labels, reading, notes, workers,
                                          statistics if split == "train" else None, advance)
                      for split, paths_labels in splits}
        mean, std = statistics.mean_std()
        description = {"format": FORMAT, "class_names": list(listing.class_names), "side": reading.side,
                       "interpolation": reading.interpolation, "images": counts, "mean": mean, "std": std,
                       "notes": notes.lines()}
        (partial / PACK_FILE).write_text(json.dumps(description, indent=1))
        if destination.exists():
            shutil.rmtree(destination)
        os.replace(partial, destination)
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"{destination}: cannot write it ({exc.strerror or exc}); free space there or write "
                        f"elsewhere") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return description


class _no_progress:
    def __init__(self, description: str, total: int) -> None:
        pass

    def __enter__(self):
        return lambda steps=1, description=None: None

    def __exit__(self, *exc) -> None:
        return None


class ImageRows:
    """Some rows of a memory-mapped (N, H, W, C) image array, read only when indexed: a subset of a
    dataset larger than memory costs an index, not a copy."""

    def __init__(self, array: np.ndarray, index: np.ndarray | None = None) -> None:
        self.array = array
        self.index = np.arange(len(array)) if index is None else np.asarray(index)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.array.itemsize

    def subset(self, index: np.ndarray) -> "ImageRows":
        return ImageRows(self.array, self.index[index])

    def __getitem__(self, index) -> np.ndarray:
        """The rows ``index`` (an array of positions or a slice) read into memory, in that order;
        read in file order, which the disk and the page cache prefer."""
        rows = self.index[index]
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.array.shape[1:]), self.array.dtype)
        out[order] = self.array[rows[order]]
        return out


def load_packed(root: Path) -> tuple[tuple, dict, tuple[np.ndarray, np.ndarray] | None]:
    """The arrays of a packed folder, the images memory-mapped, its description, and its own
    validation split (None where the folder it was packed from had none)."""
    try:
        description = json.loads((root / PACK_FILE).read_text())
        if description.get("format") != FORMAT:
            raise ValueError(f"format {description.get('format')!r}, this version reads {FORMAT}")
        names = ["train", "test"] + (["val"] if "val" in description["images"] else [])
        arrays = [np.load(root / f"{kind}_{split}.npy", mmap_mode="r" if kind == "x" else None)
                  for split in names for kind in ("x", "y")]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"data.root={root}: a damaged packed dataset ({exc}); pack it again with "
                        f"stochkd-pipeline pack-dataset") from exc
    if any(len(arrays[i]) != len(arrays[i + 1]) for i in range(0, len(arrays), 2)):
        raise DataError(f"data.root={root}: its images and labels differ in number (a pack cut short); pack it "
                        f"again with stochkd-pipeline pack-dataset")
    x_train, y_train, x_test, y_test = arrays[:4]
    validation = tuple(arrays[4:]) if len(arrays) > 4 else None
    return (ImageRows(x_train), y_train, x_test, y_test, tuple(description["class_names"])), description, validation
