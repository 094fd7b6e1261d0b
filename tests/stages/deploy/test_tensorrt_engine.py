"""TensorRT engines for real: these run only where TensorRT and a CUDA GPU exist."""

import numpy as np
import pytest
import torch

from stages.common.target_config import TargetConfig

trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed (install the gpu extra on a CUDA machine)")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")]


@pytest.fixture(scope="module")
def models(onnx_models):
    return onnx_models


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_builds_records_its_precision_and_matches_onnx_runtime(models, tmp_path, precision):
    from stages.deploy.backends.tensorrt_backend import TensorRTBackend
    from stages.deploy.onnx_runtime import make_session

    backend, target = TensorRTBackend(), TargetConfig(backend="tensorrt")
    assert backend.unavailable_reason(target) is None
    record = backend.build(models / f"{precision}.onnx", tmp_path / "engine.plan", precision, target,
                           batch_sizes=(1, 8), image_shape=(3, 16, 16), shared=tmp_path / "shared")
    assert record["layers_by_precision"].get(precision, 0) > 0
    assert list((tmp_path / "shared").glob("*.timing.cache"))
    runner = backend.load(tmp_path / "engine.plan", target)
    images = np.random.default_rng(1).standard_normal((8, 3, 16, 16)).astype(np.float32)
    logits = runner(images)
    reference = make_session(models / "fp32.onnx").run(None, {"images": images})[0]
    tolerance = {"fp32": 1e-2, "fp16": 5e-2, "int8": 0.5}[precision]
    assert np.abs(logits - reference).max() < tolerance * max(1.0, np.abs(reference).max())
    assert len(runner.timings) == 1 and len(runner.timings[0]) == 4 and all(t >= 0 for t in runner.timings[0])
    assert runner.device_memory_mb() > 0
    buffers = runner.buffers[8]
    runner(images)
    assert runner.buffers[8] is buffers  # bound once per batch size, outside the timed calls


def test_a_batch_outside_the_engine_profile_is_refused(models, tmp_path):
    from stages.common.errors import ArtifactError
    from stages.deploy.backends.tensorrt_backend import TensorRTBackend

    backend, target = TensorRTBackend(), TargetConfig(backend="tensorrt")
    backend.build(models / "fp32.onnx", tmp_path / "engine.plan", "fp32", target, batch_sizes=(1, 8),
                  image_shape=(3, 16, 16), shared=None)
    with pytest.raises(ArtifactError, match=r"batch size 16 is outside this engine's optimization profiles \(1, 8\)"):
        backend.load(tmp_path / "engine.plan", target)(np.zeros((16, 3, 16, 16), np.float32))
