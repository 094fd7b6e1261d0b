"""torch.compile for training: the whole network as one graph, or each block on its own.

Compiled block by block (regional compilation, ``training.compile_scope: blocks``), a network traces
one graph per *kind* of block rather than one graph as deep as the network: blocks of one class and
shape share Dynamo's cache entries (their parameters are inputs of the graph, not constants), and a
survival probability that differs from block to block becomes an input too after the first block
that changes it. A CIFAR ResNet of any depth then compiles the same handful of graphs (the
always-kept first block, a stochastic block, the two downsampling blocks, a block of each width).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from stages.common.config import TrainingConfig

# Cache entries one block's forward may hold: its kinds of block, each perhaps twice (the batch size
# of an epoch's last, smaller batch compiles again, with the batch size symbolic).
BLOCK_ENTRIES = 32


def network_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of every network in ``model`` (one, or several peers), in order."""
    from stages.nets.models.base import StagedNetwork

    return [block for network in model.modules() if isinstance(network, StagedNetwork) for block in network.blocks]


@contextmanager
def compiled_for_training(model: nn.Module, net: nn.Module, recipe: TrainingConfig) -> Iterator[nn.Module]:
    """What training runs: ``net`` (``model``, or its data-parallel wrapper), compiled as ``recipe``
    says. With ``compile_scope: blocks`` each of ``model``'s blocks runs compiled until the context
    ends, then eagerly again, so that evaluation and export see the plain model."""
    if not recipe.compile:
        yield net
        return
    if recipe.compile_scope != "blocks":
        yield torch.compile(net, mode=recipe.compile_mode)
        return
    blocks = network_blocks(model)
    for block in blocks:
        # An attribute of the instance, in front of its class's forward: deleting it restores that.
        block.forward = torch.compile(block.forward, mode=recipe.compile_mode)
    try:
        with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, BLOCK_ENTRIES)):
            yield net
    finally:
        for block in blocks:
            del block.forward


def compiled_teacher(teacher: nn.Module, recipe: TrainingConfig) -> nn.Module:
    """A frozen teacher for a student whose ``recipe`` compiles: each of its blocks compiled on its own,
    for as long as it teaches (it only ever runs frozen; blocks of one kind share their graphs, so a
    deep teacher compiles in the time of a shallow one), dropping its blocks by masks, which leave no
    host-side decision to break a graph. A network without such blocks (timm's) stays as it is."""
    from stages.nets.stochastic_depth import use_drop_execution

    blocks = network_blocks(teacher)
    if not recipe.compile or not blocks:
        return teacher
    use_drop_execution(teacher, "mask")
    for block in blocks:
        block.forward = torch.compile(block.forward, mode=recipe.compile_mode)
    # Its passes (deterministic, K sampled, both at once) each guard on the blocks' settings; the limit
    # is raised for the process, as the student's blocks raise it while they train.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 3 * BLOCK_ENTRIES)
    return teacher


def uncompiled():
    """A context in which compiled code runs eagerly: evaluation between epochs (eval mode, other
    batch sizes) would otherwise compile the blocks again."""
    return torch.compiler.set_stance("force_eager")
