"""Stage: Deep Mutual Learning (Zhang et al. 2018), conventional and proposed.

Peers train together from scratch on the same batches; each minimizes its cross-entropy plus the
mean KL divergence from the other peers' (detached) predictions to its own. They step together
(``mutual.update: simultaneous``) or one after another, each from the others' latest predictions
(``sequential``, the paper's Algorithm 1). In the proposed variant
every peer has identity skips and stochastic blocks (eq. 2), so each forward pass of a peer is a
sampled sub-network and every peer learns from many sub-networks of the others.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from stages.common import distributed
from stages.common.errors import PipelineError
from stages.nets.architectures import resolve_skips
from stages.nets.checkpoint import ModelSpec, save_model
from stages.context import StageContext, peer_folder
from stages.training.data import image_counts, load_dataset
from stages.nets.losses import kd_term
from stages.nets.stochastic_depth import capturing
from stages.training.tracking import write_tensorboard
from stages.training.evaluation import accuracy_on_test, validation_metrics
from stages.training.loop import DeviceData, UpdateStep, select_device, train


class Peers(nn.Module):
    """Networks run side by side: logits stacked as (peers, batch, classes)."""

    def __init__(self, peers: list[nn.Module]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([peer(x) for peer in self.peers])


def peer_loss(own: torch.Tensor, others: torch.Tensor, labels: torch.Tensor, temperature: float,
              weight: float) -> torch.Tensor:
    """One peer's DML loss: ``CE + weight * mean_j KL(p_j || p_own)`` over the other peers' logits."""
    return F.cross_entropy(own, labels) + weight * kd_term(own, others.detach(), temperature)


def mutual_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float, weight: float) -> torch.Tensor:
    """Sum over peers of ``CE + weight * mean_j KL(p_j || p_i)``, the other peers' outputs detached.

    Each peer's term depends on its own parameters only, so one backward pass of the sum gives every
    peer exactly the gradient of its own DML loss.
    """
    total = logits.new_zeros(())
    for i in range(len(logits)):
        total = total + peer_loss(logits[i], torch.cat([logits[:i], logits[i + 1:]]), labels, temperature, weight)
    return total


def sequential_update(peers: Peers, temperature: float, weight: float) -> UpdateStep:
    """DML's Algorithm 1: the peers take their optimizer steps one after another on each batch, each
    learning from the others' latest predictions (a peer already updated on this batch is asked again).

    The optimizer steps only parameters that have gradients, so each step moves one peer alone."""

    def update(net, optimizer, images, labels, bf16):
        cache = not capturing(images)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
            logits = [peer(images) for peer in peers.peers]
        first = torch.stack([l.detach() for l in logits])
        total = images.new_zeros(())
        for i, peer in enumerate(peers.peers):
            with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
                loss = peer_loss(logits[i], torch.stack(logits[:i] + logits[i + 1:]), labels, temperature, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total = total + loss.detach()
            if i + 1 < len(logits):
                with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
                    logits[i] = peer(images)
        return first, total

    return update


def train_peers(ctx: StageContext) -> dict:
    cfg, data_cfg, seed = ctx.params["mutual"], ctx.params["data"], ctx.params["seed"]
    if cfg.update == "sequential" and distributed.world_size() > 1:
        raise PipelineError("mutual.update = 'sequential' steps one peer at a time, which DistributedDataParallel "
                            "does not support: run it on one process, or use mutual.update: simultaneous")
    p_last = cfg.p_last
    data = load_dataset(data_cfg)
    device = select_device(ctx.device)
    torch.manual_seed(seed)
    specs = [ModelSpec(arch, data.num_classes, data.in_channels, data.image_size, p_last, cfg.drop_mode,
                       data.mean, data.std, resolve_skips(arch, p_last, None)) for arch in cfg.peers]
    peers = Peers([spec.build() for spec in specs])
    result = train(peers, DeviceData(data, device), cfg.training, augmentation=data_cfg.augmentation, seed=seed,
                   loss_fn=lambda logits, images, labels: mutual_loss(logits, labels, cfg.temperature,
                                                                       cfg.mimicry_weight),
                   progress=ctx.progress, label=f"{ctx.variant} DML ({' + '.join(cfg.peers)})",
                   checkpoint=ctx.training_checkpoint, checkpoint_interval_s=ctx.checkpoint_interval_s,
                   update=(sequential_update(peers, cfg.temperature, cfg.mimicry_weight)
                           if cfg.update == "sequential" else None))
    members = {}
    for index, (peer, spec) in enumerate(zip(peers.peers, specs)):
        folder = ctx.output / peer_folder(index)
        folder.mkdir()
        save_model(peer, spec, folder)
        members[peer_folder(index)] = {
            "test_accuracy": accuracy_on_test(peer, data, device),
            **validation_metrics(peer, data, device),
            "arch": spec.arch,
            "parameters": sum(p.numel() for p in peer.parameters()),
        }
    (ctx.output / "history.json").write_text(json.dumps(result.history, indent=1))
    write_tensorboard(result.history, ctx.output, ctx.variant or "peers")
    return {
        "members": members,
        "test_accuracy": sum(m["test_accuracy"] for m in members.values()) / len(members),
        "train_wall_s": result.wall_s,
        "train_images_per_second": result.images_per_second,
        "train_first_step_s": result.first_step_s,
        "train_resumed_at": result.resumed_at,
        "device": str(device),
        "as_run": result.as_run,
        "images": image_counts(data),
    }
