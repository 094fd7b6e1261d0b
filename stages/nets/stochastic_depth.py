"""Stochastic blocks: survival probabilities (eq. 2) and the drop applied to a residual branch.

Scaling convention, used everywhere in this project: *inverted*. While a network trains with
survival ``q_i``, a surviving residual branch is divided by ``q_i``, and evaluation uses the plain
sum, so exported graphs (evaluation mode) contain no random operations.

A network *sampled* for teaching draws its coins with the teaching survival ``p_i`` but, by default,
keeps each surviving branch at the scale it was trained with (``1/q_i``; 1 for a plain-trained
network): the paper's sub-network is the trained network with the dropped blocks removed. Dividing by
``p_i`` instead (``kept_scale: expectation``) keeps the expected output equal to the full network's.
The two agree whenever the teaching and the training survival are the same.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
from torch import nn

DropMode = Literal["batch", "sample"]
DROP_MODES: tuple[str, ...] = ("batch", "sample")
# How a drop is carried out: "skip" computes a branch only for the rows that keep it (coins drawn on
# the CPU, a host-side decision per block); "mask" computes every branch and multiplies it by a mask
# drawn on the device, with no host-side decision, so that a whole training step can be captured
# (torch.compile with CUDA graphs). Both draw the same Bernoulli coins, only from other generators.
# A training step treats a dropped block differently: masked, its BatchNorm running statistics update
# and it gets a zero gradient, so SGD's weight decay and momentum still move it; skipped, neither.
DropExecution = Literal["skip", "mask"]
DROP_EXECUTIONS: tuple[str, ...] = ("skip", "mask")


# Rows [start, stop) of a global batch of `total` rows: the part of every batch that this process
# computes under torchrun (set by the training loop around each step), else None.
_BATCH_SLICE: ContextVar[tuple[int, int, int] | None] = ContextVar("stochkd_batch_slice", default=None)


@contextmanager
def computing_rows(start: int, stop: int, total: int) -> Iterator[None]:
    """Forward passes inside compute rows ``[start, stop)`` of a global batch of ``total`` rows.

    Per-row coins (``drop_mode: sample``) are then drawn for the whole global batch and sliced. Every
    rank's generator is in the same state, so the ranks' rows together get the coins one process
    would draw for the whole batch; drawn for the slice alone, row i of every rank would keep and drop
    the same blocks."""
    token = _BATCH_SLICE.set((start, stop, total))
    try:
        yield
    finally:
        _BATCH_SLICE.reset(token)


def row_coins(n_rows: int, survival: float, device: torch.device) -> torch.Tensor:
    """One Bernoulli(``survival``) coin (1.0 keep, 0.0 drop) per row, drawn on ``device``; within
    ``computing_rows``, this slice's coins of a draw for the whole global batch. ``n_rows`` may be
    several stacked copies of the slice (K teacher samples): each copy is a copy of the global batch.

    A coin is a uniform number below the survival, as every coin of this module: consecutive draws of
    a generator are one draw of their total, so a network's masks drawn at once (MaskPlan) are these."""
    part = _BATCH_SLICE.get()
    if part is None:
        return (torch.rand(n_rows, device=device) < survival).float()
    start, stop, total = part
    rows = stop - start
    copies = n_rows // rows  # not divmod, which torch.compile does not trace
    if n_rows % rows or not copies:
        raise ValueError(f"{n_rows} rows are not copies of this process's {rows} rows of the batch")
    coins = (torch.rand(copies * total, device=device) < survival).float()
    return coins.view(copies, total)[:, start:stop].reshape(-1)


def survival_probabilities(n_blocks: int, p_last: float) -> list[float]:
    """Eq. 2: ``p_i = 1 - (i-1)/(n-1) * (1 - p_last)`` for blocks i = 1..n (so ``p_1 = 1``)."""
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be at least 1, got {n_blocks}")
    if not 0.0 < p_last <= 1.0:
        raise ValueError(f"p_last must be in (0, 1], got {p_last}")
    if n_blocks == 1:
        return [1.0]
    return [1.0 - (i / (n_blocks - 1)) * (1.0 - p_last) for i in range(n_blocks)]


def block_position(survival: float, p_last: float) -> float:
    """Where a block lies by depth, ``(i-1)/(n-1)`` in [0, 1], recovered from its eq. 2 survival."""
    return (1.0 - survival) / (1.0 - p_last)


@dataclass(frozen=True)
class KeptRows:
    """The rows of a batch whose sub-network keeps a block, and the factor its branch is scaled by."""
    index: torch.Tensor
    factor: float

    def dense(self, n_rows: int, device: torch.device) -> torch.Tensor:
        """The factor of each of ``n_rows`` rows: ``factor`` where kept, 0 where dropped."""
        rows = torch.zeros(n_rows, device=device)
        rows[self.index] = self.factor
        return rows


def kept_groups(n_rows: int, survival: float, groups: int, device: torch.device,
                factor: float | None = None) -> KeptRows | float:
    """Batch mode with ``groups`` sub-networks: 0.0 or the kept ``factor`` (default ``1/survival``)
    when all groups agree, else the rows of the groups that keep the block."""
    factor = 1.0 / survival if factor is None else factor
    # Coins are drawn on the CPU: a whole-batch decision never waits on the device.
    kept = torch.rand(groups) < survival
    if bool(kept.all()):
        return factor
    if not bool(kept.any()):
        return 0.0
    size = n_rows // groups
    rows = (kept.nonzero().view(-1, 1) * size + torch.arange(size)).view(-1)
    return KeptRows(rows.to(device, non_blocking=True), factor)


def keep_scale(n_rows: int, survival: float, mode: DropMode, groups: int, device: torch.device,
               factor: float | None = None) -> torch.Tensor | float:
    """Per-row factor for a residual branch: 0 where dropped, the kept ``factor`` (default
    ``1/survival``) where kept.

    ``groups`` splits the rows into equal consecutive groups that each draw their own sub-network in
    batch mode; K teacher samples run as one batched forward with ``groups = K``. Returns the plain
    float factor when every row survives, so a kept batch costs no mask multiply.
    """
    factor = 1.0 / survival if factor is None else factor
    if mode == "batch":
        decision = kept_groups(n_rows, survival, groups, device, factor)
        if isinstance(decision, float):
            return decision
        return decision.dense(n_rows, device).view(-1, 1, 1, 1)
    if mode == "sample":
        return (row_coins(n_rows, survival, device) * factor).view(-1, 1, 1, 1)
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
        # What a surviving branch is multiplied by: 1/survival while training; while sampling for
        # teaching, the scale the block was trained with (see use_trained_scale).
        self.kept_factor = 1.0 / survival
        self.mode: DropMode = mode
        self.sampling = False
        self.groups = 1
        self.forced: bool | None = None  # a fixed keep (True) or drop (False) decision, see fixed_subnetwork
        self.execution: DropExecution = "skip"
        self.plan: MaskPlan | None = None  # the network's masks drawn together (use_drop_execution)
        self.plan_row = 0  # this block's row of the plan's masks
        # Leading rows of the batch that keep the block as the deterministic network does (the plain
        # sum), before the sampled groups: see deterministic_and_sampled.
        self.plain_rows = 0

    @property
    def active(self) -> bool:
        return self.training or self.sampling

    def scale(self, n_rows: int, device: torch.device) -> torch.Tensor | KeptRows | float:
        if self.forced is not None:
            return self.kept_factor if self.forced else 0.0
        if self.plain_rows:
            return self._after_plain_rows(self._sampled_scale(n_rows - self.plain_rows, device), n_rows, device)
        return self._sampled_scale(n_rows, device)

    def _sampled_scale(self, n_rows: int, device: torch.device) -> torch.Tensor | KeptRows | float:
        if self.mode == "batch":
            return kept_groups(n_rows, self.survival, self.groups, device, self.kept_factor)
        return keep_scale(n_rows, self.survival, self.mode, self.groups, device, self.kept_factor)

    def mask(self, n_rows: int, device: torch.device) -> torch.Tensor | float:
        """Per-row factors drawn on the device (0 where dropped, ``kept_factor`` where kept), shaped
        to broadcast over a feature map: the "mask" execution, free of host-side decisions."""
        if self.forced is not None:
            return self.kept_factor if self.forced else 0.0
        if self.plain_rows:
            return self._after_plain_rows(self._sampled_mask(n_rows - self.plain_rows, device), n_rows, device)
        return self._sampled_mask(n_rows, device)

    def _after_plain_rows(self, sampled: torch.Tensor | KeptRows | float, n_rows: int,
                          device: torch.device) -> torch.Tensor:
        """Per-row factors of ``n_rows`` rows: 1 (the plain sum) for the leading plain rows, then the
        sampled rows' own."""
        if isinstance(sampled, KeptRows):
            sampled = sampled.dense(n_rows - self.plain_rows, device)
        elif isinstance(sampled, float):
            sampled = torch.full((n_rows - self.plain_rows,), sampled, device=device)
        return torch.cat([torch.ones(self.plain_rows, device=device), sampled.reshape(-1)]).view(-1, 1, 1, 1)

    def _sampled_mask(self, n_rows: int, device: torch.device) -> torch.Tensor | float:
        # Compiled code draws block by block: the compiler fuses those draws itself, and the plan's
        # bookkeeping would only add guards.
        if self.plan is not None and not torch.compiler.is_compiling():
            return self.plan.factors(self, n_rows, device)
        if self.mode == "sample":
            rows = row_coins(n_rows, self.survival, device)
        else:
            coins = (torch.rand(self.groups, device=device) < self.survival).float()
            # An expand, not repeat_interleave: no output size to compute, nothing to wait for.
            rows = coins.view(-1, 1).expand(-1, n_rows // self.groups).reshape(-1)
        return (rows * self.kept_factor).view(-1, 1, 1, 1)

    def extra_repr(self) -> str:
        return (f"survival={self.survival:.3f}, kept_factor={self.kept_factor:.3f}, mode={self.mode}, "
                f"execution={self.execution}")


class MaskPlan:
    """A network's masks for one forward pass, drawn with one generator call: every stochastic block's
    factors as a row of one (blocks, rows) tensor, made by a handful of kernels instead of several per
    block (a ResNet-110 has 54 such blocks; in a captured step each kernel costs GPU time of its own).

    The first block to ask draws for all; a block asking again (the next forward pass), or asking
    for another batch size, group count, mode or slice of the batch, starts a new draw. Batch mode
    and per-row coins alike draw what the blocks draw one at a time, in the same order (the blocks'
    order in the network): on a CPU the same numbers, since consecutive draws of a generator equal
    one draw of their total (compiled code, which draws block by block, trains the same steps)."""

    def __init__(self, drops: list[DropPath]) -> None:
        self.drops = drops
        self.rows: torch.Tensor | None = None
        self.key: tuple | None = None
        self.taken: set[int] = set()
        self._constants: dict = {}

    def factors(self, drop: DropPath, n_rows: int, device: torch.device) -> torch.Tensor:
        i = drop.plan_row
        key = (n_rows, device, drop.mode, drop.groups, _BATCH_SLICE.get())
        if self.rows is None or key != self.key or i in self.taken:
            self.rows, self.key, self.taken = self._draw(drop.mode, drop.groups, n_rows, device), key, set()
        self.taken.add(i)
        return self.rows[i].view(-1, 1, 1, 1)

    def _survival_and_factor(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Each block's survival and kept factor as columns on ``device``, made once (not while a
        graph is recorded, where a copy from the host is not allowed) and again only if they change."""
        values = tuple((d.survival, d.kept_factor) for d in self.drops)
        cached = self._constants.get(device)
        if cached is None or cached[0] != values:
            table = torch.tensor(values, dtype=torch.float32).to(device)
            cached = self._constants[device] = (values, table[:, :1], table[:, 1:])
        return cached[1], cached[2]

    def _draw(self, mode: DropMode, groups: int, n_rows: int, device: torch.device) -> torch.Tensor:
        survival, factor = self._survival_and_factor(device)
        blocks = len(self.drops)
        if mode == "batch":
            kept = (torch.rand(blocks, groups, device=device) < survival).float() * factor
            return kept.view(blocks, groups, 1).expand(-1, -1, n_rows // groups).reshape(blocks, n_rows)
        part = _BATCH_SLICE.get()
        if part is None:
            return (torch.rand(blocks, n_rows, device=device) < survival).float() * factor
        start, stop, total = part  # the whole batch's coins, this slice's columns (see row_coins)
        copies = n_rows // (stop - start)
        coins = (torch.rand(blocks, copies, total, device=device) < survival.view(-1, 1, 1)).float()
        return coins[:, :, start:stop].reshape(blocks, n_rows) * factor


class BranchDropPath(DropPath):
    """The same drop for a network that computes a residual branch before it is dropped (timm's
    blocks: ``x = shortcut + drop_path(branch)``). It takes the computed branch and returns it scaled
    as ``stochastic_sum`` would: zero where dropped, times the kept factor where kept. Same coins and
    the same sub-networks; only the saving of not computing a dropped branch is lost."""

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return branch
        n_rows, device = branch.shape[0], branch.device
        factor = self.mask(n_rows, device) if self.execution == "mask" else self.scale(n_rows, device)
        if isinstance(factor, float):
            return branch * factor
        if isinstance(factor, KeptRows):
            factor = factor.dense(n_rows, device)
        # Token sequences (ViT: rows, tokens, channels) as well as feature maps (rows, C, H, W).
        return branch * factor.reshape(n_rows, *([1] * (branch.dim() - 1))).to(branch.dtype)


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
    if drop.execution == "mask":
        out = residual(x)
        mask = drop.mask(x.shape[0], x.device)
        return out * (mask if isinstance(mask, float) else mask.to(out.dtype)) + shortcut
    scale = drop.scale(x.shape[0], x.device)
    if isinstance(scale, float) and scale == 0.0:
        return shortcut
    if isinstance(scale, KeptRows):
        kept = x.index_select(0, scale.index)
        if kept.dim() == 4:
            kept = kept.contiguous(memory_format=torch.channels_last)
        return shortcut.index_add(0, scale.index, residual(kept), alpha=scale.factor)
    return residual(x) * scale + shortcut


# Set around every call of a training step that is captured (its warm-up and eager calls too).
_IN_CAPTURED_STEP: ContextVar[bool] = ContextVar("stochkd_in_captured_step", default=False)


@contextmanager
def in_captured_step() -> Iterator[None]:
    token = _IN_CAPTURED_STEP.set(True)
    try:
        yield
    finally:
        _IN_CAPTURED_STEP.reset(token)


def capturing(tensor: torch.Tensor) -> bool:
    """Whether autocast's cache of cast weights must be off for work on ``tensor``'s device: while it
    is recorded into a CUDA graph (the cache would keep graph memory alive past the capture), and in
    every other call of a step that is captured, so that the step's code runs with one setting
    (torch.compile guards on it, and would compile the step again for each)."""
    return bool(tensor.is_cuda and (torch.cuda.is_current_stream_capturing() or _IN_CAPTURED_STEP.get()))


def drop_paths(model: nn.Module) -> list[DropPath]:
    return [m for m in model.modules() if isinstance(m, DropPath)]


def use_drop_execution(model: nn.Module, execution: DropExecution) -> nn.Module:
    """Carry out every stochastic block's drop by ``execution`` (see DropExecution)."""
    if execution not in DROP_EXECUTIONS:
        raise ValueError(f"drop execution must be one of {DROP_EXECUTIONS}, got {execution!r}")
    drops = drop_paths(model)
    plan = MaskPlan(drops) if execution == "mask" and drops else None
    for row, drop in enumerate(drops):
        drop.execution, drop.plan, drop.plan_row = execution, plan, row
    return model


def use_trained_scale(model: nn.Module, teaching_p_last: float, trained_p_last: float) -> None:
    """Scale each surviving branch of ``model`` (built with the teaching survival ``teaching_p_last``)
    by ``1/q_i``, the factor its block was trained with at ``trained_p_last`` (eq. 2 at the same depth;
    ``q_i = 1`` for a plain-trained network). Only the coins keep using the teaching survival."""
    if teaching_p_last == trained_p_last:
        return  # the factors already are 1/q_i, to the bit
    for drop in drop_paths(model):
        trained = 1.0 - block_position(drop.survival, teaching_p_last) * (1.0 - trained_p_last)
        drop.kept_factor = 1.0 / trained


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


@contextmanager
def without_block(model: nn.Module, index: int) -> Iterator[nn.Module]:
    """The deterministic network (evaluation mode, every other block in its plain sum) with exactly
    the ``index``-th stochastic block removed: the network of the paper's Fig. 3."""
    drop = drop_paths(model)[index]
    was_training = model.training
    model.eval()
    try:
        drop.forced, drop.sampling = False, True
        with torch.inference_mode():
            yield model
    finally:
        drop.forced, drop.sampling = None, False
        model.train(was_training)


def sample_logits(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """K sub-network outputs for a batch, shape (K, B, classes)."""
    return sample_with_groups(model, x, k, groups=False)[0]


def sample_with_groups(model: nn.Module, x: torch.Tensor, k: int, groups: bool = True,
                       batched: bool | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """K sub-networks: logits (K, B, classes) and, with ``groups``, the feature maps at the end of
    each resolution group, each (K, B, C, H, W).

    ``batched`` (default: on a GPU) runs the K sub-networks as one batched forward pass (in bfloat16
    on a GPU), each block computed only for the sub-networks that keep it. Otherwise they run one pass
    each: on a CPU a K-times larger batch falls out of the caches and runs slower than K passes
    (bench/train_throughput.py measures both).
    """
    batched = x.device.type != "cpu" if batched is None else batched
    if k > 1 and not batched:
        parts = [sample_with_groups(model, x, 1, groups, batched) for _ in range(k)]
        return (torch.cat([logits for logits, _ in parts]),
                [torch.cat(maps) for maps in zip(*(features for _, features in parts))])
    batch = x.repeat(k, *([1] * (x.dim() - 1))) if k > 1 else x
    return _outputs(lambda m: sampling(m, groups=k), model, batch, k, groups)


@contextmanager
def plain_rows_first(model: nn.Module, rows: int) -> Iterator[nn.Module]:
    """The first ``rows`` rows of every batch keep each stochastic block as the deterministic network
    does (the plain sum); the rows after them are sampled as usual."""
    drops = drop_paths(model)
    try:
        for drop in drops:
            drop.plain_rows = rows
        yield model
    finally:
        for drop in drops:
            drop.plain_rows = 0


@contextmanager
def deterministic(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` as the deterministic teacher: BatchNorm in eval mode, every block in its plain sum
    (no block dropping, whatever it was built with), no gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


def deterministic_and_sampled(model: nn.Module, x: torch.Tensor, k: int, groups: bool = True,
                              batched: bool | None = None) -> tuple[tuple, tuple]:
    """One teacher's outputs for a batch as a deterministic teacher (logits (1, B, classes), and with
    ``groups`` its group feature maps) and as K sampled sub-networks (as ``sample_with_groups``).

    ``batched`` (default: on a GPU) computes both in one forward pass of (1 + K) B rows, the first B
    keeping every block at the plain sum: one teacher pass serves a student taught by the
    deterministic network and one taught by its sub-networks. Otherwise the plain pass, then the
    sampled ones, each exactly as a teacher alone computes it (on a CPU, to the bit)."""
    batched = x.device.type != "cpu" if batched is None else batched
    if not batched:
        plain = _outputs(deterministic, model, x, 1, groups)
        return plain, sample_with_groups(model, x, k, groups, batched=False)
    batch = torch.cat([x, x.repeat(k, *([1] * (x.dim() - 1)))])
    with plain_rows_first(model, x.shape[0]):
        logits, features = _outputs(lambda m: sampling(m, groups=k), model, batch, 1 + k, groups)
    return (logits[:1], [f[:1] for f in features]), (logits[1:], [f[1:] for f in features])


def _outputs(mode, model: nn.Module, batch: torch.Tensor, k: int, groups: bool) -> tuple:
    """``model``'s logits and (with ``groups``) group feature maps for ``batch`` (k stacked copies of
    a batch) under ``mode`` (sampling, deterministic), each shaped (k, B, ...)."""
    if batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    rows = batch.shape[0] // k
    with (mode(model),
          torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.is_cuda, cache_enabled=not capturing(batch))):
        logits, features = model.forward_with_groups(batch) if groups else (model(batch), [])
    # Clones outside inference mode are ordinary tensors that a loss may save for backward.
    return (logits.float().view(k, rows, -1).clone(),
            [f.float().view(k, rows, *f.shape[1:]).clone() for f in features])
