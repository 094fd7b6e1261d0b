"""ONNX Runtime sessions and batched inference, shared by the stages that evaluate ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPTIMIZATION_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


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
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


def run_batched(session, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for float32 (N, C, H, W) inputs, in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs).astype(np.float32)
