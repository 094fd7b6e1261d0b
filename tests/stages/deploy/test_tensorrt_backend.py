"""The TensorRT backend driven end to end against the strict stand-in (tests/tensorrt_standin.py),
playing TensorRT 10.13 and 11.4 in turn: the calls, their order and their return values are those of
the real Python bindings (whose names tests/stages/deploy/test_tensorrt_api.py checks), so the
first-contact failures of a real GPU show up here without one."""

import json

import numpy as np
import pytest

from stages.common.config import QuantizeConfig
from stages.common.target_config import TargetConfig, TensorRTConfig
from stages.common.errors import ArtifactError


@pytest.fixture(scope="module")
def models(onnx_models):
    return onnx_models


@pytest.fixture(params=["10.13", "11.4"])
def standin_tensorrt(request, monkeypatch):
    """The stand-in as conftest's fixture makes it, playing each version."""
    from tests.conftest import _standin

    return _standin(monkeypatch, request.param)


def build(models, tmp_path, precision, target=None, batch_sizes=(1, 8), shared=None):
    from stages.deploy.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend().build(models / f"{precision}.onnx", tmp_path / f"engine.{precision}.plan", precision,
                                   target or TargetConfig(backend="tensorrt"), batch_sizes=batch_sizes,
                                   image_shape=(3, 16, 16), shared=shared)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_precision_builds_and_reads_as_what_it_computes_in(standin_tensorrt, models, tmp_path, precision):
    record = build(models, tmp_path, precision)
    assert record["compute_precision"] == precision
    assert record["layers_by_precision"][precision] > 0 and record["formats_reported"]
    assert (tmp_path / record["file"]).is_file()


def test_quantized_convolutions_read_as_int8_though_they_write_fp16(standin_tensorrt, models, tmp_path):
    record = build(models, tmp_path, "int8")
    # Every convolution reads INT8; only the classifier (not quantized) reads float.
    assert record["layers_by_precision"] == {"int8": record["heavy_layers"] - 1, "fp32": 1}


def test_the_fp32_engine_is_not_tf32(standin_tensorrt, models, tmp_path):
    record = build(models, tmp_path, "fp32")
    assert record["settings"]["tf32"] is False and "tf32" not in record["layers_by_precision"]


def test_one_static_profile_per_benchmark_batch_and_each_is_inspected(standin_tensorrt, models, tmp_path):
    record = build(models, tmp_path, "int8", batch_sizes=(1, 8, 32))
    assert [p[0][0] for p in record["settings"]["profiles"]] == [1, 8, 32]
    assert all(low == opt == high for low, opt, high in record["settings"]["profiles"])
    assert [p["batch"] for p in record["by_profile"]] == [1, 8, 32]
    assert all(p["compute_precision"] == "int8" for p in record["by_profile"])


def test_optimization_batch_asks_for_one_dynamic_profile(standin_tensorrt, models, tmp_path):
    target = TargetConfig(backend="tensorrt", tensorrt=TensorRTConfig(optimization_batch=8))
    record = build(models, tmp_path, "fp16", target, batch_sizes=(1, 8, 32))
    assert record["settings"]["profiles"] == [[[1, 3, 16, 16], [8, 3, 16, 16], [32, 3, 16, 16]]]
    assert record["by_profile"] is None


def test_without_a_context_the_inspector_gives_no_format_and_that_is_said(standin_tensorrt):
    from stages.deploy.backends.tensorrt_settings import check_built_precision, layer_precisions

    plan = {"input": "images", "precision": "int8", "tf32": False, "dla": False, "layers": ["/c1/Conv", "/fc/Gemm"]}
    layers = standin_tensorrt.engine_layers(plan, shapes_known=False, version="10.13.0")
    for layer in layers:
        layer.pop("TacticName", None)
    built = layer_precisions({"Layers": layers})
    assert built["layers_by_precision"] == {} and not built["formats_reported"]
    with pytest.raises(ArtifactError, match="reported no format or tactic for any of its 2 heavy layers"):
        check_built_precision(built, "int8", "model.int8.onnx")


def test_an_engine_in_another_precision_is_refused_and_not_kept(standin_tensorrt, models, tmp_path):
    from stages.deploy.backends.tensorrt_settings import check_built_precision

    built = {"layers_by_precision": {"fp16": 5}, "heavy_layers": 5}
    with pytest.raises(ArtifactError, match=r"built no int8 layer on this GPU \(heavy layers: \{'fp16': 5\}\)"):
        check_built_precision(built, "int8", "model.int8.onnx")


def test_timing_cache_is_keyed_by_device_and_survives_another_device(standin_tensorrt, models, tmp_path):
    shared = tmp_path / "shared"
    first = build(models, tmp_path, "fp16", shared=shared)
    assert first["timing_cache"] == "new"
    orin_cache = shared / f"tensorrt-{standin_tensorrt.__version__}-{standin_tensorrt.DEVICE}.timing.cache"
    assert orin_cache.is_file()
    assert build(models, tmp_path, "fp32", shared=shared)["timing_cache"] == "reused"
    # Another device's cache put where this device's would be (copied artifacts, same TensorRT).
    standin_tensorrt.DEVICE = "sm87-8sm-7620mib"  # an Orin Nano: same name, another device
    nano_cache = shared / f"tensorrt-{standin_tensorrt.__version__}-sm87-8sm-7620mib.timing.cache"
    nano_cache.write_bytes(orin_cache.read_bytes())
    record = build(models, tmp_path, "fp16", shared=shared)
    assert record["timing_cache"].startswith("rejected")
    assert json.loads(nano_cache.read_bytes())["device"] == "sm87-8sm-7620mib"


def test_dla_engines_get_static_profiles_and_run_layers_there(standin_tensorrt, models, tmp_path):
    """On 10.x (JetPack 6) a DLA engine is built weakly typed with the FP16 flag, as 10.x supports the
    DLA; on 11.x strongly typed, as every network there."""
    target = TargetConfig(backend="tensorrt", tensorrt=TensorRTConfig(dla_core=0))
    record = build(models, tmp_path, "fp16", target, batch_sizes=(1, 8))
    assert record["settings"]["dla_core"] == 0 and record["dla_layers"] > 0 and record["dla_capable_layers"] > 0
    assert record["settings"]["typing"] == ("weak" if standin_tensorrt.MAJOR < 11 else "strong")
    gpu = build(models, tmp_path, "fp16")
    assert gpu["settings"]["typing"] == "strong"


def test_a_dla_engine_with_no_layer_on_the_dla_is_refused(standin_tensorrt, models, tmp_path, monkeypatch):
    from stages.deploy.backends import tensorrt_backend

    if standin_tensorrt.MAJOR >= 11:
        pytest.skip("TensorRT 11 builds strongly typed DLA networks")
    real = tensorrt_backend.network_flags
    # A strongly typed network on 10.x: TensorRT puts every layer on the GPU behind GPU fallback.
    monkeypatch.setattr(tensorrt_backend, "network_flags", lambda trt, typing="strong": real(trt, "strong"))
    target = TargetConfig(backend="tensorrt", tensorrt=TensorRTConfig(dla_core=0))
    monkeypatch.setattr(tensorrt_backend, "apply_settings", _without_precision_flag(tensorrt_backend.apply_settings))
    with pytest.raises(ArtifactError, match="runs none there .*set target.tensorrt.dla_core: null"):
        build(models, tmp_path, "fp16", target)
    assert not (tmp_path / "engine.fp16.plan").exists()


def _without_precision_flag(apply):
    def apply_strongly_typed(trt, builder, config, settings):
        from dataclasses import replace

        apply(trt, builder, config, replace(settings, typing="strong"))
    return apply_strongly_typed


def test_dla_int8_and_fp32_engines_are_built_for_the_gpu_and_say_why(standin_tensorrt, models, tmp_path):
    target = TargetConfig(backend="tensorrt", tensorrt=TensorRTConfig(dla_core=0))
    int8 = build(models, tmp_path, "int8", target)
    assert int8["settings"]["dla_core"] is None and "not documented for TensorRT 10.x" in int8["settings"][
        "on_gpu_because"]
    assert build(models, tmp_path, "fp32", target)["settings"]["on_gpu_because"] == "the DLA runs no fp32"


def test_dla_with_one_dynamic_profile_is_refused():
    from stages.deploy.backends.tensorrt_settings import builder_settings

    with pytest.raises(ValueError, match="the DLA .* runs only static shapes"):
        builder_settings(TensorRTConfig(dla_core=0, optimization_batch=8), "fp16", (1, 8, 32), (3, 32, 32))


def test_an_int8_graph_with_int32_biases_is_refused_before_the_parser_would(standin_tensorrt, models, tmp_path):
    """What ONNX Runtime's quantizer writes by default (quantized biases, uint8 activations) fails
    TensorRT's parser; the graph check says so first, naming the nodes."""
    from stages.quantize import quantize_int8

    calibration = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_int8(models / "fp32.onnx", tmp_path / "int8.onnx", calibration, QuantizeConfig(), "u8s8")
    with pytest.raises(ArtifactError, match=r"not an INT8 graph TensorRT takes \(.*dequantizes INT32 data"):
        build(tmp_path, tmp_path, "int8")
    trt = standin_tensorrt
    logger = trt.Logger()
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    assert parser.parse((tmp_path / "int8.onnx").read_bytes()) is False
    assert "INT32 is not supported" in str(parser.get_error(0))


def raw_pixel_model(path, cast_first: bool = True):
    """A ResNet-8 taking uint8 (N, 16, 16, 3) pixels, exported as the export stage does, or (for
    ``cast_first`` False) with the transpose ahead of the cast."""
    import torch

    from stages.nets.architectures import build_model
    from stages.export import RawPixels, export_onnx, read_pixels_through_the_cast

    class TransposeFirst(RawPixels):
        def forward(self, x):
            return self.network(x.permute(0, 3, 1, 2).float() * self.scale - self.shift)

    torch.manual_seed(0)
    wrapper = RawPixels if cast_first else TransposeFirst
    export_onnx(wrapper(build_model("resnet8", 10, 3), (0.5,) * 3, (0.25,) * 3),
                torch.zeros(2, 16, 16, 3, dtype=torch.uint8), path, 18)
    read_pixels_through_the_cast(path)
    return path


def test_a_raw_pixel_model_builds_with_nhwc_profiles_and_a_uint8_input(standin_tensorrt, tmp_path):
    from stages.deploy.backends.tensorrt_backend import TensorRTBackend, TensorRTRunner

    onnx_path = raw_pixel_model(tmp_path / "pixels.onnx")
    record = TensorRTBackend().build(onnx_path, tmp_path / "engine.fp32.plan", "fp32", TargetConfig(backend="tensorrt"),
                                     batch_sizes=(1, 8), image_shape=(16, 16, 3), shared=None)
    assert record["settings"]["profiles"][0][0] == [1, 16, 16, 3]
    engine = standin_tensorrt.Runtime(standin_tensorrt.Logger()).deserialize_cuda_engine(
        (tmp_path / record["file"]).read_bytes())
    assert standin_tensorrt.nptype(engine.get_tensor_dtype(engine.get_tensor_name(0))) is np.uint8
    assert TensorRTRunner  # the runner reads its buffers' dtype from the engine (trt.nptype)


def test_a_uint8_input_that_does_not_go_straight_into_a_cast_is_refused_before_building(standin_tensorrt, tmp_path):
    from stages.deploy.backends.tensorrt_backend import TensorRTBackend
    from stages.deploy.backends.tensorrt_graph import tensorrt_input_problems

    assert tensorrt_input_problems(raw_pixel_model(tmp_path / "good.onnx")) == []
    bad = raw_pixel_model(tmp_path / "bad.onnx", cast_first=False)
    assert any("feeds Transpose" in problem for problem in tensorrt_input_problems(bad))
    with pytest.raises(ArtifactError, match="cast to float first"):
        TensorRTBackend().build(bad, tmp_path / "engine.fp32.plan", "fp32", TargetConfig(backend="tensorrt"),
                                batch_sizes=(1,), image_shape=(16, 16, 3), shared=None)
