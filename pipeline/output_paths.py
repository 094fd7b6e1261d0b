"""Output paths a command is given (-o): what stops one from being made, found before any work."""

from __future__ import annotations

from pathlib import Path


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing path above ``path`` when it is a file, so that ``path`` cannot be created
    under it; None when the folders above can be made or are there."""
    nearest = next((folder for folder in path.parents if folder.exists()), None)
    return nearest if nearest is not None and not nearest.is_dir() else None
