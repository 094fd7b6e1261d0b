"""Knowledge-distillation losses (Hinton et al. 2015) with K teacher samples."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            aggregate: Literal["individual", "ensemble"] = "individual") -> torch.Tensor:
    """``T^2 * KL(p_teacher || p_student)`` at temperature T, averaged over the batch.

    ``teacher_logits`` is (B, C) for one teacher or (K, B, C) for K sampled sub-networks.
    ``individual`` averages the K per-sample KL terms (each sub-network teaches on its own);
    ``ensemble`` averages the K softened distributions first and distils from that mean.
    The T^2 factor keeps the gradient scale independent of T, as in Hinton et al.
    """
    if teacher_logits.dim() == 2:
        teacher_logits = teacher_logits.unsqueeze(0)
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    if aggregate == "ensemble":
        teacher_probs = teacher_probs.mean(dim=0, keepdim=True)
    elif aggregate != "individual":
        raise ValueError(f"aggregate must be 'individual' or 'ensemble', got {aggregate!r}")
    # KL(t || s) = sum t * (log t - log s); xlogy gives 0 where t == 0.
    kl = (torch.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_student).sum(dim=-1)
    return kl.mean() * temperature**2


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            temperature: float, kd_weight: float,
            aggregate: Literal["individual", "ensemble"] = "individual") -> torch.Tensor:
    """``(1 - kd_weight) * CE(student, labels) + kd_weight * kd_term``."""
    ce = F.cross_entropy(student_logits, labels)
    return (1.0 - kd_weight) * ce + kd_weight * kd_term(student_logits, teacher_logits, temperature, aggregate)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Zagoruyko & Komodakis (2017): the channel mean of squared activations, flattened and
    L2-normalized; (..., C, H, W) -> (..., H*W)."""
    return F.normalize(features.float().pow(2).mean(-3).flatten(-2), dim=-1)


def attention_term(student_groups: list[torch.Tensor], teacher_groups: list[torch.Tensor],
                   aggregate: Literal["individual", "ensemble"] = "individual") -> torch.Tensor:
    """Sum over groups of the mean squared difference of attention maps.

    Teacher groups are (K, B, C, H, W) for K sampled sub-networks (or (B, C, H, W) for one);
    ``individual`` averages the K per-sample terms, ``ensemble`` compares with their mean map.
    """
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
        target = attention_map(teacher)
        if aggregate == "ensemble":
            target = target.mean(0, keepdim=True)
        total = total + (attention_map(student).unsqueeze(0) - target).pow(2).mean()
    return total
