"""From a target profile to TensorRT builder settings, with no TensorRT import: the mapping is
plain data, tested anywhere, and applied to a real builder only on a machine that has TensorRT.

Precision comes from the ONNX model itself (strongly typed networks): fp32 and fp16 graphs carry
their types, and INT8 is explicit symmetric Q/DQ. TensorRT 11 removed the FP16/INT8 builder flags
and implicit calibration; typed graphs build the same way on 10.x and 11.x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import ArtifactError

MIB = 1 << 20
# The only precisions the DLA runs.
DLA_PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class BuildSettings:
    precision: str
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    workspace_bytes: int
    optimization_level: int
    dla_core: int | None
    gpu_fallback: bool

    def as_record(self) -> dict[str, Any]:
        return asdict(self)


def shape_profile(batch_sizes: list[int] | tuple[int, ...], optimization_batch: int | None
                  ) -> tuple[int, int, int]:
    """(min, opt, max) batch sizes of the engine's one optimization profile."""
    smallest, largest = min(batch_sizes), max(batch_sizes)
    opt = optimization_batch or largest
    if not smallest <= opt <= largest:
        raise ValueError(f"target.tensorrt.optimization_batch = {opt} lies outside the benchmark batch sizes "
                         f"{smallest}..{largest}; choose a batch size in that range")
    return smallest, opt, largest


def check_batch_covered(batch: int, batch_range: tuple[int, int], engine: str) -> None:
    """A TensorRT engine runs only the batch sizes of its optimization profile."""
    low, high = batch_range
    if not low <= batch <= high:
        raise ArtifactError(f"{engine}: batch size {batch} is outside this engine's optimization profile "
                            f"({low}..{high}); add {batch} to benchmark.batch_sizes and rebuild the engine "
                            f"(stochkd-pipeline engine PROFILE --force)")


def recorded_batch_range(engine_record: dict[str, Any]) -> tuple[int, int] | None:
    """The (min, max) batch of an engine as the engine stage recorded it; None for dynamic engines."""
    settings = engine_record.get("settings")
    if not settings or "min_shape" not in settings:
        return None
    return int(settings["min_shape"][0]), int(settings["max_shape"][0])


def builder_settings(tensorrt_cfg, precision: str, batch_sizes, image_shape: tuple[int, int, int],
                     input_name: str = "images") -> BuildSettings:
    """The settings one engine is built with. The DLA takes only fp16 and int8, so an fp32 engine of
    a DLA target is built for the GPU; its record says so."""
    low, opt, high = shape_profile(batch_sizes, tensorrt_cfg.optimization_batch)
    on_dla = tensorrt_cfg.dla_core is not None and precision in DLA_PRECISIONS
    return BuildSettings(
        precision=precision, input_name=input_name,
        min_shape=(low, *image_shape), opt_shape=(opt, *image_shape), max_shape=(high, *image_shape),
        workspace_bytes=tensorrt_cfg.workspace_mib * MIB, optimization_level=tensorrt_cfg.optimization_level,
        dla_core=tensorrt_cfg.dla_core if on_dla else None, gpu_fallback=tensorrt_cfg.gpu_fallback)


def network_flags(trt) -> int:
    """Strongly typed network creation flags: explicit on 10.x, the only mode on 11.x."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    major = int(str(trt.__version__).split(".")[0])
    return 1 << int(flag) if flag is not None and major < 11 else 0


def apply_settings(trt, builder, config, settings: BuildSettings, timing_cache: bytes | None) -> None:
    """Configure ``config`` (an IBuilderConfig) for ``settings``."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    # Detailed layer information lets the engine inspector report each layer's precision and device.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    profile.set_shape(settings.input_name, settings.min_shape, settings.opt_shape, settings.max_shape)
    config.add_optimization_profile(profile)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache)
        config.set_timing_cache(cache, ignore_mismatch=False)


def layer_precisions(engine_information: dict[str, Any]) -> dict[str, Any]:
    """What the built engine computes in, from the engine inspector's JSON: layers per output data
    type and how many run on the DLA. Handles TensorRT 10's "Format/Datatype" and 11's split fields."""
    counts: dict[str, int] = {}
    dla_layers = 0
    for layer in engine_information.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        text = " ".join(str(v) for output in layer.get("Outputs", [])
                        for k, v in output.items() if k in ("Format/Datatype", "DataType", "Format"))
        kind = _precision_in(text)
        if kind and layer.get("LayerType") not in ("Reformat", "NoOp", "Shuffle"):
            counts[kind] = counts.get(kind, 0) + 1
        if "DLA" in str(layer.get("LayerType", "")) or "DLA" in str(layer.get("TacticName", "")):
            dla_layers += 1
    # Q/DQ engines keep a few layers (the logits, shortcuts) in float: the label is the majority.
    label = max(counts, key=counts.get) if counts else "unknown"
    return {"compute_precision": label, "layers_by_precision": counts, "dla_layers": dla_layers}


def _precision_in(text: str) -> str | None:
    lowered = text.lower()
    for token, kind in (("int8", "int8"), ("half", "fp16"), ("fp16", "fp16"), ("float", "fp32"), ("fp32", "fp32")):
        if token in lowered:
            return kind
    return None
