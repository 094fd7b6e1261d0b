"""training.compile_scope: the network compiled whole, or block by block with graphs shared between
blocks of one kind. Dynamo's eager backend keeps these tests fast: it traces and guards as Inductor
would, and runs the traced operators as they are, so a run can be compared with eager to the bit."""

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from stages.common.config import Augmentation, TrainingConfig
from stages.nets.architectures import build_model
from stages.training import compiling
from stages.training.data import ImageDataset
from stages.training.evaluation import accuracy_on_test
from stages.training.loop import DeviceData, drop_execution_for, train
from tests.processes import on_two_gloo_ranks
from tests.stages.test_distill import teacher  # noqa: F401 (an untrained ResNet-14 teacher, saved)
from tests.weights import assert_same_weights, largest_difference

AUGMENT = Augmentation(crop_padding=1, horizontal_flip=True)
# 84 images in batches of 32: two full batches and a last one of 20, which compiles again.
RECIPE = TrainingConfig(epochs=2, batch_size=32, lr=0.05, drop_execution="mask")
BLOCKS = RECIPE.model_copy(update={"compile": True, "compile_scope": "blocks"})


def images(count: int = 84) -> ImageDataset:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (count, 8, 8, 3), dtype=np.uint8)
    y = rng.integers(0, 4, count)
    return ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,) * 3, (0.25,) * 3)


def compiling_with(backend: str):
    """torch.compile as the pipeline calls it, with Dynamo's ``backend`` in place of Inductor."""
    compile_ = torch.compile
    return lambda fn, mode=None: compile_(fn, backend=backend)


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile with Dynamo's eager backend, and Dynamo's caches and counters fresh."""
    monkeypatch.setattr(torch, "compile", compiling_with("eager"))
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def trained(arch: str, recipe: TrainingConfig, evaluate: bool = False, p_last: float = 0.5,
            drop_mode: str = "batch", count: int = 84):
    torch.manual_seed(0)
    model = build_model(arch, 4, 3, p_last, drop_mode)
    data = images(count)
    each_epoch = (lambda: {"test_accuracy": accuracy_on_test(model, data, torch.device("cpu"))}) if evaluate else None
    result = train(model, DeviceData(data, torch.device("cpu")), recipe, augmentation=AUGMENT, seed=1,
                   evaluate=each_epoch)
    return model, result


def graphs_compiled() -> int:
    return int(counters["stats"]["unique_graphs"])


def test_blocks_compile_as_many_graphs_at_any_depth(eager_backend):
    """Blocks of one kind share their graphs, so a deeper network compiles no more of them; the
    epoch's shorter last batch compiles each kind once more, within the raised recompile limit."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # never eager behind our back
        trained("resnet20", BLOCKS)
        shallow = graphs_compiled()
        torch._dynamo.reset()
        counters.clear()
        trained("resnet110", BLOCKS)
    assert graphs_compiled() == shallow
    # The first block (never dropped), the first stochastic one (its survival still a constant), one
    # with its survival an input, two that downsample and one of each wider width: 7, and 6 again at
    # the last batch's size.
    assert shallow == 13
    assert shallow <= compiling.BLOCK_ENTRIES


def test_blocks_compiled_train_to_the_bit_what_eager_masks_train(eager_backend):
    """A survival probability that becomes an input of a shared graph still draws each block's own
    coins: the weights and the history are eager's."""
    reference, reference_result = trained("resnet20", RECIPE)
    model, result = trained("resnet20", BLOCKS)
    assert result.history == reference_result.history
    assert_same_weights(model, reference)


def test_blocks_run_eagerly_again_after_training_and_while_it_evaluates(eager_backend):
    model, _ = trained("resnet14", BLOCKS, evaluate=True)
    assert not any("forward" in vars(block) for block in compiling.network_blocks(model))
    with_evaluation = graphs_compiled()
    torch._dynamo.reset()
    counters.clear()
    trained("resnet14", BLOCKS)
    assert graphs_compiled() == with_evaluation  # evaluation (eval mode, another batch size) compiled nothing


def test_every_peer_and_a_wrapped_network_has_its_blocks_found():
    from stages.mutual import Peers
    from stages.training.loop import WithGroups

    peers = Peers([build_model("resnet8", 4, 3), build_model("resnet14", 4, 3)])
    assert len(compiling.network_blocks(peers)) == 3 + 6
    assert len(compiling.network_blocks(WithGroups(build_model("vgg13", 4, 3)))) > 0


def test_compile_scope_needs_compile_and_masks():
    with pytest.raises(ValueError, match="compile_scope is set but training.compile is not"):
        TrainingConfig(compile_scope="blocks")
    with pytest.raises(ValueError, match="set training.drop_execution to mask or leave it out"):
        TrainingConfig(compile=True, compile_scope="blocks", drop_execution="skip")
    with pytest.raises(ValueError, match="use capture_step: true for one graph"):
        TrainingConfig(compile=True, compile_scope="blocks", drop_execution="mask", compile_mode="reduce-overhead")
    # Unset, blocks drop by masks wherever their graphs are shared, a CPU included.
    recipe = TrainingConfig(compile=True, compile_scope="blocks")
    assert drop_execution_for(recipe, torch.device("cpu")) == "mask"
    assert drop_execution_for(TrainingConfig(compile=True, compile_scope="network"), torch.device("cpu")) is None


@pytest.mark.slow
def test_inductor_blocks_train_what_eager_trains_without_drops():
    """With Inductor itself (its fused kernels round otherwise; with no block dropping there are no
    coins, which Inductor draws from a generator of its own). Full batches only: a short last batch
    would double what Inductor compiles, most of this test's time on a fresh machine."""
    torch._dynamo.reset()
    reference, _ = trained("resnet8", RECIPE, p_last=1.0, count=64)
    model, _ = trained("resnet8", BLOCKS, p_last=1.0, count=64)
    torch._dynamo.reset()
    assert largest_difference(model, reference) < 1e-3


def rank_training(rank: int, folder: str) -> None:
    """On one of two gloo ranks: resnet8 trained eagerly with masks and block by block compiled
    (AOTAutograd's own backward, as Inductor runs it, with eager kernels), per drop mode."""
    import os

    torch.compile = compiling_with("aot_eager")  # a process of its own: nothing to restore
    found = {}
    for mode in ("batch", "sample"):
        for name, recipe in (("eager", RECIPE), ("blocks", BLOCKS)):
            torch._dynamo.reset()
            model, result = trained("resnet8", recipe, drop_mode=mode)
            found[mode, name] = (model.state_dict(), result.history)
    torch.save(found, os.path.join(folder, f"rank-{rank}.pt"))


@pytest.mark.slow
def test_blocks_compiled_on_two_ranks_train_what_eager_masks_train_there(tmp_path):
    """Under DistributedDataParallel each block's compiled backward still hands its gradients to the
    ranks' all-reduce, and per-row coins (drawn for the global batch, then sliced) follow each step's
    slice inside the compiled blocks: compiled equals eager on every rank, and the ranks end equal."""
    on_two_gloo_ranks(rank_training, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank-{rank}.pt") for rank in (0, 1)]
    for mode in ("batch", "sample"):
        for found in ranks:
            (eager, eager_history), (blocks, blocks_history) = found[mode, "eager"], found[mode, "blocks"]
            assert blocks_history == eager_history, mode
            assert all(torch.equal(blocks[key], eager[key]) for key in eager), mode
        for key, weights in ranks[0][mode, "blocks"][0].items():
            if "running" not in key:  # each rank's BatchNorm sees its own rows
                assert torch.equal(ranks[1][mode, "blocks"][0][key], weights), (mode, key)


def test_a_students_compiled_recipe_compiles_its_frozen_teachers_blocks_and_trains_what_eager_masks_train(
        tmp_path, teacher, eager_backend, monkeypatch):
    """compile: true for a stochastic KD student: the teacher's blocks are compiled too, dropping by
    masks; with the masks it draws block by block, the student trains to the bit what it trains
    uncompiled with the masks the teacher draws in one call."""
    import stages.distill as distill
    from stages.nets.stochastic_depth import drop_paths
    from tests.stages.test_lockstep import contexts, trained as saved

    teachers, compile_teacher = [], distill.compiled_teacher

    def recorded(model, recipe):
        teachers.append(compile_teacher(model, recipe))
        return teachers[-1]

    monkeypatch.setattr(distill, "compiled_teacher", recorded)
    found = {}
    for name, settings in (("eager", {}), ("compiled", {"compile": True, "compile_scope": "blocks"})):
        torch._dynamo.reset()
        [ctx] = contexts(tmp_path / name, teacher, ("stochastic_kd",), drop_execution="mask", **settings)
        distill.train_student(ctx)
        found[name] = saved(ctx)
    eager_teacher, compiled_teacher = teachers
    assert not any("forward" in vars(block) for block in compiling.network_blocks(eager_teacher))
    assert all("forward" in vars(block) for block in compiling.network_blocks(compiled_teacher))
    assert {d.execution for d in drop_paths(compiled_teacher)} == {"mask"}
    (eager, eager_history), (compiled, compiled_history) = found["eager"], found["compiled"]
    assert compiled_history == eager_history
    assert all(torch.equal(compiled[key], eager[key]) for key in eager)
