"""The accuracy gate judged on the deployed INT8 engine, not on ONNX Runtime's CPU score."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from stages.common.config import DataConfig, QuantizeConfig
from stages.common.target_config import TargetConfig
from stages.common.errors import ArtifactError


@pytest.fixture
def context(tmp_path):
    from stages.nets.architectures import build_model
    from stages.export import export_onnx
    from stages.quantize import quantize_int8

    torch.manual_seed(0)
    export_onnx(build_model("resnet8", 10, 1), torch.randn(2, 1, 8, 8), tmp_path / "fp32.onnx", 18)
    calibration = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration, QuantizeConfig(), "u8s8")
    output = tmp_path / "engine"
    output.mkdir()
    quantized = SimpleNamespace(metrics={"int8": {"kept_in_float": []}})
    return SimpleNamespace(output=output, shared=None, inputs={"quantized": quantized}, params={
        "data": DataConfig(), "quantize": QuantizeConfig(calibration_images=64), "int8_flavour": "u8s8",
        "max_accuracy_drop": 1.0})


def engines_for(context, tmp_path):
    from stages.deploy.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend, target = OnnxRuntimeBackend(), TargetConfig()

    def build(precision, source):
        return backend.build(source, context.output / f"engine.{precision}.ort.onnx", precision, target,
                             batch_sizes=(1,), image_shape=(1, 8, 8))

    engines = {p: build(p, tmp_path / f"{p}.onnx") for p in ("fp32", "int8")}
    return backend, target, build, engines


def test_an_engine_that_misses_the_gate_is_rebuilt_with_more_layers_in_float(context, tmp_path, monkeypatch):
    import stages.engine as engine_stage

    backend, target, build, engines = engines_for(context, tmp_path)
    # fp32 engine, first INT8 engine, then the engine rebuilt with one layer kept in float.
    measured = iter([0.70, 0.60, 0.695])
    monkeypatch.setattr(engine_stage, "engine_accuracy", lambda *args: next(measured))
    judged = engine_stage.gate_int8_engine(context, backend, target, build, tmp_path / "fp32.onnx", engines)
    assert judged["fp32"]["test_accuracy"] == 0.70
    int8 = judged["int8"]
    assert int8["test_accuracy"] == 0.695 and int8["requantized"]["first_engine_accuracy"] == 0.60
    assert len(int8["requantized"]["kept_in_float"]) == 1
    assert (context.output / engine_stage.REQUANTIZED).is_file() and (context.output / int8["file"]).is_file()


def test_an_engine_within_the_gate_is_kept_as_built(context, tmp_path, monkeypatch):
    import stages.engine as engine_stage

    backend, target, build, engines = engines_for(context, tmp_path)
    measured = iter([0.70, 0.695])
    monkeypatch.setattr(engine_stage, "engine_accuracy", lambda *args: next(measured))
    judged = engine_stage.gate_int8_engine(context, backend, target, build, tmp_path / "fp32.onnx", engines)
    assert judged["int8"]["test_accuracy"] == 0.695 and "requantized" not in judged["int8"]


def test_an_engine_that_cannot_meet_the_gate_fails_with_the_figures(context, tmp_path, monkeypatch):
    import stages.engine as engine_stage

    backend, target, build, engines = engines_for(context, tmp_path)
    monkeypatch.setattr(engine_stage, "engine_accuracy", lambda backend, path, *rest: 0.70 if "fp32" in path.name
                        else 0.40)
    with pytest.raises(ArtifactError, match=r"INT8 on the onnxruntime engine loses 30.00 points"):
        engine_stage.gate_int8_engine(context, backend, target, build, tmp_path / "fp32.onnx", engines)


def test_engine_accuracy_runs_the_engine_on_the_test_images(context, tmp_path):
    from stages.training.data import load_dataset
    from stages.engine import engine_accuracy
    from stages.deploy.onnx_runtime import make_session, run_batched

    backend, target, _, engines = engines_for(context, tmp_path)
    data = load_dataset(DataConfig())
    images, labels = data.normalized(data.x_test), data.y_test
    expected = float((run_batched(make_session(tmp_path / "fp32.onnx"), images).argmax(1) == labels).mean())
    assert engine_accuracy(backend, context.output / engines["fp32"]["file"], target, images, labels) == expected
