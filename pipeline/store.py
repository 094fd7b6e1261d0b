"""The content-addressed artifact store.

One folder per stage and key, ``<root>/store/<stage>/<key>/``, holding the stage's files and a
``manifest.json`` (key, config, metrics, timings, versions, device, seed, and a sha256 of every
file). A folder is built under a temporary name and renamed into place only when complete, so a
folder that exists under its key is finished. Training checkpoints of an unfinished task wait in
``<root>/store/<stage>/.resume-<key>/`` until the task's folder is in place. An entry whose manifest or checksums do not hold is a
cache miss, never an error: it is reported and rebuilt.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from stages.common.errors import ArtifactError
from stages.common.checksums import file_records, first_mismatch
from pipeline.locks import key_lock, remove_dead_scratch, scratch_name
from stages.context import StageInput

MANIFEST = "manifest.json"
# Beside the finished ``<key>/`` folders of a stage: the training checkpoints of an unfinished task, the
# entry a forced rerun replaced (until it is deleted), and the lock of a key being built.
RESUME_PREFIX, RETIRED_PREFIX, LOCK_PREFIX = ".resume-", ".old-", ".lock-"
# Write failures that a user fixes by making room.
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def retire(folder: Path, key: str) -> Path:
    """Move ``folder`` out of the way at once, then delete it: a deletion cut short leaves a retired
    folder, never one that passes for ``key``'s artifact or checkpoint. Returns where it was moved
    (still there if a file could not be deleted)."""
    retired = folder.with_name(f"{RETIRED_PREFIX}{key}-{uuid.uuid4().hex[:8]}")
    os.replace(folder, retired)
    shutil.rmtree(retired, ignore_errors=True)
    return retired


class ArtifactStore:
    def __init__(self, root: Path, warn: Callable[[str], None] = lambda message: None) -> None:
        self.root = Path(root)
        self.warn = warn
        # A broken entry is looked up more than once before it is rebuilt (again under its lock); it is
        # reported once.
        self._reported: set[tuple[Path, str]] = set()

    def folder(self, stage: str, key: str) -> Path:
        return self.root / "store" / stage / key

    def shared_folder(self, stage: str) -> Path:
        """``<root>/store/shared/<stage>/``: kept across runs, created when first used."""
        return self.root / "store" / "shared" / stage

    def lookup(self, stage: str, key: str) -> StageInput | None:
        """The finished artifact under ``key``, or None if absent or not intact."""
        folder = self.folder(stage, key)
        if not folder.is_dir():
            return None
        problem = self._check(folder, key)
        if problem:
            if (folder, problem) not in self._reported:
                self._reported.add((folder, problem))
                self.warn(f"{folder}: {problem}; rebuilding it")
            return None
        return StageInput(folder, json.loads((folder / MANIFEST).read_text()))

    def _check(self, folder: Path, key: str) -> str | None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, ValueError):
            return "manifest missing or unreadable"
        if manifest.get("key") != key:
            return "manifest belongs to another key"
        mismatch = first_mismatch(folder, manifest.get("files", {}))
        return " ".join(mismatch) if mismatch else None

    def resume_folder(self, stage: str, key: str) -> Path:
        """Where a stage keeps its training checkpoints until its artifact is committed; a run killed
        before that resumes from them."""
        return self.root / "store" / stage / f"{RESUME_PREFIX}{key}"

    def lock_file(self, stage: str, key: str) -> Path:
        return self.root / "store" / stage / f"{LOCK_PREFIX}{key}"

    @contextmanager
    def lock(self, stage: str, key: str, on_wait=lambda holder: None) -> Iterator[None]:
        """Held while ``stage:key`` is being built, so that two runs never build it at once."""
        with ExitStack() as stack:
            try:
                stack.enter_context(key_lock(self.lock_file(stage, key), on_wait))
            except OSError as exc:
                raise self.unwritable(exc) from exc
            yield

    def unwritable(self, exc: OSError) -> ArtifactError:
        fix = ("Free space on that disk, or pass --artifacts on another one" if exc.errno in DISK_FULL
               else "pass --artifacts with a writable folder")
        return ArtifactError(f"{self.root}: cannot write artifacts there ({exc.strerror or exc}); {fix}")

    def begin(self, stage: str, key: str) -> Path:
        """A fresh, empty folder for a stage to write into; scratch folders that a killed run left
        behind are removed first."""
        folder = self.root / "store" / stage
        for stale in remove_dead_scratch(folder) if folder.is_dir() else []:
            self.warn(f"{stale}: removed, left behind by a run that was killed")
        scratch = folder / scratch_name(key, uuid.uuid4().hex[:8])
        try:
            scratch.mkdir(parents=True)
        except OSError as exc:
            raise self.unwritable(exc) from exc
        return scratch

    def commit(self, scratch: Path, stage: str, key: str, manifest: dict[str, Any]) -> StageInput:
        """Checksum the files, write the manifest, and move the folder into place atomically."""
        manifest = {**manifest, "key": key, "files": file_records(scratch)}
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        final = self.folder(stage, key)
        if final.exists():  # a forced rerun replaces the old entry
            retire(final, key)
        os.replace(scratch, final)
        shutil.rmtree(self.resume_folder(stage, key), ignore_errors=True)  # finished: nothing to resume
        return StageInput(final, manifest)

    def discard(self, scratch: Path) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
