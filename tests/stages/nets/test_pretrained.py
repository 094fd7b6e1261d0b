"""Pretrained weights from a local file: loaded tensor by tensor, the classifier fresh, bad files in one line."""

import re

import pytest
import torch

timm = pytest.importorskip("timm")

from stages.common.errors import ArtifactError  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.nets.pretrained import load_pretrained, pretrained_hash  # noqa: E402


def _timm_weights(name="test_resnet", classes=1000, seed=1):
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=classes).state_dict()


def test_a_timm_checkpoint_loads_every_tensor_but_the_classifier(tmp_path):
    weights = _timm_weights()
    torch.save(weights, tmp_path / "w.pth")
    network = build_model("timm/test_resnet", 7, 3, p_last=0.5)
    report = load_pretrained(network, tmp_path / "w.pth", "timm/test_resnet")
    assert report["fresh"] == ["fc.weight", "fc.bias"]
    loaded = network.model.state_dict()
    assert all(torch.equal(loaded[name], weights[name]) for name in report["loaded"])
    assert len(report["loaded"]) == len(weights) - 2 and report["sha256"] == pretrained_hash(tmp_path / "w.pth")
    assert network.model.fc.out_features == 7


def test_a_hub_folder_and_a_single_file_folder_are_read(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "hub").mkdir()
    save_file(_timm_weights(), tmp_path / "hub" / "model.safetensors")
    (tmp_path / "hub" / "config.json").write_text("{}")
    report = load_pretrained(build_model("timm/test_resnet", 3, 3), tmp_path / "hub", "timm/test_resnet")
    assert report["file"] == "model.safetensors"
    (tmp_path / "two").mkdir()
    for name in ("a.pth", "b.pth"):
        torch.save(_timm_weights(), tmp_path / "two" / name)
    with pytest.raises(ArtifactError, match="2 weights files .*name the file itself"):
        load_pretrained(build_model("timm/test_resnet", 3, 3), tmp_path / "two", "timm/test_resnet")


def test_a_grey_profile_adapts_the_first_convolution(tmp_path):
    torch.save(_timm_weights(), tmp_path / "w.pth")
    network = build_model("timm/test_resnet", 3, 1)
    report = load_pretrained(network, tmp_path / "w.pth", "timm/test_resnet")
    assert report["adapted"] == ["conv1.0.weight"] and network.model.conv1[0].weight.shape[1] == 1


@pytest.mark.parametrize("kind, message", [
    ("other network", r"no tensor 'stem\.0\.weight', which timm/test_convnext has; is it a checkpoint of another "
                      r"network\?"),
    ("damaged", r"cannot read pretrained weights as a state dict"),
    ("code", r"refused: not a plain state dict of tensors"),
    ("other variant", r"'layer1\.0\.conv1\.weight' has shape"),
    ("extra tensors", r"tensor 'extra\.weight' has no place in timm/test_convnext"),
])
def test_a_bad_file_is_one_line_naming_the_first_mismatch(tmp_path, kind, message):
    path = tmp_path / "w.pth"
    arch = "timm/test_convnext"
    if kind == "other network":
        torch.save(_timm_weights("test_resnet"), path)
    elif kind == "damaged":
        path.write_bytes(b"PK\x03\x04 cut short")
    elif kind == "code":
        torch.save({"weights": _timm_weights("test_convnext"), "run": print}, path)
    elif kind == "other variant":
        arch = "timm/test_resnet"
        torch.save({k: (v[:, :1] if k == "layer1.0.conv1.weight" else v)
                    for k, v in _timm_weights("test_resnet").items()}, path)
    else:
        torch.save({**_timm_weights("test_convnext"), "extra.weight": torch.zeros(3)}, path)
    network = build_model(arch, 5, 3)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    with pytest.raises(ArtifactError) as raised:
        load_pretrained(network, path, arch)
    assert re.search(message, str(raised.value)) and "\n" not in str(raised.value)
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())  # nothing half-loaded


def test_the_weights_enter_the_key_by_content_and_fill_in_the_pretrained_input(tmp_path):
    from stages.common.profile import Profile

    import shutil

    torch.save(_timm_weights(seed=1), tmp_path / "a.pth")
    shutil.copy(tmp_path / "a.pth", tmp_path / "same.pth")  # same content, another path
    torch.save(_timm_weights(seed=2), tmp_path / "b.pth")

    def student(path):
        return Profile.model_validate({"student": {"arch": "timm/test_resnet", "pretrained": str(path)}})

    a, same, b = (student(tmp_path / n) for n in ("a.pth", "same.pth", "b.pth"))
    assert a.student.cache_form() == same.student.cache_form() != b.student.cache_form()
    config = timm.get_pretrained_cfg("test_resnet")
    assert (a.data.input_size, a.data.crop_pct) == (config.input_size[-1], config.crop_pct)
    assert a.student.mean == tuple(config.mean) and a.teacher.mean is None
    explicit = Profile.model_validate({"data": {"input_size": 48}, "student": {
        "arch": "timm/test_resnet", "pretrained": str(tmp_path / "a.pth"), "mean": [0.1] * 3, "std": [0.2] * 3}})
    assert explicit.data.input_size == 48 and explicit.student.mean == (0.1,) * 3


def test_pretrained_weights_are_for_timm_networks():
    from stages.common.profile import Profile

    with pytest.raises(ValueError, match="student.pretrained starts a timm network"):
        Profile.model_validate({"student": {"arch": "resnet8", "pretrained": "x.pth"}})
