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


class Renormalized(torch.nn.Module):
    """A network fed images normalized for another (the student's batch, for a teacher pretrained with
    other constants): ``x * std_in + mean_in`` restores the pixels, which it then normalizes its own way,
    as one multiply and one add."""

    def __init__(self, network: torch.nn.Module, given: tuple, own: tuple) -> None:
        super().__init__()
        self.network = network
        (mean_in, std_in), (mean, std) = ([torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in pair]
                                          for pair in (given, own))
        self.register_buffer("scale", std_in / std)
        self.register_buffer("shift", (mean_in - mean) / std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x * self.scale + self.shift)

    def forward_with_groups(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network.forward_with_groups(x * self.scale + self.shift)


def teaching_teacher(folder: Path, p_last: float | None, drop_mode: str, kept_scale: str | None,
                     device: torch.device, inputs: tuple | None = None) -> torch.nn.Module:
    """The trained teacher in ``folder``, its coins drawn with survival ``p_last`` (eq. 2).

    ``kept_scale`` trained (the paper's sub-network: the trained network with the dropped blocks
    removed) or expectation (kept branches divided by the teaching survival); null where the two
    cannot differ. ``inputs`` (mean, std): how the images it is given are normalized, where that is
    not its own way."""
    spec = read_spec(folder)
    teaching = teaching_survival(spec, p_last)
    teacher = load_model(folder, spec.with_survival(teaching, drop_mode))
    if kept_scale != "expectation":
        use_trained_scale(teacher, teaching, spec.p_last)
    if inputs is not None and (tuple(inputs[0]), tuple(inputs[1])) != (tuple(spec.mean), tuple(spec.std)):
        teacher = Renormalized(teacher, inputs, (spec.mean, spec.std)).eval()
    return teacher.to(device=device, memory_format=torch.channels_last)
