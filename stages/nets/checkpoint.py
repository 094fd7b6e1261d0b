"""Save and load trained networks: weights as a state dict (loaded with ``weights_only=True``, so
loading never runs code) next to a JSON description of how to rebuild the network. PyTorch is
imported by the functions that need it, so naming these files (WEIGHTS, SPEC) costs nothing."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from stages.common.errors import ArtifactError, first_line
from stages.nets.architectures import build_model

if TYPE_CHECKING:
    from torch import nn

WEIGHTS = "model.pt"
SPEC = "model.json"


@dataclass(frozen=True)
class ModelSpec:
    arch: str
    num_classes: int
    in_channels: int
    image_size: int
    p_last: float
    drop_mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    skips: bool | None = None  # see architectures.resolve_skips

    def build(self) -> nn.Module:
        return build_model(self.arch, self.num_classes, self.in_channels, self.p_last, self.drop_mode,
                           self.skips, self.image_size)

    def with_survival(self, p_last: float, drop_mode: str) -> "ModelSpec":
        return replace(self, p_last=p_last, drop_mode=drop_mode)


def write_torch(obj, path: Path, durable: bool = False) -> None:
    """``torch.save`` whose write failures surface as the OSError that caused them (a full disk:
    ENOSPC). Given a path, PyTorch's own writer reports them as an opaque RuntimeError; given a
    Python file, as a RuntimeError raised while handling the OSError."""
    import torch

    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except RuntimeError as exc:
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, OSError):
            raise cause from None
        raise


def save_model(model: nn.Module, spec: ModelSpec, folder: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_torch(state, folder / WEIGHTS)
    (folder / SPEC).write_text(json.dumps(asdict(spec), indent=2))


def read_spec(folder: Path) -> ModelSpec:
    try:
        raw = json.loads((folder / SPEC).read_text())
        return ModelSpec(**{**raw, "mean": tuple(raw["mean"]), "std": tuple(raw["std"])})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"{folder / SPEC}: unreadable model description ({exc}); "
                            f"rerun the stage that made it with --force") from exc


# What torch.load(..., weights_only=True) raises on a damaged file: a text file gives KeyError, an
# empty one EOFError, a flipped byte UnicodeDecodeError (a ValueError), a cut one RuntimeError.
UNREADABLE_TORCH_FILE = (OSError, RuntimeError, ValueError, KeyError, EOFError, pickle.UnpicklingError)


def load_problem(exc: BaseException) -> str:
    """What an UNREADABLE_TORCH_FILE error says, in words: pickle's own ("105") says nothing."""
    if isinstance(exc, (KeyError, EOFError, UnicodeDecodeError)):
        return "cut short, damaged, or not a file torch.save wrote"
    return first_line(exc)[:200]


def could_run_code(exc: BaseException) -> bool:
    """True when ``torch.load(..., weights_only=True)`` refused a file for holding more than tensors."""
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc)


def load_model(folder: Path, spec: ModelSpec | None = None) -> nn.Module:
    """Rebuild the network described in ``folder`` (or by ``spec``) and load its weights."""
    import torch

    spec = spec or read_spec(folder)
    model = spec.build()
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except UNREADABLE_TORCH_FILE as exc:
        if could_run_code(exc):
            raise ArtifactError(f"{folder / WEIGHTS}: refused: it holds more than tensors, and loading it could "
                                f"run code it carries; rerun the stage that made it with --force") from exc
        raise ArtifactError(f"{folder / WEIGHTS}: cannot load weights ({load_problem(exc)}); "
                            f"rerun the stage that made it with --force") from exc
    return model.eval()
