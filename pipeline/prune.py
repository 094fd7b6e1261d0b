"""What an artifact store holds that the given profiles no longer use, and its removal.

A store keeps every artifact it ever built: a changed setting is a new key, and the entries of the old
one stay until removed. Kept here: every task of the given profiles (at every point of a sweep grid)
and its training checkpoint, any store folder a profile names as a path (an imported teacher), and
whatever a running process holds by its key's lock. ``store/shared`` (this machine's measured speed,
the engine builders' timing caches) and the folders outside the store (reports, sweeps, logs) are
never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline.locks import SCRATCH_PREFIX, dead_scratch, key_lock, lock_held
from pipeline.store import MANIFEST, RESUME_PREFIX, RETIRED_PREFIX, ArtifactStore, retire

# What each kind of entry is, as the listing says it.
KINDS = {"artifact": "finished", "checkpoint": "training checkpoint",
         "retired": "replaced by a rerun", "scratch": "left by a killed run"}


@dataclass(frozen=True)
class Entry:
    path: Path
    stage: str
    key: str
    kind: str  # a key of KINDS
    size: int  # bytes
    variant: str | None  # the model, where the manifest names it
    written: float  # the newest file's modification time

    @property
    def task(self) -> str:
        return f"{self.stage}:{self.variant}" if self.variant else self.stage


def _key_and_kind(name: str) -> tuple[str, str] | None:
    """The key and kind of a stage folder's entry, from its name; None for what is not an entry."""
    if name.startswith(RESUME_PREFIX):
        return name[len(RESUME_PREFIX):], "checkpoint"
    if name.startswith(RETIRED_PREFIX):  # .old-<key>-<token>
        return name[len(RETIRED_PREFIX):].rsplit("-", 1)[0], "retired"
    if name.startswith(SCRATCH_PREFIX):  # .tmp-<key>-<pid>-<host>-<token>
        return name[len(SCRATCH_PREFIX):].split("-", 1)[0], "scratch"
    if name.startswith("."):
        return None
    return name, "artifact"


def _size_and_time(folder: Path) -> tuple[int, float]:
    """Bytes under ``folder`` and when its newest file was written; raises OSError where the folder
    itself went meanwhile."""
    size, newest = 0, 0.0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                stat = os.stat(os.path.join(parent, name))
            except OSError:
                continue  # removed meanwhile
            size += stat.st_size
            newest = max(newest, stat.st_mtime)
    return size, newest or folder.stat().st_mtime


def _variant(folder: Path) -> str | None:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("variant")
    except (OSError, ValueError, AttributeError):
        return None


def store_entries(store: ArtifactStore) -> list[Entry]:
    """Every entry of every stage folder: finished artifacts, training checkpoints, folders a rerun
    replaced, and scratch folders whose writer died here (a live writer's are not entries yet)."""
    entries = []
    top = store.root / "store"
    for stage_folder in sorted(top.iterdir()) if top.is_dir() else []:
        if not stage_folder.is_dir() or stage_folder.name.startswith(".") or stage_folder.name == "shared":
            continue
        dead = set(dead_scratch(stage_folder))
        for path in sorted(stage_folder.iterdir()):
            parsed = _key_and_kind(path.name)
            if parsed is None or not path.is_dir() or (parsed[1] == "scratch" and path not in dead):
                continue
            key, kind = parsed
            try:
                size, written = _size_and_time(path)
            except OSError:
                continue  # renamed into place or removed by a run since the listing: not this entry
            entries.append(Entry(path, stage_folder.name, key, kind, size,
                                 _variant(path) if kind == "artifact" else None, written))
    return entries


def _paths_in(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _paths_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _paths_in(item)
    elif isinstance(value, str):
        yield value


def named_entries(profile, store: ArtifactStore) -> set[tuple[str, str]]:
    """The store entries that a profile names by path (``teacher.checkpoint`` set to a folder or file
    of another task's artifact): its key depends on their content, not on a task of its plan."""
    top = (store.root / "store").resolve()
    named = set()
    for text in _paths_in(profile.model_dump(mode="json")):
        try:
            inside = Path(text).expanduser().resolve().relative_to(top)
        except (ValueError, OSError, RuntimeError):
            continue
        if len(inside.parts) >= 2:
            key = _key_and_kind(inside.parts[1])
            if key is not None:
                named.add((inside.parts[0], key[0]))
    return named


def used_keys(profiles, store: ArtifactStore) -> set[tuple[str, str]]:
    """(stage, key) of every task the profiles plan, and of every entry they name by path."""
    from pipeline.plan import build_plan

    used = set()
    for profile in profiles:
        used.update((task.stage, task.key) for task in build_plan(profile))
        used.update(named_entries(profile, store))
    return used


@dataclass
class Survey:
    unused: list[Entry]  # what no profile uses and no process holds
    held: list[Entry]  # unused, but a running process holds its key's lock
    kept: list[Entry]  # what the profiles use

    @property
    def unused_bytes(self) -> int:
        return sum(e.size for e in self.unused)


def survey(store: ArtifactStore, profiles) -> Survey:
    used = used_keys(profiles, store)
    unused, held, kept = [], [], []
    for entry in store_entries(store):
        if entry.kind in ("artifact", "checkpoint") and (entry.stage, entry.key) in used:
            kept.append(entry)
        elif entry.kind in ("artifact", "checkpoint") and lock_held(store.lock_file(entry.stage, entry.key)):
            held.append(entry)
        else:
            unused.append(entry)
    return Survey(unused, held, kept)


def remove(store: ArtifactStore, entries: list[Entry]) -> tuple[list[Entry], list[Entry]]:
    """Remove ``entries``; returns those removed and those left (a run took the key's lock meanwhile,
    or a file could not be deleted). An artifact or checkpoint goes under its key's lock, so that a
    run starting now never finds half of it."""
    removed, left = [], []
    for entry in entries:
        if not entry.path.exists():
            removed.append(entry)  # deleted meanwhile: by a rerun, or a cut-short prune
            continue
        if entry.kind in ("artifact", "checkpoint"):
            try:
                with key_lock(store.lock_file(entry.stage, entry.key), timeout_s=0):
                    rest = retire(entry.path, entry.key)
            except TimeoutError:
                left.append(entry)
                continue
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
            rest = entry.path
        (left if rest.exists() else removed).append(entry)
    return removed, left


def age_text(written: float, now: float | None = None) -> str:
    """"3 days ago", "5 h ago": when an entry was last written."""
    seconds = max(0.0, (now or time.time()) - written)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def size_text(size: int) -> str:
    """Bytes in the largest binary unit up to GiB that keeps a whole number before the point: "3.4 MiB"."""
    value, unit = float(size), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} B" if unit == "B" else f"{value:,.1f} {unit}"


def entries_text(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"
