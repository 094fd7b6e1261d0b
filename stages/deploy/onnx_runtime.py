"""ONNX Runtime sessions and batched inference, shared by the stages that evaluate ONNX models."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stages.common.errors import ArtifactError, first_line

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


# Where TensorRT is asked for, what it cannot take goes to CUDA, never silently to the CPU.
PROVIDER_CHAINS = {"CPUExecutionProvider": ("CPUExecutionProvider",),
                   "CUDAExecutionProvider": ("CUDAExecutionProvider", "CPUExecutionProvider"),
                   "TensorrtExecutionProvider": ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                                 "CPUExecutionProvider")}


def make_session(path: Path, *, threads: int | None = None, optimization: str = "all",
                 optimized_path: Path | None = None, provider: str = "CPUExecutionProvider",
                 provider_options: dict | None = None, profile_prefix: Path | None = None):
    """An inference session; ``optimized_path`` saves the graph as optimized for this machine.

    With a GPU provider, a node that would fall back to the CPU fails the session instead of
    running there unseen (``session.disable_cpu_ep_fallback``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    options.log_severity_level = 3  # warnings about hardware-specific saved graphs are expected
    if threads:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    if provider != "CPUExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    providers = [(name, provider_options) if name == provider and provider_options else name
                 for name in PROVIDER_CHAINS[provider]]
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime raises its own unrelated exception types
        if not type(exc).__module__.startswith("onnxruntime"):
            raise
        if "fallback to CPU EP has been explicitly disabled" in str(exc) or "disable_cpu_ep_fallback" in str(exc):
            raise ArtifactError(f"{path}: some of its nodes would run on the CPU, not on {provider} "
                                f"({first_line(exc)[:200]}); use execution_provider CPUExecutionProvider, or a "
                                f"model whose operators {provider} runs") from exc
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it with {provider} ({first_line(exc)[:200]}); rerun "
                            f"the stage that made it with --force") from exc


def node_placement(session, sample: np.ndarray) -> dict[str, int]:
    """How many nodes ran on each execution provider in one run of ``sample``, from ONNX Runtime's
    profile (``session.get_providers()`` lists the providers registered, not where nodes ran). The
    session must have been made with ``profile_prefix``."""
    import json

    name = session.get_inputs()[0].name
    session.run(None, {name: sample})
    profile = Path(session.end_profiling())
    try:
        events = json.loads(profile.read_text())
    finally:
        profile.unlink(missing_ok=True)
    counts: dict[str, int] = {}
    for event in events:
        if event.get("cat") == "Node" and str(event.get("name", "")).endswith("_kernel_time"):
            where = event.get("args", {}).get("provider", "unknown")
            counts[where] = counts.get(where, 0) + 1
    return counts


def run_batched(session, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for a model's inputs (float32 N x C x H x W, or uint8 N x H x W x C pixels for a model
    that normalizes them itself), in batches of ``batch_size``."""
    name = session.get_inputs()[0].name
    outputs = [session.run(None, {name: images[i:i + batch_size]})[0]
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs).astype(np.float32)
