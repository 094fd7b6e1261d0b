"""The mapping from a target profile to TensorRT builder settings and from the engine inspector's
JSON back to precisions, checked without TensorRT: settings are applied to the strict stand-in's
builder config (tests/tensorrt_standin.py), which takes only the real bindings' calls."""

import pytest

from stages.common.target_config import TensorRTConfig
from stages.deploy.backends.tensorrt_settings import (MIB, apply_settings, attach_timing_cache, batch_profiles,
                                                      builder_settings, check_batch_covered, evaluation_batch,
                                                      layer_precisions, network_flags, recorded_batch_ranges)


def test_one_static_profile_per_batch_unless_one_batch_is_named():
    assert batch_profiles([32, 1, 8], None) == ((1, 1, 1), (8, 8, 8), (32, 32, 32))
    assert batch_profiles([1, 8, 32], 8) == ((1, 8, 32),)
    with pytest.raises(ValueError, match="optimization_batch = 64 lies outside the benchmark batch sizes 1..32"):
        batch_profiles([1, 32], 64)


def test_profile_becomes_builder_settings():
    cfg = TensorRTConfig(workspace_mib=1024, optimization_level=5, dla_core=1, gpu_fallback=True)
    settings = builder_settings(cfg, "fp16", (1, 32), (3, 32, 32))
    assert settings.profiles == (((1, 3, 32, 32),) * 3, ((32, 3, 32, 32),) * 3)
    assert settings.workspace_bytes == 1024 * MIB and settings.optimization_level == 5
    assert settings.dla_core == 1 and settings.gpu_fallback and not settings.tf32


def test_recorded_profiles_give_the_batches_an_engine_runs():
    record = {"settings": builder_settings(TensorRTConfig(), "fp32", (1, 8), (3, 32, 32)).as_record()}
    ranges = recorded_batch_ranges(record)
    assert ranges == [(1, 1), (8, 8)]
    check_batch_covered(8, ranges, "engine.plan")
    with pytest.raises(Exception, match=r"batch size 4 is outside this engine's optimization profiles \(1, 8\)"):
        check_batch_covered(4, ranges, "engine.plan")
    assert evaluation_batch(ranges, 256) == (8, 8)  # evaluate in batches of 8, padding the last
    assert evaluation_batch([(1, 64)], 256) == (64, 1)
    assert recorded_batch_ranges({"settings": {}}) is None


def test_settings_reach_the_builder_config(standin_tensorrt):
    trt = standin_tensorrt
    settings = builder_settings(TensorRTConfig(workspace_mib=256, optimization_level=2, dla_core=0), "fp16",
                                (1, 8), (3, 32, 32))
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    config = builder.create_builder_config()
    apply_settings(trt, builder, config, settings)
    assert config._pools[trt.MemoryPoolType.WORKSPACE] == 256 * MIB
    assert config.builder_optimization_level == 2 and config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert not config.get_flag(trt.BuilderFlag.TF32)
    assert [p._shapes["images"][0][0] for p in config._profiles] == [1, 8]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 0
    assert config.get_flag(trt.BuilderFlag.GPU_FALLBACK)


def test_a_timing_cache_of_another_device_is_replaced_not_trusted(standin_tensorrt):
    trt = standin_tensorrt
    config = trt.Builder(trt.Logger()).create_builder_config()
    assert attach_timing_cache(config, b"") == "new"
    here = bytes(config.get_timing_cache().serialize())
    assert attach_timing_cache(config, here) == "reused"
    trt.DEVICE = "sm90-132sm-81559mib"
    assert attach_timing_cache(config, here).startswith("rejected")
    assert config.get_timing_cache() is not None


def test_networks_are_strongly_typed_on_10_and_11(standin_tensorrt):
    assert network_flags(standin_tensorrt) == 1 << 1


def test_on_11_strong_typing_is_the_only_mode(standin_tensorrt_11):
    assert network_flags(standin_tensorrt_11) == 0
    assert not hasattr(standin_tensorrt_11.BuilderFlag, "FP16")


def inspector_layer(kind, input_text, output_text, layout, **extra):
    def tensor(text):
        # TensorRT 10 writes one "Format/Datatype" string; 11 splits the data type out.
        if layout == 10:
            return {"Name": "t", "Format/Datatype": text}
        return {"Name": "t", "DataType": text.split()[2] if text.startswith("Channel") else text, "Format": text}
    return {"Name": kind, "LayerType": kind, "Inputs": [tensor(input_text)], "Outputs": [tensor(output_text)],
            **extra}


@pytest.mark.parametrize("layout", [10, 11])
def test_heavy_layers_are_classified_by_what_they_read(layout):
    int8_in = "Channel major INT8 format where channel % 32 == 0"
    fp16 = "Channel major FP16 format where channel % 8 == 0"
    information = {"Layers": [
        inspector_layer("Reformat", "Row major linear FP32", int8_in, layout),
        inspector_layer("CaskConvolution", int8_in, fp16, layout),  # reads INT8, writes fp16: INT8
        inspector_layer("CaskConvolution", int8_in, int8_in, layout),
        inspector_layer("CaskGemm", "Row major linear FP32", "Row major linear FP32", layout),
        inspector_layer("Shuffle", fp16, fp16, layout)]}
    built = layer_precisions(information)
    assert built["layers_by_precision"] == {"int8": 2, "fp32": 1}
    assert built["compute_precision"] == "int8" and built["formats_reported"] and built["heavy_layers"] == 3


def test_without_formats_the_tactic_names_the_precision():
    unknown = "N/A due to dynamic shapes"
    information = {"Layers": [
        inspector_layer("CaskConvolution", unknown, unknown, 10,
                        TacticName="sm80_xmma_fprop_implicit_gemm_interleaved_i8i8_i8i32_f32_nchw_vect_c_32"),
        inspector_layer("CaskConvolution", unknown, unknown, 10,
                        TacticName="sm80_xmma_fprop_implicit_gemm_tf32f32_tf32f32_f32_nhwckrsc_nhwc"),
        inspector_layer("CaskConvolution", unknown, unknown, 10)]}
    built = layer_precisions(information)
    assert built["layers_by_precision"] == {"int8": 1, "tf32": 1}
    assert built["unclassified_layers"] == 1 and not built["formats_reported"]


def test_the_dla_and_its_memory_copies_are_counted():
    information = {"Layers": [
        inspector_layer("Reformat", "Row major linear FP32", "Channel major FP16 format", 10, Name="images to nvm"),
        inspector_layer("DLA", "Channel major FP16 format", "Channel major FP16 format", 10),
        inspector_layer("Reformat", "Channel major FP16 format", "Row major linear FP32", 10, Name="logits from nvm")]}
    built = layer_precisions(information)
    assert built["dla_layers"] == 3 and built["compute_precision"] == "fp16"
