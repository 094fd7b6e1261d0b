"""teacher.checkpoint: a teacher trained elsewhere, imported, checked and measured; bad checkpoints
refused in one line."""

import json
from pathlib import Path

import pytest
import torch

from stages.nets.architectures import build_model
from tests.commands import cli, TINY

def teacher_weights(classes=10, arch="resnet8"):
    torch.manual_seed(0)
    return build_model(arch, classes, 1, 0.5).state_dict()


def manifest(artifacts: Path) -> dict:
    [folder] = (artifacts / "store" / "teacher").iterdir()
    return json.loads((folder / "manifest.json").read_text())


def test_a_dataparallel_checkpoint_is_imported_measured_and_keyed_by_content(tmp_path):
    state = {"state_dict": {f"module.{k}": v for k, v in teacher_weights().items()}, "epoch": 200}
    # The extra "epoch" entry is an int: weights_only loading takes it.
    torch.save(state, tmp_path / "teacher.pth")
    done = cli("teacher", str(TINY), "--set", f"teacher.checkpoint={tmp_path / 'teacher.pth'}",
               artifacts=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert "imported, top-1" in done.stdout
    imported = manifest(tmp_path / "a")["metrics"]["imported"]
    assert imported["layout"] == ["took the weights under its 'state_dict' entry",
                                  "removed the prefix 'module.' from every key"]
    (tmp_path / "moved").mkdir()
    (tmp_path / "teacher.pth").rename(tmp_path / "moved" / "same.pth")
    again = cli("teacher", str(TINY), "--set", f"teacher.checkpoint={tmp_path / 'moved' / 'same.pth'}",
                artifacts=tmp_path / "a")
    assert again.returncode == 0 and "0 ran, 1 from the cache" in again.stdout  # same content, same key


def test_a_safetensors_checkpoint_teaches_a_student(tmp_path):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in teacher_weights().items()}, tmp_path / "teacher.safetensors")
    done = cli("distill", str(TINY), "--set", f"teacher.checkpoint={tmp_path / 'teacher.safetensors'}",
               artifacts=tmp_path / "a")
    assert done.returncode == 0, done.stderr
    assert "imported, top-1" in done.stdout and "distill:stochastic_kd" in done.stdout


def bad_checkpoint(tmp_path, kind) -> Path:
    path = tmp_path / "teacher.pt"
    if kind == "corrupt":
        path.write_bytes(b"not a checkpoint at all")
    elif kind == "shapes":
        torch.save(teacher_weights(classes=5), path)
    elif kind == "network":
        torch.save(teacher_weights(arch="resnet14"), path)
    elif kind == "code":
        class RunsCode:
            def __reduce__(self):
                return (print, ("this would have run",))

        torch.save({"conv1.weight": RunsCode()}, path)
    return path


def test_a_checkpoint_that_runs_code_gets_one_line_and_nothing_cached(tmp_path):
    """Through the command line: one line, exit 2, no teacher cached, and the pickled code never ran.
    The other refusals are read from the functions that make them, below."""
    import re

    path = bad_checkpoint(tmp_path, "code")
    done = cli("teacher", str(TINY), "--set", f"teacher.checkpoint={path}", artifacts=tmp_path / "a")
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search("refused: not a plain state dict of tensors", lines[0]), lines
    assert "this would have run" not in done.stdout + done.stderr
    teachers = tmp_path / "a" / "store" / "teacher"
    assert not teachers.exists() or not [p for p in teachers.iterdir() if not p.name.startswith(".")]


@pytest.mark.parametrize("kind, message", [
    ("missing", "teacher.checkpoint does not exist"),
    ("corrupt", "refused: not a plain state dict of tensors"),
    ("shapes", r"'fc.weight' has shape \(5, 64\), but teacher.arch resnet8 with these classes and input channels "
               r"needs \(10, 64\)"),
    ("network", r"'blocks.1.conv1.weight' has shape \(16, 16, 3, 3\), but teacher.arch resnet8"),
])
def test_a_bad_checkpoint_is_refused_naming_the_file_and_why(tmp_path, kind, message):
    from stages.common.errors import ArtifactError
    from stages.training.import_teacher import checkpoint_file, load_into, read_state

    path = bad_checkpoint(tmp_path, kind)
    with pytest.raises(ArtifactError, match=message) as refused:
        state, _ = read_state(checkpoint_file(path))
        load_into(build_model("resnet8", 10, 1, 0.5), state, path, "resnet8")  # the tiny profile's teacher
    assert str(refused.value).startswith(f"{path}: ")


@pytest.mark.parametrize("name, content, reason", [
    ("teacher.pt", b"hi\n", "cut short, damaged, or not a file torch.save wrote"),  # a bare KeyError from pickle
    ("teacher.pt", b"", "cut short, damaged, or not a file torch.save wrote"),  # EOFError
    ("teacher.safetensors", b"\xff" * 100, "Error while deserializing header: header too large"),
], ids=["text", "empty", "safetensors"])
def test_a_damaged_checkpoint_file_is_one_line(tmp_path, name, content, reason):
    import re

    from stages.common.errors import ArtifactError
    from stages.training.import_teacher import read_state

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ArtifactError, match=f"^{re.escape(str(tmp_path / name))}: cannot read teacher.checkpoint as a state dict "
                                            f"\\({re.escape(reason)}\\)$"):
        read_state(tmp_path / name)
