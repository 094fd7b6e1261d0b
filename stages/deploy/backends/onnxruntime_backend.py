"""ONNX Runtime engines: the graph optimized for this machine and saved, then run as saved; or, for
the TensorRT provider, the graph as it is with the provider's own engine and timing caches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from stages.common.errors import ArtifactError
from stages.deploy.backends.tensorrt_graph import tensorrt_input_problems
from stages.deploy.onnx_runtime import make_session, node_placement

INTEGER_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"}
FLOAT_OPS = {"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul", "ConvTranspose"}
ELEMENT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
# The folder, beside the engine file, where the TensorRT provider keeps the engines it compiles.
PROVIDER_ENGINE_CACHE = "tensorrt_provider_cache"


def compute_precision(model_path: Path) -> dict[str, Any]:
    """The precision the heavy operators of a (saved, optimized) graph really compute in.

    ONNX Runtime's CPU provider runs an fp16 graph by casting around operators that have no fp16
    kernel on this CPU; the saved optimized graph shows which ones, by its weights' types. A float
    operator fed by DequantizeLinear computes in float on dequantized int8 values ("fp32-qdq"): what
    a Q/DQ graph becomes where no provider fuses it into integer kernels (the CUDA provider).
    """
    import onnx

    graph = onnx.load(str(model_path)).graph
    weight_types = {init.name: init.data_type for init in graph.initializer}
    dequantized = {output for node in graph.node if node.op_type == "DequantizeLinear" for output in node.output}
    # A provider without fp16 kernels casts dequantized fp16 weights to fp32: still dequantized values.
    for node in graph.node:
        if node.op_type == "Cast" and node.input[0] in dequantized:
            dequantized.update(node.output)
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            kind = "int8"
        elif node.op_type in FLOAT_OPS and len(node.input) > 1 and node.input[1] in dequantized:
            kind = "fp32-qdq"
        elif node.op_type in FLOAT_OPS and len(node.input) > 1 and node.input[1] in weight_types:
            kind = ELEMENT_TYPES.get(weight_types[node.input[1]], "other")
        else:
            continue
        counts[kind] = counts.get(kind, 0) + 1
    label = next(iter(counts)) if len(counts) == 1 else "mixed" if counts else "unknown"
    return {"compute_precision": label, "heavy_operators": counts}


def _input_name(model_path: Path) -> str:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in initializers)


def tensorrt_provider_options(engine_path: Path, target: Any, precision: str, batch_sizes, image_shape,
                              input_name: str, timing_folder: Path | None) -> dict[str, Any]:
    """Options of ONNX Runtime's TensorRT provider: its engine cache beside the engine file, its
    timing cache in the shared folder, the precision, and one explicit profile spanning the benchmark
    batch sizes so that no batch size rebuilds the engine."""
    tensorrt = target.tensorrt
    sizes = sorted(set(batch_sizes))
    opt = tensorrt.optimization_batch or sizes[-1]

    def shape(batch: int) -> str:
        return f"{input_name}:" + "x".join(str(d) for d in (batch, *image_shape))

    options = {"trt_engine_cache_enable": True,
               "trt_engine_cache_path": str(engine_path.parent / PROVIDER_ENGINE_CACHE),
               "trt_profile_min_shapes": shape(sizes[0]), "trt_profile_opt_shapes": shape(opt),
               "trt_profile_max_shapes": shape(sizes[-1]), "trt_max_workspace_size": tensorrt.workspace_mib << 20,
               "trt_builder_optimization_level": tensorrt.optimization_level,
               "trt_fp16_enable": precision == "fp16", "trt_int8_enable": precision == "int8"}
    if timing_folder is not None and tensorrt.timing_cache:
        timing_folder.mkdir(parents=True, exist_ok=True)
        options.update(trt_timing_cache_enable=True, trt_timing_cache_path=str(timing_folder))
    return options


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

    def build(self, onnx_path: Path, engine_path: Path, precision: str, target: Any, *, batch_sizes=(1,),
              image_shape=None, shared: Path | None = None) -> dict[str, Any]:
        import onnxruntime as ort

        provider = target.execution_provider
        if provider == TENSORRT_PROVIDER:
            problems = tensorrt_input_problems(onnx_path)
            if problems:  # TensorRT would leave those nodes to the CPU, which GPU engines may not use
                raise ArtifactError(f"{onnx_path}: {problems[0]}; rerun the export stage with --force")
            # ONNX Runtime refuses to save a graph holding compiled nodes: the engine file is the graph
            # itself, and what TensorRT compiles from it lives in the provider's caches.
            shutil.copyfile(onnx_path, engine_path)
            timings = shared / "onnxruntime-tensorrt" if shared else None
            options = tensorrt_provider_options(engine_path, target, precision, batch_sizes, image_shape,
                                                _input_name(onnx_path), timings)
            provider_options_file(engine_path).write_text(json.dumps(options, indent=1))
            level, precision_record = "disabled", {"compute_precision": "unverified", "precision_source": (
                "asked of TensorRT through ONNX Runtime, which does not report the precision of the layers it built"),
                # The provider's trt_fp16_enable/trt_int8_enable are TensorRT's precision flags: a weakly typed
                # network, deprecated since TensorRT 10.12, fed here the typed fp16 or Q/DQ graph.
                "network_typing": "weak (provider precision flags, deprecated since TensorRT 10.12), fed the "
                                  f"{precision} graph of the quantize stage"}
        else:
            # Optimizations above "extended" bake in this CPU's kernel layouts: hence a hardware-bound key.
            # ONNX Runtime saves graphs for the CUDA provider only at the basic level (higher levels
            # insert provider-specific nodes); the provider optimizes the rest when the engine is loaded.
            options = None
            level = target.graph_optimization if provider == "CPUExecutionProvider" else "basic"
            make_session(onnx_path, threads=target.threads, optimization=level, optimized_path=engine_path,
                         provider=provider)
            precision_record = compute_precision(engine_path)
        # Where the nodes really run, from a profiled run of the engine as the benchmark loads it.
        profiled = make_session(engine_path, threads=target.threads, optimization="disabled", provider=provider,
                                provider_options=options, profile_prefix=engine_path.parent / "placement")
        _check_provider(profiled, provider, engine_path)
        dtype = np.uint8 if profiled.get_inputs()[0].type == "tensor(uint8)" else np.float32  # raw pixels or not
        sample = np.zeros((min(batch_sizes), *(image_shape or _static_shape(profiled))), dtype)
        placement = node_placement(profiled, sample)
        if provider != "CPUExecutionProvider" and placement.get("CPUExecutionProvider"):
            raise ArtifactError(f"{engine_path.name}: {placement['CPUExecutionProvider']} of its nodes ran on the CPU, "
                                f"not on {provider} ({placement}); its GPU timings would not be GPU timings")
        return {"precision": precision, **precision_record, "file": engine_path.name,
                "size_bytes": engine_path.stat().st_size, "onnxruntime": ort.__version__,
                "providers": profiled.get_providers(), "nodes_by_provider": placement, "graph_optimization": level,
                **({"provider_options": options} if options else {})}

    def load(self, engine_path: Path, target: Any):
        provider = target.execution_provider
        options = None
        if provider == TENSORRT_PROVIDER:
            # The options the engine was built with: another precision or profile would rebuild it.
            options = json.loads(provider_options_file(engine_path).read_text())
        session = make_session(engine_path, threads=target.threads, optimization="disabled", provider=provider,
                               provider_options=options)
        _check_provider(session, provider, engine_path)
        name = session.get_inputs()[0].name

        def infer(batch):
            return session.run(None, {name: batch})[0]

        infer.device = "cpu" if provider == "CPUExecutionProvider" else "cuda"
        if options:
            # Batches outside the explicit profile would make TensorRT build another engine.
            infer.batch_ranges = [(_profile_batch(options["trt_profile_min_shapes"]),
                                   _profile_batch(options["trt_profile_max_shapes"]))]
        return infer


def _profile_batch(shapes: str) -> int:
    """The batch size in a TensorRT provider shape option ("images:8x3x32x32")."""
    return int(shapes.split(":", 1)[1].split("x", 1)[0])


def provider_options_file(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".provider.json")


# The library each GPU provider of onnxruntime-gpu loads, and what its 1.31 build links (readelf -d):
# TensorRT 10 (libnvinfer.so.10) for CUDA 13, which the gpu extra installs.
PROVIDER_LIBRARIES = {TENSORRT_PROVIDER: "libonnxruntime_providers_tensorrt.so",
                      "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so"}
PROVIDER_NEEDS = {TENSORRT_PROVIDER: "TensorRT 10 for CUDA 13: pip install 'tensorrt-cu13>=10.13,<11' (the gpu extra)",
                  "CUDAExecutionProvider": "CUDA 13 and cuDNN 9 runtimes (the gpu extra)"}


def provider_library_problem(provider: str, library: Path | None = None) -> str | None:
    """Why ONNX Runtime's library for ``provider`` cannot load here, in the dynamic loader's own words
    (which name the first missing library, e.g. libnvinfer.so.10); None where it loads, or where this
    ONNX Runtime has no such library."""
    import ctypes

    if library is None:
        import onnxruntime as ort

        if provider not in PROVIDER_LIBRARIES:
            return None
        library = Path(ort.__file__).parent / "capi" / PROVIDER_LIBRARIES[provider]
    if not library.is_file():
        return None
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        words = str(exc)
        if "cannot open shared object file" in words:  # a missing dependency, not an unresolved symbol
            return words.split(": cannot open")[0].rsplit(": ", 1)[-1] + " cannot be loaded"
    return None


def _check_provider(session, provider: str, path: Path) -> None:
    import onnxruntime as ort

    if session.get_providers()[0] != provider:
        missing = provider_library_problem(provider)
        why = f"; its library cannot load: {missing} (it needs {PROVIDER_NEEDS[provider]})" if missing else ""
        raise ArtifactError(f"{path}: ONNX Runtime {ort.__version__} did not take {provider} (it runs on "
                            f"{session.get_providers()}){why}; install onnxruntime-gpu with that provider, or choose "
                            f"another target.execution_provider")


def _static_shape(session) -> tuple[int, ...]:
    return tuple(int(d) for d in session.get_inputs()[0].shape[1:])
