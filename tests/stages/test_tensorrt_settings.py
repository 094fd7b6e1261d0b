"""The mapping from a target profile to TensorRT builder settings, checked without TensorRT: a
recording stand-in for the ``tensorrt`` module takes the calls a real builder config would."""

from types import SimpleNamespace

import pytest

from pipeline.config import TensorRTConfig
from stages.backends.tensorrt_settings import (MIB, apply_settings, builder_settings, layer_precisions,
                                               network_flags, shape_profile)


class Recorder:
    """Records attribute writes and method calls, as a builder, config or profile would take them."""

    def __init__(self, log, name):
        object.__setattr__(self, "_log", log)
        object.__setattr__(self, "_name", name)

    def __setattr__(self, key, value):
        self._log.append((f"{self._name}.{key}", value))

    def __getattr__(self, key):
        def call(*args, **kwargs):
            self._log.append((f"{self._name}.{key}()", args))
            return Recorder(self._log, key)
        return call


def fake_trt(version="10.13.0"):
    return SimpleNamespace(
        __version__=version,
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        ProfilingVerbosity=SimpleNamespace(DETAILED="DETAILED"),
        DeviceType=SimpleNamespace(DLA="DLA", GPU="GPU"),
        BuilderFlag=SimpleNamespace(GPU_FALLBACK="GPU_FALLBACK"),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=1))


def test_shape_profile_spans_the_benchmark_batches_and_tunes_for_the_largest():
    assert shape_profile([1, 8, 32], None) == (1, 32, 32)
    assert shape_profile([1, 8, 32], 8) == (1, 8, 32)
    with pytest.raises(ValueError, match="optimization_batch = 64 lies outside the benchmark batch sizes 1..32"):
        shape_profile([1, 32], 64)


def test_profile_becomes_builder_settings():
    cfg = TensorRTConfig(workspace_mib=1024, optimization_level=5, dla_core=1, gpu_fallback=True)
    settings = builder_settings(cfg, "int8", (1, 8, 32), (3, 32, 32))
    assert (settings.min_shape, settings.opt_shape, settings.max_shape) == ((1, 3, 32, 32), (32, 3, 32, 32),
                                                                          (32, 3, 32, 32))
    assert settings.workspace_bytes == 1024 * MIB and settings.optimization_level == 5
    assert settings.dla_core == 1 and settings.gpu_fallback


def test_the_dla_takes_no_fp32_engine():
    settings = builder_settings(TensorRTConfig(dla_core=0), "fp32", (1,), (3, 32, 32))
    assert settings.dla_core is None


def test_settings_reach_the_builder_config():
    log = []
    trt = fake_trt()
    settings = builder_settings(TensorRTConfig(workspace_mib=256, optimization_level=2, dla_core=0), "fp16",
                                (1, 8), (3, 32, 32))
    apply_settings(trt, Recorder(log, "builder"), Recorder(log, "config"), settings, timing_cache=b"")
    assert ("config.set_memory_pool_limit()", ("WORKSPACE", 256 * MIB)) in log
    assert ("config.builder_optimization_level", 2) in log
    assert ("config.profiling_verbosity", "DETAILED") in log
    assert ("create_optimization_profile.set_shape()", ("images", (1, 3, 32, 32), (8, 3, 32, 32),
                                                         (8, 3, 32, 32))) in log
    assert ("config.default_device_type", "DLA") in log and ("config.DLA_core", 0) in log
    assert ("config.set_flag()", ("GPU_FALLBACK",)) in log
    assert ("config.create_timing_cache()", (b"",)) in log


def test_gpu_engine_without_timing_cache_sets_no_dla_and_no_cache():
    log = []
    settings = builder_settings(TensorRTConfig(), "int8", (1, 64), (3, 32, 32))
    apply_settings(fake_trt(), Recorder(log, "builder"), Recorder(log, "config"), settings, timing_cache=None)
    names = [name for name, _ in log]
    assert "config.default_device_type" not in names and "config.create_timing_cache()" not in names


def test_networks_are_strongly_typed_on_10_and_11():
    assert network_flags(fake_trt("10.13.0")) == 1 << 1
    assert network_flags(fake_trt("11.4.1")) == 0  # strong typing is the only mode in 11.x
    no_flag = fake_trt("10.0.1")
    no_flag.NetworkDefinitionCreationFlag = SimpleNamespace()
    assert network_flags(no_flag) == 0


@pytest.mark.parametrize("output_field", ["Format/Datatype", "DataType"])  # TensorRT 10, 11
def test_engine_inspector_layers_give_the_precision_really_used(output_field):
    def layer(kind, dtype, **extra):
        return {"LayerType": kind, "Outputs": [{output_field: dtype}], **extra}

    information = {"Layers": [layer("CaskConvolution", "Channel major INT8 format"),
                              layer("CaskConvolution", "Int8"), layer("Reformat", "Row major linear FP32"),
                              layer("CaskGemm", "Row major linear FP32 format"),
                              layer("DLA", "Half", TacticName="DLA")]}
    built = layer_precisions(information)
    assert built["layers_by_precision"] == {"int8": 2, "fp32": 1, "fp16": 1}
    assert built["compute_precision"] == "int8" and built["dla_layers"] == 1
