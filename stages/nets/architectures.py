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
    # Blocks that can drop; None where that follows from the skips (every block after the first).
    stochastic_blocks: int | None = None


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


TIMM_PREFIX = "timm/"


def architecture(name: str) -> Architecture:
    """A registered network, or ``timm/NAME`` for any network timm knows (which imports timm)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    if name.startswith(TIMM_PREFIX):
        from stages.nets.timm_catalog import timm_architecture

        return timm_architecture(name)
    raise ValueError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}, or timm/NAME for a "
                     f"network of PyTorch Image Models")


def resolve_skips(name: str, p_last: float, skips: bool | None) -> bool:
    """Whether the network has identity skips: residual ones always; plain ones when asked, or
    (``skips`` null) exactly when their blocks are stochastic. A timm network keeps its own blocks:
    it has skips where timm gives it stochastic blocks."""
    arch = architecture(name)
    if arch.stochastic_blocks is not None:
        has_skips = arch.stochastic_blocks > 0
        if skips is not None and skips != has_skips:
            raise ValueError(f"{name} keeps timm's own blocks: skips cannot be added or removed; leave skips null")
        if p_last < 1.0 and not has_skips:
            raise ValueError(stochastic_role_refused(name, f"p_last = {p_last}"))
        return has_skips
    if arch.residual:
        if skips is False:
            raise ValueError(f"{name} is a residual network: its skip connections cannot be removed")
        return True
    resolved = p_last < 1.0 if skips is None else skips
    if p_last < 1.0 and not resolved:
        raise ValueError(f"{name} needs identity skips for stochastic blocks (p_last={p_last}): "
                         f"set skips to true or null, or p_last to 1")
    return resolved


def stochastic_role_refused(name: str, role: str) -> str:
    """Why ``name`` cannot be sampled or trained with dropping: it has no block to drop."""
    return (f"{name} has no stochastic blocks (none of its forward pass's residual branches has a DropPath in timm), "
            f"so it cannot drop blocks ({role}); it can be a student or a plain teacher: choose a network with "
            f"residual blocks for this role, or set that p_last to 1")


def build_model(name: str, num_classes: int, in_channels: int, p_last: float = 1.0,
                drop_mode: str = "batch", skips: bool | None = None, image_size: int | None = None):
    """Build a registered network; ``p_last < 1`` makes its blocks stochastic (eq. 2). ``image_size``
    matters only to timm networks with a fixed input size (ViTs)."""
    arch = architecture(name)
    if arch.stochastic_blocks is not None:
        module_name, function_name = arch.builder.split(":")
        builder = getattr(importlib.import_module(module_name), function_name)
        return builder(name, num_classes=num_classes, in_channels=in_channels, p_last=p_last,
                       drop_mode=drop_mode, image_size=image_size)
    with_skips = resolve_skips(name, p_last, skips)
    extra = {} if arch.residual else {"skips": with_skips}
    module_name, function_name = arch.builder.split(":")
    builder = getattr(importlib.import_module(module_name), function_name)
    return builder(num_classes=num_classes, in_channels=in_channels, p_last=p_last,
                   drop_mode=drop_mode, **extra, **arch.kwargs)
