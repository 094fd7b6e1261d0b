"""Canonical JSON and content hashes: what cache keys are made of.

A dataset enters a key by what it holds, not where it lies, so a cache copied to another machine
(with the data at another path) still matches.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from stages.common.config import FOLDER_DATASETS, DataConfig, Section
from stages.common.errors import DataError

SAMPLE_BYTES = 1 << 20
PACK_FILE = "pack.json"  # as stages.training.packed names it (importing it would import NumPy)
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@lru_cache(maxsize=32)
def _sampled_file_hash(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of the size, the first and the last MiB: cheap on large files, and any re-export,
    truncation or different dataset changes it."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read())
    return h.hexdigest()


def file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return _sampled_file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def data_identity(cfg: DataConfig) -> dict[str, Any]:
    """The data config as it enters a key: contents instead of paths."""
    identity = cfg.model_dump(mode="json", exclude={"root", "download"}, exclude_none=True)
    if cfg.dataset == "digits":
        identity["content"] = "scikit-learn digits"
        return identity
    root = Path(cfg.root).expanduser()  # the config guarantees a root for every other dataset
    if root.suffix == ".npz":
        if not root.is_file():
            raise DataError(f"data.root={cfg.root}: no such file ({root.resolve()}); point data.root at "
                            f"the .npz (relative paths resolve from the current directory)")
        identity["content"] = f"npz:{file_fingerprint(root)}"
    elif (root / PACK_FILE).is_file():
        # A packed dataset: its description, and each array's sampled content (renaming or copying the
        # folder elsewhere keeps the key; packing other images, or at another size, changes it).
        h = hashlib.sha256((root / PACK_FILE).read_bytes())
        for array in sorted(root.glob("*.npy")):
            h.update(f"{array.name}\0{file_fingerprint(array)}".encode())
        identity["content"] = f"packed:{h.hexdigest()}"
    elif cfg.dataset in FOLDER_DATASETS:
        identity["content"] = f"files:{folder_fingerprint(root)}"
    else:
        # torchvision checks its files against published MD5s, so the name identifies the content.
        identity["content"] = f"torchvision:{TORCHVISION_FOLDERS.get(cfg.dataset, cfg.dataset)}"
    return identity


def folder_fingerprint(root: Path) -> str:
    """sha256 of every file's relative path and size, and of every empty folder's path: a copy
    elsewhere matches, an added, removed or re-encoded image, or an added empty class, does not."""
    if not root.is_dir():
        raise DataError(f"data.root={root}: no such folder ({root.resolve()}); point data.root at the "
                        f"dataset's folder (relative paths resolve from the current directory)")
    h = hashlib.sha256()
    entries = sorted(root.rglob("*"))
    for path in (p for p in entries if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\n".encode())
    # An empty class folder is a class too, though it holds no file. Hashed only where there is one,
    # so the keys of folders without any stay as they were.
    for path in (p for p in entries if p.is_dir() and not any(p.iterdir())):
        h.update(f"{path.relative_to(root).as_posix()}/\0empty\n".encode())
    return h.hexdigest()


def key_form(value: Any) -> Any:
    """A stage parameter as it enters the cache key.

    Unset (null) settings are left out, so adding an optional setting to the schema leaves every
    existing key, and so every cached artifact, valid.
    """
    if isinstance(value, DataConfig):
        return data_identity(value)
    if hasattr(value, "cache_form"):
        return value.cache_form()
    if isinstance(value, Section):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: key_form(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [key_form(v) for v in value]
    return value
