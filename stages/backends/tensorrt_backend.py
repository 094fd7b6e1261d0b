"""TensorRT engines (10.x and 11.x Python API), built from the typed ONNX models of the quantize stage
and run with CUDA events around the host-to-device copy, the compute and the device-to-host copy.

Device buffers, pinned host buffers, streams and events come from PyTorch's CUDA runtime, which the
pipeline already depends on, so no second CUDA binding is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.errors import ArtifactError
from stages.backends.tensorrt_settings import (BuildSettings, apply_settings, builder_settings, check_batch_covered,
                                               layer_precisions, network_flags)

TIMING_CACHE = "timing.cache"


def _import_tensorrt():
    import tensorrt as trt

    return trt


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
        if target.tensorrt.dla_core is not None:
            cores = trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores
            if target.tensorrt.dla_core >= cores:
                return (f"target.tensorrt.dla_core = {target.tensorrt.dla_core}, but this GPU has "
                        f"{cores} DLA core(s)")
        return None

    def settings(self, precision: str, target: Any, batch_sizes, image_shape) -> BuildSettings:
        return builder_settings(target.tensorrt, precision, batch_sizes, image_shape)

    def build(self, onnx_path: Path, engine_path: Path, precision: str, target: Any, *,
              batch_sizes, image_shape, shared: Path | None = None) -> dict[str, Any]:
        trt = _import_tensorrt()
        timing_cache = _timing_cache_path(shared, trt.__version__) if shared else None
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ArtifactError(f"{onnx_path}: TensorRT {trt.__version__} cannot parse it ({errors}); "
                                f"rerun the export stage with --force, or change export.opset")
        settings = self.settings(precision, target, batch_sizes, image_shape)
        config = builder.create_builder_config()
        cached = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
        apply_settings(trt, builder, config, settings, cached if target.tensorrt.timing_cache else None)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not build a {precision} engine from {onnx_path} "
                                f"with {settings.as_record()}; its log above says why")
        engine_path.write_bytes(bytes(serialized))
        if timing_cache and target.tensorrt.timing_cache:
            # Written aside and renamed: another run may be reading or writing the same cache.
            partial = timing_cache.with_name(f"{timing_cache.name}.{os.getpid()}.partial")
            partial.write_bytes(bytes(config.get_timing_cache().serialize()))
            os.replace(partial, timing_cache)
        engine = trt.Runtime(logger).deserialize_cuda_engine(bytes(serialized))
        inspector = engine.create_engine_inspector()
        information = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
        built = layer_precisions(information)
        if precision != "fp32" and built["layers_by_precision"].get(precision, 0) == 0:
            raise ArtifactError(f"TensorRT built no {precision} layer from {onnx_path.name} on this GPU "
                                f"(layers: {built['layers_by_precision']}); the {precision} engine would "
                                f"silently run in another precision, so none was kept")
        return {"precision": precision, **built, "file": engine_path.name, "size_bytes": engine_path.stat().st_size,
                "tensorrt": trt.__version__, "settings": settings.as_record(),
                "activation_memory_bytes": _activation_memory(engine)}

    def load(self, engine_path: Path, target: Any):
        return TensorRTRunner(engine_path, target)


def _timing_cache_path(shared: Path, version: str) -> Path:
    """One timing cache per GPU model and TensorRT version: timings from another GPU are useless."""
    import re

    import torch

    gpu = re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-")
    shared.mkdir(parents=True, exist_ok=True)
    return shared / f"tensorrt-{version}-{gpu}.{TIMING_CACHE}"


def _activation_memory(engine) -> int:
    # device_memory_size_v2 replaced device_memory_size in TensorRT 10.
    return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)


class TensorRTRunner:
    """Runs one engine; each call records (host-to-device, compute, device-to-host) times in ms."""

    device = "cuda"

    def __init__(self, engine_path: Path, target: Any) -> None:
        import torch

        trt = _import_tensorrt()
        self.torch = torch
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
        low, _, high = self.engine.get_tensor_profile_shape(self.input, 0)
        self.batch_range = (int(low[0]), int(high[0]))
        self.stream = torch.cuda.Stream()
        self.timings: list[tuple[float, float, float]] = []
        self.engine_bytes = engine_path.stat().st_size
        self.engine_path = engine_path

    def device_memory_mb(self) -> float:
        return (self.engine_bytes + _activation_memory(self.engine)) / (1 << 20)

    def __call__(self, batch):
        torch = self.torch
        check_batch_covered(len(batch), self.batch_range, str(self.engine_path))
        host_in = torch.from_numpy(batch).pin_memory()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        with torch.cuda.stream(self.stream):
            events[0].record(self.stream)
            device_in = host_in.to("cuda", non_blocking=True)
            events[1].record(self.stream)
            self.context.set_input_shape(self.input, tuple(device_in.shape))
            device_out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=torch.float32,
                                     device="cuda")
            self.context.set_tensor_address(self.input, device_in.data_ptr())
            self.context.set_tensor_address(self.output, device_out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ArtifactError("TensorRT failed to run the engine; its log above says why")
            events[2].record(self.stream)
            host_out = torch.empty(device_out.shape, dtype=torch.float32, pin_memory=True)
            host_out.copy_(device_out, non_blocking=True)
            events[3].record(self.stream)
        self.stream.synchronize()
        self.timings.append(tuple(events[i].elapsed_time(events[i + 1]) for i in range(3)))
        return host_out.numpy().copy()
