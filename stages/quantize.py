"""Stage 4: INT8 (static, calibrated on training images) and FP16 versions of an ONNX model.

The target decides the INT8 flavour: ONNX Runtime on CPUs runs fastest with uint8 activations and
int8 weights (``u8s8``), while TensorRT (and ONNX Runtime's GPU providers, which hand Q/DQ graphs to
TensorRT or run them in float) take symmetric int8 Q/DQ for both with float biases (``s8s8``):
TensorRT's ONNX parser dequantizes only int8, so an int32 bias behind a DequantizeLinear fails.

For TensorRT the INT8 graph comes from NVIDIA Model Optimizer's ONNX PTQ by default: Q/DQ on the
inputs of convolutions and of the residual Adds' skip branch, float logits, int8 zero points of 0,
per-channel scales on axis 0, the rest in fp16. ONNX Runtime's quantizer remains for CPU targets, and
as ``quantize.int8_tool: onnxruntime`` for TensorRT. ONNX Runtime on the CPU scores either graph.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from stages.common.errors import ArtifactError
from stages.context import StageContext
from stages.training.data import balanced_subset, load_dataset
from stages.export import ONNX_FILE
from stages.deploy.input_contract import copy_contract, model_input, read_contract, takes_raw_pixels
from stages.deploy.onnx_runtime import checked_onnx, make_session, run_batched
from stages.training.evaluation import accuracy

INT8_FLAVOURS = {"u8s8": ("QUInt8", "QInt8"), "s8s8": ("QInt8", "QInt8")}
CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# The calibrator's settings per method. ONNX Runtime's entropy default (128 histogram bins for 128
# quantized bins) leaves a single candidate threshold, the maximum, so it equals minmax; TensorRT's
# entropy calibration searches 2048 bins for the threshold of 128 quantized ones.
CALIBRATOR_OPTIONS = {"minmax": {}, "entropy": {"num_bins": 2048, "num_quantized_bins": 128},
                      "percentile": {"num_bins": 2048, "percentile": 99.999, "symmetric": True}}
# Unset quantize.calibration_method, chosen by measurement on trained ResNet-20s
# (results/int8_for_tensorrt.md, bench/int8_for_tensorrt.py): max ranges for Model Optimizer (its
# entropy lost 5 points), the 99.999th percentile for ONNX Runtime's s8s8 (entropy lost 1 to 2),
# minmax for ONNX Runtime on CPUs.
DEFAULT_CALIBRATION = {("modelopt", "s8s8"): "minmax", ("onnxruntime", "s8s8"): "percentile",
                       ("onnxruntime", "u8s8"): "minmax", ("modelopt", "u8s8"): "minmax"}
TENSORRT_QUANTIZED_OPS = ("Conv", "Gemm", "MatMul", "Add")


def calibration_method(cfg, flavour: str) -> str:
    return cfg.calibration_method or DEFAULT_CALIBRATION[int8_tool(cfg, flavour), flavour]


def int8_tool(cfg, flavour: str) -> str:
    """Who writes the INT8 graph: NVIDIA Model Optimizer lays out Q/DQ the way TensorRT fuses them
    (the field's own tool for TensorRT); ONNX Runtime's quantizer writes what its CPU kernels fuse."""
    return cfg.int8_tool or ("modelopt" if flavour == "s8s8" else "onnxruntime")


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
        write, shape_inference = int8_writer(source, target, calibration, cfg, flavour, Path(scratch))
        return shape_inference, write(keep_float)


def int8_writer(source: Path, target: Path, calibration: np.ndarray, cfg, flavour: str, scratch: Path):
    """(write, shape inference): ``write(keep)`` writes ``target`` with the ``keep`` most sensitive
    heavy nodes in float and returns their names. What can be done once (pre-processing and
    calibrating, for ONNX Runtime) is done here, for every attempt of the accuracy gate."""
    method = calibration_method(cfg, flavour)
    if int8_tool(cfg, flavour) == "modelopt":
        heavy = sensitive_first(source)

        def write_modelopt(keep: int) -> list[str]:
            quantize_modelopt(source, target, calibration, method, heavy[:keep], scratch)
            return heavy[:keep]

        return write_modelopt, "modelopt"
    prepared = scratch / "prepared.onnx"
    shape_inference = prepare_for_quantization(source, prepared)
    ranges = calibrate(prepared, calibration, method, scratch)
    return (lambda keep: quantize_prepared(prepared, target, ranges, cfg, flavour, keep)), shape_inference


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
        if method == "entropy":
            from stages.deploy.entropy_calibration import use_fast_entropy

            use_fast_entropy(calibrator.collector)  # the same thresholds, about eight times sooner
        ranges = calibrator.compute_data()
    cache = scratch / f"ranges.{method}.json"
    save_tensors_data(ranges, cache)
    return cache


@contextlib.contextmanager
def without_log_records(text: str):
    """Drop the root logger's records containing ``text`` while the block runs."""
    import logging

    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


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
    # The quantizer narrates on stdout, and warns of every 1-D weight (a LayerNorm's) that it quantizes
    # per tensor since it has no channel axis: what per_channel means for such a weight anyway.
    with contextlib.redirect_stdout(io.StringIO()), without_log_records("is out-of-range for weight"):
        quantize_static(
            str(prepared), str(target), None, calibration_cache_path=str(ranges),
            quant_format=QuantFormat.QDQ, per_channel=cfg.per_channel, activation_type=activation,
            weight_type=weight, calibrate_method=method, nodes_to_exclude=excluded,
            op_types_to_quantize=list(TENSORRT_QUANTIZED_OPS) if for_tensorrt else None, extra_options=options)
    return excluded


MODELOPT_METHODS = {"minmax": "max", "entropy": "entropy"}


def quantize_modelopt(source: Path, target: Path, calibration: np.ndarray, method: str, keep_float: list[str],
                      scratch: Path) -> None:
    """INT8 by NVIDIA Model Optimizer's ONNX PTQ, calibrated on this machine's CPU (no GPU, CUDA or
    TensorRT is needed to quantize), in a process of its own (stages.deploy.modelopt_quantize). It rewrites
    the file it is given and writes temporaries beside it, so it works on a copy in ``scratch``."""
    import shutil
    import subprocess
    import sys

    if method not in MODELOPT_METHODS:
        raise ArtifactError(f"quantize.calibration_method = {method!r} is not one of Model Optimizer's "
                            f"({', '.join(MODELOPT_METHODS)}); choose one, or quantize.int8_tool: onnxruntime")
    work = scratch / "modelopt"
    work.mkdir(exist_ok=True)
    copy, output, images = work / "model.onnx", work / "quantized.onnx", work / "calibration.npy"
    shutil.copyfile(source, copy)
    if not images.is_file():
        np.save(images, calibration)
    done = subprocess.run([sys.executable, "-m", "stages.deploy.modelopt_quantize", str(copy), str(output), str(images),
                           MODELOPT_METHODS[method], *keep_float], capture_output=True, text=True)
    if done.returncode == 3:
        raise ArtifactError("quantize.int8_tool is modelopt (the default where TensorRT runs the model), but NVIDIA "
                            "Model Optimizer is not installed here; pip install -e '.[tensorrt-int8]', or set "
                            "quantize.int8_tool: onnxruntime")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(f"{source}: NVIDIA Model Optimizer could not quantize it ({tail}); set "
                            f"quantize.int8_tool: onnxruntime to use ONNX Runtime's quantizer")
    shutil.move(output, target)


def gated_int8(source: Path, target: Path, calibration: np.ndarray, cfg, flavour: str, evaluate,
               fp32_accuracy: float, max_drop_points: float | None, start_keep: int = 0, judged_on: str = "") -> dict:
    """INT8 within ``max_drop_points`` of fp32: quantize everything (or keep the ``start_keep`` most
    sensitive heavy nodes in float), then keep one more in float at a time (at most half of them)
    until the gate holds, or fail with the figures. In Q/DQ form this is also TensorRT's per-layer
    precision fallback. ``evaluate(path)`` is the accuracy the gate judges: ONNX Runtime's on this
    CPU in the quantize stage, the deployed engine's in the engine stage (``judged_on`` says so)."""
    with tempfile.TemporaryDirectory() as scratch:
        write, shape_inference = int8_writer(source, target, calibration, cfg, flavour, Path(scratch))
        limit = len(sensitive_first(source)) // 2
        keep = min(start_keep, limit)
        excluded = write(keep)
        accuracy = evaluate(target)
        while max_drop_points is not None and 100 * (fp32_accuracy - accuracy) > max_drop_points:
            if keep >= limit:
                raise ArtifactError(
                    f"INT8{judged_on} loses {100 * (fp32_accuracy - accuracy):.2f} points (fp32 "
                    f"{100 * fp32_accuracy:.2f} %, "
                    f"int8 {100 * accuracy:.2f} %), more than target.budgets.max_accuracy_drop = {max_drop_points}, "
                    f"even with {keep} layers kept in float ({', '.join(excluded)}); raise the budget, calibrate on "
                    f"more images (quantize.calibration_images) or another quantize.calibration_method, or drop "
                    f"int8 from quantize.precisions")
            keep += 1
            excluded = write(keep)
            accuracy = evaluate(target)
    return {"test_accuracy": accuracy, "shape_inference": shape_inference, "kept_in_float": excluded,
            **({"max_accuracy_drop": max_drop_points} if max_drop_points is not None else {})}


def convert_fp16(source: Path, target: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Inputs and outputs keep their types (float32, or uint8 pixels) so callers feed the same arrays
    # to every precision.
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def quantize_model(ctx: StageContext) -> dict:
    cfg, data_cfg, flavour = ctx.params["quantize"], ctx.params["data"], ctx.params["int8_flavour"]
    source = checked_onnx(ctx.inputs["onnx"].file(ONNX_FILE), made_by="export")
    entries = read_contract(source)
    data = load_dataset(data_cfg)
    data = data.with_normalization(entries.get("mean", data.mean), entries.get("std", data.std))
    raw = takes_raw_pixels(entries)
    test_images = model_input(raw, data, data.x_test)
    metrics: dict = {"fp32": {"test_accuracy": ctx.inputs["onnx"].metrics["onnx_test_accuracy"],
                              "size_bytes": source.stat().st_size}}

    def evaluate(path: Path) -> float:
        return accuracy(run_batched(make_session(path), test_images), data.y_test)

    for precision in cfg.precisions:
        path = ctx.output / precision_file(precision)
        if precision == "int8":
            chosen = balanced_subset(data.y_train, cfg.calibration_images, data.num_classes)
            details = {"calibration_images": len(chosen), "calibration_method": calibration_method(cfg, flavour),
                       "int8_tool": int8_tool(cfg, flavour),
                       "flavour": flavour, "per_channel": cfg.per_channel,
                       **gated_int8(source, path, model_input(raw, data, data.as_evaluated(data.x_train[chosen])), cfg,
                                    flavour, evaluate,
                                    metrics["fp32"]["test_accuracy"], ctx.params.get("max_accuracy_drop"))}
        else:
            convert_fp16(source, path)
            details = {"test_accuracy": evaluate(path)}
        copy_contract(source, path, precision=precision)
        metrics[precision] = {**details, "size_bytes": path.stat().st_size}
    return metrics
