"""training.capture_step: the whole step recorded as a CUDA graph and replayed. The GPU tests compare
it with the eager step on the same GPU; the CPU tests cover what holds everywhere."""

import numpy as np
import pytest
import torch
from contextlib import contextmanager

from stages.common.config import Augmentation, TrainingConfig
from stages.nets.architectures import build_model
from stages.training.cuda_graph_step import CapturedStep, current_lr, lr_on_device, set_lr
from stages.training.data import ImageDataset
from stages.nets.stochastic_depth import DropPath, stochastic_sum, use_drop_execution
from stages.training.loop import DeviceData, train
from stages.training.run_state import portable_state
from tests.weights import largest_difference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; none is visible")
AUGMENT = Augmentation(crop_padding=2, horizontal_flip=True)
# 168 images in batches of 16: ten full batches an epoch (three eager, then captured) and a last one of 8,
# which runs eagerly between replays.
RECIPE = TrainingConfig(epochs=2, batch_size=16, lr=0.05, lr_milestones=(1,), warmup_epochs=0.5,
                        precision="fp32", drop_execution="mask")


class Stop(Exception):
    """Stands for a kill between two steps."""


def data_on(device: str) -> DeviceData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (168, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 168)
    return DeviceData(ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,)), torch.device(device))


def model(p_last: float, seed: int = 0):
    torch.manual_seed(seed)
    return use_drop_execution(build_model("resnet8", 4, 1, p_last, "batch"), "mask")


def run(device: str, p_last: float, capture: bool, **kwargs):
    net = model(p_last, kwargs.pop("seed", 0))
    result = train(net, data_on(device), RECIPE.model_copy(update={"capture_step": capture or None}),
                   augmentation=AUGMENT, seed=3, **kwargs)
    return net, result


def test_capture_needs_masks_and_no_second_graph():
    from stages.training.loop import drop_execution_for

    recipe = TrainingConfig(capture_step=True)
    assert drop_execution_for(recipe, torch.device("cuda")) == "mask"
    assert drop_execution_for(recipe, torch.device("cpu")) is None  # no graph there: blocks are skipped
    with pytest.raises(ValueError, match="to mask or leave it out"):
        TrainingConfig(capture_step=True, drop_execution="skip")
    with pytest.raises(ValueError, match="not reduce-overhead"):
        TrainingConfig(capture_step=True, drop_execution="mask", compile=True, compile_mode="reduce-overhead")
    TrainingConfig(capture_step=True, drop_execution="mask", compile=True)


def test_on_a_cpu_the_step_runs_eagerly_to_the_bit():
    captured, result = run("cpu", 0.5, capture=True)
    eager, reference = run("cpu", 0.5, capture=False)
    assert largest_difference(captured, eager) == 0.0
    assert result.history == reference.history


def test_the_epoch_sums_stay_the_same_tensors_from_epoch_to_epoch():
    """A captured step adds to the sums' memory; a new epoch must reset them in place, not replace
    them, or the replays would count into tensors the run no longer reads."""
    from stages.training.run_state import RunState

    run = RunState()
    run.start_epoch(torch.arange(4), torch.device("cpu"))
    sums = (run.loss_sum, run.correct, run.finite_batches)
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    run.count(logits, torch.tensor(0.5), torch.tensor([0, 0]))
    assert int(run.first_bad) == -1
    run.count(logits, torch.tensor(float("nan")), torch.tensor([0, 0]))
    run.count(logits, torch.tensor(0.5), torch.tensor([0, 1]))
    assert (int(run.first_bad), float(run.correct)) == (2, 4.0)
    run.start_epoch(torch.arange(4), torch.device("cpu"))
    assert all(a is b for a, b in zip(sums, (run.loss_sum, run.correct, run.finite_batches)))
    assert (float(run.loss_sum), float(run.correct), int(run.first_bad)) == (0.0, 0.0, -1)


def test_the_sums_count_peers_hits_as_their_mean_and_find_the_first_infinite_loss():
    from stages.training.run_state import RunState

    run = RunState()
    run.start_epoch(torch.arange(4), torch.device("cpu"))
    two_peers = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])  # (peers, B, C)
    run.count(two_peers, torch.tensor(1.0), torch.tensor([0, 1]))  # hits: 2 of 2, then 1 of 2
    assert float(run.correct) == 1.5 and float(run.loss_sum) == 2.0
    run.count(two_peers, torch.tensor(float("inf")), torch.tensor([0, 1]))
    run.count(two_peers, torch.tensor(float("-inf")), torch.tensor([0, 1]))  # inf + -inf: nan, still bad
    run.count(two_peers, torch.tensor(1.0), torch.tensor([0, 1]))
    assert int(run.first_bad) == 2


def test_a_captured_graph_needs_a_gpu():
    net = model(1.0)
    with pytest.raises(ValueError, match="CUDA device"):
        CapturedStep(lambda *a: None, torch.optim.SGD(net.parameters(), lr=0.1), torch.device("cpu"))


def test_the_lr_lives_in_a_tensor_filled_in_place_and_is_saved_as_a_float():
    net = model(1.0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    lr_on_device(optimizer, torch.device("cpu"))
    tensor = optimizer.param_groups[0]["lr"]
    set_lr(optimizer, 0.025)
    # float32, which is what the SGD kernels compute with for float32 weights either way.
    assert optimizer.param_groups[0]["lr"] is tensor and current_lr(optimizer) == pytest.approx(0.025, rel=1e-7)
    state = portable_state(optimizer)
    assert isinstance(state["param_groups"][0]["lr"], float)
    fresh = torch.optim.SGD(model(1.0).parameters(), lr=0.1, momentum=0.9)
    fresh.load_state_dict(state)
    assert fresh.param_groups[0]["lr"] == pytest.approx(0.025, rel=1e-7)


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms: otherwise two eager runs already differ (atomics in the
    convolutions' weight gradients), and a comparison with the graph would measure that."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@needs_cuda
@pytest.mark.parametrize("p_last", [1.0, 0.5], ids=["no-drops", "masks"])
def test_captured_training_matches_the_eager_step(p_last, deterministic_cudnn):
    """The graph replays the eager step's kernels, masks included (the graph-safe generator continues
    the eager one's Philox stream), so both give the same weights and history."""
    again, _ = run("cuda", p_last, capture=False)
    captured, result = run("cuda", p_last, capture=True)
    eager, reference = run("cuda", p_last, capture=False)
    difference = largest_difference(captured, eager)
    print(f"\ncapture_step p_last={p_last}: largest difference against eager {difference:.3g}; "
          f"eager against eager {largest_difference(again, eager):.3g}")
    assert difference <= 1e-5, f"captured and eager weights differ by up to {difference:.3g}"
    for ours, theirs in zip(result.history, reference.history):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


@needs_cuda
@pytest.mark.parametrize("scope", ["network", "blocks"])
def test_compiled_inside_the_graph_trains_what_eager_trains(scope, deterministic_cudnn):
    """Compile inside the captured step, whole or block by block, follows the eager step. No block
    drops (Inductor draws its coins from a generator of its own), a gentle LR, and losses compared, not
    weights: Inductor's fused kernels round otherwise, and training amplifies that. On a CPU, these two
    epochs left single weights of the whole compiled network percents away from eager's while the losses
    stayed well within 1 %; at the recipe's steeper LR with warm-up the losses drift further."""
    recipe = RECIPE.model_copy(update={"lr": 0.01, "warmup_epochs": None})
    reference = train(model(1.0), data_on("cuda"), recipe, augmentation=AUGMENT, seed=3)
    compiled = recipe.model_copy(update={"capture_step": True, "compile": True, "compile_scope": scope})
    result = train(model(1.0), data_on("cuda"), compiled, augmentation=AUGMENT, seed=3)
    torch._dynamo.reset()
    gaps = [abs(ours["loss"] - theirs["loss"]) / theirs["loss"] for ours, theirs in zip(result.history,
                                                                                         reference.history)]
    print(f"\ncapture_step + compile_scope {scope}: per-epoch loss against eager, relative {gaps}")
    assert max(gaps) <= 1e-2
    assert result.images_per_second > 0 and len(result.history) == recipe.epochs


@needs_cuda
def test_each_replay_draws_fresh_masks():
    device = torch.device("cuda")
    drop = DropPath(0.5, "sample")
    drop.execution = "mask"
    weight = torch.nn.Parameter(torch.ones((), device=device))

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.weight = drop, weight

        def forward(self, x):
            return stochastic_sum(lambda t: t * self.weight, x, torch.zeros_like(x), self.drop)

    net = Probe().train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.0, fused=True)  # as train() makes it on a GPU

    def update(net, optimizer, images, labels, bf16):
        output = net(images)
        loss = output.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return output, loss

    step = CapturedStep(lambda images, labels: update(net, optimizer, images, labels, False), optimizer, device)
    images, labels = torch.ones(64, 1, 1, 1, device=device), torch.zeros(64, device=device)
    patterns = set()
    for _ in range(12):
        output, _ = step(images, labels)
        patterns.add(tuple(output.view(-1).tolist()))
    assert step.captured
    assert len(patterns) >= 10, f"only {len(patterns)} distinct masks in 12 steps"
    assert all(set(p) <= {0.0, 2.0} for p in patterns)


@contextmanager
def stopping_after(steps: int):
    done = []

    @contextmanager
    def progress(label, total):
        def advance(n, description=None):
            done.append(n)
            if sum(done) >= steps:
                raise Stop

        yield advance

    yield progress


@needs_cuda
def test_a_captured_run_resumed_from_a_checkpoint_ends_where_the_uninterrupted_one_does(tmp_path,
                                                                                      deterministic_cudnn):
    reference, reference_result = run("cuda", 0.5, capture=True)
    checkpoint = tmp_path / "training.pt"
    with stopping_after(7) as progress, pytest.raises(Stop):
        run("cuda", 0.5, capture=True, progress=progress, checkpoint=checkpoint, checkpoint_interval_s=0)
    resumed, result = run("cuda", 0.5, capture=True, seed=99, checkpoint=checkpoint, checkpoint_interval_s=0)
    difference = largest_difference(resumed, reference)
    print(f"\ncapture_step resumed after 6 of 22 steps: largest weight difference {difference:.3g}")
    assert difference <= 1e-5, f"the resumed run's weights differ by up to {difference:.3g}"
    assert len(result.resumed_at) == 1


def test_fused_sgd_survives_blocks_that_had_no_gradient_yet():
    """Skipped blocks leave some parameters without a gradient (and a momentum buffer) at first; fused
    SGD then fails on the step where they get one. Zero buffers up front give the same values as
    PyTorch's default SGD, which creates them lazily."""
    from stages.training.run_state import zero_momentum_buffers

    def two_steps(fused: bool, zero_first: bool):
        a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
        optimizer = torch.optim.SGD([a, b], lr=0.1, momentum=0.9, weight_decay=5e-4, fused=fused or None)
        if zero_first:
            zero_momentum_buffers(optimizer)
        a.grad = torch.full((3,), 0.5)  # b's block was skipped
        optimizer.step()
        a.grad, b.grad = torch.full((3,), 0.5), torch.full((3,), 0.25)
        optimizer.step()
        return torch.cat([a.detach(), b.detach()])

    reference = two_steps(fused=False, zero_first=False)
    assert torch.equal(two_steps(fused=True, zero_first=True), reference)
    assert torch.equal(two_steps(fused=False, zero_first=True), reference)


def method_run(device: str, method: str, capture: bool):
    """One short training of a method other than plain CE: the student (or both peers) and its loss
    as the distill and mutual stages build them, with masks; returns (trained module, result)."""
    from stages.common.config import DistillConfig
    from stages.distill import attention_transfer_loss, distillation_loss
    from stages.mutual import Peers, mutual_loss, sequential_update
    from stages.training.loop import WithGroups

    kwargs = {}
    if method.startswith("dml"):
        torch.manual_seed(0)
        net = Peers([model(0.5, seed) for seed in (0, 1)])
        if method == "dml sequential":
            kwargs["update"] = sequential_update(net, 4.0, 1.0)
        else:
            kwargs["loss_fn"] = lambda logits, images, labels: mutual_loss(logits, labels, 4.0, 1.0)
    else:
        teacher = model(0.5, seed=7).to(device=device, memory_format=torch.channels_last)
        student = model(1.0)
        if method == "at":
            net = WithGroups(student)
            kwargs["loss_fn"] = attention_transfer_loss(teacher, DistillConfig(transfer="at", teacher_samples=2))
        else:
            net = student
            kwargs["loss_fn"] = distillation_loss(teacher, DistillConfig(teacher_samples=2))
    result = train(net, data_on(device), RECIPE.model_copy(update={"capture_step": capture or None}),
                   augmentation=AUGMENT, seed=3, **kwargs)
    return net, result


METHODS = ["kd K=2", "at", "dml simultaneous", "dml sequential"]


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_the_same_with_capture_ignored_on_a_cpu(method):
    captured, result = method_run("cpu", method, capture=True)
    eager, reference = method_run("cpu", method, capture=False)
    assert largest_difference(captured, eager) == 0.0
    assert result.history == reference.history


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_every_method_captured_matches_its_eager_step(method, deterministic_cudnn):
    """The teacher's K sampled passes, attention maps, and peers stepping together or one after
    another, all inside the one graph: the same weights as the eager steps."""
    captured, result = method_run("cuda", method, capture=True)
    eager, reference = method_run("cuda", method, capture=False)
    difference = largest_difference(captured, eager)
    print(f"\ncapture_step {method}: largest difference against eager {difference:.3g}")
    assert difference <= 1e-5, f"{method}: captured and eager weights differ by up to {difference:.3g}"
    for ours, theirs in zip(result.history, reference.history):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_only_full_batches_warm_up_and_are_recorded():
    """A run that starts (or resumes) three steps before an epoch's short last batch records the graph
    from the next full batch, not from the short one, and the short one runs eagerly, uncounted."""
    from stages.training.cuda_graph_step import WARMUP_STEPS, step_kind

    calls = [True, True, False, True, True, True, False, True]  # full batches, and two short last batches
    kinds, eager_steps, recorded = [], 0, False
    for full in calls:
        kind = step_kind(recorded, eager_steps, full, same_shapes=full)
        kinds.append(kind)
        eager_steps += kind == "warm-up"
        recorded = recorded or kind == "capture"
    assert WARMUP_STEPS == 3
    assert kinds == ["warm-up", "warm-up", "eager", "warm-up", "capture", "replay", "eager", "replay"]


def test_a_captured_step_runs_every_call_with_one_autocast_cache_setting(monkeypatch):
    """Warm-up, capture and eager calls of a captured step all see the cache off, so torch.compile,
    which guards on the setting, compiles the step once."""
    from types import SimpleNamespace

    from stages.nets.stochastic_depth import capturing, in_captured_step

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    on_gpu = SimpleNamespace(is_cuda=True)
    assert not capturing(on_gpu)
    with in_captured_step():
        assert capturing(on_gpu) and not capturing(SimpleNamespace(is_cuda=False))
    assert not capturing(on_gpu)
