"""From a target profile to TensorRT builder settings, and from the engine inspector back to what
was built, with no TensorRT import: the mapping is plain data, tested anywhere, and applied to a real
builder only on a machine that has TensorRT.

Precision comes from the ONNX model itself (strongly typed networks): fp32 and fp16 graphs carry
their types, and INT8 is explicit symmetric Q/DQ. TensorRT 11 removed the FP16/INT8 builder flags
and implicit calibration; typed graphs build the same way on 10.x and 11.x.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from stages.common.errors import ArtifactError

MIB = 1 << 20
Shape = tuple[int, ...]
# What the DLA runs from the graphs this pipeline builds. DLA INT8 from a strongly typed Q/DQ network
# is not documented for TensorRT 10.x (NVIDIA's own route turns Q/DQ scales into a calibration cache),
# so INT8 engines of a DLA target are built for the GPU and say so.
DLA_PRECISIONS = ("fp16",)


@dataclass(frozen=True)
class BuildSettings:
    precision: str
    input_name: str
    # One (min, opt, max) input shape per optimization profile.
    profiles: tuple[tuple[Shape, Shape, Shape], ...]
    workspace_bytes: int
    optimization_level: int
    dla_core: int | None
    gpu_fallback: bool
    # TensorRT computes fp32 convolutions in TF32 on Ampere and later unless told not to.
    tf32: bool = False
    on_gpu_because: str | None = None  # why an engine of a DLA target is built for the GPU
    # strong: precision from the graph's types (TensorRT 11 has no other mode); weak: from builder
    # flags, which a DLA engine on TensorRT 10.x needs (strongly typed DLA networks came with 11).
    typing: str = "strong"

    def as_record(self) -> dict[str, Any]:
        """As JSON holds it (shapes as lists), so a fresh record equals one read back."""
        return json.loads(json.dumps(asdict(self)))


def batch_profiles(batch_sizes, optimization_batch: int | None, static: bool = False
                   ) -> tuple[tuple[int, int, int], ...]:
    """(min, opt, max) batch sizes of each optimization profile.

    By default one static profile per benchmark batch size, so that each batch runs kernels tuned for
    it. ``optimization_batch`` asks for one dynamic profile spanning every batch size instead, tuned
    for that one; the DLA (``static``) takes static shapes only."""
    sizes = sorted(set(batch_sizes))
    if optimization_batch is None:
        return tuple((b, b, b) for b in sizes)
    if static:
        raise ValueError(f"target.tensorrt.optimization_batch = {optimization_batch} asks for one dynamic profile, "
                         f"but the DLA (target.tensorrt.dla_core) runs only static shapes; leave "
                         f"optimization_batch unset to get one profile per benchmark batch size")
    smallest, largest = sizes[0], sizes[-1]
    if not smallest <= optimization_batch <= largest:
        raise ValueError(f"target.tensorrt.optimization_batch = {optimization_batch} lies outside the benchmark batch "
                         f"sizes {smallest}..{largest}; choose a batch size in that range")
    return ((smallest, optimization_batch, largest),)


def profile_for(batch: int, ranges) -> int | None:
    """The index of the first profile whose (min, max) batch range holds ``batch``."""
    return next((i for i, (low, high) in enumerate(ranges) if low <= batch <= high), None)


def check_batch_covered(batch: int, ranges, engine: str) -> None:
    """A TensorRT engine runs only the batch sizes of its optimization profiles."""
    if profile_for(batch, ranges) is None:
        shown = ", ".join(f"{low}" if low == high else f"{low}..{high}" for low, high in ranges)
        raise ArtifactError(f"{engine}: batch size {batch} is outside this engine's optimization profiles "
                            f"({shown}); add {batch} to benchmark.batch_sizes and rebuild the engine "
                            f"(stochkd-pipeline engine PROFILE --force)")


def recorded_batch_ranges(engine_record: dict[str, Any]) -> list[tuple[int, int]] | None:
    """The (min, max) batch of each profile of an engine as the engine stage recorded it; None for
    engines that run any batch."""
    settings = engine_record.get("settings")
    if not settings or "profiles" not in settings:
        return None
    return [(int(low[0]), int(high[0])) for low, _, high in settings["profiles"]]


def evaluation_batch(ranges, wanted: int) -> tuple[int, int]:
    """(step, pad_to): evaluate in chunks of ``step`` images, padding a short last chunk up to
    ``pad_to``, in the profile that takes the largest batches."""
    low, high = max(ranges, key=lambda r: r[1])
    step = max(low, min(wanted, high))
    return step, low


def builder_settings(tensorrt_cfg, precision: str, batch_sizes, image_shape: tuple[int, int, int],
                     input_name: str = "images", major: int = 10) -> BuildSettings:
    """The settings one engine is built with, for TensorRT ``major``. The DLA takes only the precisions
    in DLA_PRECISIONS, so other engines of a DLA target are built for the GPU; their record says why."""
    wants_dla = tensorrt_cfg.dla_core is not None
    on_dla = wants_dla and precision in DLA_PRECISIONS
    on_gpu_because = None
    if wants_dla and not on_dla:
        on_gpu_because = ("the DLA runs no fp32" if precision == "fp32" else
                          "DLA INT8 from a Q/DQ network is not documented for TensorRT 10.x; the DLA runs fp16 here")
    profiles = tuple(((low, *image_shape), (opt, *image_shape), (high, *image_shape))
                     for low, opt, high in batch_profiles(batch_sizes, tensorrt_cfg.optimization_batch, on_dla))
    return BuildSettings(
        precision=precision, input_name=input_name, profiles=profiles,
        workspace_bytes=tensorrt_cfg.workspace_mib * MIB, optimization_level=tensorrt_cfg.optimization_level,
        dla_core=tensorrt_cfg.dla_core if on_dla else None, gpu_fallback=tensorrt_cfg.gpu_fallback,
        on_gpu_because=on_gpu_because, typing="weak" if on_dla and major < 11 else "strong")


def tensorrt_major(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def network_flags(trt, typing: str = "strong") -> int:
    """Network creation flags: strongly typed explicitly on 10.x (the only mode on 11.x); none for a
    weakly typed 10.x network (a DLA engine's)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None and tensorrt_major(trt) < 11 and typing == "strong" else 0


def apply_settings(trt, builder, config, settings: BuildSettings) -> None:
    """Configure ``config`` (an IBuilderConfig) for ``settings``."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    # Detailed layer information lets the engine inspector report each layer's precision and device.
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if not settings.tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    for low, opt, high in settings.profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(settings.input_name, low, opt, high)
        if config.add_optimization_profile(profile) < 0:
            raise ArtifactError(f"TensorRT refused the optimization profile {low}..{high} of "
                                f"{settings.input_name!r}; its log above says why")
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings.typing == "weak":  # the precision flag a weakly typed network takes its precision from
        config.set_flag(getattr(trt.BuilderFlag, settings.precision.upper()))


def attach_timing_cache(config, cached: bytes) -> str:
    """Give the builder the timing cache read from disk, or a fresh one when TensorRT rejects it
    (another GPU or TensorRT version wrote it); returns what happened, for the engine record."""
    if cached and config.set_timing_cache(config.create_timing_cache(cached), False):
        return "reused"
    fresh = config.create_timing_cache(b"")
    if not config.set_timing_cache(fresh, False):
        raise ArtifactError("TensorRT refused even an empty timing cache; set target.tensorrt.timing_cache: false")
    return "rejected (written by another device or TensorRT version); started afresh" if cached else "new"


# Layers whose precision is the engine's precision: where nearly all of the arithmetic is.
HEAVY_LAYER = re.compile(r"conv|gemm|matrixmultiply|fullyconnected|matmul|myelin|fused|foreign|dla", re.IGNORECASE)
FORMAT_FIELDS = ("Format/Datatype", "DataType", "Format")
# Tokens of TensorRT's kernel (tactic) names, in the order they decide a precision.
TACTIC_PRECISIONS = ((re.compile(r"i8i8|int8|imma", re.I), "int8"), (re.compile(r"tf32", re.I), "tf32"),
                     (re.compile(r"h884|h1688|h16816|f16f16|fp16|hmma", re.I), "fp16"),
                     (re.compile(r"f32f32|fp32|sgemm|scudnn", re.I), "fp32"))


def format_precision(text: str) -> str | None:
    """The data type in one of the inspector's format strings; None where it gives none."""
    lowered = text.lower()
    if not lowered or lowered.startswith("n/a") or "unknown" in lowered:
        return None
    for token, kind in (("int8", "int8"), ("half", "fp16"), ("fp16", "fp16"), ("bfloat16", "bf16"),
                        ("float", "fp32"), ("fp32", "fp32")):
        if token in lowered:
            return kind
    return None


def _tensor_format(tensor: dict) -> str:
    return " ".join(str(tensor[k]) for k in FORMAT_FIELDS if k in tensor)


def heavy_layer_precision(layer: dict) -> tuple[str | None, bool]:
    """(precision, format known) of one heavy layer: by its first input's format, which is what its
    kernel reads (its output may be dequantized already), else by its tactic's name."""
    inputs = [t for t in layer.get("Inputs", []) if isinstance(t, dict)]
    from_format = format_precision(_tensor_format(inputs[0])) if inputs else None
    if from_format:
        return from_format, True
    tactic = str(layer.get("TacticName", ""))
    for pattern, kind in TACTIC_PRECISIONS:
        if pattern.search(tactic):
            return kind, False
    return None, False


def is_heavy(layer: dict) -> bool:
    kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}"
    return bool(HEAVY_LAYER.search(kind))


def is_on_dla(layer: dict) -> bool:
    """A DLA layer, or one of the copies TensorRT inserts into and out of the DLA's memory ("to nvm",
    "from nvm"): DLA subgraphs themselves show only as foreign nodes."""
    text = " ".join(str(layer.get(k, "")) for k in ("LayerType", "TacticName", "Name")).lower()
    return "dla" in text or " nvm" in text


def layer_precisions(engine_information: dict[str, Any]) -> dict[str, Any]:
    """What the built engine computes in, from the engine inspector's JSON (TensorRT 10's
    "Format/Datatype" and 11's split fields): the heavy layers per precision and how many run on the
    DLA. ``formats_reported`` is False where the inspector gave no format for any heavy layer (an
    engine with dynamic shapes inspected without an execution context), so "no layer in that
    precision" is not mistaken for "format not available"."""
    counts: dict[str, int] = {}
    unknown = known_formats = heavy = dla_layers = 0
    for layer in engine_information.get("Layers", []):
        if not isinstance(layer, dict):
            continue
        dla_layers += is_on_dla(layer)
        if not is_heavy(layer):
            continue
        heavy += 1
        kind, from_format = heavy_layer_precision(layer)
        known_formats += from_format
        if kind is None:
            unknown += 1
        else:
            counts[kind] = counts.get(kind, 0) + 1
    # Q/DQ engines keep a few layers (the logits) in float: the label is the majority.
    label = max(counts, key=counts.get) if counts else "unknown"
    return {"compute_precision": label, "layers_by_precision": counts, "heavy_layers": heavy,
            "unclassified_layers": unknown, "formats_reported": known_formats > 0 or (heavy > 0 and unknown == 0),
            "dla_layers": dla_layers}


def check_built_precision(built: dict[str, Any], precision: str, where: str) -> None:
    """Refuse an engine that computes in another precision than asked; say so where the inspector
    could not tell."""
    if precision == "fp32" or built["layers_by_precision"].get(precision, 0) > 0:
        return
    if not built["layers_by_precision"]:
        raise ArtifactError(f"{where}: the TensorRT engine inspector reported no format or tactic for any of its "
                            f"{built['heavy_layers']} heavy layers, so its {precision} precision cannot be checked; "
                            f"rebuild with --force (the engine stage inspects it with an execution context)")
    raise ArtifactError(f"{where}: TensorRT built no {precision} layer on this GPU (heavy layers: "
                        f"{built['layers_by_precision']}); the {precision} engine would silently run in another "
                        f"precision, so none was kept")
