"""The shape every network here shares: stem, a sequence of blocks, head. The outputs at the end of
each resolution group are what attention transfer compares between teacher and student."""

from __future__ import annotations

import torch
from torch import nn


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
