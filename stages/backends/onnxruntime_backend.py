"""ONNX Runtime engines: the graph optimized for this machine and saved, then run as saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError
from stages.onnx_runtime import make_session

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"}
FLOAT_OPS = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose"}
ELEMENT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}


def compute_precision(model_path: Path) -> dict[str, Any]:
    """The precision the heavy operators of a (saved, optimized) graph really compute in.

    ONNX Runtime's CPU provider runs an fp16 graph by casting around operators that have no fp16
    kernel on this CPU; the saved optimized graph shows which ones, by its weights' types.
    """
    import onnx

    graph = onnx.load(str(model_path)).graph
    weight_types = {init.name: init.data_type for init in graph.initializer}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            kind = "int8"
        elif node.op_type in FLOAT_OPS and len(node.input) > 1 and node.input[1] in weight_types:
            kind = ELEMENT_TYPES.get(weight_types[node.input[1]], "other")
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    label = next(iter(counts)) if len(counts) == 1 else "mixed" if counts else "unknown"
    return {"compute_precision": label, "heavy_operators": counts}


class OnnxRuntimeBackend:
    name = "onnxruntime"
    engine_suffix = ".ort.onnx"
    runtime_module = "onnxruntime"

    def unavailable_reason(self, target: Any) -> str | None:
        import onnxruntime as ort

        if target.execution_provider not in ort.get_available_providers():
            return (f"ONNX Runtime {ort.__version__} here lacks {target.execution_provider} "
                    f"(has: {', '.join(ort.get_available_providers())})")
        return None

    def build(self, onnx_path: Path, engine_path: Path, precision: str, target: Any, **_) -> dict[str, Any]:
        import onnxruntime as ort

        # Optimizations above "extended" bake in this CPU's kernel layouts: hence a hardware-bound key.
        # ONNX Runtime saves graphs for GPU providers only at the basic level (higher levels insert
        # provider-specific nodes); the provider optimizes the rest when the engine is loaded.
        level = target.graph_optimization if target.execution_provider == "CPUExecutionProvider" else "basic"
        session = make_session(onnx_path, threads=target.threads, optimization=level,
                               optimized_path=engine_path, provider=target.execution_provider)
        if session.get_providers()[0] != target.execution_provider:
            raise ArtifactError(f"ONNX Runtime {ort.__version__} did not take {target.execution_provider} for "
                                f"{onnx_path.name} (it runs on {session.get_providers()}); its log says why")
        return {"precision": precision, **compute_precision(engine_path), "file": engine_path.name,
                "size_bytes": engine_path.stat().st_size, "onnxruntime": ort.__version__,
                "providers": session.get_providers(), "graph_optimization": level}

    def load(self, engine_path: Path, target: Any):
        session = make_session(engine_path, threads=target.threads, optimization="disabled",
                               provider=target.execution_provider)
        name = session.get_inputs()[0].name

        def infer(batch):
            return session.run(None, {name: batch})[0]

        infer.device = "cpu" if target.execution_provider == "CPUExecutionProvider" else "cuda"
        return infer
