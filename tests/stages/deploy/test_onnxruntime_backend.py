"""ONNX Runtime engines: the providers a session is given, the TensorRT provider's options, and the
precision read from a saved graph."""

import pytest


def test_gpu_providers_may_not_fall_back_to_the_cpu_and_tensorrt_comes_first(monkeypatch, tmp_path):
    import onnxruntime as ort

    from stages.deploy.onnx_runtime import make_session

    seen = {}

    def fake_session(path, sess_options, providers):
        seen.update(options=sess_options, providers=providers)
        return "session"

    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    make_session(tmp_path / "m.onnx", provider="TensorrtExecutionProvider", provider_options={"trt_fp16_enable": True})
    assert seen["providers"] == [("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider",
                                 "CPUExecutionProvider"]
    assert seen["options"].get_session_config_entry("session.disable_cpu_ep_fallback") == "1"
    make_session(tmp_path / "m.onnx", provider="CPUExecutionProvider")
    assert seen["providers"] == ["CPUExecutionProvider"]


def test_tensorrt_provider_options_keep_its_caches_and_one_profile_for_every_batch(tmp_path):
    from stages.common.target_config import TargetConfig
    from stages.deploy.backends.onnxruntime_backend import tensorrt_provider_options

    target = TargetConfig(execution_provider="TensorrtExecutionProvider")
    options = tensorrt_provider_options(tmp_path / "engine.int8.ort.onnx", target, "int8", (1, 8, 32), (3, 32, 32),
                                        "images", tmp_path / "shared")
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"].startswith(str(tmp_path))
    assert options["trt_timing_cache_enable"] and options["trt_timing_cache_path"] == str(tmp_path / "shared")
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) \
        == ("images:1x3x32x32", "images:32x3x32x32", "images:32x3x32x32")
    assert options["trt_int8_enable"] and not options["trt_fp16_enable"]


def test_an_unfused_qdq_graph_reads_as_float_on_dequantized_values(tmp_path):
    """What the CUDA provider runs of an INT8 model: DequantizeLinear, then fp32 convolutions."""
    import numpy as np
    import torch

    from stages.common.config import QuantizeConfig
    from stages.nets.architectures import build_model
    from stages.deploy.backends.onnxruntime_backend import compute_precision
    from stages.export import export_onnx
    from stages.deploy.onnx_runtime import make_session
    from stages.quantize import quantize_int8

    torch.manual_seed(0)
    export_onnx(build_model("resnet8", 10, 3), torch.randn(2, 3, 16, 16), tmp_path / "m.onnx", 18)
    images = np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "int8.onnx", images, QuantizeConfig(), "s8s8")
    make_session(tmp_path / "int8.onnx", optimization="basic", optimized_path=tmp_path / "basic.onnx")
    assert compute_precision(tmp_path / "basic.onnx")["compute_precision"] == "fp32-qdq"


def test_a_cpu_engine_records_where_its_nodes_ran(tmp_path):
    import torch

    from stages.common.target_config import TargetConfig
    from stages.nets.architectures import build_model
    from stages.deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from stages.export import export_onnx

    torch.manual_seed(0)
    export_onnx(build_model("resnet8", 10, 3), torch.randn(2, 3, 16, 16), tmp_path / "m.onnx", 18)
    record = OnnxRuntimeBackend().build(tmp_path / "m.onnx", tmp_path / "engine.fp32.ort.onnx", "fp32", TargetConfig(),
                                        batch_sizes=(1, 4), image_shape=(3, 16, 16))
    assert set(record["nodes_by_provider"]) == {"CPUExecutionProvider"} and record["compute_precision"] == "fp32"
    assert not list(tmp_path.glob("placement*"))  # the profile is read, then removed


def test_the_tensorrt_provider_engine_is_loaded_with_the_options_it_was_built_with(tmp_path, monkeypatch):
    import json

    import stages.deploy.backends.onnxruntime_backend as backend_module
    from stages.common.target_config import TargetConfig

    engine = tmp_path / "engine.fp16.ort.onnx"
    target = TargetConfig(execution_provider="TensorrtExecutionProvider")
    options = backend_module.tensorrt_provider_options(engine, target, "fp16", (1, 8), (3, 32, 32), "images", None)
    backend_module.provider_options_file(engine).write_text(json.dumps(options))
    seen = {}

    class Session:
        def get_providers(self):
            return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return [type("Input", (), {"name": "images"})()]

    def fake_make_session(path, **kwargs):
        seen.update(kwargs)
        return Session()

    monkeypatch.setattr(backend_module, "make_session", fake_make_session)
    infer = backend_module.OnnxRuntimeBackend().load(engine, target)
    assert seen["provider_options"] == options and infer.device == "cuda"
    assert infer.batch_ranges == [(1, 8)]


def test_a_session_that_did_not_take_the_provider_is_refused_at_load(tmp_path, monkeypatch):
    import stages.deploy.backends.onnxruntime_backend as backend_module
    from stages.common.target_config import TargetConfig
    from stages.common.errors import ArtifactError

    class CpuOnly:
        def get_providers(self):
            return ["CPUExecutionProvider"]

    monkeypatch.setattr(backend_module, "make_session", lambda path, **kwargs: CpuOnly())
    with pytest.raises(ArtifactError, match="did not take CUDAExecutionProvider"):
        target = TargetConfig(execution_provider="CUDAExecutionProvider")
        backend_module.OnnxRuntimeBackend().load(tmp_path / "e.onnx", target)


def test_a_provider_library_that_cannot_load_is_named_with_what_it_lacks(tmp_path):
    """onnxruntime-gpu 1.31's TensorRT provider links libnvinfer.so.10: with TensorRT 11 installed it
    cannot load, and the loader's words name the missing library."""
    import shutil
    import subprocess

    from stages.deploy.backends.onnxruntime_backend import provider_library_problem

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a library that needs a missing one")
    (tmp_path / "empty.c").write_text("int nvinfer_stand_in(void) { return 0; }\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "libnvinfer.so.10"),
                    "-Wl,-soname,libnvinfer.so.10", str(tmp_path / "empty.c")], check=True)
    (tmp_path / "provider.c").write_text("int nvinfer_stand_in(void);\n"
                                         "int provider(void) { return nvinfer_stand_in(); }\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "libprovider.so"), str(tmp_path / "provider.c"),
                    f"-L{tmp_path}", "-l:libnvinfer.so.10"], check=True)
    (tmp_path / "libnvinfer.so.10").unlink()
    assert provider_library_problem("TensorrtExecutionProvider", tmp_path / "libprovider.so") == \
        "libnvinfer.so.10 cannot be loaded"
    assert provider_library_problem("TensorrtExecutionProvider", tmp_path / "absent.so") is None
