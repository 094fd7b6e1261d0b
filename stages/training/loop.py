"""The training loop shared by the teacher and every student."""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stages.common.config import TrainingConfig
from stages.common.errors import PipelineError, no_cuda_device
from stages.common.hardware import cpu_model
from stages.context import no_progress
from stages.nets.checkpoint import save_model
from stages.nets.stochastic_depth import capturing, computing_rows, use_drop_execution
from stages.training.compiling import compiled_for_training, uncompiled
from stages.training.cuda_graph_step import CapturedStep, current_lr, set_lr
from stages.training.data import ImageDataset, image_counts
from stages.training.device_data import DeviceData
from stages.training.evaluation import accuracy_on_test, validation_metrics
from stages.training.resume import TrainingInterrupted, load_state, save_progress, save_state, stop_on_interrupt
from stages.training.run_state import (RunState, SessionClock, all_finite, non_finite_error,
                                      zero_momentum_buffers)
from stages.training.tracking import write_tensorboard

# Under torchrun, the ranks agree on stopping and saving every this many steps (a small exchange
# between processes): a signal is honoured within that many steps, well inside torchrun's 30 s.
AGREE_EVERY_STEPS = 4
# loss(model output, normalized images, labels) -> scalar. The output is the logits, or for a model
# that returns more (see WithGroups) a tuple whose first element is the logits.
LossFunction = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# update(net, optimizer, images, labels, bf16) -> (model output, loss): one optimizer step on a batch.
UpdateStep = Callable[[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor, bool],
                      tuple[torch.Tensor, torch.Tensor]]


def joint_update(loss_fn: LossFunction) -> UpdateStep:
    """The usual step: one forward pass, one loss, one backward pass, one optimizer step."""

    def update(net, optimizer, images, labels, bf16):
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=bf16,
                            cache_enabled=not capturing(images)):
            output = net(images)
            loss = loss_fn(output, images, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return output, loss

    return update


def captures_step(recipe: TrainingConfig, device: torch.device) -> bool:
    """Whether training with ``recipe`` on ``device`` replays its steps from a CUDA graph."""
    return bool(recipe.capture_step) and device.type == "cuda"


def drop_execution_for(recipe: TrainingConfig, device: torch.device) -> str | None:
    """How stochastic blocks drop under ``recipe`` on ``device``: its ``drop_execution``, else masks
    where the step is captured (a graph holds no host-side decision) or its blocks share compiled
    graphs, and skipping elsewhere (None)."""
    masks = captures_step(recipe, device) or recipe.compile_scope == "blocks"  # a scope needs compile
    return recipe.drop_execution or ("mask" if masks else None)


def sgd_for(model: nn.Module, recipe: TrainingConfig, device: torch.device) -> torch.optim.SGD:
    """The recipe's SGD over ``model``: one fused kernel for the whole update on a GPU, PyTorch's
    default (foreach) elsewhere."""
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay, fused=True if device.type == "cuda" else None)


def trains_in_bf16(recipe: TrainingConfig, device: torch.device) -> bool:
    """Whether the step runs under bf16 autocast: as the recipe says, else on a CUDA GPU."""
    return recipe.precision == "bf16" or (recipe.precision is None and device.type == "cuda")


def refuse_streamed_capture(data: DeviceData, label: str) -> None:
    """A captured step needs every training image on the GPU; a packed dataset streamed from disk
    is refused in one line."""
    if data.streamed is not None:
        raise PipelineError(f"{label}: training.capture_step needs the training images on the GPU, but this "
                            f"packed dataset streams from disk batch by batch; set training.capture_step: false")


def cross_entropy_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise no_cuda_device(preference)
        index, count = torch.device(preference).index, torch.cuda.device_count()
        if index is not None and index >= count:
            raise PipelineError(f"--device {preference}: this machine shows {count} CUDA device"
                                f"{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1}); choose one of them")
    return torch.device(preference)


def lr_factor(recipe: TrainingConfig, epoch: float) -> float:
    """LR multiplier at a (0-based, fractional) point of training: the schedule, times a linear
    warm-up over the first ``warmup_epochs``."""
    if recipe.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / recipe.epochs))
    else:
        factor = recipe.lr_gamma ** sum(epoch >= m for m in recipe.lr_milestones)
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        factor *= epoch / recipe.warmup_epochs
    return factor


@dataclass
class TrainResult:
    epochs: int
    wall_s: float  # over every session of a resumed run
    # Steady state: after each session's first step, which carries any compilation (with capture_step,
    # after the step that records the graph: the eager steps before it and the capture are the start).
    images_per_second: float
    final_train_loss: float
    final_train_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)
    first_step_s: float = 0.0
    resumed_at: list[dict[str, int]] = field(default_factory=list)  # (epoch, batch) of each resumption
    # How the recipe was run where it leaves the choice to the machine (the last session's, if resumed).
    as_run: dict[str, object] = field(default_factory=dict)


def train(model: nn.Module, data: DeviceData, recipe: TrainingConfig, *, augmentation, seed: int,
          loss_fn: LossFunction = cross_entropy_loss, progress=no_progress, label: str = "training",
          checkpoint: Path | None = None, checkpoint_interval_s: float = 60.0,
          update: UpdateStep | None = None,
          evaluate: Callable[[], dict[str, float]] | None = None) -> TrainResult:
    """SGD on the recipe's schedule. ``progress(description, total)`` is a context manager factory.
    ``update`` makes each step (default: ``joint_update(loss_fn)``). ``evaluate()``, called after
    every epoch (its time kept out of the throughput), adds its figures to that epoch's history.

    With ``checkpoint``, the training state is saved there at the first step boundary after every
    ``checkpoint_interval_s`` seconds, on Ctrl-C, SIGTERM or SIGHUP, and at the end; a run that finds
    one there resumes from it and ends with the weights an uninterrupted run would have given."""
    from stages.common import distributed

    update = update or joint_update(loss_fn)
    device = data.device
    model.to(device=device, memory_format=torch.channels_last).train()
    optimizer = sgd_for(model, recipe, device)
    bf16 = trains_in_bf16(recipe, device)
    # Under torchrun each rank trains on its slice of every global batch (same order, same seed).
    ranks, rank = distributed.world_size(), distributed.rank()
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    smallest_batch = min(recipe.batch_size, n - (steps_per_epoch - 1) * recipe.batch_size)
    if smallest_batch < ranks:
        raise PipelineError(f"{label}: training.batch_size {recipe.batch_size} over {n} training images leaves a "
                            f"last batch of {smallest_batch}, which {ranks} processes cannot share; choose a batch "
                            f"size that leaves at least {ranks}, or train on fewer processes")
    run = RunState()
    saved = load_state(checkpoint) if checkpoint is not None else None
    if saved is not None:
        # Restored before DDP wraps the model, which copies rank 0's weights to the other ranks.
        run = RunState.restore(saved, model, optimizer, generator, device, checkpoint, recipe.epochs,
                                steps_per_epoch, rank, ranks)
    if device.type == "cuda":
        zero_momentum_buffers(optimizer)
    execution = drop_execution_for(recipe, device)
    if execution:
        use_drop_execution(model, execution)  # before DDP, which asks whether blocks may go unused
    # Slices of unequal size get their gradients weighed by their images (DDP's plain average is kept
    # where every slice of every batch is the same size).
    uneven = ranks > 1 and any(size % ranks for size in (recipe.batch_size, smallest_batch))
    share = distributed.SliceShare() if uneven else None
    net = distributed.data_parallel(model, device, share) if ranks > 1 else model

    def counted_step(index: torch.Tensor, draws: torch.Tensor | None = None):
        """One step on the training images ``index``, and its count in the epoch's sums: work on the
        device only, so that a captured step holds all of it."""
        rows = nullcontext()
        if ranks > 1:
            # Each rank makes only its own rows of the batch; the draws were made for all of them.
            start, stop = distributed.rank_rows(len(index), rank, ranks)
            rows = computing_rows(start, stop, len(index))
            if share is not None:
                share.set(stop - start, len(index), ranks)
            index, draws = index[start:stop], None if draws is None else draws[:, start:stop]
        images, labels = data.training_batch(index, draws, augmentation)
        with rows:
            output, loss = update(net, optimizer, images, labels, bf16)
        run.count(output, loss, labels)

    step_with = counted_step
    if captures_step(recipe, device):
        refuse_streamed_capture(data, label)
        if ranks > 1:
            raise PipelineError(f"{label}: training.capture_step runs on one process; under torchrun set "
                                f"training.capture_step: false")
        step_with = CapturedStep(counted_step, optimizer, device, full_rows=recipe.batch_size)
    saving = checkpoint is not None  # under torchrun every rank takes part, rank 0 writes
    clock, last_save = SessionClock(run.timing), time.monotonic()

    def save() -> None:
        sums_by_rank = gather_sums(run) if ranks > 1 else None
        bad = [s[2] for s in sums_by_rank] if sums_by_rank else [run.first_bad]
        if any(b is not None and int(b) >= 0 for b in bad) or not all_finite(model):
            raise non_finite_error(label, run, steps_per_epoch, checkpoint)
        run.last_saved = (run.epoch, run.step)
        if rank != 0:
            return
        spent = clock.spent()
        save_state(checkpoint, run.snapshot(model, optimizer, generator, device, spent, sums_by_rank))
        save_progress(checkpoint, run.epoch, run.step, recipe.epochs, steps_per_epoch, steady_rate(spent),
                      device_name(device))

    total_steps = recipe.epochs * steps_per_epoch
    # ``counted_step`` runs ``net`` as rebound here: compiled, where the recipe says so.
    with (progress(label, total_steps) as advance, stop_on_interrupt() as stop,
          compiled_for_training(model, net, recipe) as net):
        if run.epoch or run.step:
            advance(run.epoch * steps_per_epoch + run.step)
        while run.epoch < recipe.epochs:
            epoch = run.epoch
            if run.order is None:
                run.start_epoch(torch.randperm(n, generator=generator).to(device), device)
            for step in range(run.step, steps_per_epoch):
                warming = epoch < (recipe.warmup_epochs or 0)
                if step == 0 or warming or clock.first_step_end is None:
                    # The LR changes once an epoch, and at every step while warming up.
                    point = epoch + (step + 1) / steps_per_epoch if warming else epoch
                    set_lr(optimizer, recipe.lr * lr_factor(recipe, point))
                index = run.order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                draws = data.draws(len(index), augmentation, generator)
                step_with(*((index,) if draws is None else (index, draws)))
                run.step = step + 1
                advance(1)
                if clock.first_step_end is None and getattr(step_with, "captured", True):
                    synchronize(device)
                    first_step_s = clock.first_step_done()
                    if run.timing["first_step_s"] is None:
                        run.timing["first_step_s"] = first_step_s
                elif clock.first_step_end is not None:
                    clock.images += len(index)
                done_steps = epoch * steps_per_epoch + step + 1
                if ranks == 1 or done_steps % AGREE_EVERY_STEPS == 0 or done_steps == total_steps:
                    signum = stop.signum or 0
                    due = saving and time.monotonic() - last_save >= checkpoint_interval_s
                    if ranks > 1:  # every rank stops, or saves, after the same step
                        signum, due = distributed.agree(signum, due and rank == 0)
                    if saving and (signum or due):
                        save()
                        last_save = time.monotonic()
                    if signum:
                        where = (f"; its progress is saved in {checkpoint}: rerun the same command to resume "
                                 f"from there" if saving else "")
                        raise TrainingInterrupted(f"{label}: stopped in epoch {epoch + 1}, after batch {step + 1} "
                                                  f"of {steps_per_epoch}{where}", signum)
            distributed.all_reduce_sum(run.loss_sum)
            distributed.all_reduce_sum(run.correct)
            epoch_loss = float(run.loss_sum) / n
            if not math.isfinite(epoch_loss):
                raise non_finite_error(label, run, steps_per_epoch, checkpoint, str(epoch_loss))
            run.history.append({"epoch": epoch + 1, "loss": epoch_loss, "train_accuracy": float(run.correct) / n,
                                "lr": current_lr(optimizer)})
            if evaluate is not None:
                started = time.perf_counter()
                with uncompiled():
                    run.history[-1].update(evaluate())
                model.train()  # evaluation left it in eval mode
                clock.evaluating_s += time.perf_counter() - started
            advance(0, f"{label} · epoch {epoch + 1}/{recipe.epochs} · loss {epoch_loss:.3f}")
            run.end_epoch()
        if saving and run.last_saved != (run.epoch, run.step):
            save()  # a kill while the model is evaluated or written does not cost the training
    spent = clock.spent()
    steady = steady_rate(spent)
    if steady is None:  # no step after the first one was timed
        steady = recipe.epochs * n / spent["elapsed_s"]
    as_run = {"precision": "bf16" if bf16 else "fp32", "processes": ranks, "compiled": bool(recipe.compile),
              "captured_step": captures_step(recipe, device), "drop_execution": execution or "skip",
              "device_name": device_name(device)}
    return TrainResult(recipe.epochs, spent["elapsed_s"], steady, run.history[-1]["loss"],
                       run.history[-1]["train_accuracy"], run.history, spent["first_step_s"] or 0.0,
                       run.resumed_at, as_run)


def gather_sums(run: RunState) -> list[list[float]] | None:
    """Every rank's running sums of the epoch (loss, correct, first bad batch), for a checkpoint
    that resumes each rank where it stood; None between epochs."""
    from stages.common import distributed

    if run.order is None:
        return None
    return distributed.gather([float(run.loss_sum), float(run.correct), float(run.first_bad)])


def steady_rate(spent: dict[str, float]) -> float | None:
    """Images per second after the first step (compilation, capture), from ``train``'s timing; None
    before any such step was timed."""
    return spent["steady_images"] / spent["steady_s"] if spent["steady_s"] > 0 else None


def device_name(device: torch.device) -> str:
    """The GPU's or the CPU's model, as a checkpoint records where it trained."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WithGroups(nn.Module):
    """A network whose forward pass returns (logits, group feature maps), for attention transfer."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.network.forward_with_groups(x)


def fit_and_save(ctx, spec, data: ImageDataset, recipe: TrainingConfig, *, augmentation, seed: int,
                 device: torch.device, loss_fn: LossFunction = cross_entropy_loss, with_groups: bool = False,
                 label: str, pretrained: str | None = None) -> tuple[nn.Module, dict]:
    """Build ``spec`` (starting from the ``pretrained`` weights file, where given), train it, evaluate
    it on the test split and save it into ``ctx.output``. ``with_groups`` trains it with a forward
    pass that also returns its group feature maps."""
    model, started_from = built_for_training(spec, seed, pretrained)
    result = train(WithGroups(model) if with_groups else model, DeviceData(data, device), recipe,
                   augmentation=augmentation, seed=seed, loss_fn=loss_fn, progress=ctx.progress, label=label,
                   checkpoint=ctx.training_checkpoint, checkpoint_interval_s=ctx.checkpoint_interval_s,
                   evaluate=each_epoch_evaluation(model, data, device, recipe))
    return model, saved_with_metrics(ctx, model, spec, data, device, result, started_from)


def built_for_training(spec, seed: int, pretrained: str | None = None) -> tuple[nn.Module, dict]:
    """The network of ``spec`` as training starts it: drawn from ``seed`` (the global generators),
    or from the ``pretrained`` weights file; and what it started from, for its metrics."""
    torch.manual_seed(seed)
    model = spec.build()
    if pretrained is None:
        return model, {}
    from stages.nets.pretrained import load_pretrained

    return model, {"pretrained": load_pretrained(model, Path(pretrained), spec.arch)}


def each_epoch_evaluation(model: nn.Module, data: ImageDataset, device: torch.device,
                          recipe: TrainingConfig) -> Callable[[], dict[str, float]] | None:
    """The report's curves: test (and validation) accuracy after every epoch, unless the recipe says
    not. Evaluation uses no random numbers, so the weights do not change."""
    if recipe.eval_each_epoch is False:
        return None
    return lambda: {"test_accuracy": accuracy_on_test(model, data, device), **validation_metrics(model, data, device)}


def saved_with_metrics(ctx, model: nn.Module, spec, data: ImageDataset, device: torch.device, result: TrainResult,
                       started_from: dict) -> dict:
    """Evaluate the trained ``model`` on the test split, save it, its history and its curves into
    ``ctx.output``, and return its metrics."""
    test_accuracy = accuracy_on_test(model, data, device)
    save_model(model, spec, ctx.output)
    (ctx.output / "history.json").write_text(json.dumps(result.history, indent=1))
    write_tensorboard(result.history, ctx.output, ctx.variant or spec.arch)
    return {
        "test_accuracy": test_accuracy,
        **validation_metrics(model, data, device),
        "final_train_loss": result.final_train_loss,
        "train_wall_s": result.wall_s,
        "train_images_per_second": result.images_per_second,
        "train_first_step_s": result.first_step_s,
        "train_resumed_at": result.resumed_at,
        "parameters": sum(p.numel() for p in model.parameters()),
        "arch": spec.arch,
        "device": str(device),
        "as_run": result.as_run,
        "images": image_counts(data),
        **started_from,
    }
