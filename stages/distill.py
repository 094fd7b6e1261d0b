"""Stage: train a student alone, or by knowledge transfer from the teacher (KD or attention transfer).

One function serves the method and both baselines, so they share the recipe by construction:
- no ``distill`` parameters: the student trained alone on the labels;
- ``distill.p_last == 1`` and one sample: transfer from the deterministic teacher;
- otherwise: transfer from the stochastic teacher, ``teacher_samples`` sub-networks per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stages.common.errors import ArtifactError
from stages.nets.architectures import resolve_skips
from stages.nets.checkpoint import ModelSpec, read_spec
from stages.context import StageContext
from stages.training.data import load_dataset, normalized_for
from stages.nets.losses import attention_term, kd_loss
from stages.nets.stochastic_depth import sample_logits, sample_with_groups
from stages.nets.stochastic_depth import use_drop_execution
from stages.nets.teaching import teaching_teacher
from stages.training.loop import (LossFunction, WithGroups, cross_entropy_loss, drop_execution_for, fit_and_save,
                                  select_device)


def distillation_loss(teacher: torch.nn.Module, distill) -> LossFunction:
    """CE plus KD from ``teacher_samples`` sub-networks, drawn afresh for every batch."""

    def loss(logits, images, labels):
        teacher_logits = sample_logits(teacher, images, distill.teacher_samples)
        return kd_loss(logits, teacher_logits, labels, distill.temperature, distill.kd_weight, distill.aggregate)

    return loss


def attention_transfer_loss(teacher: torch.nn.Module, distill) -> LossFunction:
    """CE plus ``at_weight / 2`` times the attention-map distance at every group boundary
    (Zagoruyko & Komodakis), to ``teacher_samples`` sub-networks drawn afresh for every batch."""

    def loss(output, images, labels):
        logits, student_groups = output
        _, teacher_groups = sample_with_groups(teacher, images, distill.teacher_samples)
        return (F.cross_entropy(logits, labels)
                + distill.at_weight / 2 * attention_term(student_groups, teacher_groups, distill.aggregate))

    return loss


def train_student(ctx: StageContext) -> dict:
    params = ctx.params
    cfg, data_cfg = params["student"], params["data"]
    data = normalized_for(load_dataset(data_cfg), cfg.mean, cfg.std, "student")
    device = select_device(ctx.device)
    student = _student_of(ctx, data, device)
    _, metrics = fit_and_save(ctx, student.spec, data, cfg.training, augmentation=data_cfg.augmentation,
                              seed=params["seed"], device=device, loss_fn=student.loss_fn,
                              with_groups=student.attention, label=f"{ctx.variant} {cfg.arch}",
                              pretrained=cfg.pretrained)
    return {**metrics, **student.teacher_metrics}


def lockstep_key(params: dict) -> dict:
    """What students must share to train in lockstep: the batches (data, seed, batch size) and how
    they are made and stepped on (normalization, the whole recipe)."""
    student = params["student"]
    return {"data": params["data"], "seed": params["seed"], "training": student.training,
            "mean": student.mean, "std": student.std}


def train_students_together(contexts: list[StageContext]) -> list[dict]:
    """``train_student`` for students that share their recipe, data and seed (a row: alone, KD and
    stochastic KD from each teacher reading), trained in lockstep in one process: one pass over the
    batches feeds them all. Each task gets the artifact and checkpoint it gets alone; on a CPU, the
    same weights. Checkpoints that stand at different points of training resume one task at a time."""
    from stages.training.lockstep import Member, check_row, train_row
    from stages.training.loop import built_for_training, each_epoch_evaluation, saved_with_metrics
    from stages.training.resume import rng_states

    first = contexts[0]
    cfg, seed, device = first.params["student"], first.params["seed"], select_device(first.device)
    check_row(cfg.training, device, "student")
    data = normalized_for(load_dataset(first.params["data"]), cfg.mean, cfg.std, "student")
    students, members = [], []
    for ctx in contexts:
        own = ctx.params["student"]  # the network may differ; the recipe does not (lockstep_key)
        student = _student_of(ctx, data, device)
        model, started_from = built_for_training(student.spec, seed, own.pretrained)
        trained = WithGroups(model) if student.attention else model
        members.append(Member(f"{ctx.variant} {own.arch}", trained, student.loss_fn, rng_states(device),
                              ctx.training_checkpoint, each_epoch_evaluation(model, data, device, cfg.training)))
        students.append((student, model, started_from))
    results = train_row(contexts, members, data, cfg.training, device)
    if results is None:
        return [train_student(ctx) for ctx in contexts]
    return [{**saved_with_metrics(ctx, model, student.spec, data, device, result, started_from),
             **student.teacher_metrics}
            for ctx, (student, model, started_from), result in zip(contexts, students, results)]


@dataclass
class Student:
    """What a student task trains: its network, its loss (its teacher's, if any) and that teacher's
    figures for its metrics."""
    spec: ModelSpec
    loss_fn: LossFunction
    attention: bool
    teacher_metrics: dict


def _student_of(ctx: StageContext, data, device: torch.device) -> Student:
    params = ctx.params
    cfg, data_cfg = params["student"], params["data"]
    distill = params.get("distill")
    loss_fn, teacher_metrics = cross_entropy_loss, {}
    attention = distill is not None and distill.transfer == "at"
    if distill is not None:
        teacher_spec = read_spec(ctx.inputs["teacher"].path)
        if teacher_spec.num_classes != data.num_classes:
            raise ArtifactError(f"{ctx.inputs['teacher'].path}: the teacher predicts {teacher_spec.num_classes} "
                                f"classes, but the student's data ({data_cfg.dataset}) has {data.num_classes}; "
                                f"a teacher teaches only the classes it was trained on: train it on the same "
                                f"data (stochkd-pipeline teacher PROFILE --force)")
        teacher = teaching_teacher(ctx.inputs["teacher"].path, distill.p_last, distill.drop_mode,
                                   distill.kept_scale, device, inputs=(data.mean, data.std))
        execution = drop_execution_for(cfg.training, device)
        if execution:
            use_drop_execution(teacher, execution)
        loss_fn = attention_transfer_loss(teacher, distill) if attention else distillation_loss(teacher, distill)
        teacher_metrics = {"teacher_test_accuracy": ctx.inputs["teacher"].metrics.get("test_accuracy")}
    spec = ModelSpec(cfg.arch, data.num_classes, data.in_channels, data.image_size, 1.0, "batch",
                     data.mean, data.std, resolve_skips(cfg.arch, 1.0, cfg.skips))
    return Student(spec, loss_fn, attention, teacher_metrics)
