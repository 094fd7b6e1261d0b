"""The shape every network here shares: stem, a sequence of blocks, head. The outputs at the end of
each resolution group are what attention transfer compares between teacher and student."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ZeroPadShortcut(nn.Module):
    """The parameter-free shortcut of a block that changes shape (option A of the CIFAR ResNets):
    subsample by the stride, then zero-pad the new channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra:
            half = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra - half))
        return x


class StagedNetwork(nn.Module):
    stem: nn.Module
    blocks: nn.Sequential
    group_ends: tuple[int, ...]  # indices into blocks after which a resolution group ends

    def head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward_with_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits, and the feature maps at the end of every group."""
        x = self.stem(x)
        groups = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.group_ends:
                groups.append(x)
        return self.head(x), groups
