"""The teacher as it teaches: the trained network rebuilt with the survival probabilities it is
sampled with, each surviving block at the scale chosen by ``kept_scale`` (see stochastic_depth)."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.nets.checkpoint import ModelSpec, load_model, read_spec
from stages.nets.stochastic_depth import use_trained_scale


def teaching_survival(spec: ModelSpec, p_last: float | None) -> float:
    """The teaching p_n: ``p_last``, or (null) the survival the teacher was trained with."""
    return spec.p_last if p_last is None else p_last


def teaching_teacher(folder: Path, p_last: float | None, drop_mode: str, kept_scale: str | None,
                     device: torch.device) -> torch.nn.Module:
    """The trained teacher in ``folder``, its coins drawn with survival ``p_last`` (eq. 2).

    ``kept_scale`` trained (the paper's sub-network: the trained network with the dropped blocks
    removed) or expectation (kept branches divided by the teaching survival); null where the two
    cannot differ."""
    spec = read_spec(folder)
    teaching = teaching_survival(spec, p_last)
    teacher = load_model(folder, spec.with_survival(teaching, drop_mode))
    if kept_scale != "expectation":
        use_trained_scale(teacher, teaching, spec.p_last)
    return teacher.to(device=device, memory_format=torch.channels_last)
