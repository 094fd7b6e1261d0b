"""The training loop shared by the teacher and every student, and batched evaluation."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import TrainingConfig
from pipeline.errors import ArtifactError, PipelineError, first_line
from stages.augment import augmented_batch, normalize, padded_channels_last
from stages.checkpoint import save_model
from stages.context import no_progress
from stages.cuda_graph_step import CapturedStep, current_lr, set_lr
from stages.stochastic_depth import use_drop_execution
from stages.tracking import write_tensorboard
from stages.data import ImageDataset
from stages.resume import (TrainingInterrupted, load_state, restore_rng_states, rng_states, save_state,
                           stop_on_interrupt)

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


def capturing(tensor: torch.Tensor) -> bool:
    """Whether work on ``tensor``'s device is being recorded into a CUDA graph. Autocast's cache of
    cast weights must be off then: it would keep graph memory alive past the capture."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def captures_step(recipe: TrainingConfig, device: torch.device) -> bool:
    """Whether training with ``recipe`` on ``device`` replays its steps from a CUDA graph."""
    return bool(recipe.capture_step) and device.type == "cuda"


def drop_execution_for(recipe: TrainingConfig, device: torch.device) -> str | None:
    """How stochastic blocks drop under ``recipe`` on ``device``: its ``drop_execution``, else masks
    where the step is captured (a graph holds no host-side decision) and skipping elsewhere (None)."""
    return recipe.drop_execution or ("mask" if captures_step(recipe, device) else None)


def cross_entropy_loss(logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def select_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise PipelineError("--device cuda: no CUDA device is visible; use --device cpu or auto")
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


class DeviceData:
    """A dataset held as uint8 tensors on the training device, with its normalization constants."""

    def __init__(self, data: ImageDataset, device: torch.device) -> None:
        self.device = device
        self.x_train = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).contiguous().to(device)
        self.y_train = torch.from_numpy(data.y_train).to(device)
        self.mean = torch.tensor(data.mean, dtype=torch.float32, device=device)
        self.std = torch.tensor(data.std, dtype=torch.float32, device=device)

        self._padded: tuple[int, torch.Tensor] | None = None

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        # channels_last on the uint8 batch (a no-op after a crop) is a quarter of the bytes of float.
        return normalize(images.contiguous(memory_format=torch.channels_last), self.mean, self.std)

    def training_batch(self, index: torch.Tensor, augmentation, generator: torch.Generator) -> torch.Tensor:
        """The normalized, augmented float batch of the training images ``index``."""
        if not (augmentation.crop_padding or augmentation.horizontal_flip):
            return self.prepare(self.x_train[index])
        padding = augmentation.crop_padding
        if self._padded is None or self._padded[0] != padding:
            # Padded once for the whole run: each batch is then a single gather.
            self._padded = (padding, padded_channels_last(self.x_train, padding))
        images = augmented_batch(self._padded[1], index, padding, augmentation.horizontal_flip, generator)
        return self.prepare(images)


def train(model: nn.Module, data: DeviceData, recipe: TrainingConfig, *, augmentation, seed: int,
          loss_fn: LossFunction = cross_entropy_loss, progress=no_progress, label: str = "training",
          checkpoint: Path | None = None, checkpoint_interval_s: float = 60.0,
          update: UpdateStep | None = None,
          evaluate: Callable[[], dict[str, float]] | None = None) -> TrainResult:
    """SGD on the recipe's schedule. ``progress(description, total)`` is a context manager factory.
    ``update`` makes each step (default: ``joint_update(loss_fn)``). ``evaluate()``, called after
    every epoch (its time kept out of the throughput), adds its figures to that epoch's history.

    With ``checkpoint``, the training state is saved there at the first step boundary after every
    ``checkpoint_interval_s`` seconds, on Ctrl-C, and at the end; a run that finds one there resumes
    from it and ends with the weights an uninterrupted run would have given."""
    from pipeline import distributed

    update = update or joint_update(loss_fn)
    device = data.device
    model.to(device=device, memory_format=torch.channels_last).train()
    # One fused kernel for the whole update on a GPU; PyTorch's default (foreach) elsewhere.
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay, fused=True if device.type == "cuda" else None)
    bf16 = recipe.precision == "bf16" or (recipe.precision is None and device.type == "cuda")
    # Under torchrun each rank trains on its slice of every global batch (same order, same seed).
    ranks, rank = distributed.world_size(), distributed.rank()
    generator = torch.Generator().manual_seed(seed)
    n = len(data.y_train)
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    run = _RunState()
    saved = load_state(checkpoint) if checkpoint is not None else None
    if saved is not None:
        # Restored before DDP wraps the model, which copies rank 0's weights to the other ranks.
        run = _RunState.restore(saved, model, optimizer, generator, device, checkpoint, recipe.epochs,
                                steps_per_epoch)
    if device.type == "cuda":
        zero_momentum_buffers(optimizer)
    net = distributed.data_parallel(model, device) if ranks > 1 else model
    execution = drop_execution_for(recipe, device)
    if execution:
        use_drop_execution(model, execution)
    if recipe.compile:
        net = torch.compile(net, mode=recipe.compile_mode)
    step_with = update
    if captures_step(recipe, device):
        if ranks > 1:
            raise PipelineError(f"{label}: training.capture_step runs on one process; under torchrun set "
                                f"training.capture_step: false")
        step_with = CapturedStep(update, net, optimizer, bf16, device)
    saving = checkpoint is not None and rank == 0
    session_start, last_save = time.perf_counter(), time.monotonic()
    first_step_end, session_images, evaluating_s = None, 0, 0.0

    def timing() -> dict[str, float]:
        now = time.perf_counter()
        steady = now - first_step_end - evaluating_s if first_step_end is not None else 0.0
        return {"elapsed_s": run.timing["elapsed_s"] + now - session_start,
                "steady_images": run.timing["steady_images"] + session_images,
                "steady_s": run.timing["steady_s"] + steady, "first_step_s": run.timing["first_step_s"]}

    def save() -> None:
        if run.first_bad is not None and int(run.first_bad) >= 0 or not _finite(model):
            raise _non_finite(label, run, steps_per_epoch, checkpoint)
        save_state(checkpoint, run.snapshot(model, optimizer, generator, device, timing()))
        run.last_saved = (run.epoch, run.step)

    with progress(label, recipe.epochs * steps_per_epoch) as advance, stop_on_interrupt(ranks == 1) as stop:
        if run.epoch or run.step:
            advance(run.epoch * steps_per_epoch + run.step)
        while run.epoch < recipe.epochs:
            epoch = run.epoch
            if run.order is None:
                run.start_epoch(torch.randperm(n, generator=generator).to(device), device)
            for step in range(run.step, steps_per_epoch):
                warming = epoch < (recipe.warmup_epochs or 0)
                if step == 0 or warming or first_step_end is None:
                    # The LR changes once an epoch, and at every step while warming up.
                    point = epoch + (step + 1) / steps_per_epoch if warming else epoch
                    set_lr(optimizer, recipe.lr * lr_factor(recipe, point))
                index = run.order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
                images, labels = data.training_batch(index, augmentation, generator), data.y_train[index]
                if ranks > 1:
                    images, labels = images.chunk(ranks)[rank], labels.chunk(ranks)[rank]
                output, loss = step_with(net, optimizer, images, labels, bf16)
                logits = output[0] if isinstance(output, tuple) else output
                run.loss_sum += loss.detach() * len(labels)
                # The first batch whose loss is not finite, kept on the device: no sync per step.
                run.first_bad = torch.where((run.first_bad < 0) & ~torch.isfinite(loss.detach()),
                                            torch.full_like(run.first_bad, step + 1), run.first_bad)
                # Logits are (B, C), or (peers, B, C) for models trained together: average over peers.
                hits = logits.detach().argmax(-1) == labels
                run.correct += hits.view(-1, len(labels)).float().mean(0).sum()
                run.step = step + 1
                advance(1)
                if first_step_end is None and getattr(step_with, "captured", True):
                    synchronize(device)
                    first_step_end = time.perf_counter()
                    if run.timing["first_step_s"] is None:
                        run.timing["first_step_s"] = first_step_end - session_start
                elif first_step_end is not None:
                    session_images += len(index)
                if stop or (saving and time.monotonic() - last_save >= checkpoint_interval_s):
                    if saving:
                        save()
                        last_save = time.monotonic()
                    if stop:
                        where = (f"; its progress is saved in {checkpoint}: rerun the same command to resume "
                                 f"from there" if saving else "")
                        raise TrainingInterrupted(f"{label}: stopped in epoch {epoch + 1}, after batch {step + 1} "
                                                  f"of {steps_per_epoch}{where}")
            distributed.all_reduce_sum(run.loss_sum)
            distributed.all_reduce_sum(run.correct)
            epoch_loss = float(run.loss_sum) / n
            if not math.isfinite(epoch_loss):
                raise _non_finite(label, run, steps_per_epoch, checkpoint, str(epoch_loss))
            run.history.append({"epoch": epoch + 1, "loss": epoch_loss, "train_accuracy": float(run.correct) / n,
                                "lr": current_lr(optimizer)})
            if evaluate is not None:
                started = time.perf_counter()
                run.history[-1].update(evaluate())
                model.train()  # evaluation left it in eval mode
                evaluating_s += time.perf_counter() - started
            advance(0, f"{label} · epoch {epoch + 1}/{recipe.epochs} · loss {epoch_loss:.3f}")
            run.end_epoch()
        if saving and run.last_saved != (run.epoch, run.step):
            save()  # a kill while the model is evaluated or written does not cost the training
    spent = timing()
    steady = (spent["steady_images"] / spent["steady_s"] if spent["steady_s"] > 0
              else recipe.epochs * n / spent["elapsed_s"])
    return TrainResult(recipe.epochs, spent["elapsed_s"], steady, run.history[-1]["loss"],
                       run.history[-1]["train_accuracy"], run.history, spent["first_step_s"] or 0.0,
                       run.resumed_at)


class _RunState:
    """Where a training run stands: the next (epoch, batch), the epoch's order and running sums, the
    per-epoch history and the time spent so far. What a checkpoint saves besides weights, optimizer
    and generators."""

    def __init__(self) -> None:
        self.epoch, self.step = 0, 0
        self.order: torch.Tensor | None = None
        self.loss_sum = self.correct = self.first_bad = None
        self.history: list[dict[str, float]] = []
        self.timing: dict[str, float | None] = {"elapsed_s": 0.0, "steady_images": 0, "steady_s": 0.0,
                                                "first_step_s": None}
        self.resumed_at: list[dict[str, int]] = []
        self.last_saved: tuple[int, int] | None = None

    def start_epoch(self, order: torch.Tensor, device: torch.device) -> None:
        self.order, self.step = order, 0
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def end_epoch(self) -> None:
        self.epoch, self.step, self.order = self.epoch + 1, 0, None

    def snapshot(self, model, optimizer, generator, device, timing) -> dict:
        on_cpu = (lambda t: None if t is None else t.detach().cpu())
        return {
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": portable_state(optimizer), "generator": generator.get_state(), "rng": rng_states(device),
            "epoch": self.epoch, "step": self.step, "order": on_cpu(self.order),
            "sums": [on_cpu(self.loss_sum), on_cpu(self.correct), on_cpu(self.first_bad)],
            "history": self.history, "timing": timing, "resumed_at": self.resumed_at,
        }

    @classmethod
    def restore(cls, saved: dict, model, optimizer, generator, device, path: Path, epochs: int,
                steps_per_epoch: int) -> "_RunState":
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
                run.loss_sum, run.correct, run.first_bad = (t.to(device) for t in saved["sums"])
            run.history, run.timing = list(saved["history"]), dict(saved["timing"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise ArtifactError(f"{path}: training checkpoint does not fit this run ({first_line(exc)}); delete it "
                                f"to start this stage over") from exc
        run.resumed_at = [*saved["resumed_at"], {"epoch": run.epoch + 1, "batch": run.step}]
        run.last_saved = (run.epoch, run.step)
        return run


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


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _non_finite(label: str, run: _RunState, steps_per_epoch: int, checkpoint: Path | None,
                value: str = "non-finite") -> PipelineError:
    batch = int(run.first_bad) if run.first_bad is not None and int(run.first_bad) > 0 else "?"
    if run.last_saved is None:
        kept = "nothing was saved for this stage"
    else:
        epoch, step = run.last_saved
        kept = f"the last good checkpoint ({_position(epoch, step)}) is kept in {checkpoint}"
    return PipelineError(f"{label}: the loss became {value} in epoch {run.epoch + 1}, batch {batch} of "
                         f"{steps_per_epoch}; {kept}. Lower the learning rate or add training.warmup_epochs, "
                         f"and run again")


def _position(epoch: int, step: int) -> str:
    return f"after epoch {epoch}" if step == 0 else f"epoch {epoch + 1}, batch {step}"


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
                 label: str) -> tuple[nn.Module, dict]:
    """Build ``spec``, train it, evaluate it on the test split and save it into ``ctx.output``.
    ``with_groups`` trains it with a forward pass that also returns its group feature maps."""
    torch.manual_seed(seed)
    model = spec.build()

    def each_epoch() -> dict[str, float]:
        # The curves of the report: evaluation uses no random numbers, so the weights do not change.
        return {"test_accuracy": accuracy(predict(model, data.x_test, data.mean, data.std, device), data.y_test),
                **validation_metrics(model, data, device)}

    result = train(WithGroups(model) if with_groups else model, DeviceData(data, device), recipe,
                   augmentation=augmentation, seed=seed, loss_fn=loss_fn, progress=ctx.progress, label=label,
                   checkpoint=ctx.training_checkpoint, checkpoint_interval_s=ctx.checkpoint_interval_s,
                   evaluate=None if recipe.eval_each_epoch is False else each_epoch)
    test_accuracy = accuracy(predict(model, data.x_test, data.mean, data.std, device), data.y_test)
    save_model(model, spec, ctx.output)
    (ctx.output / "history.json").write_text(json.dumps(result.history, indent=1))
    write_tensorboard(result.history, ctx.output, ctx.variant or spec.arch)
    return model, {
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
    }


def predict(model: nn.Module, images: np.ndarray, mean, std, device: torch.device,
            batch_size: int | None = None) -> np.ndarray:
    """Logits for uint8 (N, H, W, C) images, batched, in inference mode. Batches of 1024 on a GPU;
    256 on a CPU, where larger ones measured slower (they leave the caches)."""
    batch_size = batch_size or (1024 if device.type == "cuda" else 256)
    model.to(device=device, memory_format=torch.channels_last).eval()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
    std_t = torch.tensor(std, dtype=torch.float32, device=device)
    outputs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(images[start:start + batch_size]).to(device).permute(0, 3, 1, 2)
            x = normalize(chunk.contiguous(memory_format=torch.channels_last), mean_t, std_t)
            outputs.append(model(x).float().cpu())
    return torch.cat(outputs).numpy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == labels).mean())


def validation_metrics(model: nn.Module, data: ImageDataset, device: torch.device) -> dict[str, float]:
    """The accuracy on the held-out validation split, where the data has one."""
    if data.x_val is None:
        return {}
    return {"validation_accuracy": accuracy(predict(model, data.x_val, data.mean, data.std, device), data.y_val)}
