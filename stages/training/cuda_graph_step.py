"""A whole training step (forward, loss, backward and the optimizer step) recorded once as a CUDA
graph and replayed for every full batch: one launch per step instead of hundreds.

What a replay needs from the step, and how it gets it:
- no host-side decision: stochastic blocks draw their masks on the device (``drop_execution: mask``);
  the graph-safe CUDA generator gives every replay fresh coins;
- fixed addresses: each step's inputs (the batch's indices and its random crops and flips) are
  copied into the graph's own input tensors, the sums it counts are added to in place, and the LR is
  a one-element tensor on the device that the schedule fills in place (a float would be baked in);
- state that exists before capture: a few eager steps on a side stream first, which also create the
  momentum buffers (CUDA's documented recipe for capturing a whole network).
The eager steps are real training steps on the run's own batches, so the run sees the same batches
either way. Batches of another size (the last of an epoch) run eagerly. The graph holds the whole
step, from gathering the batch to counting its loss: only the copies of its inputs run outside it.
"""

from __future__ import annotations

import torch

from stages.common.errors import PipelineError, first_line
from stages.nets.stochastic_depth import in_captured_step

# Eager steps before capture (PyTorch's CUDA graphs notes use 3, enough to settle lazy
# initialisation such as cuBLAS workspaces and autograd's streams).
WARMUP_STEPS = 3


def lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Make every group's LR a one-element tensor on ``device``, so that a captured optimizer step
    reads the value of the moment rather than the one it was captured with."""
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's LR, in place where it is a tensor (see lr_on_device)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


class CapturedStep:
    """``step(*inputs)`` (a whole training step: its batch made on the device, forward, loss,
    backward, optimizer step and whatever it counts), with every call whose inputs have the shapes of
    the recorded ones replayed from one CUDA graph. Calls with other shapes (the last, smaller batch
    of an epoch) run eagerly. Returns what ``step`` returns; tensors it returns belong to the graph
    and are overwritten by the next replay."""

    def __init__(self, step, optimizer: torch.optim.Optimizer, device: torch.device,
                 full_rows: int | None = None) -> None:
        if device.type != "cuda":
            raise ValueError(f"a CUDA graph needs a CUDA device, not {device}")
        self.step, self.optimizer, self.device = step, optimizer, device
        # The rows of a full batch (the first input's length): only such calls warm up and are
        # recorded, so a run that starts just before an epoch's short last batch does not record
        # the graph for that size and then run every full batch eagerly.
        self.full_rows = full_rows
        self.eager_steps = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.outputs = None
        self.side_stream = torch.cuda.Stream(device)
        lr_on_device(optimizer, device)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, *inputs: torch.Tensor):
        # On the training device (cuda:N), whatever device is current: the capture's stream, its
        # graph-safe generator and every replay belong to it. Every call, warm-up and eager ones too,
        # runs with one autocast cache setting (see stochastic_depth.capturing).
        with torch.cuda.device(self.device), in_captured_step():
            kind = step_kind(self.graph is not None, self.eager_steps, self._full(inputs),
                             self.inputs is None or all(x.shape == s.shape for x, s in zip(inputs, self.inputs)))
            if kind == "warm-up":
                self.eager_steps += 1
            if kind in ("warm-up", "eager"):
                return self._on_side_stream(inputs)
            if kind == "capture":
                self._capture(inputs)
            for static, x in zip(self.inputs, inputs):
                static.copy_(x, non_blocking=True)  # from pinned host memory, or on the device
            self.graph.replay()
            return self.outputs

    def _full(self, inputs) -> bool:
        return self.full_rows is None or (bool(inputs) and inputs[0].shape[0] == self.full_rows)

    def _on_side_stream(self, inputs):
        main = torch.cuda.current_stream(self.device)
        self.side_stream.wait_stream(main)
        with torch.cuda.stream(self.side_stream):
            result = detached(self.step(*(x.to(self.device, non_blocking=True) for x in inputs)))
        main.wait_stream(self.side_stream)
        return result

    def _capture(self, inputs) -> None:
        # The graph's inputs live on the device, in the layout of what they will be fed.
        static = tuple(x.to(self.device, copy=True) for x in inputs)
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        # Gradients are allocated inside the capture, from the graph's own memory pool: each replay
        # writes them afresh, so no zeroing kernel is needed between replays.
        self.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                outputs = self.step(*static)
        except Exception as exc:  # noqa: BLE001 (any failure inside a capture means the same to the user)
            # A failed capture leaves the CUDA generator unusable in this process: no eager fallback.
            raise PipelineError(f"the training step could not be recorded as a CUDA graph ({first_line(exc)}); "
                                f"set training.capture_step: false to train eagerly") from exc
        self.graph, self.inputs, self.outputs = graph, static, detached(outputs)


def step_kind(recorded: bool, eager_steps: int, full: bool, same_shapes: bool) -> str:
    """How CapturedStep runs a call: "warm-up" (an eager step that counts towards capture), "capture"
    (record, then replay), "replay", or "eager" (a batch of another size: run, not counted). Only full
    batches warm up and are recorded."""
    if not full or (recorded and not same_shapes):
        return "eager"
    if recorded:
        return "replay"
    return "warm-up" if eager_steps < WARMUP_STEPS else "capture"


def detached(value):
    """``value`` (a tensor, or tuples and lists of them) cut from autograd. A caller holding the last
    step's outputs would otherwise keep its autograd nodes alive into the next capture, whose
    gradients would then be accumulated on the stream those nodes were made on."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(detached(v) for v in value)
    return value
