import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR100_NPZ = Path(os.environ.get("STOCHKD_CIFAR100_NPZ", REPO.parent / "shared" / "datasets" / "cifar100.npz"))


@pytest.fixture
def cifar100_npz() -> Path:
    if not CIFAR100_NPZ.is_file():
        pytest.skip(f"CIFAR-100 .npz not found at {CIFAR100_NPZ} (set STOCHKD_CIFAR100_NPZ to its path)")
    return CIFAR100_NPZ


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """The tiny profile run once, fresh, through every stage: its artifacts folder, the finished
    command, and a copy of its store taken at once as it stood up to the engines (what ``run --until
    engine`` leaves). The end-to-end and the bad-input tests share it rather than building the same
    artifacts twice; the copy is taken before any test changes the run's folder."""
    import shutil

    from tests.commands import cli, TINY

    artifacts = tmp_path_factory.mktemp("tiny-run")
    done = cli("run", str(TINY), artifacts=artifacts)
    assert done.returncode == 0, done.stdout + done.stderr
    until_engine = tmp_path_factory.mktemp("tiny-until-engine")
    shutil.copytree(artifacts / "store", until_engine / "store",
                    ignore=lambda folder, names: [n for n in names if Path(folder) == artifacts / "store"
                                                  and n in ("benchmark", "report")])
    return artifacts, done, until_engine


@pytest.fixture(scope="session")
def uninterrupted_teacher(tmp_path_factory):
    """``uninterrupted_teacher(*options)``: the folder of the tiny profile's teacher trained for
    INTERRUPTED_EPOCHS epochs by a run that nothing stopped, started with ``options``
    (``--nproc-per-node 2`` trains on two ranks: other arithmetic, other weights).
    Built once per session for each set of options: every test that stops such a run, in whatever
    way, compares its rerun with the same reference."""
    from tests.commands import cli, INTERRUPTED, TINY

    built: dict[tuple[str, ...], Path] = {}

    def teacher(*options: str) -> Path:
        if options not in built:
            artifacts = tmp_path_factory.mktemp("uninterrupted")
            done = cli("teacher", str(TINY), *INTERRUPTED, *options, artifacts=artifacts)
            assert done.returncode == 0, done.stdout + done.stderr
            [built[options]] = [p for p in (artifacts / "store" / "teacher").iterdir() if not p.name.startswith(".")]
        return built[options]

    return teacher


@pytest.fixture
def standin_tensorrt(monkeypatch):
    """The strict stand-in for TensorRT (tests/tensorrt_standin.py) as the ``tensorrt`` module, fresh
    for each test, with CUDA's stream and device identity answered without a GPU: TensorRT 10.13."""
    return _standin(monkeypatch, "10.13")


@pytest.fixture
def standin_tensorrt_11(monkeypatch):
    """The stand-in playing TensorRT 11.4, whose names differ (no precision builder flags)."""
    return _standin(monkeypatch, "11.4")


def _standin(monkeypatch, version: str):
    import importlib.util
    import sys

    monkeypatch.setenv("STOCHKD_TENSORRT_STANDIN", version)
    spec = importlib.util.spec_from_file_location("tensorrt", Path(__file__).parent / "tensorrt_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    from stages.deploy.backends import tensorrt_backend

    monkeypatch.setattr(tensorrt_backend, "_current_stream", lambda: (0, lambda: None))
    monkeypatch.setattr(tensorrt_backend, "device_key", lambda: module.DEVICE)
    return module


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    """A ResNet-8 for 16x16 RGB images exported as fp32.onnx, fp16.onnx and int8.onnx (the
    TensorRT INT8 graph of the quantize stage), in one folder."""
    import numpy as np
    import torch

    from stages.common.config import QuantizeConfig
    from stages.nets.architectures import build_model
    from stages.export import export_onnx
    from stages.quantize import convert_fp16, quantize_int8

    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    model = build_model("resnet8", 10, 3)
    # A classifier's bias as training leaves it: a fresh one's is zero, and a zero bias is not quantized.
    torch.nn.init.uniform_(model.fc.bias, -0.1, 0.1)
    export_onnx(model, torch.randn(2, 3, 16, 16), folder / "fp32.onnx", 18)
    calibration = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    quantize_int8(folder / "fp32.onnx", folder / "int8.onnx", calibration, QuantizeConfig(), "s8s8")
    convert_fp16(folder / "fp32.onnx", folder / "fp16.onnx")
    return folder
