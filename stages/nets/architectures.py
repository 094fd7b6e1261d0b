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
    residual: bool  # skip connections are part of the network; plain networks get them on request
    groups: int  # resolution groups, whose outputs attention transfer compares
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, builder: str, residual: bool, groups: int, description: str = "", **kwargs: Any) -> None:
    if name in ARCHITECTURES:
        raise ValueError(f"an architecture named {name!r} is already registered")
    ARCHITECTURES[name] = Architecture(name, builder, residual, groups, kwargs, description)


for _depth in (8, 14, 20, 32, 44, 56, 110):
    register(f"resnet{_depth}", "stages.nets.models.resnet:cifar_resnet", True, 3, depth=_depth,
             description=f"CIFAR ResNet-{_depth} (6n+2, widths 16/32/64, zero-padding shortcuts)")
for _depth, _width in ((16, 2), (40, 2), (40, 4), (28, 10)):
    register(f"wrn{_depth}_{_width}", "stages.nets.models.wide_resnet:wide_resnet", True, 3, depth=_depth,
             width=_width, description=f"Wide ResNet WRN-{_depth}-{_width} (pre-activation)")
register("vgg13", "stages.nets.models.plain:vgg", False, 5, depth=13, description="VGG-13 with BatchNorm, CIFAR head")
register("mobilenet", "stages.nets.models.plain:mobilenet", False, 5,
         description="MobileNet v1, CIFAR variant (stride-1 stem), as in Deep Mutual Learning")


def resolve_skips(name: str, p_last: float, skips: bool | None) -> bool:
    """Whether the network has identity skips: residual ones always; plain ones when asked, or
    (``skips`` null) exactly when their blocks are stochastic."""
    arch = ARCHITECTURES[name]
    if arch.residual:
        if skips is False:
            raise ValueError(f"{name} is a residual network: its skip connections cannot be removed")
        return True
    resolved = p_last < 1.0 if skips is None else skips
    if p_last < 1.0 and not resolved:
        raise ValueError(f"{name} needs identity skips for stochastic blocks (p_last={p_last}): "
                         f"set skips to true or null, or p_last to 1")
    return resolved


def build_model(name: str, num_classes: int, in_channels: int, p_last: float = 1.0,
                drop_mode: str = "batch", skips: bool | None = None):
    """Build a registered network; ``p_last < 1`` makes its blocks stochastic (eq. 2)."""
    try:
        arch = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}") from None
    with_skips = resolve_skips(name, p_last, skips)
    extra = {} if arch.residual else {"skips": with_skips}
    module_name, function_name = arch.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(num_classes=num_classes, in_channels=in_channels, p_last=p_last,
                   drop_mode=drop_mode, **extra, **arch.kwargs)
