"""Knowledge-distillation losses (Hinton et al. 2015) with K teacher samples."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


Aggregate = Literal["individual", "logit_average"]
AGGREGATES: tuple[str, ...] = ("individual", "logit_average")


def _check(aggregate: str) -> None:
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            aggregate: Aggregate = "individual") -> torch.Tensor:
    """``T^2 * KL(p_teacher || p_student)`` at temperature T, averaged over the batch.

    ``teacher_logits`` is (B, C) for one teacher or (K, B, C) for K sampled sub-networks.
    ``individual`` averages the K per-sample KL terms (each sub-network teaches on its own). That is
    KD against the average of the K softened distributions up to a constant: cross-entropy is linear
    in its target, so both give the student the same gradient; "individual teachers" differ from one
    averaged teacher only across steps, not within one. ``logit_average`` averages the K teachers'
    logits before the softmax, a sharper target than the average distribution, which does differ.
    The T^2 factor keeps the gradient scale independent of T, as in Hinton et al.
    """
    _check(aggregate)
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    if aggregate == "logit_average":
        teacher_logits = teacher_logits.float().mean(dim=0, keepdim=True)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    # KL(t || s) = sum t * (log t - log s); xlogy gives 0 where t == 0.
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_student).sum(dim=-1)
    return kl.mean() * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, kd_weight: float, aggregate: Aggregate = "individual") -> torch.Tensor:
    """``(1 - kd_weight) * CE(student, labels) + kd_weight * kd_term``."""
    ce = F.cross_entropy(student_logits, labels)
    return (1.0 - kd_weight) * ce + kd_weight * kd_term(student_logits, teacher_logits, temperature, aggregate)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017): the channel mean of squared activations, flattened and
    L2-normalized; (..., C, H, W) -> (..., H*W)."""
    return F.normalize(features.float().pow(2).mean(-3).flatten(-2), dim=-1)


def attention_term(student_groups: list[torch.Tensor], teacher_groups: list[torch.Tensor],
                   aggregate: Aggregate = "individual") -> torch.Tensor:
    """Sum over groups of the mean squared difference of attention maps.

    Teacher groups are (K, B, C, H, W) for K sampled sub-networks (or (B, C, H, W) for one).
    ``individual`` averages the K per-sample terms (the same gradient as comparing with their mean
    map: the squared distance's mean over K is the distance to the mean plus a constant);
    ``logit_average`` takes the attention map of the K feature maps averaged, which differs.
    """
    _check(aggregate)
    if len(student_groups) != len(teacher_groups):
        raise ValueError(f"attention transfer pairs groups one to one: the student has {len(student_groups)}, "
                         f"the teacher {len(teacher_groups)}")
    total = student_groups[0].new_zeros((), dtype=torch.float32)
    for student, teacher in zip(student_groups, teacher_groups):
        if teacher.dim() == student.dim():
            teacher = teacher.unsqueeze(0)
        if student.shape[-2:] != teacher.shape[-2:]:
            raise ValueError(f"attention transfer needs groups at the same resolution: student "
                             f"{tuple(student.shape[-2:])}, teacher {tuple(teacher.shape[-2:])}")
        if aggregate == "logit_average":
            teacher = teacher.float().mean(0, keepdim=True)
        target = attention_map(teacher)
        total = total + (attention_map(student).unsqueeze(0) - target).pow(2).mean()
    return total
