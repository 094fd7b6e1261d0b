"""Where a training run stands (the next step, the epoch's order and sums, the history, the time
spent), what its checkpoint saves besides the weights, and the optimizer's state made portable."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from stages.common.errors import ArtifactError, PipelineError, first_line
from stages.training.resume import restore_rng_states, rng_states


class RunState:
    """Where a training run stands: the next (epoch, batch), the epoch's order and running sums, the
    per-epoch history and the time spent so far. What a checkpoint saves besides weights, optimizer
    and generators."""

    def __init__(self) -> None:
        self.epoch, self.step = 0, 0
        self.order: torch.Tensor | None = None
        # The epoch's sums on the training device (no sync per step): loss, hits, and how many
        # batches had been counted while the loss sum was still finite.
        self.loss_sum = self.correct = self.finite_batches = None
        self.history: list[dict[str, float]] = []
        self.timing: dict[str, float | None] = {"elapsed_s": 0.0, "steady_images": 0, "steady_s": 0.0,
                                                "first_step_s": None}
        self.resumed_at: list[dict[str, int]] = []
        self.last_saved: tuple[int, int] | None = None

    def start_epoch(self, order: torch.Tensor, device: torch.device) -> None:
        self.order, self.step = order, 0
        if self.loss_sum is None:
            self.loss_sum = torch.zeros((), device=device)
            self.correct = torch.zeros((), device=device)
            self.finite_batches = torch.zeros((), dtype=torch.long, device=device)
        else:  # in place: a captured step adds to these very tensors
            self.loss_sum.zero_(), self.correct.zero_(), self.finite_batches.zero_()

    def count(self, output, loss: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a step's loss and hits to the epoch's sums, in place. Seven kernels, which a captured
        step replays every step: each costs the GPU a few microseconds."""
        self.loss_sum.add_(loss.detach(), alpha=len(labels))
        # A sum that is not finite stays so (inf and nan absorb whatever is added), so this count
        # stops at the first batch whose loss was not finite: no comparison or select needed.
        self.finite_batches.add_(torch.isfinite(self.loss_sum))
        # Logits are (B, C), or (peers, B, C) for models trained together: average over peers.
        logits = output[0] if isinstance(output, tuple) else output
        hits = logits.detach().argmax(-1) == labels
        self.correct.add_(hits.sum(), alpha=len(labels) / hits.numel())

    @property
    def first_bad(self) -> torch.Tensor | None:
        """The epoch's first batch (1-based) whose loss was not finite, -1 if none; None before the
        first epoch."""
        if self.loss_sum is None:
            return None
        return torch.where(torch.isfinite(self.loss_sum), -1, self.finite_batches + 1)

    def end_epoch(self) -> None:
        self.epoch, self.step, self.order = self.epoch + 1, 0, None

    def snapshot(self, model, optimizer, generator, device, timing,
                 sums_by_rank: list[list[float]] | None = None) -> dict:
        """What a checkpoint holds. ``sums_by_rank``: under torchrun, every rank's running sums of the
        epoch, so that each resumes with its own."""
        on_cpu = (lambda t: None if t is None else t.detach().cpu())
        return {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": portable_state(optimizer), "generator": generator.get_state(), "rng": rng_states(device),
            "epoch": self.epoch, "step": self.step, "order": on_cpu(self.order),
            "sums": [on_cpu(self.loss_sum), on_cpu(self.correct), on_cpu(self.first_bad)],
            "sums_by_rank": sums_by_rank,
            "history": self.history, "timing": timing, "resumed_at": self.resumed_at,
        }

    @classmethod
    def restore(cls, saved: dict, model, optimizer, generator, device, path: Path, epochs: int,
                steps_per_epoch: int, rank: int = 0, ranks: int = 1) -> "RunState":
        run = cls()
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            restore_rng_states(saved["rng"], device)
            run.epoch, run.step = int(saved["epoch"]), int(saved["step"])
            if run.epoch > epochs or run.step > steps_per_epoch:
                raise ValueError(f"it stands at epoch {run.epoch + 1}, batch {run.step}, beyond this recipe")
            run.order = None if saved["order"] is None else saved["order"].to(device)
            if run.order is not None:
                loss_sum, correct, first_bad = (t.to(device) for t in saved["sums"])
                by_rank = saved.get("sums_by_rank")
                if by_rank is not None or ranks > 1:
                    loss_sum, correct, first_bad = own_sums(by_rank or [[float(t) for t in saved["sums"]]],
                                                            rank, ranks, (loss_sum, correct, first_bad))
                run.loss_sum, run.correct = loss_sum, correct
                run.finite_batches = torch.where(first_bad < 0, run.step, first_bad - 1)
            run.history, run.timing = list(saved["history"]), dict(saved["timing"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{path}: training checkpoint does not fit this run ({first_line(exc)}); delete it "
                                f"to start this stage over") from exc
        run.resumed_at = [*saved["resumed_at"], {"epoch": run.epoch + 1, "batch": run.step}]
        run.last_saved = (run.epoch, run.step)
        return run


class SessionClock:
    """This session's time in a run: since it started, and its steady part (after its first timed
    step, evaluation left out), added to what the run's earlier sessions spent (``before``: the run
    state's timing, read when asked, so its first_step_s once set counts)."""

    def __init__(self, before: dict[str, float | None]) -> None:
        self.before = before
        self.start = time.perf_counter()
        self.first_step_end: float | None = None
        self.images = 0  # trained after the first timed step
        self.evaluating_s = 0.0

    def first_step_done(self) -> float:
        """Mark the first timed step's end; the seconds since the session started."""
        self.first_step_end = time.perf_counter()
        return self.first_step_end - self.start

    def spent(self) -> dict[str, float]:
        now = time.perf_counter()
        steady = now - self.first_step_end - self.evaluating_s if self.first_step_end is not None else 0.0
        return {"elapsed_s": self.before["elapsed_s"] + now - self.start,
                "steady_images": self.before["steady_images"] + self.images,
                "steady_s": self.before["steady_s"] + steady, "first_step_s": self.before["first_step_s"]}


def own_sums(by_rank: list[list[float]], rank: int, ranks: int,
             like: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """This rank's running sums (loss, correct, first bad batch) from a checkpoint's per-rank sums.
    Resumed on as many processes as saved it, each rank takes its own, and the epoch's totals come
    out as in an uninterrupted run. On another number, rank 0 takes the totals and the others start
    from nothing: the epoch's totals stay right, summed in another order."""
    if len(by_rank) == ranks:
        values = by_rank[rank]
    elif rank == 0:
        bad = [int(b[2]) for b in by_rank if b[2] >= 0]
        values = [sum(b[0] for b in by_rank), sum(b[1] for b in by_rank), min(bad) if bad else -1]
    else:
        values = [0.0, 0.0, -1]
    return tuple(torch.tensor(v, dtype=t.dtype, device=t.device) for v, t in zip(values, like))


def all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def non_finite_error(label: str, run: RunState, steps_per_epoch: int, checkpoint: Path | None,
                value: str = "non-finite") -> PipelineError:
    batch = int(run.first_bad) if run.first_bad is not None and int(run.first_bad) > 0 else "?"
    if run.last_saved is None:
        kept = "nothing was saved for this stage"
    else:
        epoch, step = run.last_saved
        kept = f"the last good checkpoint ({position(epoch, step)}) is kept in {checkpoint}"
    return PipelineError(f"{label}: the loss became {value} in epoch {run.epoch + 1}, batch {batch} of "
                         f"{steps_per_epoch}; {kept}. Lower the learning rate or add training.warmup_epochs, "
                         f"and run again")


def position(epoch: int, step: int) -> str:
    return f"after epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, batch {step}"


def zero_momentum_buffers(optimizer: torch.optim.SGD) -> None:
    """Give every parameter a momentum buffer up front, zero where it has none yet.

    Fused SGD steps the parameters that have gradients and fails (TypeError from _fused_sgd_) when
    some of them have a buffer and others not yet, which blocks skipped by stochastic depth cause.
    With no dampening, a zero buffer gives exactly what the first step would put there: the
    gradient (momentum * 0 + grad), so no value changes."""
    for group in optimizer.param_groups:
        if not group["momentum"]:
            continue
        for param in group["params"]:
            state = optimizer.state[param]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def portable_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with each LR as a float: a captured run keeps it in a device tensor, and
    a checkpoint must resume on any device, captured or not."""
    state = optimizer.state_dict()
    state["param_groups"] = [{**group, "lr": float(group["lr"])} for group in state["param_groups"]]
    return state
