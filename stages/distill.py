"""Stage 2: train a student alone, or by KD from the teacher.

One function serves the method and both baselines, so they share the recipe by construction:
- no ``distill`` parameters: the student trained alone on the labels;
- ``distill.p_last == 1`` and one sample: KD from the deterministic teacher;
- otherwise: KD from the stochastic teacher, ``teacher_samples`` sub-networks per batch.
"""

from __future__ import annotations

import json

import torch

from stages.checkpoint import ModelSpec, load_model, read_spec, save_model
from stages.context import StageContext
from stages.data import load_dataset
from stages.losses import kd_loss
from stages.stochastic_depth import sample_logits
from stages.training import DeviceData, accuracy, cross_entropy_loss, predict, select_device, train


def teaching_teacher(folder, distill, device) -> torch.nn.Module:
    """The trained teacher rebuilt with the survival probabilities it teaches with."""
    spec = read_spec(folder)
    p_last = spec.p_last if distill.p_last is None else distill.p_last
    teacher = load_model(folder, spec.with_survival(p_last, distill.drop_mode))
    return teacher.to(device=device, memory_format=torch.channels_last)


def train_student(ctx: StageContext) -> dict:
    params = ctx.params
    cfg, data_cfg, seed = params["student"], params["data"], params["seed"]
    distill = params.get("distill")
    data = load_dataset(data_cfg)
    device = select_device(ctx.device)
    loss_fn, teacher_metrics = cross_entropy_loss, {}
    if distill is not None:
        teacher = teaching_teacher(ctx.inputs["teacher"].path, distill, device)

        def loss_fn(logits, images, labels):
            teacher_logits = sample_logits(teacher, images, distill.teacher_samples)
            return kd_loss(logits, teacher_logits, labels, distill.temperature, distill.kd_weight,
                           distill.aggregate)

        teacher_metrics = {"teacher_test_accuracy": ctx.inputs["teacher"].metrics.get("test_accuracy")}
    torch.manual_seed(seed)
    spec = ModelSpec(cfg.arch, data.num_classes, data.in_channels, data.image_size, 1.0, "batch",
                     data.mean, data.std)
    model = spec.build()
    result = train(model, DeviceData(data, device), cfg.training, augmentation=data_cfg.augmentation,
                   seed=seed, loss_fn=loss_fn, progress=ctx.progress, label=f"{ctx.variant} {cfg.arch}")
    test_accuracy = accuracy(predict(model, data.x_test, data.mean, data.std, device), data.y_test)
    save_model(model, spec, ctx.output)
    (ctx.output / "history.json").write_text(json.dumps(result.history, indent=1))
    return {
        "test_accuracy": test_accuracy,
        "final_train_loss": result.final_train_loss,
        "train_wall_s": result.wall_s,
        "train_images_per_second": result.images_per_second,
        "parameters": sum(p.numel() for p in model.parameters()),
        "arch": cfg.arch,
        "device": str(device),
        **teacher_metrics,
    }

