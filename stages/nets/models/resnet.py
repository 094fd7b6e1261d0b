"""CIFAR-style ResNet (He et al. 2016, depth 6n+2, widths 16/32/64) with stochastic blocks.

Shortcuts are option A (parameter-free: subsample, then zero-pad the new channels), as in the
original CIFAR ResNets whose parameter counts the literature quotes (ResNet-20: 0.27M). With a
parameter-free shortcut every block, downsampling ones included, has a shortcut path that needs no
residual branch, so every block can be dropped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.nets.models.base import StagedNetwork, ZeroPadShortcut
from stages.nets.stochastic_depth import DropMode, make_drop, stochastic_sum, survival_probabilities


class BasicBlock(nn.Module):
    """``o_i = relu(f_i(o_{i-1}) + shortcut(o_{i-1}))``; a dropped block gives ``shortcut(o_{i-1})``.

    Inputs come out of a ReLU, so they are non-negative and the final ReLU leaves a dropped
    block's output unchanged: a dropped block is exactly its shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int,
                 survival: float = 1.0, drop_mode: DropMode = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = ZeroPadShortcut(in_channels, out_channels, stride)
        self.drop = make_drop(survival, drop_mode)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(stochastic_sum(self.residual, x, self.shortcut(x), self.drop))


class CifarResNet(StagedNetwork):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3,
                 p_last: float = 1.0, drop_mode: DropMode = "batch") -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        per_stage = (depth - 2) // 6
        survivals = iter(survival_probabilities(3 * per_stage, p_last))
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        channels = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, next(survivals), drop_mode))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.group_ends = tuple(per_stage * (g + 1) - 1 for g in range(3))
        self.fc = nn.Linear(64, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # He et al.'s initialization for the convolutions; the classifier's weights keep PyTorch's (as
        # torchvision's ResNets do) and its bias starts at zero (as the WRN's): He's fan-out rule gave it a
        # spread of sqrt(2 / classes), logits large enough on ten classes that a ResNet-20 started at a loss
        # of 8.7 and trained to half a ResNet-8's accuracy.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def cifar_resnet(depth: int, num_classes: int, in_channels: int = 3,
                 p_last: float = 1.0, drop_mode: DropMode = "batch") -> CifarResNet:
    return CifarResNet(depth, num_classes, in_channels, p_last, drop_mode)
