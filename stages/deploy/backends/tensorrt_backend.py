"""TensorRT engines (10.x and 11.x Python API), built from the typed ONNX models of the quantize stage
and run with CUDA events around the host-to-device copy, the compute and the device-to-host copy.

Device buffers, pinned host buffers, streams and events come from PyTorch's CUDA runtime, which the
pipeline already depends on, so no second CUDA binding is needed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.common.errors import ArtifactError
from stages.deploy.backends.tensorrt_graph import tensorrt_input_problems, tensorrt_int8_problems
from stages.deploy.backends.tensorrt_settings import (BuildSettings, apply_settings, attach_timing_cache,
                                                      builder_settings, check_batch_covered, check_built_precision,
                                                      layer_precisions, network_flags, profile_for, tensorrt_major)

TIMING_CACHE = "timing.cache"


def _import_tensorrt():
    import tensorrt as trt

    return trt


def tensorrt_start_problem() -> str | None:
    """Why TensorRT cannot make a builder here, in one line, or None. PyTorch may see a GPU that
    TensorRT cannot use: a TensorRT built for CUDA 13 under an older driver, a pip TensorRT 11 on
    JetPack 6. Its libraries then log a CUDA initialization failure and the bindings' factory returns
    nothing, which pybind11 raises as a TypeError."""
    trt = _import_tensorrt()
    try:
        trt.Builder(trt.Logger(trt.Logger.ERROR))
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        return (f"TensorRT {trt.__version__} could not initialise CUDA (NVIDIA driver {_driver_version()}); install "
                f"the TensorRT built for this driver's CUDA (JetPack's own on a Jetson), or update the driver")
    return None


def _driver_version() -> str:
    """The NVIDIA driver's version as NVML gives it (the gpu extra's nvidia-ml-py), else "unknown"."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
        return version.decode() if isinstance(version, bytes) else str(version)
    except Exception:  # noqa: BLE001 - no NVML, no driver: the message says unknown
        return "version unknown"


def device_key() -> str:
    """What TensorRT checks before it trusts a timing cache: compute capability, SM count and memory
    (Jetson Orin modules share one device name but not these)."""
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    return f"sm{props.major}{props.minor}-{props.multi_processor_count}sm-{props.total_memory >> 20}mib"


class TensorRTBackend:
    name = "tensorrt"
    engine_suffix = ".plan"
    runtime_module = "tensorrt"

    def unavailable_reason(self, target: Any) -> str | None:
        try:
            trt = _import_tensorrt()
        except ImportError as exc:
            return f"not installed here ({exc})"
        import torch

        if not torch.cuda.is_available():
            return f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
        problem = tensorrt_start_problem()
        if problem:
            return problem
        if target.tensorrt.dla_core is not None:
            cores = trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores
            if target.tensorrt.dla_core >= cores:
                return (f"target.tensorrt.dla_core = {target.tensorrt.dla_core}, but this GPU has "
                        f"{cores} DLA core(s)")
        return None

    def settings(self, precision: str, target: Any, batch_sizes, image_shape, input_name: str = "images",
                 major: int = 10) -> BuildSettings:
        return builder_settings(target.tensorrt, precision, batch_sizes, image_shape, input_name, major)

    def build(self, onnx_path: Path, engine_path: Path, precision: str, target: Any, *,
              batch_sizes, image_shape, shared: Path | None = None) -> dict[str, Any]:
        trt = _import_tensorrt()
        problems = tensorrt_input_problems(onnx_path)
        if problems:
            raise ArtifactError(f"{onnx_path}: {problems[0]}; rerun the export stage with --force")
        if precision == "int8":
            problems = tensorrt_int8_problems(onnx_path)
            if problems:
                raise ArtifactError(f"{onnx_path}: not an INT8 graph TensorRT takes ({'; '.join(problems[:3])}"
                                    f"{'; …' if len(problems) > 3 else ''}); rerun the quantize stage with --force")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        major = tensorrt_major(trt)
        # The input's name comes from the graph; the rest of the settings are known before parsing.
        settings = self.settings(precision, target, batch_sizes, image_shape, _graph_input(onnx_path), major)
        network = builder.create_network(network_flags(trt, settings.typing))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors}); "
                                f"rerun the export stage with --force, or change export.opset")
        config = builder.create_builder_config()
        apply_settings(trt, builder, config, settings)
        dla_capable = _dla_capable_layers(config, network, settings, onnx_path)
        cache_file = (_timing_cache_path(shared, trt.__version__, device_key())
                      if shared is not None and target.tensorrt.timing_cache else None)
        cache_state = "off"
        if cache_file is not None:
            cache_state = attach_timing_cache(config, cache_file.read_bytes() if cache_file.is_file() else b"")
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not build a {precision} engine from {onnx_path} "
                                f"with {settings.as_record()}; its log above says why")
        plan = bytes(serialized)
        if cache_file is not None:
            cache_state = _save_timing_cache(config, cache_file, cache_state)
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        if engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} cannot load the {precision} engine it just built from "
                                f"{onnx_path}; its log above says why")
        built = inspect_engine(trt, engine, settings)
        check_built_precision(built, precision, str(onnx_path))
        if settings.dla_core is not None and built["dla_layers"] == 0:
            raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} says {dla_capable} layers can run on DLA "
                                f"core {settings.dla_core}, but the engine it built runs none there (every layer fell "
                                f"back to the GPU), so none was kept; set target.tensorrt.dla_core: null to build for "
                                f"the GPU")
        engine_path.write_bytes(plan)  # only once it is known to compute in the precision asked
        record = {"precision": precision, **built, "file": engine_path.name, "size_bytes": len(plan),
                  "tensorrt": trt.__version__, "settings": settings.as_record(), "timing_cache": cache_state,
                  "activation_memory_bytes": _activation_memory(engine)}
        if settings.dla_core is not None:
            record["dla_capable_layers"] = dla_capable
        return record

    def load(self, engine_path: Path, target: Any):
        return TensorRTRunner(engine_path, target)


def _graph_input(onnx_path: Path) -> str:
    """The name of the ONNX graph's (first) input, read without TensorRT."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in weights)


def _dla_capable_layers(config, network, settings: BuildSettings, onnx_path: Path) -> int | None:
    """How many of the network's layers TensorRT can place on the DLA; an engine asked for the DLA
    with none there is refused rather than run silently on the GPU."""
    if settings.dla_core is None:
        return None
    capable = sum(bool(config.can_run_on_DLA(network.get_layer(i))) for i in range(network.num_layers))
    if capable == 0:
        raise ArtifactError(f"{onnx_path}: TensorRT can run none of its {network.num_layers} layers on DLA core "
                            f"{settings.dla_core} in {settings.precision}; set target.tensorrt.dla_core: null to "
                            f"build for the GPU")
    return capable


def inspect_engine(trt, engine, settings: BuildSettings) -> dict[str, Any]:
    """The engine inspector's account of every optimization profile, read through an execution
    context with the profile's input shape set: without one TensorRT reports no formats for an
    engine with dynamic shapes (as trtexec and Polygraphy also do it)."""
    context = engine.create_execution_context()
    inspector = engine.create_engine_inspector()
    stream, synchronize = _current_stream()
    by_profile = []
    for index, (_, opt, _) in enumerate(settings.profiles):
        if not context.set_optimization_profile_async(index, stream):
            raise ArtifactError(f"TensorRT could not select optimization profile {index} of its new engine")
        synchronize()
        if not context.set_input_shape(settings.input_name, opt):
            raise ArtifactError(f"TensorRT refused input shape {opt} for profile {index} of its new engine")
        inspector.execution_context = context
        information = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        by_profile.append({"batch": opt[0], **layer_precisions(information)})
    largest = by_profile[-1]
    labels = {p["compute_precision"] for p in by_profile}
    return {**largest, "compute_precision": labels.pop() if len(labels) == 1 else "mixed",
            "by_profile": by_profile if len(by_profile) > 1 else None}


def _current_stream():
    """(CUDA stream handle, its synchronize) of the current PyTorch stream."""
    import torch

    stream = torch.cuda.current_stream()
    return stream.cuda_stream, stream.synchronize


def _timing_cache_path(shared: Path, version: str, device: str) -> Path:
    """One timing cache per device and TensorRT version: timings from another device are useless."""
    shared.mkdir(parents=True, exist_ok=True)
    return shared / f"tensorrt-{version}-{device}.{TIMING_CACHE}"


def _save_timing_cache(config, cache_file: Path, state: str) -> str:
    cache = config.get_timing_cache()
    if cache is None:
        return f"{state}; TensorRT gave back no timing cache, so none was saved"
    # Written aside and renamed: another run may be reading or writing the same cache.
    partial = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.partial")
    partial.write_bytes(bytes(cache.serialize()))
    os.replace(partial, cache_file)
    return state


def _activation_memory(engine) -> int:
    # device_memory_size_v2 exists in 10.x and 11.x; device_memory_size is gone in 11.
    return int(engine.device_memory_size_v2)


@dataclass
class _Buffers:
    """Everything one batch size needs, allocated once (outside the timed calls)."""
    host_in: Any
    device_in: Any
    device_out: Any
    host_out: Any


class TensorRTRunner:
    """Runs one engine; each call records (host-to-device, GPU compute, device-to-host, enqueue) times
    in ms: the first three from CUDA events, the enqueue as host time spent in execute_async_v3 (as
    trtexec reports them apart)."""

    device = "cuda"

    def __init__(self, engine_path: Path, target: Any) -> None:
        import torch

        trt = _import_tensorrt()
        self.torch, self.trt = torch, trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(self.logger)
        if target.tensorrt.dla_core is not None:
            runtime.DLA_core = target.tensorrt.dla_core
        self.engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise ArtifactError(f"{engine_path}: TensorRT {trt.__version__} cannot load this engine (built by "
                                f"another TensorRT version or for another GPU?); rerun the engine stage with --force")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.batch_ranges = []
        for profile in range(self.engine.num_optimization_profiles):
            low, _, high = self.engine.get_tensor_profile_shape(self.input, profile)
            self.batch_ranges.append((int(low[0]), int(high[0])))
        self.input_dtype = self._torch_dtype(self.input)
        self.output_dtype = self._torch_dtype(self.output)
        self.stream = torch.cuda.Stream()
        self.events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        self.buffers: dict[int, _Buffers] = {}
        self.bound: int | None = None
        self.timings: list[tuple[float, float, float, float]] = []
        self.engine_bytes = engine_path.stat().st_size
        self.engine_path = engine_path

    def _torch_dtype(self, name: str):
        import numpy as np

        return self.torch.from_numpy(np.empty(0, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def device_memory_mb(self) -> float:
        return (self.engine_bytes + _activation_memory(self.engine)) / (1 << 20)

    def _bind(self, batch_shape: tuple[int, ...]) -> _Buffers:
        """Select the profile for this batch size and point the context at its buffers; allocates
        them the first time the batch size is seen."""
        torch, batch = self.torch, batch_shape[0]
        if self.bound == batch:
            return self.buffers[batch]
        context = self.context
        if not context.set_optimization_profile_async(profile_for(batch, self.batch_ranges), self.stream.cuda_stream):
            raise ArtifactError(f"{self.engine_path}: TensorRT could not select the profile for batch size {batch}")
        if not context.set_input_shape(self.input, batch_shape):
            raise ArtifactError(f"{self.engine_path}: TensorRT refused input shape {batch_shape}")
        if batch not in self.buffers:
            out_shape = tuple(context.get_tensor_shape(self.output))
            self.buffers[batch] = _Buffers(
                host_in=torch.empty(batch_shape, dtype=self.input_dtype, pin_memory=True),
                device_in=torch.empty(batch_shape, dtype=self.input_dtype, device="cuda"),
                device_out=torch.empty(out_shape, dtype=self.output_dtype, device="cuda"),
                host_out=torch.empty(out_shape, dtype=self.output_dtype, pin_memory=True))
        buffers = self.buffers[batch]
        if not (context.set_tensor_address(self.input, buffers.device_in.data_ptr())
                and context.set_tensor_address(self.output, buffers.device_out.data_ptr())):
            raise ArtifactError(f"{self.engine_path}: TensorRT refused the buffers of batch size {batch}")
        self.stream.synchronize()
        self.bound = batch
        return buffers

    def __call__(self, batch):
        torch = self.torch
        check_batch_covered(len(batch), self.batch_ranges, str(self.engine_path))
        buffers = self._bind(tuple(batch.shape))
        buffers.host_in.copy_(torch.from_numpy(batch))
        events = self.events
        with torch.cuda.stream(self.stream):
            events[0].record(self.stream)
            buffers.device_in.copy_(buffers.host_in, non_blocking=True)
            events[1].record(self.stream)
            start = time.perf_counter()
            ran = self.context.execute_async_v3(self.stream.cuda_stream)
            enqueue_ms = 1e3 * (time.perf_counter() - start)
            if not ran:
                raise ArtifactError("TensorRT failed to run the engine; its log above says why")
            events[2].record(self.stream)
            buffers.host_out.copy_(buffers.device_out, non_blocking=True)
            events[3].record(self.stream)
        self.stream.synchronize()
        self.timings.append((*(events[i].elapsed_time(events[i + 1]) for i in range(3)), enqueue_ms))
        return buffers.host_out.float().numpy().copy()
