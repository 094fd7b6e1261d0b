"""What a stage is given: its parameters, its inputs' folders, a fresh output folder, and a way to
report progress. A stage reads nothing else; the runner alone decides where artifacts live."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

from stages.common.errors import ArtifactError

TRAINING_CHECKPOINT = "training.pt"  # inside a task's resume folder
TRAINING_PROGRESS = "training.json"  # beside it (stages.training.resume.progress_file): how far it stands


def training_progress(resume_folder: Path) -> dict | None:
    """How far a task's checkpoint stands, read without a framework: ``done`` (the fraction of its
    training), ``images_per_second`` and ``device`` (where it trained last); None where not recorded."""
    try:
        record = json.loads((resume_folder / TRAINING_PROGRESS).read_text())
        done = float(record["done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not 0 <= done <= 1:
        return None
    speed = record.get("images_per_second")
    return {"done": done, "images_per_second": float(speed) if isinstance(speed, (int, float)) else None,
            "device": str(record.get("device") or "") or None}


class Advance(Protocol):
    def __call__(self, steps: int = 1, description: str | None = None) -> None: ...


@contextmanager
def no_progress(description: str, total: int) -> Iterator[Advance]:
    yield lambda steps=1, description=None: None


def peer_folder(index: int) -> str:
    """Where the ``index``-th of several models trained together lies inside their artifact."""
    return f"peer{index + 1}"


def member_metrics(metrics: dict[str, Any], member: str | None) -> dict[str, Any]:
    """A trained model's metrics: the artifact's own, or those of one member of it."""
    return metrics["members"][member] if member else metrics


@dataclass(frozen=True)
class StageInput:
    """A finished upstream artifact: its folder (read-only by convention) and its manifest."""

    path: Path
    manifest: dict[str, Any]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.manifest.get("metrics", {})

    def file(self, name: str) -> Path:
        """A file of this artifact. Names come from the artifact's own records, which could have been
        edited: one that leads outside the artifact's folder is refused."""
        path = self.path / name
        if not path.resolve().is_relative_to(self.path.resolve()):
            raise ArtifactError(f"{self.path}: refers to {name!r}, outside its own folder; the artifact was "
                                f"tampered with, delete it and run again")
        return path

    def model_folder(self, member: str | None = None) -> Path:
        """The folder of a trained model: the artifact itself, or one member of it."""
        return self.path / member if member else self.path


@dataclass(frozen=True)
class StageContext:
    params: dict[str, Any]
    inputs: dict[str, StageInput]
    output: Path
    variant: str | None = None
    device: str = "cpu"
    # progress(description, total) is a context manager yielding an Advance
    progress: Callable[..., Any] = no_progress
    # A folder kept across runs for tuning data that speeds later builds up (TensorRT's timing cache);
    # what is in it never changes a result.
    shared: Path | None = None
    # Kept until the stage's artifact is committed, so that a killed or interrupted run resumes
    # its training from where it stopped; saved every checkpoint_interval_s seconds of training.
    checkpoints: Path | None = None
    checkpoint_interval_s: float = 60.0

    @property
    def training_checkpoint(self) -> Path | None:
        return self.checkpoints / TRAINING_CHECKPOINT if self.checkpoints is not None else None
