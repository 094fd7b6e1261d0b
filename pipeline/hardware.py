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


def fingerprint(backend: str) -> dict[str, object]:
    """What an engine or a benchmark depends on beyond its config: this machine and its runtimes."""
    versions = package_versions()
    runtime = {name: versions.get(name) for name in ("onnxruntime", "onnxruntime-gpu", "tensorrt")}
    return {"backend": backend, **machine(), "runtimes": runtime}
