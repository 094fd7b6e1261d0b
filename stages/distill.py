"""Stage: train a student alone, or by knowledge transfer from the teacher (KD or attention transfer).

One function serves the method and both baselines, so they share the recipe by construction:
- no ``distill`` parameters: the student trained alone on the labels;
- ``distill.p_last == 1`` and one sample: transfer from the deterministic teacher;
- otherwise: transfer from the stochastic teacher, ``teacher_samples`` sub-networks per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F

from stages.common.errors import ArtifactError
from stages.nets.architectures import resolve_skips
from stages.nets.checkpoint import ModelSpec, read_spec
from stages.context import StageContext
from stages.training.compiling import compiled_teacher
from stages.training.data import load_dataset, normalized_for
from stages.nets.frozen import cast_weights
from stages.nets.losses import attention_term, kd_loss
from stages.nets.stochastic_depth import sample_with_groups
from stages.nets.stochastic_depth import use_drop_execution
from stages.nets.teaching import teaching_teacher
from stages.training.loop import (LossFunction, WithGroups, cross_entropy_loss, drop_execution_for, fit_and_save,
                                  select_device)


# What a student is taught from, for a batch of images: the teacher's logits (K, B, classes) and its
# group feature maps (each K, B, C, H, W).
Teach = Callable[[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]


def teaching_by(teacher: torch.nn.Module | Teach, distill, groups: bool) -> Teach:
    """``teacher`` itself where it is already a Teach (a SharedTeacher's), else its
    ``teacher_samples`` sub-networks, drawn afresh for every batch."""
    if not isinstance(teacher, torch.nn.Module):
        return teacher
    return lambda images: sample_with_groups(teacher, images, distill.teacher_samples, groups=groups)


def distillation_loss(teacher: torch.nn.Module | Teach, distill) -> LossFunction:
    """CE plus KD from ``teacher_samples`` sub-networks, drawn afresh for every batch."""
    teach = teaching_by(teacher, distill, groups=False)

    def loss(logits, images, labels):
        teacher_logits, _ = teach(images)
        return kd_loss(logits, teacher_logits, labels, distill.temperature, distill.kd_weight, distill.aggregate)

    return loss


def attention_transfer_loss(teacher: torch.nn.Module | Teach, distill) -> LossFunction:
    """CE plus ``at_weight / 2`` times the attention-map distance at every group boundary
    (Zagoruyko & Komodakis), to ``teacher_samples`` sub-networks drawn afresh for every batch."""
    teach = teaching_by(teacher, distill, groups=True)

    def loss(output, images, labels):
        logits, student_groups = output
        _, teacher_groups = teach(images)
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
    """What students must share to train in lockstep (``shared_recipe``)."""
    from stages.training.lockstep import shared_recipe

    return shared_recipe(params, "student")


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
    teaching, order = _shared_teaching(contexts, data, device)
    students, members = [], []
    for i, ctx in enumerate(contexts):
        own = ctx.params["student"]  # the network may differ; the recipe does not (lockstep_key)
        student = _student_of(ctx, data, device, teaching.get(i))
        model, started_from = built_for_training(student.spec, seed, own.pretrained)
        trained = WithGroups(model) if student.attention else model
        members.append(Member(f"{ctx.variant} {own.arch}", trained, student.loss_fn, rng_states(device),
                              ctx.training_checkpoint, each_epoch_evaluation(model, data, device, cfg.training)))
        students.append((student, model, started_from))
    stepped = train_row([contexts[i] for i in order], [members[i] for i in order], data, cfg.training, device)
    if stepped is None:
        return [train_student(ctx) for ctx in contexts]
    results = [result for _, result in sorted(zip(order, stepped), key=lambda pair: pair[0])]
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


def _shared_teaching(contexts: list[StageContext], data, device: torch.device) -> tuple[dict[int, Teach], list[int]]:
    """Which students of a lockstep row one teacher pass serves: per teacher, the first student taught
    by its sampled sub-networks and every student taught by its deterministic network (both readings'
    KD and stochastic KD, in the paper's row). Returns their Teach by position, and the order in which
    the row steps: each such sampled student before the others."""
    from stages.nets.teaching import SharedTeacher, teaching_survival

    by_teacher: dict = {}
    for i, ctx in enumerate(contexts):
        distill = ctx.params.get("distill")
        if distill is None:
            continue
        folder = ctx.inputs["teacher"].path
        survival = teaching_survival(read_spec(folder), distill.p_last)
        plain, sampled = by_teacher.setdefault(folder, ([], []))
        if survival == 1.0:
            plain.append(i)
        elif survival < 1.0:
            sampled.append(i)
    teaching, leading = {}, []
    for plain, sampled in by_teacher.values():
        if not plain or not sampled:
            continue
        first = sampled[0]
        distill = contexts[first].params["distill"]
        groups = any(contexts[i].params["distill"].transfer == "at" for i in [first, *plain])
        shared = SharedTeacher(_teacher_of(contexts[first], data, device), distill.teacher_samples, groups)
        teaching[first] = shared.sampled
        teaching.update((i, partial(shared.deterministic, k=contexts[i].params["distill"].teacher_samples))
                        for i in plain)
        leading.append(first)
    return teaching, leading + [i for i in range(len(contexts)) if i not in leading]


def _teacher_of(ctx: StageContext, data, device: torch.device) -> torch.nn.Module:
    """The task's teacher as it teaches (its distill settings), checked against the student's data."""
    distill = ctx.params["distill"]
    teacher_spec = read_spec(ctx.inputs["teacher"].path)
    if teacher_spec.num_classes != data.num_classes:
        raise ArtifactError(f"{ctx.inputs['teacher'].path}: the teacher predicts {teacher_spec.num_classes} "
                            f"classes, but the student's data ({ctx.params['data'].dataset}) has "
                            f"{data.num_classes}; a teacher teaches only the classes it was trained on: train "
                            f"it on the same data (stochkd-pipeline teacher PROFILE --force)")
    teacher = teaching_teacher(ctx.inputs["teacher"].path, distill.p_last, distill.drop_mode,
                               distill.kept_scale, device, inputs=(data.mean, data.std))
    recipe = ctx.params["student"].training
    execution = drop_execution_for(recipe, device)
    if execution:
        use_drop_execution(teacher, execution)
    if device.type == "cuda":  # it teaches under autocast: its weights cast to bfloat16 once, not every step
        cast_weights(teacher, torch.bfloat16)
    return compiled_teacher(teacher, recipe)


def _student_of(ctx: StageContext, data, device: torch.device, teach: Teach | None = None) -> Student:
    """The task's student, taught by ``teach`` where given (a shared teacher's), else by its own teacher."""
    params = ctx.params
    cfg, distill = params["student"], params.get("distill")
    loss_fn, teacher_metrics = cross_entropy_loss, {}
    attention = distill is not None and distill.transfer == "at"
    if distill is not None:
        teacher = teach if teach is not None else _teacher_of(ctx, data, device)
        loss_fn = attention_transfer_loss(teacher, distill) if attention else distillation_loss(teacher, distill)
        teacher_metrics = {"teacher_test_accuracy": ctx.inputs["teacher"].metrics.get("test_accuracy")}
    spec = ModelSpec(cfg.arch, data.num_classes, data.in_channels, data.image_size, 1.0, "batch",
                     data.mean, data.std, resolve_skips(cfg.arch, 1.0, cfg.skips))
    return Student(spec, loss_fn, attention, teacher_metrics)
