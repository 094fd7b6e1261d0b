"""Networks without residual blocks, VGG and MobileNet v1 for CIFAR, with the method's additions
(``skips=True``): a skip around every block after the first (the identity where the block keeps its
input's shape, otherwise the parameter-free shortcut of the CIFAR ResNets: subsample, zero-pad the
new channels), and stochastic survival (eq. 2 by depth) on those blocks. The first block, whose
survival is 1 by eq. 2, stays plain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.models.base import StagedNetwork, ZeroPadShortcut
from stages.nets.stochastic_depth import DropMode, make_drop, stochastic_sum, survival_probabilities


class SkipBlock(nn.Module):
    """``shortcut(x) + f(x)`` with ``f`` droppable, when the block has a skip; otherwise plain ``f(x)``."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None, survival: float = 1.0,
                 drop_mode: DropMode = "batch") -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut
        self.drop = make_drop(survival, drop_mode) if shortcut is not None else None

    @property
    def skip(self) -> bool:
        return self.shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.body(x)
        return stochastic_sum(self.body, x, self.shortcut(x), self.drop)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1,
                  kernel: int = 3, bias: bool = False) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=bias),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


def _skip_blocks(shapes: list[tuple[int, int, int]], bodies: list[nn.Module], skips: bool, p_last: float,
                 drop_mode: DropMode) -> list[SkipBlock]:
    """Wrap each body; survival runs over all blocks by depth (eq. 2)."""
    if p_last < 1.0 and not skips:
        raise ValueError("stochastic blocks need identity skips: set skips on, or p_last to 1")
    survivals = survival_probabilities(len(bodies), p_last)
    blocks = []
    for index, ((in_channels, out_channels, stride), body, survival) in enumerate(zip(shapes, bodies, survivals)):
        shortcut: nn.Module | None = None
        if skips and index > 0:
            keeps_shape = in_channels == out_channels and stride == 1
            shortcut = nn.Identity() if keeps_shape else ZeroPadShortcut(in_channels, out_channels, stride)
        blocks.append(SkipBlock(body, shortcut, survival, drop_mode))
    return blocks


VGG_CONFIGS = {13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]]}


class VGG(StagedNetwork):
    """VGG with BatchNorm for 32x32 inputs: conv stages separated by max-pooling, one linear head."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, p_last: float = 1.0,
                 drop_mode: DropMode = "batch", skips: bool = False) -> None:
        super().__init__()
        shapes, bodies, layout = [], [], []
        channels = in_channels
        for stage in VGG_CONFIGS[depth]:
            for width in stage:
                shapes.append((channels, width, 1))
                bodies.append(nn.Sequential(*_conv_bn_relu(channels, width, bias=True)))
                channels = width
            layout.append(len(stage))
        blocks = iter(_skip_blocks(shapes, bodies, skips, p_last, drop_mode))
        layers: list[nn.Module] = []
        group_ends = []
        for count in layout:
            layers += [next(blocks) for _ in range(count)]
            group_ends.append(len(layers) - 1)
            layers.append(nn.MaxPool2d(2))
        # The last pooling is global (in the head), so any input size of at least 16x16 works.
        self.stem = nn.Identity()
        self.blocks = nn.Sequential(*layers[:-1])
        self.group_ends = tuple(group_ends)
        self.fc = nn.Linear(channels, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# (out_channels, stride) of each depthwise-separable block; the CIFAR variant keeps the stem at stride 1.
MOBILENET_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                    (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNet(StagedNetwork):
    """MobileNet v1 for 32x32 inputs (as used for CIFAR in Deep Mutual Learning)."""

    def __init__(self, num_classes: int, in_channels: int = 3, p_last: float = 1.0,
                 drop_mode: DropMode = "batch", skips: bool = False) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, 32))
        shapes, bodies = [], []
        channels = 32
        for width, stride in MOBILENET_BLOCKS:
            shapes.append((channels, width, stride))
            bodies.append(nn.Sequential(*_conv_bn_relu(channels, channels, stride, groups=channels),
                                        *_conv_bn_relu(channels, width, kernel=1)))
            channels = width
        self.blocks = nn.Sequential(*_skip_blocks(shapes, bodies, skips, p_last, drop_mode))
        # A group ends before each block that halves the resolution, and at the last block.
        strides = [stride for _, stride in MOBILENET_BLOCKS]
        self.group_ends = tuple(i for i in range(len(strides)) if i + 1 == len(strides) or strides[i + 1] == 2)
        self.fc = nn.Linear(channels, num_classes)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def vgg(depth: int, num_classes: int, in_channels: int = 3, p_last: float = 1.0,
        drop_mode: DropMode = "batch", skips: bool = False) -> VGG:
    return VGG(depth, num_classes, in_channels, p_last, drop_mode, skips)


def mobilenet(num_classes: int, in_channels: int = 3, p_last: float = 1.0,
              drop_mode: DropMode = "batch", skips: bool = False) -> MobileNet:
    return MobileNet(num_classes, in_channels, p_last, drop_mode, skips)
