"""Networks of PyTorch Image Models (timm), named ``timm/NAME``, with the paper's method on their own
stochastic blocks.

timm builds stochastic depth into most backbones: a ``DropPath`` on every residual branch, its rate
rising with depth (eq. 2 with ``1 - p_n = drop_path_rate``). The ``DropPath`` positions that a forward
pass runs are this project's stochastic blocks: each is replaced by a ``BranchDropPath`` whose
survival is eq. 2 at that block's depth, read off timm's own rates (rate / deepest rate, so the
first block keeps p = 1 and the deepest gets p_n). Positions timm creates but never runs (an
EfficientNet block without a skip) and blocks that always survive are removed, so ``drop_paths``
finds exactly the blocks that can drop, and an evaluation-mode graph holds no random operation.

Nothing here downloads: models are built with ``pretrained=False``; weights come from a local file
(``stages.nets.pretrained``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stages.nets.stochastic_depth import BranchDropPath, DropMode

TIMM_PREFIX = "timm/"
# Any rate above 0 makes timm create its DropPath modules; only their relative rates are used.
PROBE_RATE = 0.5


def timm_name(arch: str) -> str:
    """``timm/resnet50`` -> ``resnet50``: the name ``timm.create_model`` takes."""
    return arch[len(TIMM_PREFIX):]


def create(name: str, num_classes: int, in_channels: int, image_size: int | None = None) -> nn.Module:
    """``timm.create_model`` with the profile's classes and channels and its DropPath modules made
    (PROBE_RATE), never a download. Networks whose input size is fixed (ViTs) are built for
    ``image_size``."""
    import timm

    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if image_size is not None and pretrained_config(name).get("fixed_input_size"):
        kwargs["img_size"] = image_size
    try:
        return timm.create_model(name, drop_path_rate=PROBE_RATE, **kwargs)
    except TypeError as exc:  # a network without residual blocks (VGG) takes no drop_path_rate
        if "drop_path_rate" not in str(exc):
            raise
    return timm.create_model(name, **kwargs)


def pretrained_config(name: str) -> dict:
    """timm's description of the network's pretrained input: input_size, mean, std, interpolation,
    crop_pct, and the names of its first convolution and classifier."""
    import timm

    cfg = timm.get_pretrained_cfg(name, allow_unregistered=True)
    return cfg.to_dict() if cfg is not None else {}


@dataclass(frozen=True)
class StochasticBlock:
    module: str  # the DropPath's name in the timm model
    depth: float  # (i-1)/(n-1) of eq. 2: 0 at the first block, 1 at the deepest


def stochastic_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[StochasticBlock]:
    """The DropPath positions a forward pass of ``model`` (built with PROBE_RATE) runs, in the order
    it runs them, each with its depth: by one forward pass of a single image, on whatever device the
    model is (a meta-device twin costs neither memory nor arithmetic)."""
    from timm.layers import DropPath

    order: list[str] = []
    rates: dict[str, float] = {}

    def seen(name: str):
        def hook(module, inputs, output):
            if name not in rates:
                order.append(name)
                rates[name] = float(module.drop_prob)
        return hook

    hooks = [m.register_forward_hook(seen(name)) for name, m in model.named_modules() if isinstance(m, DropPath)]
    device = next(iter(model.parameters())).device
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    deepest = max(rates.values(), default=0.0)
    return [StochasticBlock(name, rates[name] / deepest) for name in order if rates[name] > 0]


def blocks_at_size(model: nn.Module, arch: str, input_shape: tuple[int, ...]) -> list[StochasticBlock]:
    """``stochastic_blocks``, with a network that cannot take images of this size refused in one line."""
    from stages.common.errors import PipelineError, first_line

    try:
        return stochastic_blocks(model, input_shape)
    except (RuntimeError, AssertionError, ValueError) as exc:
        size = input_shape[-1]
        usual = pretrained_config(timm_name(arch)).get("input_size", (0, 224, 224))[-1]
        raise PipelineError(f"{arch} cannot take {size}x{size} images ({first_line(exc)}); set data.input_size "
                            f"larger (it was pretrained at {usual})") from exc


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class TimmNetwork(nn.Module):
    """A timm model as this project's networks are used: ``forward`` gives logits,
    ``forward_with_groups`` also the feature maps at the model's stage outputs (timm's
    ``forward_intermediates``), which attention transfer compares."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def forward_with_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        final, maps = self.model.forward_intermediates(x)
        return self.model.forward_head(final), list(maps)


def default_input_shape(name: str, in_channels: int, image_size: int | None) -> tuple[int, int, int]:
    size = image_size or pretrained_config(name).get("input_size", (3, 224, 224))[-1]
    return in_channels, size, size


def timm_network(arch: str, num_classes: int, in_channels: int = 3, p_last: float = 1.0,
                 drop_mode: DropMode = "batch", image_size: int | None = None) -> TimmNetwork:
    """``timm/NAME`` with its stochastic blocks at eq. 2's survival for ``p_last`` (1: none drops)."""
    from timm.layers import DropPath

    name = timm_name(arch)
    model = create(name, num_classes, in_channels, image_size)
    shape = default_input_shape(name, in_channels, image_size)
    with torch.device("meta"):
        twin = create(name, num_classes, in_channels, image_size)
    survivals = {block.module: 1.0 - block.depth * (1.0 - p_last) for block in blocks_at_size(twin, arch, shape)}
    for module_name, module in list(model.named_modules()):
        if isinstance(module, DropPath):
            # One never run (an EfficientNet block without a skip), or at depth 0, leaves no module that
            # could draw coins.
            survival = survivals.get(module_name, 1.0)
            _replace(model, module_name, BranchDropPath(survival, drop_mode) if survival < 1.0 else nn.Identity())
    return TimmNetwork(model)
