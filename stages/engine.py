"""Stage 5: build the deployable engines for the profile's target, one per precision.

On a machine without the target's backend (a CPU machine running a Jetson profile), ONNX Runtime
engines for this CPU stand in, so the later stages still measure what this machine can; the
artifact says what was missing, and its key (which holds the platform) never matches the target's.
"""

from __future__ import annotations

import json
import shutil

from stages.backends import get_backend
from stages.checkpoint import SPEC, read_spec
from stages.context import StageContext
from stages.export import ONNX_FILE
from stages.onnx_runtime import checked_onnx
from stages.quantize import precision_file

ENGINES_FILE = "engines.json"
STAND_IN_BACKEND = "onnxruntime"


def stand_in_target(target):
    """ONNX Runtime on this CPU, with the target's thread count."""
    return type(target)(name=f"{target.name} (stand-in: this CPU)", threads=target.threads)


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
    engines = {}
    for precision, source in sources.items():
        engine_path = ctx.output / f"engine.{precision}{backend.engine_suffix}"
        engines[precision] = backend.build(
            source, engine_path, precision, build_target, batch_sizes=ctx.params.get("batch_sizes", (1,)),
            image_shape=(spec.in_channels, spec.image_size, spec.image_size), shared=ctx.shared)
    record = {"backend": backend.name, "target": build_target.model_dump(mode="json"), "engines": engines}
    (ctx.output / ENGINES_FILE).write_text(json.dumps(record, indent=2))
    metrics = {"backend": backend.name, "target": target.name, "engines": engines}
    if missing:
        metrics.update(missing=f"{target.backend} for {target.name}: {missing}",
                       stand_in=f"{STAND_IN_BACKEND} on this CPU")
    return metrics
