"""Several models trained in lockstep in one process: a row of a stage's tasks that share data, seed
and recipe (the teachers of both readings; the students alone, with KD and with stochastic KD from
each), and so see the same batches in the same order. Each step makes the batch once and then steps
every model on it.

Each model keeps everything its own training has: weights and BatchNorm statistics, optimizer state,
the epoch's sums and history, and its own stream of the global random numbers (its teacher's coins),
swapped in for its step. Its checkpoint is the one its separate training writes at the same step,
so either way of training resumes from the other's, and on a CPU the weights are those of separate
training to the bit.

On a GPU with ``capture_step``, the whole row's step (the batch, every model's forward, loss,
backward and optimizer step) is one CUDA graph. A graph cannot switch generators, so there the
models draw their teachers' coins from one stream: each sees the same distribution as alone, not the
same coins, and the weights agree with separate training within what capture itself changes. One
process: a recipe that compiles its step, or a run under torchrun, is refused (``lockstep_refusal``
says why).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from stages.common import distributed
from stages.common.config import TrainingConfig
from stages.common.errors import PipelineError
from stages.context import no_progress
from stages.nets.stochastic_depth import use_drop_execution
from stages.training.cuda_graph_step import CapturedStep, current_lr, set_lr
from stages.training.device_data import DeviceData
from stages.training.loop import (LossFunction, TrainResult, captures_step, device_name, drop_execution_for,
                                  joint_update, lr_factor, refuse_streamed_capture, sgd_for, steady_rate,
                                  synchronize, trains_in_bf16)
from stages.training.resume import (TrainingInterrupted, load_state, restore_rng_states, rng_states, save_progress,
                                    save_state, stop_on_interrupt)
from stages.training.run_state import RunState, SessionClock, all_finite, non_finite_error, zero_momentum_buffers


@dataclass
class Member:
    """One model of the row. ``rng``: the global generators' states as its separate training would
    have them at its first step (after its weights were drawn)."""
    label: str
    model: nn.Module
    loss_fn: LossFunction
    rng: dict
    checkpoint: Path | None = None
    evaluate: Callable[[], dict[str, float]] | None = None
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)
    run: RunState = field(default_factory=RunState, repr=False)


def shared_recipe(params: dict, role: str) -> dict:
    """What the tasks of a row must share to train in lockstep (``role``: "teacher" or "student"): the
    batches (data, seed, batch size) and how they are made and stepped on (normalization, the whole
    recipe). The network may differ."""
    cfg = params[role]
    return {"data": params["data"], "seed": params["seed"], "training": cfg.training,
            "mean": cfg.mean, "std": cfg.std}


class OutOfStep(Exception):
    """The members' checkpoints stand at different points of training: they resume one at a time."""


def lockstep_refusal(recipe: TrainingConfig, device: torch.device, section: str = "training") -> str | None:
    """Why models under ``recipe`` (the profile's ``section``) on ``device`` cannot train in lockstep,
    or None."""
    if distributed.world_size() > 1:
        return "runs under torchrun, each process training a slice of every batch"
    if recipe.compile:
        return f"compiles its training step ({section}.compile: true)"
    return None


def check_row(recipe: TrainingConfig, device: torch.device, role: str) -> None:
    """Refuse, in one line naming the profile key, a row of ``role``s (teacher, student) whose recipe
    cannot train in lockstep."""
    refusal = lockstep_refusal(recipe, device, f"{role}.training")
    if refusal:
        raise PipelineError(f"--lockstep: the {role}s' recipe {refusal}, one model at a time; set that off, or "
                            f"drop --lockstep")


def train_row(contexts, members: list[Member], data, recipe: TrainingConfig,
              device: torch.device) -> list[TrainResult] | None:
    """``members`` (one per stage context, in their order) trained in lockstep on ``data`` (an
    ImageDataset), with the first context's progress and checkpoint interval; None when their
    checkpoints are out of step, for the stage to train them one at a time."""
    first = contexts[0]
    try:
        return train_together(members, DeviceData(data, device), recipe, augmentation=first.params["data"].augmentation,
                              seed=first.params["seed"], progress=first.progress,
                              label=f"{', '.join(m.label for m in members)} (in lockstep)",
                              checkpoint_interval_s=first.checkpoint_interval_s)
    except OutOfStep:
        return None


def train_together(members: list[Member], data: DeviceData, recipe: TrainingConfig, *, augmentation, seed: int,
                   progress=no_progress, label: str = "training", checkpoint_interval_s: float = 60.0
                   ) -> list[TrainResult]:
    """Train ``members`` on the recipe's schedule, every one on each batch before the next batch, and
    return each one's result. Raises OutOfStep (before any step) when their checkpoints disagree."""
    device = data.device
    refusal = lockstep_refusal(recipe, device)
    if refusal:
        raise PipelineError(f"{label}: its models cannot train in lockstep: the recipe {refusal}")
    bf16 = trains_in_bf16(recipe, device)
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    updates = [joint_update(m.loss_fn) for m in members]
    capture = captures_step(recipe, device)
    if capture:
        refuse_streamed_capture(data, label)
    # Each model's own random numbers, swapped in for its step; not inside a graph (see the top).
    swap = not capture
    for member in members:
        member.model.to(device=device, memory_format=torch.channels_last).train()
    _restore(members, recipe, generator, device, steps_per_epoch)
    execution = drop_execution_for(recipe, device)
    for member in members:
        if device.type == "cuda":
            zero_momentum_buffers(member.optimizer)
        if execution:
            use_drop_execution(member.model, execution)
    run = members[0].run  # where the row stands: every member's is the same
    clock, last_save = SessionClock(run.timing), time.monotonic()
    saving = any(m.checkpoint is not None for m in members)

    def save() -> None:
        spent = clock.spent()
        for member in members:
            if not all_finite(member.model) or (member.run.first_bad is not None and int(member.run.first_bad) >= 0):
                raise non_finite_error(member.label, member.run, steps_per_epoch, member.checkpoint)
        for member in members:
            member.run.last_saved = (member.run.epoch, member.run.step)
            if member.checkpoint is None:
                continue
            with own_random_numbers(member, device, swap):
                state = member.run.snapshot(member.model, member.optimizer, generator, device,
                                            {**spent, "first_step_s": member.run.timing["first_step_s"]})
            save_state(member.checkpoint, state)
            save_progress(member.checkpoint, member.run.epoch, member.run.step, recipe.epochs, steps_per_epoch,
                          steady_rate(spent), device_name(device))

    def counted_step(index: torch.Tensor, draws: torch.Tensor | None = None) -> None:
        """One step of every model on the training images ``index``: device work only, which a
        captured step holds."""
        images, labels = data.training_batch(index, draws, augmentation)
        for member, update in zip(members, updates):
            with own_random_numbers(member, device, swap):
                output, loss = update(member.model, member.optimizer, images, labels, bf16)
            member.run.count(output, loss, labels)

    step_with = counted_step
    if capture:
        step_with = CapturedStep(counted_step, Optimizers([m.optimizer for m in members]), device,
                                 full_rows=recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    with progress(label, total_steps) as advance, stop_on_interrupt() as stop:
        if run.epoch or run.step:
            advance(run.epoch * steps_per_epoch + run.step)
        while run.epoch < recipe.epochs:
            epoch = run.epoch
            if run.order is None:
                order = torch.randperm(n, generator=generator).to(device)
                for member in members:
                    member.run.start_epoch(order, device)
            for step in range(run.step, steps_per_epoch):
                warming = epoch < (recipe.warmup_epochs or 0)
                if step == 0 or warming or clock.first_step_end is None:
                    point = epoch + (step + 1) / steps_per_epoch if warming else epoch
                    for member in members:
                        set_lr(member.optimizer, recipe.lr * lr_factor(recipe, point))
                index = run.order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                draws = data.draws(len(index), augmentation, generator)
                step_with(*((index,) if draws is None else (index, draws)))
                for member in members:
                    member.run.step = step + 1
                advance(1)
                if clock.first_step_end is None and getattr(step_with, "captured", True):
                    synchronize(device)
                    first_step_s = clock.first_step_done()
                    for member in members:
                        if member.run.timing["first_step_s"] is None:
                            member.run.timing["first_step_s"] = first_step_s
                elif clock.first_step_end is not None:
                    clock.images += len(index)
                due = saving and time.monotonic() - last_save >= checkpoint_interval_s
                if saving and (stop.signum or due):
                    save()
                    last_save = time.monotonic()
                if stop.signum:
                    where = ("; each model's progress is saved beside its task: rerun the same command to "
                             "resume from there" if saving else "")
                    raise TrainingInterrupted(f"{label}: stopped in epoch {epoch + 1}, after batch {step + 1} of "
                                              f"{steps_per_epoch}{where}", stop.signum)
            losses = []
            for member in members:
                epoch_loss = float(member.run.loss_sum) / n
                if not math.isfinite(epoch_loss):
                    raise non_finite_error(member.label, member.run, steps_per_epoch, member.checkpoint,
                                           str(epoch_loss))
                member.run.history.append({"epoch": epoch + 1, "loss": epoch_loss,
                                           "train_accuracy": float(member.run.correct) / n,
                                           "lr": current_lr(member.optimizer)})
                losses.append(epoch_loss)
                if member.evaluate is not None:
                    started = time.perf_counter()
                    member.run.history[-1].update(member.evaluate())
                    member.model.train()
                    clock.evaluating_s += time.perf_counter() - started
            advance(0, f"{label} · epoch {epoch + 1}/{recipe.epochs} · loss "
                       + " ".join(f"{loss:.3f}" for loss in losses))
            for member in members:
                member.run.end_epoch()
        if saving and run.last_saved != (run.epoch, run.step):
            save()
    spent = clock.spent()
    steady = steady_rate(spent) or recipe.epochs * n / spent["elapsed_s"]
    as_run = {"precision": "bf16" if bf16 else "fp32", "processes": 1, "compiled": False, "captured_step": capture,
              "drop_execution": execution or "skip", "device_name": device_name(device),
              "lockstep_models": len(members)}
    return [TrainResult(recipe.epochs, spent["elapsed_s"], steady, m.run.history[-1]["loss"],
                        m.run.history[-1]["train_accuracy"], m.run.history, m.run.timing["first_step_s"] or 0.0,
                        m.run.resumed_at, as_run) for m in members]


class own_random_numbers:
    """The global generators in ``member``'s state for the duration, and its state kept after
    (nothing, unless ``swap``)."""

    def __init__(self, member: Member, device: torch.device, swap: bool = True) -> None:
        self.member, self.device, self.swap = member, device, swap

    def __enter__(self) -> None:
        if self.swap:
            restore_rng_states(self.member.rng, self.device)

    def __exit__(self, *exc) -> None:
        if self.swap:
            self.member.rng = rng_states(self.device)


class Optimizers:
    """The row's optimizers as one, for a captured step: its LRs made tensors on the device in
    place, every gradient cleared before capture."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers for group in optimizer.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)


def _restore(members: list[Member], recipe: TrainingConfig, generator: torch.Generator, device: torch.device,
             steps_per_epoch: int) -> None:
    """Optimizers for every member, and each one's checkpoint restored: all of them or none, at the
    same point of training and the same data generator, else OutOfStep."""
    for member in members:
        member.optimizer = sgd_for(member.model, recipe, device)
    saved = [load_state(m.checkpoint) if m.checkpoint is not None else None for m in members]
    if all(s is None for s in saved):
        return
    points = {(s["epoch"], s["step"]) if s is not None else None for s in saved}
    generators = {bytes(s["generator"].numpy()) for s in saved if s is not None}
    if len(points) > 1 or len(generators) > 1:
        raise OutOfStep(", ".join(f"{m.label}: " + ("not started" if s is None else
                                                   f"epoch {s['epoch'] + 1}, batch {s['step']}")
                                  for m, s in zip(members, saved)))
    for member, state in zip(members, saved):
        member.run = RunState.restore(state, member.model, member.optimizer, generator, device, member.checkpoint,
                                      recipe.epochs, steps_per_epoch)
        member.rng = rng_states(device)
