import numpy as np
import onnx
import torch

from stages.common.config import DataConfig
from stages.nets.architectures import build_model
from stages.training.data import load_dataset
from stages.export import export_onnx


def test_normalized_images_export_to_a_graph_of_network_operators_only(tmp_path):
    # Colour images are stored channels-last; a strided example used to put index arithmetic
    # (Shape, Range, Gather) into the exported graph.
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (8, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(8) % 2, x_test=rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8),
             y_test=np.arange(4) % 2, class_names=np.array(["a", "b"]))
    data = load_dataset(DataConfig(dataset="npz", root=str(tmp_path / "d.npz")))
    example = data.normalized(data.x_test[:2])
    assert example.flags["C_CONTIGUOUS"]
    path = tmp_path / "model.onnx"
    export_onnx(build_model("resnet8", 2, 3, 0.5), torch.from_numpy(example), path, opset=18)
    operators = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert operators == {"Conv", "Relu", "Add", "Slice", "Pad", "ReduceMean", "Reshape", "Gemm"}


def test_huge_logits_are_judged_relative_to_their_size(tmp_path):
    from stages.common.config import ExportConfig
    from stages.nets.checkpoint import ModelSpec, save_model
    from stages.context import StageContext, StageInput
    from stages.export import export_model

    data = load_dataset(DataConfig(dataset="digits"))
    spec = ModelSpec("resnet8", 10, 1, 8, 1.0, "batch", data.mean, data.std)
    torch.manual_seed(0)
    model = spec.build()
    with torch.no_grad():
        model.fc.weight.mul_(1e6)  # logits around 1e6, as a diverged network gives
    (tmp_path / "model").mkdir()
    (tmp_path / "out").mkdir()
    save_model(model, spec, tmp_path / "model")
    metrics = export_model(StageContext(params={"export": ExportConfig(), "data": DataConfig(dataset="digits")},
                                        inputs={"model": StageInput(tmp_path / "model", {})},
                                        output=tmp_path / "out"))
    assert metrics["max_abs_logit"] > 1e4 and metrics["top1_agreement"] == 1.0


def test_a_raw_pixel_export_takes_uint8_nhwc_and_computes_what_the_network_does_on_normalized_images(tmp_path):
    from stages.export import RawPixels, read_pixels_through_the_cast
    from stages.deploy.onnx_runtime import make_session, run_batched

    data = load_dataset(DataConfig())
    torch.manual_seed(0)
    model = build_model("resnet8", data.num_classes, data.in_channels).eval()
    path = tmp_path / "pixels.onnx"
    export_onnx(RawPixels(model, data.mean, data.std), torch.from_numpy(data.x_test[:2]), path, 18)
    read_pixels_through_the_cast(path)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [n.op_type for n in graph.node if graph.input[0].name in n.input] == ["Cast"]  # and nothing else reads it
    onnx_logits = run_batched(make_session(path), data.x_test)
    with torch.inference_mode():
        torch_logits = model(torch.from_numpy(data.normalized(data.x_test))).numpy()
    assert np.abs(onnx_logits - torch_logits).max() < 1e-4


def test_an_opset_the_exporter_cannot_convert_to_is_one_line_naming_why(tmp_path, capfd):
    import pytest

    from stages.common.errors import PipelineError

    model = build_model("resnet8", 10, 3)  # its zero-padding shortcuts export as Pad, which converts no lower than 18
    with pytest.raises(PipelineError, match=r"^export.opset = 16: PyTorch's ONNX exporter wrote opset 18 instead \(it "
                                            r"could not convert this network to 16: No Adapter To Version \$17 for "
                                            r"Pad\); set export.opset to 18, or another opset it converts to$"):
        export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx", 16)
    assert "Traceback" not in capfd.readouterr().err  # the converter's logged traceback stays out of the terminal
    export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / "model.onnx", 20)
    assert onnx.load(str(tmp_path / "model.onnx")).opset_import[0].version == 20
