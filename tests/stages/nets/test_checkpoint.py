import os

import pytest
import torch

from stages.common.errors import ArtifactError
from stages.nets.checkpoint import WEIGHTS, ModelSpec, load_model, save_model


class RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_malicious_pickle_is_refused_and_never_runs(tmp_path):
    spec = ModelSpec("resnet8", 10, 3, 32, 1.0, "batch", (0.5,) * 3, (0.25,) * 3)
    save_model(spec.build(), spec, tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"weights": RunsCodeWhenUnpickled(marker)}, tmp_path / WEIGHTS)
    with pytest.raises(ArtifactError, match=f"{WEIGHTS}: refused: .*could run code.*rerun the stage") as refused:
        load_model(tmp_path)
    assert "\n" not in str(refused.value)  # one line
    assert not marker.exists()


def test_a_truncated_checkpoint_gets_one_line(tmp_path):
    spec = ModelSpec("resnet8", 10, 3, 32, 1.0, "batch", (0.5,) * 3, (0.25,) * 3)
    save_model(spec.build(), spec, tmp_path)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=f"{WEIGHTS}: cannot load weights") as broken:
        load_model(tmp_path)
    assert "\n" not in str(broken.value)
    for damaged in (b"", b"hi\n"):  # EOFError and a bare KeyError from torch.load's pickle reader
        (tmp_path / WEIGHTS).write_bytes(damaged)
        with pytest.raises(ArtifactError, match=rf"{WEIGHTS}: cannot load weights \(cut short, damaged, or not a "
                                                rf"file torch.save wrote\); rerun the stage that made it with --force$"):
            load_model(tmp_path)


def test_an_artifact_cannot_name_a_file_outside_its_folder(tmp_path):
    from stages.context import StageInput

    artifact = StageInput(tmp_path / "store" / "engine" / "abc", {})
    assert artifact.file("engine.fp32.ort.onnx") == artifact.path / "engine.fp32.ort.onnx"
    for escape in ("../../../../etc/passwd", "/etc/passwd"):
        with pytest.raises(ArtifactError, match="outside its own folder; the artifact was tampered with"):
            artifact.file(escape)
