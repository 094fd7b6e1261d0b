"""An image dataset (.npz) packed small enough to reach a GPU machine in two calls, and unpacked there.

A call to the device machine carries at most 64 MiB, and CIFAR-100 (168 MB as numpy's compressed
.npz) took three calls, so work that needs it could start only in a session's third call. Packed
here it is about 104 MB in two parts.

Each (N, H, W, C) uint8 image array is stored as channel planes, with red and blue made differences
from green (the channels of a photo move together), then each plane made a 2-D difference (a pixel
minus its left and upper neighbours plus its upper-left one, modulo 256: mostly small values), and
everything compressed with xz. Both steps undo exactly (two running sums), so the packing is
lossless; unpacking checks every part and every array against the SHA-256 recorded when packing.
Other arrays (labels, class names) are stored as they are.

    python bench/carry_npz.py pack ../shared/datasets/cifar100.npz .data/c100x  # about 4 min on 2 cores
    python bench/carry_npz.py check .data/c100x          # on the device: are the parts there whole?
    python bench/carry_npz.py unpack .data/c100x /tmp/cifar100.npz              # on the device, seconds

Needs only numpy and Python's lzma module. ``unpack`` writes an uncompressed .npz (fast to load).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

FORMAT = 1
MANIFEST = "manifest.json"
IMAGE_CODEC = "planes, red and blue less green, 2-D difference"


class CarryError(Exception):
    """A part or an array that is missing or not what was packed: one line for the user."""


def xz():
    """Python's lzma module, which a Python built without liblzma lacks."""
    try:
        import lzma
    except ImportError:
        raise CarryError("this Python has no lzma module (built without liblzma): unpack with another Python, or "
                         "carry the four parts that ../shared/datasets/README.md describes") from None
    return lzma


def sha256(data: bytes | np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).hexdigest()


def is_image_array(array: np.ndarray) -> bool:
    return array.dtype == np.uint8 and array.ndim == 4


def encode_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) uint8 -> (N, C, H, W) uint8 residuals; uint8 arithmetic wraps, which is the
    modulo 256 that makes it reversible."""
    planes = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    if planes.shape[1] == 3:
        planes[:, 0] -= planes[:, 1]
        planes[:, 2] -= planes[:, 1]
    zero = np.uint8(0)  # a Python 0 would make np.diff work in int64, which does not wrap
    return np.diff(np.diff(planes, axis=3, prepend=zero), axis=2, prepend=zero)


def decode_images(residuals: np.ndarray) -> np.ndarray:
    planes = np.cumsum(np.cumsum(residuals, axis=2, dtype=np.uint8), axis=3, dtype=np.uint8)
    if planes.shape[1] == 3:
        planes[:, 0] += planes[:, 1]
        planes[:, 2] += planes[:, 1]
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def pack(source: Path, folder: Path, max_mb: float = 58.0) -> dict:
    """Write ``folder``/part-NN.xz and ``folder``/manifest.json for the arrays of ``source``; parts
    of equal size, each at most ``max_mb`` MB. Returns the manifest."""
    if not source.is_file():
        raise CarryError(f"{source} is not a file: give the .npz to pack")
    arrays, compressor, stream = [], xz().LZMACompressor(preset=6), []
    with np.load(source, allow_pickle=False) as npz:
        for name in npz.files:
            array = npz[name]
            image = is_image_array(array)
            stored = encode_images(array) if image else np.ascontiguousarray(array)
            stream.append(compressor.compress(stored))
            arrays.append({"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
                           "codec": IMAGE_CODEC if image else "as is", "sha256": sha256(array)})
    stream.append(compressor.flush())
    packed = b"".join(stream)
    count = max(1, math.ceil(len(packed) / (max_mb * 1e6)))
    size = math.ceil(len(packed) / count)
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for i in range(count):
        piece = packed[i * size:(i + 1) * size]
        name = f"part-{i:02d}.xz"
        (folder / name).write_bytes(piece)
        parts.append({"file": name, "bytes": len(piece), "sha256": sha256(piece)})
    manifest = {"format": FORMAT, "source": source.name, "arrays": arrays, "parts": parts}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CarryError(f"{path} is missing: carry it with the parts (bench/carry_npz.py pack writes it)") from None
    except (OSError, ValueError) as exc:
        raise CarryError(f"{path} cannot be read ({exc}); pack the dataset again") from None
    if manifest.get("format") != FORMAT:
        raise CarryError(f"{path}: format {manifest.get('format')!r}, this script reads {FORMAT}; pack it again "
                         f"with this version")
    return manifest


def checked_part(folder: Path, manifest: dict, part: dict) -> bytes:
    path = folder / part["file"]
    if not path.is_file():
        raise CarryError(f"{path} is missing: carry every part that {folder / MANIFEST} lists "
                         f"({', '.join(p['file'] for p in manifest['parts'])})")
    piece = path.read_bytes()
    if len(piece) != part["bytes"] or sha256(piece) != part["sha256"]:
        raise CarryError(f"{path} is damaged ({len(piece)} bytes, {part['bytes']} packed; checksum differs): "
                         f"carry it again")
    return piece


def checked_parts(folder: Path, manifest: dict) -> bytes:
    """The parts joined, each first checked against the manifest."""
    return b"".join(checked_part(folder, manifest, part) for part in manifest["parts"])


def check(folder: Path) -> list[str]:
    """One line per part (whole, or not here yet) and one for lzma: what a call that carried some of
    the parts can say before the last one arrives. Raises CarryError for a damaged part."""
    manifest = read_manifest(folder)
    lines = []
    for part in manifest["parts"]:
        if (folder / part["file"]).is_file():
            checked_part(folder, manifest, part)
            lines.append(f"{folder / part['file']}: whole")
        else:
            lines.append(f"{folder / part['file']}: not here yet")
    xz()
    return [*lines, "lzma: present"]


def unpack(folder: Path, destination: Path) -> dict[str, np.ndarray]:
    """Check the parts, rebuild every array, check each against its recorded SHA-256 and write them to
    ``destination`` (uncompressed .npz; written whole or not at all). Returns the arrays."""
    manifest = read_manifest(folder)
    stream = memoryview(xz().decompress(checked_parts(folder, manifest)))
    arrays, offset = {}, 0
    for entry in manifest["arrays"]:
        dtype, shape = np.dtype(entry["dtype"]), tuple(entry["shape"])
        image = entry["codec"] == IMAGE_CODEC
        stored_shape = (shape[0], shape[3], shape[1], shape[2]) if image else shape
        length = dtype.itemsize * math.prod(stored_shape)
        stored = np.frombuffer(stream[offset:offset + length], dtype=dtype).reshape(stored_shape)
        offset += length
        array = decode_images(stored) if image else stored.copy()
        if sha256(array) != entry["sha256"]:
            raise CarryError(f"{folder}: {entry['name']} does not unpack to the array that was packed; pack it again")
        arrays[entry["name"]] = array
    if offset != len(stream):
        raise CarryError(f"{folder}: {len(stream) - offset} bytes more than {MANIFEST} describes; pack it again")
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    with open(partial, "wb") as file:
        np.savez(file, **arrays)
    os.replace(partial, destination)
    return arrays


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="SOURCE.npz -> FOLDER of parts and a manifest")
    packing.add_argument("source", type=Path)
    packing.add_argument("folder", type=Path)
    packing.add_argument("--max-mb", type=float, default=58.0, help="largest part, MB (default 58)")
    checking = commands.add_parser("check", help="FOLDER: the parts here are whole, and lzma is present")
    checking.add_argument("folder", type=Path)
    unpacking = commands.add_parser("unpack", help="FOLDER -> DESTINATION.npz, checked")
    unpacking.add_argument("folder", type=Path)
    unpacking.add_argument("destination", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            manifest = pack(args.source, args.folder, args.max_mb)
            sizes = ", ".join(f"{p['file']} {p['bytes'] / 1e6:.1f} MB" for p in manifest["parts"])
            print(f"{args.source} -> {args.folder}: {sizes}")
        elif args.command == "check":
            print("\n".join(check(args.folder)))
        else:
            arrays = unpack(args.folder, args.destination)
            print(f"{args.folder} -> {args.destination}: "
                  f"{', '.join(f'{k} {v.shape}' for k, v in arrays.items())}, every array as packed")
    except CarryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
