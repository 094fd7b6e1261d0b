"""The TensorRT code and its stand-in checked against TensorRT's real Python bindings, 10.3 (JetPack 6),
10.13 and 11.4, on a machine without TensorRT's libraries or a GPU.

The bindings wheels (``tensorrt-cu12-bindings``, ``tensorrt-cu13-bindings``, about 1.2 MB each) hold
the module whose import registers every class, enum, method and property; it needs ``libnvinfer``,
``libnvinfer_plugin`` and ``libnvonnxparser`` of its major version, for which three tiny libraries
compiled here stand in (their factories return NULL, so ``trt.Builder(logger)`` raises as the real
libraries do where CUDA cannot start). ``.ci/run`` fetches the wheels into ``.whl/tensorrt`` (or
``$STOCHKD_TENSORRT_WHEELS``); without them, or without a C compiler, the tests skip and say so. Each
import runs in a subprocess, so the libraries never load into the test process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tensorrt_api import bindings_environment, called_as

REPO = Path(__file__).resolve().parents[3]
WHEELS = Path(os.environ.get("STOCHKD_TENSORRT_WHEELS", REPO / ".whl" / "tensorrt"))
VERSIONS = {"10.3": "tensorrt_cu12_bindings-10.3.0-", "10.13": "tensorrt_cu12_bindings-10.13.3.9-",
            "11.4": "tensorrt_cu13_bindings-11.4.0.106-"}
FETCH = ("python -m pip download --no-deps -d .whl/tensorrt tensorrt-cu12-bindings==10.3.0 (and ==10.13.3.9, "
         "tensorrt-cu13-bindings==11.4.0.106), one at a time")
# Every name of the ``tensorrt`` module the project uses (stages/deploy/backends/tensorrt_*.py), as
# it uses it: a method with the arguments it passes (a prefix of a real signature), a property it
# reads ("ro") or writes ("rw"), an enum member, a class with its constructor's arguments.
USED = {
    "__version__": ("attribute",), "nptype": ("function",),
    "Logger": ("class", ["min_severity"]), "Logger.WARNING": ("enum member",), "Logger.ERROR": ("enum member",),
    "Builder": ("class", ["logger"]), "Builder.num_DLA_cores": ("property", "ro"),
    "Builder.create_network": ("method", ["flags"]), "Builder.create_builder_config": ("method", []),
    "Builder.create_optimization_profile": ("method", []),
    "Builder.build_serialized_network": ("method", ["network", "config"]),
    "OnnxParser": ("class", ["network", "logger"]), "OnnxParser.parse": ("method", ["model"]),
    "OnnxParser.num_errors": ("property", "ro"), "OnnxParser.get_error": ("method", ["index"]),
    "INetworkDefinition.get_input": ("method", ["index"]), "INetworkDefinition.num_layers": ("property", "ro"),
    "INetworkDefinition.get_layer": ("method", ["index"]), "ITensor.name": ("property", "ro"),
    "IBuilderConfig.set_memory_pool_limit": ("method", ["pool", "pool_size"]),
    "IBuilderConfig.builder_optimization_level": ("property", "rw"),
    "IBuilderConfig.profiling_verbosity": ("property", "rw"), "IBuilderConfig.clear_flag": ("method", ["flag"]),
    "IBuilderConfig.set_flag": ("method", ["flag"]), "IBuilderConfig.add_optimization_profile": ("method", ["profile"]),
    "IBuilderConfig.default_device_type": ("property", "rw"), "IBuilderConfig.DLA_core": ("property", "rw"),
    "IBuilderConfig.create_timing_cache": ("method", ["serialized_timing_cache"]),
    "IBuilderConfig.set_timing_cache": ("method", ["cache", "ignore_mismatch"]),
    "IBuilderConfig.get_timing_cache": ("method", []), "IBuilderConfig.can_run_on_DLA": ("method", ["layer"]),
    "IOptimizationProfile.set_shape": ("method", ["input", "min", "opt", "max"]),
    "ITimingCache.serialize": ("method", []),
    "Runtime": ("class", ["logger"]), "Runtime.deserialize_cuda_engine": ("method", ["serialized_engine"]),
    "Runtime.DLA_core": ("property", "rw"),
    "ICudaEngine.create_execution_context": ("method", []), "ICudaEngine.create_engine_inspector": ("method", []),
    "ICudaEngine.num_io_tensors": ("property", "ro"), "ICudaEngine.get_tensor_name": ("method", ["index"]),
    "ICudaEngine.get_tensor_mode": ("method", ["name"]), "ICudaEngine.get_tensor_dtype": ("method", ["name"]),
    "ICudaEngine.num_optimization_profiles": ("property", "ro"),
    "ICudaEngine.get_tensor_profile_shape": ("method", ["name", "profile_index"]),
    "ICudaEngine.device_memory_size_v2": ("property", "ro"),
    "IExecutionContext.set_optimization_profile_async": ("method", ["profile_index", "stream_handle"]),
    "IExecutionContext.set_input_shape": ("method", ["name", "shape"]),
    "IExecutionContext.get_tensor_shape": ("method", ["name"]),
    "IExecutionContext.set_tensor_address": ("method", ["name", "memory"]),
    "IExecutionContext.execute_async_v3": ("method", ["stream_handle"]),
    "EngineInspector.execution_context": ("property", "rw"),
    "EngineInspector.get_engine_information": ("method", ["format"]),
    "MemoryPoolType.WORKSPACE": ("enum member",), "ProfilingVerbosity.DETAILED": ("enum member",),
    "BuilderFlag.TF32": ("enum member",), "BuilderFlag.GPU_FALLBACK": ("enum member",),
    "DeviceType.DLA": ("enum member",), "LayerInformationFormat.JSON": ("enum member",),
    "TensorIOMode.INPUT": ("enum member",), "TensorIOMode.OUTPUT": ("enum member",),
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": ("enum member",),
    "BuilderFlag.FP16": ("enum member",),
}
# Names used with some major versions only: a DLA engine on 10.x is weakly typed, its precision the FP16
# flag, which 11.x removed with weak typing.
USED_ON = {"BuilderFlag.FP16": {"10"}}


def used_with(version: str) -> dict[str, tuple]:
    return {name: how for name, how in USED.items() if version.split(".")[0] in USED_ON.get(name, {"10", "11"})}


def _wheel(version: str) -> Path:
    found = sorted(WHEELS.glob(VERSIONS[version] + "*.whl")) if WHEELS.is_dir() else []
    if not found:
        pytest.skip(f"the TensorRT {version} bindings wheel is not in {WHEELS} (fetch it: {FETCH})")
    return found[0]


@pytest.fixture(scope="module", params=list(VERSIONS))
def real_tensorrt(request, tmp_path_factory) -> dict[str, str]:
    """The environment in which ``import tensorrt`` is TensorRT ``version``'s real bindings, laid
    out as the ``tensorrt`` package of NVIDIA's pip wheels re-exports them."""
    version = request.param
    wheel = _wheel(version)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the stand-in TensorRT libraries the bindings load")
    folder = tmp_path_factory.mktemp(f"tensorrt-{version}")
    return {"version": version, **bindings_environment(wheel, version.split(".")[0], folder, compiler)}


def describe(environment: dict[str, str], *arguments: str) -> dict:
    """tests/tensorrt_api.py run where ``import tensorrt`` is what ``environment`` makes it."""
    env = {**os.environ, "PYTHONPATH": environment["PYTHONPATH"], "LD_LIBRARY_PATH": environment["LD_LIBRARY_PATH"],
           "STOCHKD_TENSORRT_STANDIN": environment.get("standin", "")}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "tensorrt_api.py"), *arguments],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def standin(version: str, folder: Path) -> dict[str, str]:
    """The environment in which ``import tensorrt`` is the stand-in playing ``version``."""
    folder.mkdir(exist_ok=True)
    shutil.copy(REPO / "tests" / "tensorrt_standin.py", folder / "tensorrt.py")
    return {"PYTHONPATH": str(folder), "LD_LIBRARY_PATH": "", "standin": version}


def fits(expected: tuple, found: dict) -> str | None:
    """Why ``found`` (a real name's description) cannot serve as the project uses it, or None."""
    kind = expected[0]
    if found["kind"] != kind:
        return f"is a {found['kind']}, used as a {kind}"
    if kind in ("method", "class"):
        if not any(called_as(expected[1], signature) for signature in found["parameters"]):
            return f"takes {found['parameters']}, called with {expected[1]}"
    if kind == "property" and expected[1] == "rw" and found["access"] != "rw":
        return "is read-only, but the project sets it"
    return None


def test_every_name_the_project_uses_exists_with_that_shape(real_tensorrt):
    used = used_with(real_tensorrt["version"])
    real = describe(real_tensorrt, *used)
    assert real["version"].startswith(real_tensorrt["version"])
    wrong = {name: fits(expected, real["names"][name]) for name, expected in used.items()}
    assert {name: why for name, why in wrong.items() if why} == {}


def test_the_stand_in_defines_only_what_the_real_module_has(real_tensorrt, tmp_path):
    stand_in = describe(standin(real_tensorrt["version"], tmp_path), "--standin")
    assert stand_in["version"].startswith(real_tensorrt["version"])
    real = describe(real_tensorrt, *stand_in["names"])["names"]
    problems = {}
    for name, ours in stand_in["names"].items():
        theirs = real[name]
        if theirs["kind"] != ours["kind"]:
            problems[name] = f"stand-in {ours['kind']}, real {theirs['kind']}"
        elif ours["kind"] == "class" and theirs["parameters"] in ([], [[]]):
            continue  # TensorRT makes these itself: the stand-in's constructor is its own business
        elif ours["kind"] in ("method", "class") and not all(
                any(called_as(mine, signature) for signature in theirs["parameters"])
                for mine in ours["parameters"]):
            problems[name] = f"stand-in takes {ours['parameters']}, real {theirs['parameters']}"
        elif ours["kind"] == "property" and ours["access"] != theirs["access"]:
            problems[name] = f"stand-in {ours['access']}, real {theirs['access']}"
        elif ours["kind"] == "enum" and any(theirs["members"].get(m) != v for m, v in ours["members"].items()):
            problems[name] = f"stand-in members {ours['members']}, real {theirs['members']}"
        elif ours["kind"] == "enum member" and ours["value"] != theirs["value"]:
            problems[name] = f"stand-in value {ours['value']}, real {theirs['value']}"
    assert problems == {}


def test_a_tensorrt_that_cannot_start_cuda_is_one_line(real_tensorrt):
    """The real bindings with libraries whose factories return NULL, as where CUDA cannot start: the
    backend says so with the version, instead of a TypeError from pybind11."""
    script = ("from types import SimpleNamespace as N\n"
              "from stages.deploy.backends.tensorrt_backend import tensorrt_start_problem\n"
              "print(tensorrt_start_problem())\n")
    env = {**os.environ, "PYTHONPATH": f"{real_tensorrt['PYTHONPATH']}:{REPO}",
           "LD_LIBRARY_PATH": real_tensorrt["LD_LIBRARY_PATH"]}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"TensorRT {real_tensorrt['version']}") and "could not initialise CUDA" in done.stdout


def test_the_version_of_a_pip_installed_tensorrt_is_read(real_tensorrt):
    script = "from stages.common.hardware import module_version\nprint(module_version('tensorrt'))\n"
    env = {**os.environ, "PYTHONPATH": f"{real_tensorrt['PYTHONPATH']}:{REPO}"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(real_tensorrt["version"])
