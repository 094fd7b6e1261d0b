"""What a ``timm/NAME`` network is, for profile validation: whether timm knows the name, how many
blocks can drop, how many stage outputs attention transfer can compare. timm's own registry answers
(``timm.is_model``, ``timm.list_models``); the counts come from the network built on the meta device
(no memory, no weights, a fraction of a second)."""

from __future__ import annotations

import difflib
from functools import lru_cache

from stages.nets.architectures import Architecture

BUILDER = "stages.nets.models.timm_network:timm_network"


def closest_names(name: str, count: int = 5) -> list[str]:
    import timm

    return difflib.get_close_matches(name, timm.list_models(), n=count, cutoff=0.5)


@lru_cache(maxsize=64)
def timm_architecture(arch: str) -> Architecture:
    """The Architecture of ``timm/NAME``; a name timm does not know is refused with the closest ones."""
    import torch
    import timm

    from stages.nets.models.timm_network import create, default_input_shape, stochastic_blocks, timm_name

    name = timm_name(arch)
    if not name or not timm.is_model(name):
        close = closest_names(name)
        hint = f"closest: {', '.join('timm/' + c for c in close)}" if close else "timm.list_models() lists them"
        raise ValueError(f"unknown timm network {arch!r} (timm {timm.__version__}); {hint}")
    with torch.device("meta"):
        twin = create(name, num_classes=10, in_channels=3)
    blocks = stochastic_blocks(twin, default_input_shape(name, 3, None))
    groups = len(getattr(twin, "feature_info", [])) if hasattr(twin, "forward_intermediates") else 0
    return Architecture(arch, BUILDER, residual=True, groups=groups, description=f"timm's {name}",
                        stochastic_blocks=len(blocks))


@lru_cache(maxsize=64)
def check_input_size(arch: str, size: int) -> None:
    """Refuse, in one line, a timm network that cannot take ``size`` x ``size`` images (too small for
    its downsampling, or not what a fixed-size network can be built for)."""
    import torch

    from stages.nets.models.timm_network import blocks_at_size, create, timm_name

    with torch.device("meta"):
        twin = create(timm_name(arch), num_classes=10, in_channels=3, image_size=size)
    blocks_at_size(twin, arch, (3, size, size))
