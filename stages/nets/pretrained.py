"""Pretrained weights from a local file for a timm network (``teacher.pretrained``,
``student.pretrained``): the start of a fine-tuning, never a download.

A checkpoint saved by timm (its hub's ``model.safetensors`` or ``pytorch_model.bin``) or by
torchvision where timm's network has the same tensor names (the ResNets) loads tensor by tensor
against the network built for the profile: the classifier (timm's ``pretrained_cfg["classifier"]``)
starts fresh for the profile's classes; a first convolution pretrained on three channels is adapted
to the profile's (timm's ``adapt_input_conv``); every other tensor must be in the file with its
shape, and the file must hold nothing else. The first mismatch is named in one line.
"""

from __future__ import annotations

from pathlib import Path

from stages.common.errors import ArtifactError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
# In a folder holding several files (a hub snapshot), the weights timm itself would read.
HUB_FILES = ("model.safetensors", "pytorch_model.bin")
SETTING = "pretrained"


def pretrained_file(path: Path, setting: str = SETTING) -> Path:
    """The weights file named by a ``pretrained`` setting (``setting``, e.g. student.pretrained): the
    file, or the one weights file in a folder."""
    if path.is_dir():
        for name in HUB_FILES:
            if (path / name).is_file():
                return path / name
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(found) != 1:
            names = ", ".join(p.name for p in found[:4])
            what = f"{len(found)} weights files ({names})" if found else "no weights file"
            raise ArtifactError(f"{path}: {setting} names a folder with {what}; name the file itself "
                                f"({', '.join(WEIGHT_SUFFIXES)})")
        return found[0]
    if not path.is_file():
        raise ArtifactError(f"{path}: {setting}: no such file or folder; fix the path, or remove {setting} to start "
                            f"from random weights")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ArtifactError(f"{path}: {setting} must be {', '.join(WEIGHT_SUFFIXES)} (a state dict), or a folder "
                            f"holding one")
    return path


def pretrained_hash(path: Path, setting: str = SETTING) -> str:
    """The sha256 of the weights file: what enters the key of the network trained from it."""
    from stages.training.import_teacher import file_digest

    return file_digest(pretrained_file(path, setting))


def _names_under(prefixes: tuple[str, ...], names) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes)]


def _as_tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def load_pretrained(network, path: Path, arch: str) -> dict:
    """Load the weights in ``path`` into ``network`` (a TimmNetwork built for the profile) and say
    what was done: the file and its hash, how its layout was read, the tensors loaded and those that
    started fresh or were adapted."""
    import torch
    from timm.models import adapt_input_conv

    from stages.training.import_teacher import read_state

    file = pretrained_file(path)
    state, notes = read_state(file, setting=f"{SETTING} weights")
    model = network.model
    expected = model.state_dict()
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    fresh = _names_under(_as_tuple(cfg.get("classifier")), expected)
    adapted = []
    for conv in _as_tuple(cfg.get("first_conv")):
        name = f"{conv}.weight"
        if name in state and name in expected and state[name].dim() == 4 and \
                state[name].shape[1] != expected[name].shape[1]:
            state[name] = adapt_input_conv(expected[name].shape[1], state[name])
            adapted.append(name)
    # Counters BatchNorm keeps, which some checkpoints leave out: they change no output.
    optional = {n for n in expected if n.endswith("num_batches_tracked")}
    for name, tensor in expected.items():
        if name in fresh:
            continue
        if name not in state:
            if name in optional:
                continue
            raise ArtifactError(f"{file}: no tensor {name!r}, which {arch} has; is it a checkpoint of another "
                                f"network? ({len(state)} tensors, the first {next(iter(state))!r})")
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise ArtifactError(f"{file}: {name!r} has shape {tuple(state[name].shape)}, but {arch} needs "
                                f"{tuple(tensor.shape)}; is it a checkpoint of another variant of the network?")
    unused = [n for n in state if n not in expected and not _names_under(_as_tuple(cfg.get("classifier")), [n])]
    if unused:
        raise ArtifactError(f"{file}: tensor {unused[0]!r} has no place in {arch} ({len(unused)} such); is it a "
                            f"checkpoint of another network, or one whose blocks are named otherwise?")
    loaded = [n for n in expected if n not in fresh and n in state]
    with torch.no_grad():
        model.load_state_dict({**expected, **{n: state[n].to(expected[n].dtype) for n in loaded}})
    from stages.training.import_teacher import file_digest

    return {"path": str(path.resolve()), "file": file.name, "sha256": file_digest(file), "layout": notes,
            "loaded": loaded, "fresh": fresh, "adapted": adapted}
