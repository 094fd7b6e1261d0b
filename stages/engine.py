"""Stage 5: build the deployable engines for the profile's target, one per precision."""

from __future__ import annotations

import json
import shutil

from pipeline.errors import ArtifactError
from stages.backends import get_backend
from stages.checkpoint import SPEC
from stages.context import StageContext
from stages.export import ONNX_FILE
from stages.quantize import precision_file

ENGINES_FILE = "engines.json"


def build_engines(ctx: StageContext) -> dict:
    target = ctx.params["target"]
    backend = get_backend(target.backend)
    reason = backend.unavailable_reason(target)
    if reason:
        raise ArtifactError(f"target {target.name!r} (backend {target.backend}): {reason}; "
                            f"run the engine stage on a machine that has it")
    exported, quantized = ctx.inputs["onnx"], ctx.inputs["quantized"]
    shutil.copy(exported.file(SPEC), ctx.output / SPEC)
    sources = {"fp32": exported.file(ONNX_FILE)}
    sources.update({p: quantized.file(precision_file(p)) for p in ctx.params["precisions"]})
    engines = {}
    for precision, source in sources.items():
        engine_path = ctx.output / f"engine.{precision}{backend.engine_suffix}"
        engines[precision] = backend.build(source, engine_path, precision, target)
    (ctx.output / ENGINES_FILE).write_text(json.dumps(engines, indent=2))
    return {"backend": backend.name, "target": target.name, "engines": engines}
