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
    return versions


def machine() -> dict[str, object]:
    return {"host": platform.node(), "cpu": cpu_model(), "arch": platform.machine(),
            "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}"}


def fingerprint(backend: str, scope: str) -> dict[str, object]:
    """What an artifact depends on beyond its config.

    ``platform``: the processor and runtime versions an engine was built for (an ONNX Runtime graph
    optimized at the highest level is laid out for this CPU's kernels). ``machine``: the platform and
    the host itself, for measurements, which belong to the machine they ran on.
    """
    versions = package_versions()
    platform_identity = {"backend": backend, "cpu": cpu_model(), "arch": platform.machine(),
                         "runtimes": {name: versions.get(name) for name in ("onnxruntime", "onnxruntime-gpu", "tensorrt")}}
    if scope == "platform":
        return platform_identity
    return {**platform_identity, "host": platform.node(), "cores": os.cpu_count()}
