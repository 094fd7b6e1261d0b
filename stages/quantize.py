"""Stage 4: INT8 (static, calibrated on training images) and FP16 versions of an ONNX model.

The target decides the INT8 flavour: ONNX Runtime on CPUs runs fastest with uint8 activations and
int8 weights (``u8s8``), while TensorRT takes symmetric int8 Q/DQ for both (``s8s8``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from stages.context import StageContext
from stages.data import balanced_subset, load_dataset
from stages.export import ONNX_FILE
from stages.onnx_runtime import make_session, run_batched
from stages.training import accuracy

INT8_FLAVOURS = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8")}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}


def precision_file(precision: str) -> str:
    return f"model.{precision}.onnx"


class ArrayReader:
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 64) -> None:
        self.batches = iter([{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self.batches, None)


def prepare_for_quantization(source: Path, prepared: Path) -> str:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimization); returns
    which shape inference it used."""
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(source), str(prepared))
        return "symbolic"
    except Exception as error:  # noqa: BLE001
        # ORT's symbolic shape inference asserts on some exporters' shape arithmetic (a Range whose
        # limit it cannot fold, from torch 2.11); the convolutions' shapes are static, so ONNX's own
        # shape inference gives the quantizer all it needs.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        return f"onnx (symbolic inference failed: {type(error).__name__} {error}".rstrip() + ")"


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, cfg, flavour: str) -> str:
    """Writes the INT8 model; returns the shape inference its pre-processing used."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation, weight = (getattr(QuantType, name) for name in INT8_FLAVOURS[flavour])
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        shape_inference = prepare_for_quantization(source, prepared)
        input_name = make_session(prepared, optimization="disabled").get_inputs()[0].name
        quantize_static(
            str(prepared), str(target), ArrayReader(input_name, calibration),
            quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=activation,
            weight_type=weight, calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[cfg.calibration_method]),
            # Symmetric activations are what TensorRT's explicit-precision path expects.
            extra_options={"ActivationSymmetric": flavour == "s8s8", "WeightSymmetric": True})
    return shape_inference


def convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Inputs and outputs stay float32 so callers feed the same arrays to every precision.
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def quantize_model(ctx: StageContext) -> dict:
    cfg, data_cfg, flavour = ctx.params["quantize"], ctx.params["data"], ctx.params["int8_flavour"]
    source = ctx.inputs["onnx"].file(ONNX_FILE)
    data = load_dataset(data_cfg)
    test_images = data.normalized(data.x_test)
    metrics: dict = {"fp32": {"test_accuracy": ctx.inputs["onnx"].metrics["onnx_test_accuracy"],
                              "size_bytes": source.stat().st_size}}
    for precision in cfg.precisions:
        path = ctx.output / precision_file(precision)
        if precision == "int8":
            chosen = balanced_subset(data.y_train, cfg.calibration_images, data.num_classes)
            shape_inference = quantize_int8(source, path, data.normalized(data.x_train[chosen]), cfg, flavour)
            details = {"calibration_images": len(chosen), "calibration_method": cfg.calibration_method,
                       "flavour": flavour, "per_channel": cfg.per_channel, "shape_inference": shape_inference}
        else:
            convert_fp16(source, path)
            details = {}
        logits = run_batched(make_session(path), test_images)
        metrics[precision] = {"test_accuracy": accuracy(logits, data.y_test),
                              "size_bytes": path.stat().st_size, **details}
    return metrics
