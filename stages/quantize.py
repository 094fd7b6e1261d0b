"""Stage 4: INT8 (static, calibrated on training images) and FP16 versions of an ONNX model.

The target decides the INT8 flavour: ONNX Runtime on CPUs runs fastest with uint8 activations and
int8 weights (``u8s8``), while TensorRT (and ONNX Runtime's GPU providers, which hand Q/DQ graphs to
TensorRT or run them in float) take symmetric int8 Q/DQ for both with float biases (``s8s8``):
TensorRT's ONNX parser dequantizes only int8, so an int32 bias behind a DequantizeLinear fails.

Activation ranges are calibrated once per model and reused for every attempt of the accuracy gate.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import ArtifactError
from stages.context import StageContext
from stages.data import balanced_subset, load_dataset
from stages.export import ONNX_FILE
from stages.onnx_runtime import checked_onnx, make_session, run_batched
from stages.training import accuracy

INT8_FLAVOURS = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8")}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# The calibrator's settings per method. ONNX Runtime's entropy default (128 histogram bins for 128
# quantized bins) leaves a single candidate threshold, the maximum, so it equals minmax; TensorRT's
# entropy calibration searches 2048 bins for the threshold of 128 quantized ones.
CALIBRATOR_OPTIONS = {"minmax": {}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
                      "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True}}
# Unset quantize.calibration_method: entropy where TensorRT runs the graph (as trtexec and NVIDIA's
# calibrators default to), minmax for ONNX Runtime on CPUs.
DEFAULT_CALIBRATION = {"s8s8": "entropy", "u8s8": "minmax"}
TENSORRT_QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add")


def calibration_method(cfg, flavour: str) -> str:
    return cfg.calibration_method or DEFAULT_CALIBRATION[flavour]


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


def sensitive_first(model_path: Path) -> list[str]:
    """The heavy nodes in the order they are kept in float when INT8 misses the accuracy gate: the
    first convolution (it sees raw pixels) and the classifier, then convolutions by depth."""
    import onnx

    heavy = [n.name for n in onnx.load(str(model_path)).graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    if len(heavy) < 2:
        return heavy
    return [heavy[0], heavy[-1], *heavy[1:-1]]


def quantize_int8(source: Path, target: Path, calibration: np.ndarray, cfg, flavour: str,
                  keep_float: int = 0) -> tuple[str, list[str]]:
    """Writes the INT8 model with the ``keep_float`` most sensitive heavy nodes left in float; returns
    the shape inference its pre-processing used and the nodes kept in float."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        shape_inference = prepare_for_quantization(source, prepared)
        ranges = calibrate(prepared, calibration, calibration_method(cfg, flavour), Path(scratch))
        return shape_inference, quantize_prepared(prepared, target, ranges, cfg, flavour, keep_float)


def calibrate(prepared: Path, calibration: np.ndarray, method: str, scratch: Path) -> Path:
    """The activation ranges of ``prepared`` on the calibration images, saved in ONNX Runtime's
    calibration cache format; returns the cache file."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    input_name = make_session(prepared, optimization="disabled").get_inputs()[0].name
    calibrator = create_calibrator(prepared, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                   calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                                   extra_options=CALIBRATOR_OPTIONS[method])
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator narrates on stdout
        calibrator.collect_data(ArrayReader(input_name, calibration))
        ranges = calibrator.compute_data()
    cache = scratch / f"ranges.{method}.json"
    save_tensors_data(ranges, cache)
    return cache


def quantize_prepared(prepared: Path, target: Path, ranges: Path, cfg, flavour: str, keep_float: int) -> list[str]:
    """``quantize_int8`` on an already pre-processed and calibrated model; returns the nodes kept in float."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    activation, weight = (getattr(QuantType, name) for name in INT8_FLAVOURS[flavour])
    excluded = sensitive_first(prepared)[:keep_float]
    method = getattr(CalibrationMethod, CALIBRATION_METHODS[calibration_method(cfg, flavour)])
    for_tensorrt = flavour == "s8s8"
    options = {"ActivationSymmetric": for_tensorrt, "WeightSymmetric": True, "QuantizeBias": not for_tensorrt}
    if for_tensorrt:
        # TensorRT's placement: Q/DQ on the inputs of the weighted layers and of the residual Adds
        # (so the Add fuses into the convolution), none on outputs, so the logits stay float and
        # ReLUs are not requantized.
        options["OpTypesToExcludeOutputQuantization"] = list(TENSORRT_QUANTIZED_OPS)
    with contextlib.redirect_stdout(io.StringIO()):  # the quantizer narrates on stdout
        quantize_static(
            str(prepared), str(target), None, calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=activation,
            weight_type=weight, calibrate_method=method, nodes_to_exclude=excluded,
            op_types_to_quantize=list(TENSORRT_QUANTIZED_OPS) if for_tensorrt else None, extra_options=options)
    return excluded


def gated_int8(source: Path, target: Path, calibration: np.ndarray, cfg, flavour: str, evaluate,
               fp32_accuracy: float, max_drop_points: float | None) -> dict:
    """INT8 within ``max_drop_points`` of fp32: quantize everything, then keep the most sensitive
    heavy nodes in float one at a time (at most half of them) until the gate holds, or fail with the
    figures. In Q/DQ form this is also TensorRT's per-layer precision fallback."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        shape_inference = prepare_for_quantization(source, prepared)  # once for every attempt
        ranges = calibrate(prepared, calibration, calibration_method(cfg, flavour), Path(scratch))
        excluded = quantize_prepared(prepared, target, ranges, cfg, flavour, 0)
        accuracy = evaluate(target)
        limit = len(sensitive_first(prepared)) // 2
        keep = 0
        while max_drop_points is not None and 100 * (fp32_accuracy - accuracy) > max_drop_points:
            if keep >= limit:
                raise ArtifactError(
                    f"INT8 loses {100 * (fp32_accuracy - accuracy):.2f} points (fp32 {100 * fp32_accuracy:.2f} %, "
                    f"int8 {100 * accuracy:.2f} %), more than target.budgets.max_accuracy_drop = {max_drop_points}, "
                    f"even with {keep} layers kept in float ({', '.join(excluded)}); raise the budget, calibrate on "
                    f"more images (quantize.calibration_images) or another quantize.calibration_method, or drop "
                    f"int8 from quantize.precisions")
            keep += 1
            excluded = quantize_prepared(prepared, target, ranges, cfg, flavour, keep)
            accuracy = evaluate(target)
    return {"test_accuracy": accuracy, "shape_inference": shape_inference, "kept_in_float": excluded,
            **({"max_accuracy_drop": max_drop_points} if max_drop_points is not None else {})}


def convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Inputs and outputs stay float32 so callers feed the same arrays to every precision.
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def quantize_model(ctx: StageContext) -> dict:
    cfg, data_cfg, flavour = ctx.params["quantize"], ctx.params["data"], ctx.params["int8_flavour"]
    source = checked_onnx(ctx.inputs["onnx"].file(ONNX_FILE), made_by="export")
    data = load_dataset(data_cfg)
    test_images = data.normalized(data.x_test)
    metrics: dict = {"fp32": {"test_accuracy": ctx.inputs["onnx"].metrics["onnx_test_accuracy"],
                              "size_bytes": source.stat().st_size}}

    def evaluate(path: Path) -> float:
        return accuracy(run_batched(make_session(path), test_images), data.y_test)

    for precision in cfg.precisions:
        path = ctx.output / precision_file(precision)
        if precision == "int8":
            chosen = balanced_subset(data.y_train, cfg.calibration_images, data.num_classes)
            details = {"calibration_images": len(chosen), "calibration_method": calibration_method(cfg, flavour),
                       "flavour": flavour, "per_channel": cfg.per_channel,
                       **gated_int8(source, path, data.normalized(data.x_train[chosen]), cfg, flavour, evaluate,
                                    metrics["fp32"]["test_accuracy"], ctx.params.get("max_accuracy_drop"))}
        else:
            convert_fp16(source, path)
            details = {"test_accuracy": evaluate(path)}
        metrics[precision] = {**details, "size_bytes": path.stat().st_size}
    return metrics
