"""timm networks through every stage on a folder of real images (the digits, written as PNG and JPEG
files of another size and aspect, some grey, one broken), a student fine-tuned from a local
checkpoint, then deploy and predict: predict, reading only the deployed folder and the image files,
scores what the benchmark scored."""

import json
import shutil

import numpy as np
import pytest

from tests.commands import cli

pytestmark = pytest.mark.slow
timm = pytest.importorskip("timm")

PROFILE = """\
name: timm_tiny
seed: 0
data:
  dataset: folder
  root: {root}
  input_size: 32
  crop_pct: 0.875
  validation_images: 30
  augmentation:
    crop_padding: 0
    horizontal_flip: false
    random_resized_crop: [0.5, 1.0]
teacher:
  arch: timm/test_convnext
  p_last: 0.5
  training: {{epochs: 1, batch_size: 64, lr: 0.05, lr_schedule: cosine}}
student:
  arch: timm/test_resnet
  pretrained: {weights}
  training: {{epochs: 1, batch_size: 64, lr: 0.05, lr_schedule: cosine}}
distill:
  teacher_samples: 2
analysis:
  images: 40
  samples: 2
quantize:
  calibration_images: 16
target:
  name: this-cpu
  backend: onnxruntime
benchmark:
  batch_sizes: [1]
  warmup: 1
  iterations: 3
"""


def write_folder(root):
    """The digits' 8x8 images as 20x14 files, a few grey, one file that is no image."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.RandomState(0)
    order = rng.permutation(len(digits.target))
    for position, index in enumerate(order[:400]):
        split = "test" if position % 5 == 0 else "train"
        pixels = np.rint(digits.images[index] * 255 / 16).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L").resize((20, 14), Image.BILINEAR)
        folder = root / split / f"digit_{digits.target[index]}"
        folder.mkdir(parents=True, exist_ok=True)
        (image if position % 7 == 0 else image.convert("RGB")).save(
            folder / f"{position}.{'jpg' if position % 2 else 'png'}")
    (root / "train" / "digit_0" / "broken.png").write_bytes(b"not an image")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    import torch

    base = tmp_path_factory.mktemp("timm")
    write_folder(base / "images")
    torch.manual_seed(3)
    torch.save({"state_dict": timm.create_model("test_resnet", num_classes=1000).state_dict()}, base / "in1k.pth")
    profile = base / "timm_tiny.yaml"
    profile.write_text(PROFILE.format(root=base / "images", weights=base / "in1k.pth"))
    done = cli("run", str(profile), artifacts=base / "artifacts")
    assert done.returncode == 0, done.stderr
    return base, profile, done


def test_every_stage_runs_for_timm_networks_and_the_report_says_what_drops(timm_run):
    base, _, done = timm_run
    report = json.loads((base / "artifacts" / "timm_tiny" / "report.json").read_text())
    assert set(report["comparison"]["test_accuracy"]) == {"teacher", "student", "kd", "stochastic_kd"}
    assert report["archs"]["teacher"] == "timm/test_convnext" and report["archs"]["kd"] == "timm/test_resnet"
    assert {(r["runtime"], r["precision"]) for r in report["rows"] if r["model"] == "stochastic_kd"} == {
        ("pytorch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp16")}
    assert all(r["macs"] > 0 and r["parameters"] > 0 for r in report["rows"])
    markdown = (base / "artifacts" / "timm_tiny" / "report.md").read_text()
    # test_convnext: eight DropPath positions, the first block's never dropping.
    assert "8 of its blocks can drop" in markdown
    assert "skipped 1 unreadable image file" in markdown and "converted" in markdown
    assert "input_size 32, crop_pct 0.875" in markdown
    assert "fine-tuned from in1k.pth" in done.stdout


def test_the_fine_tuned_student_records_what_it_started_from(timm_run):
    base, _, _ = timm_run
    manifests = [json.loads(p.read_text()) for p in (base / "artifacts" / "store" / "distill").glob("*/manifest.json")]
    started = [m["metrics"]["pretrained"] for m in manifests]
    assert len(started) == 3 and all(s["fresh"] == ["fc.weight", "fc.bias"] for s in started)
    assert all(s["layout"] == ["took the weights under its 'state_dict' entry"] for s in started)
    assert all(len(s["loaded"]) > 20 and "conv1.0.weight" in s["loaded"] for s in started)


def test_deploy_and_predict_score_the_image_files_as_the_benchmark_did(timm_run, tmp_path):
    base, profile, _ = timm_run
    done = cli("deploy", str(profile), "--model", "stochastic_kd", "--precision", "int8", "-o",
               str(tmp_path / "deployed"), artifacts=base / "artifacts")
    assert done.returncode == 0, done.stderr
    package = json.loads((tmp_path / "deployed" / "deploy.json").read_text())
    assert package["input_contract"]["resize"] == {"stored_side": 37, "crop_pct": 0.875, "interpolation": "bilinear"}
    moved = shutil.copytree(tmp_path / "deployed", tmp_path / "elsewhere")
    files = sorted((base / "images" / "test").rglob("*.*"))
    done = cli("predict", str(moved), *map(str, files), "--json", "--top-k", "1")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    names = package["input_contract"]["class_names"]
    hits = [r["top"][0]["class"] == names[names.index(f.parent.name)] for r, f in zip(results, files)]
    report = json.loads((base / "artifacts" / "timm_tiny" / "report.json").read_text())
    scored = next(r["test_accuracy"] for r in report["rows"] if r["model"] == "stochastic_kd"
                  and r["runtime"] == "onnxruntime" and r["precision"] == "int8" and r["batch_size"] == 1)
    assert float(np.mean(hits)) == pytest.approx(scored)
    assert all("as evaluated" in "; ".join(r.get("notes", [])) for r in results)
