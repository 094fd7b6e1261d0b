"""Stage 1: train the stochastic-depth teacher, or import one trained elsewhere (teacher.checkpoint)."""

from __future__ import annotations

import numpy as np
import torch

from stages.nets.architectures import resolve_skips
from stages.nets.checkpoint import ModelSpec, save_model
from stages.context import StageContext
from stages.training.data import image_counts, load_dataset, normalized_for
from stages.nets.stochastic_depth import draw_subnetwork, fixed_subnetwork
from stages.training.evaluation import accuracy_on_test
from stages.training.loop import fit_and_save, select_device

SAMPLED_NETWORKS = 8  # sub-networks whose accuracies describe the teacher in sampling mode


def sampled_accuracies(model, data, device, count: int, seed: int) -> list[float]:
    """Test accuracy of ``count`` sub-networks, each drawn once for the whole test split."""
    generator = torch.Generator().manual_seed(seed)
    accuracies = []
    for _ in range(count):
        with fixed_subnetwork(model, draw_subnetwork(model, generator)):
            accuracies.append(accuracy_on_test(model, data, device))
    return accuracies


def import_teacher(ctx: StageContext, spec: ModelSpec, data, device) -> tuple[torch.nn.Module, dict]:
    """The teacher of ``teacher.checkpoint``, checked against ``spec`` and measured on the test split."""
    from pathlib import Path

    from stages.training.import_teacher import checkpoint_file, content_hash, load_into, read_state
    from stages.training.evaluation import validation_metrics

    source = Path(ctx.params["teacher"].checkpoint)
    file = checkpoint_file(source)
    state, notes = read_state(file)
    model = spec.build()
    load_into(model, state, file, spec.arch)
    save_model(model, spec, ctx.output)
    test_accuracy = accuracy_on_test(model, data, device)
    return model, {"test_accuracy": test_accuracy, **validation_metrics(model, data, device),
                   "imported": {"path": str(source.resolve()), "sha256": content_hash(source), "layout": notes},
                   "parameters": sum(p.numel() for p in model.parameters()), "arch": spec.arch,
                   "device": str(device), "images": image_counts(data)}


def train_teacher(ctx: StageContext) -> dict:
    cfg, data_cfg, seed = ctx.params["teacher"], ctx.params["data"], ctx.params["seed"]
    data = normalized_for(load_dataset(data_cfg), cfg.mean, cfg.std, "teacher")
    device = select_device(ctx.device)
    spec = _spec(cfg, data)
    if cfg.checkpoint is not None:
        model, metrics = import_teacher(ctx, spec, data, device)
    else:
        model, metrics = fit_and_save(ctx, spec, data, cfg.training, augmentation=data_cfg.augmentation,
                                      seed=seed, device=device, label=f"teacher {cfg.arch}",
                                      pretrained=cfg.pretrained)
    return {**metrics, **_sampled_metrics(model, cfg, data, device, seed, metrics["test_accuracy"])}


def lockstep_key(params: dict) -> dict | None:
    """What teachers must share to train in lockstep (``shared_recipe``), or None for one imported
    rather than trained."""
    from stages.training.lockstep import shared_recipe

    if params["teacher"].checkpoint is not None:
        return None
    return shared_recipe(params, "teacher")


def train_teachers_together(contexts: list[StageContext]) -> list[dict]:
    """``train_teacher`` for teachers that share their recipe, data and seed (both readings: with
    stochastic depth and plain), trained in lockstep in one process (see stages.distill's
    train_students_together)."""
    from stages.training.lockstep import Member, check_row, train_row
    from stages.training.loop import (built_for_training, cross_entropy_loss, each_epoch_evaluation,
                                      saved_with_metrics)
    from stages.training.resume import rng_states

    first = contexts[0]
    cfg, seed, device = first.params["teacher"], first.params["seed"], select_device(first.device)
    check_row(cfg.training, device, "teacher")
    data = normalized_for(load_dataset(first.params["data"]), cfg.mean, cfg.std, "teacher")
    teachers, members = [], []
    for ctx in contexts:
        own = ctx.params["teacher"]
        spec = _spec(own, data)
        model, started_from = built_for_training(spec, seed, own.pretrained)
        members.append(Member(f"{ctx.variant} {own.arch}", model, cross_entropy_loss, rng_states(device),
                              ctx.training_checkpoint, each_epoch_evaluation(model, data, device, cfg.training)))
        teachers.append((own, spec, model, started_from))
    results = train_row(contexts, members, data, cfg.training, device)
    if results is None:
        return [train_teacher(ctx) for ctx in contexts]
    outcomes = []
    for ctx, (own, spec, model, started_from), result in zip(contexts, teachers, results):
        metrics = saved_with_metrics(ctx, model, spec, data, device, result, started_from)
        outcomes.append({**metrics, **_sampled_metrics(model, own, data, device, seed, metrics["test_accuracy"])})
    return outcomes


def _spec(cfg, data) -> ModelSpec:
    return ModelSpec(cfg.arch, data.num_classes, data.in_channels, data.image_size, cfg.p_last,
                     cfg.drop_mode, data.mean, data.std, resolve_skips(cfg.arch, cfg.p_last, cfg.skips))


def _sampled_metrics(model, cfg, data, device, seed: int, test_accuracy: float) -> dict:
    """How the teacher's sampled sub-networks score on the test split (its own accuracy, where it
    never drops)."""
    sampled = sampled_accuracies(model, data, device, SAMPLED_NETWORKS, seed) if cfg.p_last < 1 else []
    return {"sampled_subnetwork_accuracy_mean": float(np.mean(sampled)) if sampled else test_accuracy,
            "sampled_subnetwork_accuracy_std": float(np.std(sampled)) if sampled else 0.0}
