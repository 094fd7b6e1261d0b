import numpy as np
import onnx
import onnxruntime.quantization as ort_quantization
import pytest
import torch

from stages.common.config import QuantizeConfig
from stages.nets.architectures import build_model
from stages.export import export_onnx
from stages.deploy.onnx_runtime import make_session, run_batched
from stages.quantize import quantize_int8


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("resnet8", num_classes=10, in_channels=3)
    # A classifier's bias as training leaves it: a fresh one's is zero, and a zero bias is not quantized.
    torch.nn.init.uniform_(model.fc.bias, -0.1, 0.1)
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, torch.randn(2, 3, 16, 16), path, opset=18)
    return path


def calibration_images() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)


def quantized_ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_int8_model_holds_quantize_nodes_and_follows_fp32(exported, tmp_path):
    target = tmp_path / "int8.onnx"
    used, kept = quantize_int8(exported, target, calibration_images(), QuantizeConfig(), "u8s8")
    assert kept == []
    assert used == "symbolic"
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops(target)
    images = calibration_images()
    fp32 = run_batched(make_session(exported), images)
    int8 = run_batched(make_session(target), images)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95


def test_symbolic_shape_failure_falls_back_to_onnx_shape_inference(exported, tmp_path, monkeypatch):
    real = ort_quantization.quant_pre_process
    calls = []

    def symbolic_inference_asserts(source, target, skip_symbolic_shape=False, **kwargs):
        calls.append(skip_symbolic_shape)
        if not skip_symbolic_shape:
            raise AssertionError("as_scalar: len(x) == 1")
        real(source, target, skip_symbolic_shape=True, **kwargs)

    monkeypatch.setattr(ort_quantization, "quant_pre_process", symbolic_inference_asserts)
    target = tmp_path / "int8.onnx"
    used, _ = quantize_int8(exported, target, calibration_images(), QuantizeConfig(int8_tool="onnxruntime"), "s8s8")
    assert calls == [False, True]
    assert used.startswith("onnx (symbolic inference failed: AssertionError")
    assert {"QuantizeLinear", "DequantizeLinear"} <= quantized_ops(target)
    assert run_batched(make_session(target), calibration_images()).shape == (32, 10)


def test_int8_missing_the_gate_keeps_the_first_conv_then_the_classifier_in_float(exported, tmp_path):
    from stages.quantize import gated_int8, sensitive_first

    accuracies = iter([0.60, 0.62, 0.68])
    result = gated_int8(exported, tmp_path / "int8.onnx", calibration_images(), QuantizeConfig(), "u8s8",
                        lambda path: next(accuracies), fp32_accuracy=0.70, max_drop_points=5.0)
    heavy = sensitive_first(exported)
    assert result["test_accuracy"] == 0.68 and result["kept_in_float"] == heavy[:2]
    operators = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    gemm = [n for n in operators if n.op_type == "Gemm"]
    assert gemm and not any(n.op_type == "DequantizeLinear" and n.output[0] in gemm[0].input[1:] for n in operators)


def test_int8_that_cannot_meet_the_gate_fails_with_the_figures(exported, tmp_path):
    from stages.common.errors import ArtifactError
    from stages.quantize import gated_int8

    with pytest.raises(ArtifactError, match=r"loses 60.00 points .*max_accuracy_drop = 1.0.*4 layers kept in float"):
        gated_int8(exported, tmp_path / "int8.onnx", calibration_images(), QuantizeConfig(), "u8s8",
                   lambda path: 0.10, fp32_accuracy=0.70, max_drop_points=1.0)


@pytest.mark.parametrize("tool", ["modelopt", "onnxruntime"])
def test_the_tensorrt_int8_graph_is_what_tensorrt_takes(exported, tmp_path, tool):
    """Float biases, int8 zero points of 0, per-channel weight scales on axis 0, float logits, and
    residual Adds quantized on their skip input; ONNX Runtime's CPU flavour fails these."""
    from stages.deploy.backends.tensorrt_graph import tensorrt_int8_problems

    pytest.importorskip("modelopt.onnx.quantization") if tool == "modelopt" else None
    used, _ = quantize_int8(exported, tmp_path / "trt.onnx", calibration_images(), QuantizeConfig(int8_tool=tool),
                            "s8s8")
    assert used == ("modelopt" if tool == "modelopt" else "symbolic")
    assert tensorrt_int8_problems(tmp_path / "trt.onnx") == []
    images = calibration_images()
    fp32, int8 = run_batched(make_session(exported), images), run_batched(make_session(tmp_path / "trt.onnx"), images)
    assert np.corrcoef(fp32.ravel(), int8.ravel())[0, 1] > 0.95


def test_the_cpu_int8_graph_is_not_what_tensorrt_takes(exported, tmp_path):
    from stages.deploy.backends.tensorrt_graph import tensorrt_int8_problems

    quantize_int8(exported, tmp_path / "cpu.onnx", calibration_images(), QuantizeConfig(), "u8s8")
    problems = " ".join(tensorrt_int8_problems(tmp_path / "cpu.onnx"))
    for expected in ("dequantizes INT32", "zero point is not int8 0", "logits should stay float"):
        assert expected in problems


def test_model_optimizer_keeps_the_sensitive_layers_in_float_when_asked(exported, tmp_path):
    pytest.importorskip("modelopt.onnx.quantization")
    from stages.quantize import sensitive_first

    _, kept = quantize_int8(exported, tmp_path / "int8.onnx", calibration_images(), QuantizeConfig(), "s8s8",
                            keep_float=2)
    assert kept == sensitive_first(exported)[:2]
    nodes = onnx.load(str(tmp_path / "int8.onnx")).graph.node
    producers = {output: node.op_type for node in nodes for output in node.output}
    weighted = [node for node in nodes if node.op_type in ("Conv", "Gemm")]
    for node in weighted:
        assert (producers.get(node.input[1]) == "DequantizeLinear") == (node.name not in kept), node.name


def activation_scales(path) -> dict[str, float]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_each_calibration_method_chooses_its_own_ranges(exported, tmp_path, method):
    """ONNX Runtime's entropy default (as many histogram bins as quantized bins) reduces to minmax;
    the pipeline's does not."""
    images = calibration_images()
    images[0, :, 0, 0] = 60.0  # a few outlying pixels
    for name in ("minmax", method):
        cfg = QuantizeConfig(calibration_method=name, int8_tool="onnxruntime")
        quantize_int8(exported, tmp_path / f"{name}.onnx", images, cfg, "s8s8")
    minmax, other = activation_scales(tmp_path / "minmax.onnx"), activation_scales(tmp_path / f"{method}.onnx")
    assert minmax.keys() == other.keys()
    assert all(other[k] <= 1.001 * minmax[k] for k in minmax)
    assert sum(other[k] < 0.9 * minmax[k] for k in minmax) >= 3  # the outliers clipped
