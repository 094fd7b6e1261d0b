"""Whole-file checksums: the artifact store, bundles and deployed folders check every file by them,
and an imported teacher enters its cache key by one."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable


def sha256_file(path: Path) -> str:
    """sha256 of a whole file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_records(folder: Path, files: Iterable[Path] | None = None) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each of ``files`` (default: every file under ``folder``), by its path
    inside ``folder``."""
    chosen = sorted(p for p in folder.rglob("*") if p.is_file()) if files is None else files
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in chosen}


def first_mismatch(folder: Path, records: dict[str, dict[str, Any]]) -> tuple[str, str] | None:
    """The first file of ``records`` under ``folder`` that is not as recorded, with what is wrong
    ("is missing or has the wrong size", "does not match its checksum"); None when all are."""
    for name, expected in records.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expected["bytes"]:
            return name, "is missing or has the wrong size"
        if sha256_file(path) != expected["sha256"]:
            return name, "does not match its checksum"
    return None
