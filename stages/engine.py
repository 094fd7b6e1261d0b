"""Stage 5: build the deployable engines for the profile's target, one per precision.

On a machine without the target's backend (a CPU machine running a Jetson profile), ONNX Runtime
engines for this CPU stand in, so the later stages still measure what this machine can; the
artifact says what was missing, and its key (which holds the platform) never matches the target's.

With ``target.budgets.max_accuracy_drop`` set, the INT8 engine itself is judged against the fp32
engine on the test set: what ONNX Runtime on a CPU scored in the quantize stage is not what TensorRT
computes. An engine that misses the gate is rebuilt from a re-quantized model with more layers in
float, or the stage fails with the figures.
"""

from __future__ import annotations

import json
import shutil

import numpy as np

from stages.deploy.backends import get_backend
from stages.nets.checkpoint import SPEC, read_spec
from stages.context import StageContext
from stages.export import ONNX_FILE
from stages.deploy.input_contract import RAW_PIXELS, model_input, per_image_shape, read_contract, takes_raw_pixels
from stages.deploy.onnx_runtime import checked_onnx
from stages.quantize import precision_file

ENGINES_FILE = "engines.json"
STAND_IN_BACKEND = "onnxruntime"
REQUANTIZED = "model.int8.engine-gated.onnx"
EVAL_BATCH = 256


def stand_in_target(target):
    """ONNX Runtime on this CPU, with the target's thread count."""
    return type(target)(name=f"{target.name} (stand-in: this CPU)", threads=target.threads)


def engine_accuracy(backend, engine_path, target, images: np.ndarray, labels: np.ndarray) -> float:
    """Test accuracy of a built engine, run by its own backend."""
    from stages.deploy.benchmark_worker import predicted_classes

    infer = backend.load(engine_path, target)
    return float((predicted_classes(infer, images, EVAL_BATCH) == labels).mean())


def build_engines(ctx: StageContext) -> dict:
    target = ctx.params["target"]
    backend = get_backend(target.backend)
    missing = backend.unavailable_reason(target)
    build_target = target
    if missing:
        backend, build_target = get_backend(STAND_IN_BACKEND), stand_in_target(target)
    exported, quantized = ctx.inputs["onnx"], ctx.inputs["quantized"]
    shutil.copy(exported.file(SPEC), ctx.output / SPEC)
    spec = read_spec(exported.path)
    sources = {"fp32": checked_onnx(exported.file(ONNX_FILE), made_by="export")}
    sources.update({p: checked_onnx(quantized.file(precision_file(p)), made_by="quantize")
                    for p in ctx.params["precisions"]})
    raw = takes_raw_pixels(read_contract(sources["fp32"]))
    image_shape = per_image_shape(raw, spec)

    def build(precision, source):
        return backend.build(source, ctx.output / f"engine.{precision}{backend.engine_suffix}", precision,
                             build_target, batch_sizes=ctx.params.get("batch_sizes", (1,)), image_shape=image_shape,
                             shared=ctx.shared)

    engines = {precision: build(precision, source) for precision, source in sources.items()}
    if ctx.params.get("max_accuracy_drop") is not None and "int8" in engines:
        engines.update(gate_int8_engine(ctx, backend, build_target, build, sources["fp32"], engines, raw))
    record = {"backend": backend.name, "target": build_target.model_dump(mode="json"), "engines": engines,
              **({"input": RAW_PIXELS} if raw else {})}
    (ctx.output / ENGINES_FILE).write_text(json.dumps(record, indent=2))
    metrics = {"backend": backend.name, "target": target.name, "engines": engines,
               **({"input": RAW_PIXELS} if raw else {})}
    if missing:
        metrics.update(missing=f"{target.backend} for {target.name}: {missing}",
                       stand_in=f"{STAND_IN_BACKEND} on this CPU")
    return metrics


def gate_int8_engine(ctx: StageContext, backend, target, build, fp32_source, engines: dict,
                     raw: bool = False) -> dict:
    """The fp32 and INT8 engines with their own test accuracy; the INT8 one rebuilt from a
    re-quantized model, one more layer in float at a time, while it loses more than the budget.
    ``raw``: the engines take raw uint8 pixels (export.preprocess: graph)."""
    from stages.training.data import balanced_subset, load_dataset
    from stages.quantize import gated_int8

    entries = read_contract(fp32_source)
    data = load_dataset(ctx.params["data"])
    data = data.with_normalization(entries.get("mean", data.mean), entries.get("std", data.std))
    images, labels = model_input(raw, data, data.x_test), data.y_test

    def accuracy_of(precision: str) -> float:
        return engine_accuracy(backend, ctx.output / engines[precision]["file"], target, images, labels)

    fp32 = accuracy_of("fp32")
    int8 = accuracy_of("int8")
    gate = ctx.params["max_accuracy_drop"]
    judged = {"fp32": {**engines["fp32"], "test_accuracy": fp32},
              "int8": {**engines["int8"], "test_accuracy": int8, "max_accuracy_drop": gate}}
    if 100 * (fp32 - int8) <= gate:
        return judged
    cfg, flavour = ctx.params["quantize"], ctx.params["int8_flavour"]
    quantized_kept = ctx.inputs["quantized"].metrics.get("int8", {}).get("kept_in_float", [])
    chosen = balanced_subset(data.y_train, cfg.calibration_images, data.num_classes)
    latest: dict = {}

    def evaluate(path) -> float:
        latest.update(build("int8", path))
        return engine_accuracy(backend, ctx.output / latest["file"], target, images, labels)

    calibration = model_input(raw, data, data.as_evaluated(data.x_train[chosen]))
    result = gated_int8(fp32_source, ctx.output / REQUANTIZED, calibration, cfg, flavour, evaluate, fp32, gate,
                        start_keep=len(quantized_kept) + 1, judged_on=f" on the {backend.name} engine")
    judged["int8"] = {**latest, "test_accuracy": result["test_accuracy"], "max_accuracy_drop": gate,
                      "requantized": {"model": REQUANTIZED, "kept_in_float": result["kept_in_float"],
                                      "first_engine_accuracy": int8}}
    return judged
