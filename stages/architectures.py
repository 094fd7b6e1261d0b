"""The registry of networks, by name. Importing it costs nothing: builders are "module:function"
strings resolved only when a model is built, so profile validation never imports torch."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    builder: str  # "module:function"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, builder: str, description: str = "", **kwargs: Any) -> None:
    if name in ARCHITECTURES:
        raise ValueError(f"an architecture named {name!r} is already registered")
    ARCHITECTURES[name] = Architecture(name, builder, kwargs, description)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", "stages.models.resnet:cifar_resnet", depth=_depth,
             description=f"CIFAR ResNet-{_depth} (6n+2, widths 16/32/64, zero-padding shortcuts)")


def build_model(name: str, num_classes: int, in_channels: int,
                p_last: float = 1.0, drop_mode: str = "batch"):
    """Build a registered network; ``p_last < 1`` makes its blocks stochastic (eq. 2)."""
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    module_name, function_name = arch.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(num_classes=num_classes, in_channels=in_channels, p_last=p_last,
                   drop_mode=drop_mode, **arch.kwargs)
