"""The profile's deployment sections: the target (backend, provider, TensorRT settings, published
hardware figures, budgets) and how its engines are benchmarked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from stages.common.config import Section, each_once

PRECISIONS = ("fp32", "fp16", "int8")
EXECUTION_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")


class TensorRTConfig(Section):
    workspace_mib: int = Field(1024, ge=16, description="Builder workspace limit (MiB).")
    optimization_level: int = Field(3, ge=0, le=5, description="Builder optimization level (0 fastest build, "
                                    "5 most thorough search; TensorRT's default is 3).")
    dla_core: int | None = Field(None, ge=0, description="Run on this DLA core, layers it cannot run falling back "
                                 "to the GPU (null: GPU only). Only targets with a DLA (Jetson AGX Orin) have one.")
    gpu_fallback: bool = Field(True, description="With dla_core: let layers the DLA cannot run fall back to the GPU "
                               "(false: the build fails instead).")
    optimization_batch: int | None = Field(None, ge=1, description="Build one dynamic profile spanning the "
                                           "benchmark batch sizes, with kernels tuned for this batch (null: one "
                                           "static profile per benchmark batch size, each tuned for its own; the DLA "
                                           "takes only these).")
    timing_cache: bool = Field(True, description="Keep the builder's kernel timings in the artifact store and "
                               "reuse them for later builds on the same GPU.")


class HardwareSpec(Section):
    """Published figures of the target chip, for the roofline estimate (never measured here)."""
    device: str = Field(description="The chip the figures are for.")
    peak_tops: dict[Literal["fp32", "fp16", "int8"], float] = Field(
        description="Dense peak throughput per precision, in tera-operations per second (one MAC = 2 ops).")
    memory_bandwidth_gbs: float = Field(gt=0, description="Peak DRAM bandwidth, GB/s.")
    source: str = Field("", description="Where the figures come from.")

    @field_validator("peak_tops")
    @classmethod
    def _positive(cls, peaks: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in peaks.items() if v <= 0}
        if bad:
            raise ValueError(f"peak throughput must be positive, got {bad}")
        return peaks


class Budgets(Section):
    latency_ms: dict[PositiveInt, PositiveFloat] = Field(
        default_factory=dict, description="Largest acceptable p50 latency per batch size, e.g. {1: 2.0, 32: 20.0}.")
    memory_mb: float | None = Field(None, gt=0, description="Largest acceptable memory of one deployed model: peak "
                                    "resident memory on a CPU, engine plus activations on a GPU.")
    max_accuracy_drop: float | None = Field(None, ge=0, description="Accuracy gate in percentage points below "
                                            "fp32: INT8 that falls further keeps its most sensitive layers in "
                                            "float, or the quantize stage fails with the figures.")


class TargetConfig(Section):
    name: str = Field("this-cpu", description="Human name of the deployment target.")
    backend: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description="Runtime that builds and runs engines.")
    execution_provider: Literal[EXECUTION_PROVIDERS] = Field(  # type: ignore[valid-type]
        "CPUExecutionProvider", description="ONNX Runtime execution provider (backend onnxruntime).")
    graph_optimization: Literal["basic", "extended", "all"] = Field(
        "all", description="ONNX Runtime graph optimization level baked into the saved engine.")
    threads: int | None = Field(None, ge=1, description="Intra-op threads (null: one per core).")
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig, description="TensorRT builder settings "
                                     "(backend tensorrt, or ONNX Runtime's TensorrtExecutionProvider: workspace, "
                                     "optimization level, optimization batch and timing cache).")
    hardware: HardwareSpec | None = Field(None, description="Published peak throughput and memory bandwidth of "
                                          "the target, for the report's roofline estimate.")
    budgets: Budgets = Field(default_factory=Budgets, description="Latency, memory and accuracy budgets.")

    def cache_form(self) -> dict:
        """What engines and measurements depend on: not the published figures or the budgets, which
        only the report reads, nor the settings of the backend not chosen."""
        unused = {"hardware", "budgets"} | ({"execution_provider", "graph_optimization"}
                                             if self.backend == "tensorrt" else set())
        if not self.uses_tensorrt:
            unused.add("tensorrt")
        return self.model_dump(mode="json", exclude=unused, exclude_none=True)

    @model_validator(mode="after")
    def _settings_fit_backend(self) -> "TargetConfig":
        if self.backend == "tensorrt" and self.execution_provider != "CPUExecutionProvider":
            raise ValueError("target.execution_provider is an ONNX Runtime setting; with backend 'tensorrt' "
                             "leave it out, or use backend 'onnxruntime' to run TensorRT through ONNX Runtime")
        return self

    @property
    def uses_tensorrt(self) -> bool:
        """TensorRT builds the engines: directly, or through ONNX Runtime's TensorRT provider."""
        return self.backend == "tensorrt" or self.execution_provider == "TensorrtExecutionProvider"

    @property
    def on_gpu(self) -> bool:
        return self.backend == "tensorrt" or self.execution_provider != "CPUExecutionProvider"


class BenchmarkConfig(Section):
    batch_sizes: tuple[int, ...] = Field((1, 64), min_length=1, description="Batch sizes to time.")
    warmup: int = Field(10, ge=0, description="Untimed runs before timing.")
    iterations: int = Field(50, ge=1, description="Timed runs per artifact and batch size.")
    eval_batch_size: int = Field(256, ge=1, description="Batch size of the accuracy pass over the test split.")
    cpu_affinity: tuple[int, ...] | None = Field(
        None, description="Pin each measuring process to these CPU cores, e.g. [0, 1] (null: no pinning).")

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, sizes: tuple[int, ...]) -> tuple[int, ...]:
        if any(b < 1 for b in sizes):
            raise ValueError(f"batch sizes must be positive, got {list(sizes)}")
        return tuple(sorted(set(sizes)))

    @field_validator("cpu_affinity")
    @classmethod
    def _core_numbers(cls, cores: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if cores and any(c < 0 for c in cores):
            raise ValueError(f"core numbers count from 0, got {list(cores)}")
        return each_once(cores, "core") if cores else cores
