"""timm networks through export and INT8 for TensorRT: the graphs its parser and fusions take."""

import numpy as np
import pytest
import torch

pytest.importorskip("timm")

from stages.common.config import QuantizeConfig  # noqa: E402
from stages.deploy.backends.tensorrt_graph import tensorrt_int8_problems  # noqa: E402
from stages.deploy.onnx_runtime import make_session, run_batched  # noqa: E402
from stages.export import RANDOM_OPS, export_onnx  # noqa: E402
from stages.nets.architectures import build_model  # noqa: E402
from stages.quantize import quantize_int8  # noqa: E402


# A convolutional and a transformer network; bench/timm_int8_graphs.py checks five edge networks.
@pytest.mark.parametrize("name, tool", [("test_resnet", "modelopt"), ("test_vit", "modelopt")])
def test_a_stochastic_timm_network_exports_faithfully_and_quantizes_for_tensorrt(tmp_path, name, tool):
    import onnx

    if tool == "modelopt":
        pytest.importorskip("modelopt.onnx.quantization")
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 10, 3, p_last=0.5, image_size=32).eval()
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.randn(2, 3, 32, 32), path, opset=18)
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & RANDOM_OPS  # no drop path left in evaluation
    images = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(run_batched(make_session(path), images), expected, rtol=1e-3, atol=1e-4)
    used, _ = quantize_int8(path, tmp_path / "int8.onnx", images, QuantizeConfig(int8_tool=tool), "s8s8")
    assert tensorrt_int8_problems(tmp_path / "int8.onnx") == []
    int8 = run_batched(make_session(tmp_path / "int8.onnx"), images)
    assert np.corrcoef(expected.ravel(), int8.ravel())[0, 1] > 0.9
