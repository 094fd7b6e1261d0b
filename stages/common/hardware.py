"""What machine this is, read without importing any framework (so `status` stays instant)."""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from importlib import metadata

PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "numpy")


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    trt = module_version("tensorrt")
    if trt:
        versions["tensorrt"] = trt
    return versions


@lru_cache(maxsize=None)
def module_version(module: str, _followed: int = 0) -> str | None:
    """``module.__version__`` read from its source, without importing it. TensorRT installs as
    ``tensorrt-cu12``/``-cu13`` wheels or, on Jetsons, from JetPack's system packages, none of which
    is a ``tensorrt`` distribution. JetPack's module states its version; the pip wheels' ``tensorrt``
    package takes it from ``tensorrt_bindings`` (``from tensorrt_bindings import __version__``),
    which is followed."""
    import re
    from importlib.util import find_spec

    try:
        spec = find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    try:
        with open(spec.origin, encoding="utf-8") as file:
            source = file.read()
    except OSError:
        return None
    found = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", source, re.MULTILINE)
    if found:
        return found.group(1)
    imported = re.search(r"^from\s+([\w.]+)\s+import\s+(?:.*\W)?__version__\b", source, re.MULTILINE)
    if imported and _followed < 3:
        return module_version(imported.group(1), _followed + 1)
    return None


def check_benchmark_cores(cores: tuple[int, ...] | None) -> None:
    """benchmark.cpu_affinity against the cores this process may run on, asked before a run starts:
    the benchmark would otherwise fail on a core this machine lacks only after training."""
    from stages.common.errors import PipelineError

    if not cores:
        return
    if not hasattr(os, "sched_setaffinity"):
        raise PipelineError(f"benchmark.cpu_affinity = {list(cores)}: this system ({platform.system()}) cannot "
                            f"pin a process to cores; leave benchmark.cpu_affinity unset")
    usable = sorted(os.sched_getaffinity(0))
    missing = sorted(set(cores) - set(usable))
    if missing:
        raise PipelineError(f"benchmark.cpu_affinity = {list(cores)}: this process may run on cores "
                            f"{', '.join(map(str, usable))} only, not on {', '.join(map(str, missing))}; choose "
                            f"among them, or leave benchmark.cpu_affinity unset")


def machine() -> dict[str, object]:
    return {"host": platform.node(), "cpu": cpu_model(), "arch": platform.machine(),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


@lru_cache(maxsize=1)
def gpu_identity() -> dict[str, str] | None:
    """The GPU an engine is built for: name and compute capability (nvidia-smi), or the Jetson board
    and its L4T release (Jetsons have no nvidia-smi). None where no NVIDIA GPU is visible."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            done = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                  capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            done = None
        if done is not None and done.returncode == 0 and done.stdout.strip():
            name, _, capability = done.stdout.strip().splitlines()[0].rpartition(",")
            return {"gpu": name.strip(), "compute_capability": capability.strip()}
    try:
        board = open("/proc/device-tree/model").read().strip("\x00\n ")
        release = open("/etc/nv_tegra_release").readline().strip()
    except OSError:
        return None
    return {"gpu": board, "l4t": release}


def fingerprint(target, scope: str) -> dict[str, object]:
    """What an artifact depends on beyond its config.

    ``platform``: the processor, the GPU (for GPU targets) and runtime versions an engine was built for (an ONNX Runtime graph
    optimized at the highest level is laid out for this CPU's kernels). ``machine``: the platform and
    the host itself, for measurements, which belong to the machine they ran on.
    """
    versions = package_versions()
    platform_identity = {"backend": target.backend, "cpu": cpu_model(), "arch": platform.machine(),
                         "runtimes": {name: versions.get(name) for name in ("onnxruntime", "onnxruntime-gpu", "tensorrt")}}
    if target.on_gpu:
        # An engine built for one GPU (or TensorRT version) is never reused on another.
        platform_identity["gpu"] = gpu_identity()
    if scope == "platform":
        return platform_identity
    return {**platform_identity, "host": platform.node(), "cores": os.cpu_count()}
