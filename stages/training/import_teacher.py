"""A teacher the user trained elsewhere (``teacher.checkpoint``): a state dict in ``.pt`` or
``.safetensors``, or an artifact folder of this project, checked against the profile's network and
measured like a trained teacher.

``.pt`` files load with ``weights_only=True``, so a pickle that would run code is refused. The common
layouts of public checkpoints are accepted and said: the weights under a ``state_dict`` (or
``model``) entry, and keys prefixed ``module.`` by DataParallel.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from stages.common.errors import ArtifactError

WRAPPERS = ("state_dict", "model", "model_state_dict", "net")
PREFIXES = ("module.", "_orig_mod.", "model.")


def checkpoint_file(path: Path) -> Path:
    """The weights file of ``teacher.checkpoint``: the file itself, or an artifact folder's model.pt."""
    from stages.nets.checkpoint import WEIGHTS

    if path.is_dir():
        if not (path / WEIGHTS).is_file():
            raise ArtifactError(f"{path}: teacher.checkpoint names a folder without {WEIGHTS}; name a .pt or "
                                f".safetensors file, or a teacher artifact folder of stochkd-pipeline")
        return path / WEIGHTS
    if not path.is_file():
        raise ArtifactError(f"{path}: teacher.checkpoint does not exist; fix the path or remove the setting to "
                            f"train a teacher")
    if path.suffix not in (".pt", ".pth", ".safetensors"):
        raise ArtifactError(f"{path}: teacher.checkpoint must be a .pt, .pth or .safetensors state dict, or an "
                            f"artifact folder")
    return path


@lru_cache(maxsize=16)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    from stages.common.checksums import sha256_file

    return sha256_file(Path(path))


def file_digest(file: Path) -> str:
    """The sha256 of a weights file, hashed once per path, size and modification time."""
    stat = file.stat()
    return _digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def content_hash(path: Path) -> str:
    """The sha256 of the checkpoint's weights: the teacher's cache key, so that a changed file is a new
    teacher and an unchanged one is not imported again."""
    return file_digest(checkpoint_file(path))


def read_state(file: Path, setting: str = "teacher.checkpoint") -> tuple[dict, list[str]]:
    """The state dict in a weights file (.safetensors, else torch.save's format), and what was done to
    find it (unwrapped, prefixes removed). ``setting`` names the file in messages."""
    import torch

    from safetensors import SafetensorError

    from stages.nets.checkpoint import UNREADABLE_TORCH_FILE, could_run_code, load_problem

    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw = load_file(str(file), device="cpu")
        else:
            raw = torch.load(file, map_location="cpu", weights_only=True)
    except (*UNREADABLE_TORCH_FILE, SafetensorError) as exc:

        if could_run_code(exc):
            # The safe loader cannot tell a damaged file from one whose objects would run code on loading.
            raise ArtifactError(f"{file}: refused: not a plain state dict of tensors (it holds objects whose "
                                f"loading could run code, or it is damaged); save the model's state_dict() alone "
                                f"with torch.save, or as .safetensors") from exc
        raise ArtifactError(f"{file}: cannot read {setting} as a state dict ({load_problem(exc)})") from exc
    notes = []
    for wrapper in WRAPPERS:
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict) and not _all_tensors(raw):
            raw = raw[wrapper]
            notes.append(f"took the weights under its {wrapper!r} entry")
            break
    if not isinstance(raw, dict) or not raw or not _all_tensors(raw):
        raise ArtifactError(f"{file}: {setting} is not a state dict (a mapping from parameter names to tensors)")
    for prefix in PREFIXES:
        if all(key.startswith(prefix) for key in raw):
            raw = {key[len(prefix):]: value for key, value in raw.items()}
            notes.append(f"removed the prefix {prefix!r} from every key")
    return raw, notes


def _all_tensors(mapping: dict) -> bool:
    import torch

    return all(isinstance(v, torch.Tensor) for v in mapping.values())


def load_into(model, state: dict, file: Path, arch: str) -> None:
    """Load ``state`` into ``model`` after checking every name and shape; a mismatch names the first
    tensor that differs."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state:
            raise ArtifactError(f"{file}: no tensor {name!r}, which teacher.arch {arch} has; is it a checkpoint "
                                f"of another network? ({len(state)} tensors, the first {next(iter(state))!r})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArtifactError(f"{file}: {name!r} has shape {tuple(state[name].shape)}, but teacher.arch {arch} "
                                f"with these classes and input channels needs {tuple(tensor.shape)}")
    extra = [name for name in state if name not in expected]
    if extra:
        raise ArtifactError(f"{file}: tensor {extra[0]!r} has no place in teacher.arch {arch} ({len(extra)} such); "
                            f"is it a checkpoint of another network?")
    model.load_state_dict({name: state[name].to(expected[name].dtype) for name in expected})
