"""Stochastic blocks: survival probabilities (eq. 2) and the drop applied to a residual branch.

Scaling convention, used everywhere in this project: *inverted*. A surviving residual branch is
divided by its survival probability whenever blocks are dropping (training and sampling), and
evaluation uses the plain sum. The expected output of a sampled block therefore equals its
evaluation output, and exported graphs (evaluation mode) contain no random operations.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from torch import nn

DropMode = Literal["batch", "sample"]
DROP_MODES: tuple[str, ...] = ("batch", "sample")


def survival_probabilities(n_blocks: int, p_last: float) -> list[float]:
    """Eq. 2: ``p_i = 1 - (i-1)/(n-1) * (1 - p_last)`` for blocks i = 1..n (so ``p_1 = 1``)."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
    if not 0.0 < p_last <= 1.0:
        raise ValueError(f"p_last must be in (0, 1], got {p_last}")
    if n_blocks == 1:
        return [1.0]
    return [1.0 - (i / (n_blocks - 1)) * (1.0 - p_last) for i in range(n_blocks)]


@dataclass(frozen=True)
class KeptRows:
    """The rows of a batch whose sub-network keeps a block, and the factor its branch is scaled by."""
    index: torch.Tensor
    factor: float


def kept_groups(n_rows: int, survival: float, groups: int, device: torch.device) -> KeptRows | float:
    """Batch mode with ``groups`` sub-networks: 0.0 or ``1/survival`` when all groups agree, else the
    rows of the groups that keep the block."""
    # Coins are drawn on the CPU: a whole-batch decision never waits on the device.
    kept = torch.rand(groups) < survival
    if bool(kept.all()):
        return 1.0 / survival
    if not bool(kept.any()):
        return 0.0
    size = n_rows // groups
    rows = (kept.nonzero().view(-1, 1) * size + torch.arange(size)).view(-1)
    return KeptRows(rows.to(device, non_blocking=True), 1.0 / survival)


def keep_scale(
    n_rows: int, survival: float, mode: DropMode, groups: int, device: torch.device
) -> torch.Tensor | float:
    """Per-row factor for a residual branch: 0 where dropped, 1/survival where kept.

    ``groups`` splits the rows into equal consecutive groups that each draw their own sub-network in
    batch mode; K teacher samples run as one batched forward with ``groups = K``. Returns the plain
    float ``1/survival`` when every row survives, so a kept batch costs no mask multiply.
    """
    if mode == "batch":
        decision = kept_groups(n_rows, survival, groups, device)
        if isinstance(decision, float):
            return decision
        rows = torch.zeros(n_rows, device=device)
        rows[decision.index] = decision.factor
        return rows.view(-1, 1, 1, 1)
    if mode == "sample":
        rows = torch.empty(n_rows, device=device).bernoulli_(survival)
        return (rows / survival).view(-1, 1, 1, 1)
    raise ValueError(f"drop mode must be one of {DROP_MODES}, got {mode!r}")


class DropPath(nn.Module):
    """Drops a residual branch with probability ``1 - survival``.

    Active while training or while *sampling*; sampling is a switch of its own, separate from
    ``train()``/``eval()``, so a teacher can draw sub-networks with BatchNorm frozen.
    """

    def __init__(self, survival: float, mode: DropMode = "batch") -> None:
        super().__init__()
        if not 0.0 < survival <= 1.0:
            raise ValueError(f"survival must be in (0, 1], got {survival}")
        if mode not in DROP_MODES:
            raise ValueError(f"drop mode must be one of {DROP_MODES}, got {mode!r}")
        self.survival = survival
        self.mode: DropMode = mode
        self.sampling = False
        self.groups = 1
        self.forced: bool | None = None  # a fixed keep (True) or drop (False) decision, see fixed_subnetwork

    @property
    def active(self) -> bool:
        return self.training or self.sampling

    def scale(self, n_rows: int, device: torch.device) -> torch.Tensor | KeptRows | float:
        if self.forced is not None:
            return 1.0 / self.survival if self.forced else 0.0
        if self.mode == "batch":
            return kept_groups(n_rows, self.survival, self.groups, device)
        return keep_scale(n_rows, self.survival, self.mode, self.groups, device)

    def extra_repr(self) -> str:
        return f"survival={self.survival:.3f}, mode={self.mode}"


def make_drop(survival: float, mode: DropMode) -> DropPath | None:
    """A dropper for a block, or None for one that always survives (it then costs nothing)."""
    return DropPath(survival, mode) if survival < 1.0 else None


def stochastic_sum(residual: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                   shortcut: torch.Tensor, drop: DropPath | None) -> torch.Tensor:
    """``shortcut + residual(x)`` with the residual kept, scaled or dropped as ``drop`` decides.

    A residual branch is computed only for the rows that keep it: never when the whole batch drops
    it, and for K sub-networks sampled together, only on the rows of those that keep it.
    """
    if drop is None or not drop.active:
        return residual(x) + shortcut
    scale = drop.scale(x.shape[0], x.device)
    if isinstance(scale, float) and scale == 0.0:
        return shortcut
    if isinstance(scale, KeptRows):
        kept = x.index_select(0, scale.index)
        if kept.dim() == 4:
            kept = kept.contiguous(memory_format=torch.channels_last)
        return shortcut.index_add(0, scale.index, residual(kept), alpha=scale.factor)
    return residual(x) * scale + shortcut


def drop_paths(model: nn.Module) -> list[DropPath]:
    return [m for m in model.modules() if isinstance(m, DropPath)]


@contextmanager
def sampling(model: nn.Module, groups: int = 1) -> Iterator[nn.Module]:
    """Put ``model`` in sampling mode: BatchNorm in eval mode, blocks dropping, no gradients.

    ``groups`` equal consecutive slices of the batch each draw their own sub-network (batch mode).
    """
    drops = drop_paths(model)
    saved = [(d.sampling, d.groups) for d in drops]
    was_training = model.training
    model.eval()
    try:
        for drop in drops:
            drop.sampling, drop.groups = True, groups
        with torch.inference_mode():
            yield model
    finally:
        for drop, (was_sampling, old_groups) in zip(drops, saved):
            drop.sampling, drop.groups = was_sampling, old_groups
        model.train(was_training)


def draw_subnetwork(model: nn.Module, generator: torch.Generator | None = None) -> list[bool]:
    """One sub-network: a keep (True) or drop (False) decision per stochastic block."""
    return [bool(torch.rand((), generator=generator) < d.survival) for d in drop_paths(model)]


@contextmanager
def fixed_subnetwork(model: nn.Module, keep: list[bool]) -> Iterator[nn.Module]:
    """Sampling mode with every stochastic block's decision fixed, kept blocks scaled as when sampled."""
    drops = drop_paths(model)
    if len(keep) != len(drops):
        raise ValueError(f"{len(keep)} keep decisions for {len(drops)} stochastic blocks")
    try:
        for drop, decision in zip(drops, keep):
            drop.forced = decision
        with sampling(model):
            yield model
    finally:
        for drop in drops:
            drop.forced = None


def sample_logits(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """K sub-network outputs for a batch, shape (K, B, classes)."""
    return sample_with_groups(model, x, k, groups=False)[0]


def sample_with_groups(model: nn.Module, x: torch.Tensor, k: int,
                       groups: bool = True) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K sub-networks: logits (K, B, classes) and, with ``groups``, the feature maps at the end of
    each resolution group, each (K, B, C, H, W).

    On a GPU the K sub-networks run as one batched forward pass in bfloat16, each block computed only
    for the sub-networks that keep it. On a CPU they run one pass each: a K-times larger batch falls
    out of the caches and runs slower than K passes (bench/train_throughput.py measures both).
    """
    if k > 1 and x.device.type == "cpu":
        parts = [sample_with_groups(model, x, 1, groups) for _ in range(k)]
        return (torch.cat([logits for logits, _ in parts]),
                [torch.cat(maps) for maps in zip(*(features for _, features in parts))])
    batch = x.repeat(k, *([1] * (x.dim() - 1))) if k > 1 else x
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    with sampling(model, groups=k), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        logits, features = model.forward_with_groups(batch) if groups else (model(batch), [])
    # Clones outside inference mode are ordinary tensors that a loss may save for backward.
    return (logits.float().view(k, x.shape[0], -1).clone(),
            [f.float().view(k, x.shape[0], *f.shape[1:]).clone() for f in features])
