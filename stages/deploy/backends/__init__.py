"""Inference backends behind one interface. Each lives in its own module, imported only when used."""

from __future__ import annotations

import importlib

from stages.deploy.backends.base import Backend

BACKENDS = {
    "onnxruntime": "stages.deploy.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "stages.deploy.backends.tensorrt_backend:TensorRTBackend",
}


def get_backend(name: str) -> Backend:
    try:
        module_name, class_name = BACKENDS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
    return getattr(importlib.import_module(module_name), class_name)()
