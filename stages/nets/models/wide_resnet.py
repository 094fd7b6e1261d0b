"""Wide ResNets (Zagoruyko & Komodakis 2016), WRN-d-k for CIFAR, with stochastic blocks.

Pre-activation blocks. The first block of each group changes width or resolution and needs a 1x1
convolution on its shortcut: such a block is never dropped. Survival still follows eq. 2 by depth
over all blocks, so the remaining blocks keep the probabilities of their position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.models.base import StagedNetwork
from stages.nets.stochastic_depth import DropMode, make_drop, stochastic_sum, survival_probabilities


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 survival: float = 1.0, drop_mode: DropMode = "batch") -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.changes_shape = stride != 1 or in_channels != out_channels
        self.projection = (nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
                           if self.changes_shape else None)
        self.drop = None if self.changes_shape else make_drop(survival, drop_mode)

    def branch(self, activated: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.bn2(self.conv1(activated))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        # Activates its own argument: with K sub-networks sampled together it receives only the rows
        # of the sub-networks that keep this block.
        return self.branch(F.relu(self.bn1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            # The original WRN feeds the activated input to both paths of a projecting block.
            activated = F.relu(self.bn1(x))
            return self.branch(activated) + self.projection(activated)
        return stochastic_sum(self.residual, x, x, self.drop)


class WideResNet(StagedNetwork):
    def __init__(self, depth: int, width: int, num_classes: int, in_channels: int = 3,
                 p_last: float = 1.0, drop_mode: DropMode = "batch") -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4 with n >= 1, got {depth}")
        per_group = (depth - 4) // 6
        survivals = iter(survival_probabilities(3 * per_group, p_last))
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        channels = 16
        for group, out_channels in enumerate(widths):
            for i in range(per_group):
                stride = 2 if group > 0 and i == 0 else 1
                blocks.append(WideBlock(channels, out_channels, stride, next(survivals), drop_mode))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.group_ends = tuple(per_group * (g + 1) - 1 for g in range(3))
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.bn(x)), 1), 1))


def wide_resnet(depth: int, width: int, num_classes: int, in_channels: int = 3,
                p_last: float = 1.0, drop_mode: DropMode = "batch") -> WideResNet:
    return WideResNet(depth, width, num_classes, in_channels, p_last, drop_mode)
