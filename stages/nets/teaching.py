"""The teacher as it teaches: the trained network rebuilt with the survival probabilities it is
sampled with, each surviving block at the scale chosen by ``kept_scale`` (see stochastic_depth)."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.nets.checkpoint import ModelSpec, load_model, read_spec
from stages.nets.frozen import fold_batchnorm
from stages.nets.stochastic_depth import deterministic_and_sampled, use_trained_scale


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
    """The trained teacher in ``folder``, its coins drawn with survival ``p_last`` (eq. 2), frozen: in
    eval mode, BatchNorm folded into the convolutions before it (stages.nets.frozen).

    ``kept_scale`` trained (the paper's sub-network: the trained network with the dropped blocks
    removed) or expectation (kept branches divided by the teaching survival); null where the two
    cannot differ. ``inputs`` (mean, std): how the images it is given are normalized, where that is
    not its own way."""
    spec = read_spec(folder)
    teaching = teaching_survival(spec, p_last)
    teacher = load_model(folder, spec.with_survival(teaching, drop_mode))
    if kept_scale != "expectation":
        use_trained_scale(teacher, teaching, spec.p_last)
    # It only ever runs frozen: each BatchNorm after a convolution folded into it.
    # The probe has a generator of its own: loading a teacher leaves the global random numbers alone.
    probe = torch.randn(2, spec.in_channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))
    fold_batchnorm(teacher, probe)
    if inputs is not None and (tuple(inputs[0]), tuple(inputs[1])) != (tuple(spec.mean), tuple(spec.std)):
        teacher = Renormalized(teacher, inputs, (spec.mean, spec.std)).eval()
    return teacher.to(device=device, memory_format=torch.channels_last)


class SharedTeacher:
    """One trained teacher serving students that train in lockstep: one taught by its K sampled
    sub-networks and any taught by its deterministic network, from one pass per step
    (``deterministic_and_sampled``: on a GPU one forward of (1 + K) B rows, instead of a teacher of
    each kind and two passes). The sampled student steps first: the pass runs in its step, with its
    random numbers (its coins are the ones it draws alone), and the deterministic students take their
    rows of it after."""

    def __init__(self, model: torch.nn.Module, k: int, groups: bool) -> None:
        self.model, self.k, self.groups = model, k, groups
        self._served: tuple[torch.Tensor, tuple] | None = None  # this step's images and plain outputs

    def sampled(self, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        plain, sampled = deterministic_and_sampled(self.model, images, self.k, self.groups)
        self._served = (images, plain)
        return sampled

    def deterministic(self, images: torch.Tensor, k: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The deterministic network's outputs, as ``k`` copies where the student asks for k samples
        of it (all alike)."""
        if self._served is None or self._served[0] is not images:
            raise RuntimeError("a student of the deterministic teacher stepped before the student of its "
                               "sub-networks, which runs the shared pass")
        logits, features = self._served[1]
        return logits.expand(k, *logits.shape[1:]), [f.expand(k, *f.shape[1:]) for f in features]
