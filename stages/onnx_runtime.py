"""ONNX Runtime sessions and batched inference, shared by the stages that evaluate ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import ArtifactError, first_line

OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def checked_onnx(path: Path, made_by: str) -> Path:
    """``path``, once it is known to hold a well-formed ONNX model; ``made_by`` is the stage to rerun."""
    import onnx

    if not path.is_file():
        raise ArtifactError(f"{path}: ONNX model missing; rerun the {made_by} stage "
                            f"(stochkd-pipeline {made_by} PROFILE --force)")
    try:
        # Parsed, not checked: ONNX's checker refuses graphs that ONNX Runtime and TensorRT run well
        # (the fp16 converter's nodes are not topologically sorted).
        model = onnx.load(str(path), load_external_data=False)
        if not model.graph.node or not model.graph.input or not model.graph.output:
            raise ValueError("its graph has no nodes, inputs or outputs")
    except Exception as exc:  # noqa: BLE001 - protobuf's decode errors have no common base
        raise ArtifactError(f"{path}: not a valid ONNX model ({first_line(exc)[:200]}); rerun the {made_by} stage "
                            f"(stochkd-pipeline {made_by} PROFILE --force)") from exc
    return path


def make_session(path: Path, *, threads: int | None = None, optimization: str = "all",
                 optimized_path: Path | None = None, provider: str = "CPUExecutionProvider"):
    """An inference session; ``optimized_path`` saves the graph as optimized for this machine."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = 3  # warnings about hardware-specific saved graphs are expected
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    # A GPU provider leaves the operators it lacks to the CPU provider.
    providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own unrelated exception types
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({first_line(exc)[:200]}); rerun the stage that "
                            f"made it with --force") from exc


def run_batched(session, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for float32 (N, C, H, W) inputs, in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs).astype(np.float32)
