"""The deployed folder read on its own: images converted and resized with notes, and a folder whose
runtime cannot run here refused in one line."""

import json

import numpy as np
import pytest
from PIL import Image

from stages.common.checksums import file_records
from stages.common.errors import ArtifactError
from stages.deploy.deployed import DEPLOY_FILE, load_image, predict, preprocess

CONTRACT = {"input_shape": ["batch", 1, 8, 8], "mean": [0.5], "std": [0.25], "class_names": list("0123456789"),
            "input_dtype": "float32", "input_layout": "NCHW"}


def test_an_image_of_another_size_and_mode_is_converted_and_says_so(tmp_path):
    Image.fromarray(np.full((32, 24, 3), 200, np.uint8), mode="RGB").save(tmp_path / "big.png")
    pixels, notes = load_image(tmp_path / "big.png", 8, 1)
    assert pixels.shape == (8, 8, 1) and pixels.dtype == np.uint8 and int(pixels[0, 0, 0]) == 200
    assert notes == ["converted from RGB to L", "resized from 24x32 to 8x8"]
    x = preprocess(pixels[None], CONTRACT)
    assert x.shape == (1, 1, 8, 8) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == pytest.approx((200 / 255 - 0.5) / 0.25)


def test_a_tensorrt_folder_on_a_machine_that_cannot_run_it_is_refused(tmp_path, standin_tensorrt):
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "digit.png")
    folder = tmp_path / "deployed"
    folder.mkdir()
    (folder / "engine.int8.plan").write_bytes(b"built for an Orin")
    (folder / DEPLOY_FILE).write_text(json.dumps({
        "backend": "tensorrt", "file": "engine.int8.plan", "input_contract": CONTRACT,
        "target": {"name": "orin", "backend": "tensorrt", "tensorrt": {"dla_core": None}}}))
    with pytest.raises(ArtifactError, match=r"runs on tensorrt, which cannot run here \(TensorRT 10.13.3.9 is "
                                            r"installed but no CUDA GPU is visible\)"):
        predict(folder, [tmp_path / "digit.png"])


def test_a_folder_without_deploy_json_says_how_to_make_one(tmp_path):
    with pytest.raises(ArtifactError, match="not a deployed model folder .*stochkd-pipeline deploy"):
        predict(tmp_path, [tmp_path])


@pytest.mark.parametrize("damage, problem", [("cut short", "missing or has the wrong size"),
                                             ("changed", "does not match its checksum"),
                                             ("gone", "missing or has the wrong size")])
def test_a_file_that_differs_from_what_deploy_wrote_is_refused_before_it_is_loaded(tmp_path, damage, problem):
    folder = tmp_path / "deployed"
    folder.mkdir()
    engine, options = folder / "engine.fp32.ort.onnx", folder / "engine.fp32.ort.onnx.options.json"
    engine.write_bytes(b"an onnx model" * 50)
    options.write_text("{}")
    (folder / DEPLOY_FILE).write_text(json.dumps({
        "backend": "onnxruntime", "file": engine.name, "files": file_records(folder, [engine, options]),
        "input_contract": CONTRACT, "target": {"name": "cpu", "backend": "onnxruntime"}}))
    if damage == "cut short":
        engine.write_bytes(engine.read_bytes()[:100])
    elif damage == "changed":
        options.write_text("[]")
    else:
        options.unlink()
    damaged = options if damage != "cut short" else engine
    with pytest.raises(ArtifactError) as refused:
        predict(folder, [tmp_path])
    assert str(refused.value) == (f"{damaged}: {problem} against deploy.json (a copy cut short or changed); copy "
                                  f"the folder again, or deploy it again")


GOOD = {"backend": "onnxruntime", "file": "model.fp32.onnx", "input_contract": CONTRACT,
        "target": {"name": "cpu", "backend": "onnxruntime"}}


@pytest.mark.parametrize("written, problem", [
    ([GOOD], "not a JSON object"),
    ({**GOOD, "file": None}, "'file' is missing or not a string"),
    ({k: v for k, v in GOOD.items() if k != "target"}, "'target' is missing or not a JSON object"),
    ({**GOOD, "files": {"model.fp32.onnx": 13}}, "'files' is not an object of each file's bytes and sha256"),
    ({**GOOD, "input_contract": {**CONTRACT, "input_shape": [1, 8]}},
     "input_contract.input_shape is missing or not four dimensions"),
    ({**GOOD, "input_contract": {k: v for k, v in CONTRACT.items() if k != "class_names"}},
     "input_contract.class_names is missing or not a list"),
    ({**GOOD, "input_contract": {k: v for k, v in CONTRACT.items() if k != "std"}},
     "input_contract.mean or std is missing or not a list"),
])
def test_a_deploy_json_that_predict_cannot_use_is_named_in_one_line(tmp_path, written, problem):
    (tmp_path / "model.fp32.onnx").write_bytes(b"an onnx model")
    (tmp_path / DEPLOY_FILE).write_text(json.dumps(written))
    with pytest.raises(ArtifactError) as refused:
        predict(tmp_path, [tmp_path])
    assert str(refused.value) == (f"{tmp_path / DEPLOY_FILE}: {problem} (edited by hand, or not written by deploy); "
                                  f"deploy the model again with stochkd-pipeline deploy PROFILE -o {tmp_path}")


def test_a_raw_pixel_contract_needs_no_mean_or_std_in_deploy_json(tmp_path):
    raw = {k: v for k, v in CONTRACT.items() if k not in ("mean", "std")}
    (tmp_path / DEPLOY_FILE).write_text(json.dumps({**GOOD, "input_contract": {**raw, "input_dtype": "uint8"}}))
    with pytest.raises(ArtifactError, match="the deployed model file is missing"):  # past the checks of deploy.json
        predict(tmp_path, [tmp_path])


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(tmp_path):
    wide = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(wide).save(tmp_path / "depth.png")
    assert Image.open(tmp_path / "depth.png").mode.startswith("I")  # what Pillow opens a 16-bit PNG as
    pixels, notes = load_image(tmp_path / "depth.png", 8, 1)
    assert np.array_equal(pixels[..., 0], np.rint(wide / 257).astype(np.uint8))
    assert notes == ["scaled from 16 to 8 bits per pixel"]


def test_tied_classes_rank_as_the_benchmarks_argmax_ranks_them():
    """An int8 model's logits take few values, so two classes can tie; predict's first class must be
    the one whose accuracy the benchmark measured (argmax: the first of them), on any CPU."""
    from stages.deploy.deployed import top_classes

    rng = np.random.default_rng(0)
    for _ in range(200):
        row = rng.random(10).astype(np.float32)
        tied = rng.integers(0, 9)
        row[tied] = row[tied + 1] = row.max() + 0.1
        assert top_classes(row, 3)[0] == row.argmax() == tied
        assert list(top_classes(row, 2)) == [tied, tied + 1]
