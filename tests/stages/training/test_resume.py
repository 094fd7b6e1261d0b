"""Training resumed from a checkpoint ends exactly where an uninterrupted run ends."""

import pickle

import numpy as np
import pytest
import torch

from stages.common.config import Augmentation, TrainingConfig
from stages.common.errors import ArtifactError, PipelineError, exit_code_of
from stages.context import training_progress
from stages.nets.architectures import build_model
from stages.training.data import ImageDataset
from stages.training.resume import TrainingInterrupted
from stages.training.loop import DeviceData, cross_entropy_loss, train
from tests.weights import assert_same_weights

AUGMENT = Augmentation(crop_padding=2, horizontal_flip=True)
RECIPE = TrainingConfig(epochs=3, batch_size=16, lr=0.05, lr_milestones=(2,), warmup_epochs=1)
STEPS_PER_EPOCH = 5  # 80 images in batches of 16


class Killed(Exception):
    """Stands for a SIGKILL: the process dies in the middle of a step."""


def digits_like_data() -> DeviceData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 80)
    return DeviceData(ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,)), torch.device("cpu"))


def stochastic_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("resnet8", 4, 1, 0.5, "batch")  # its blocks drop: the global generator matters


def killed_at(calls: list[int], kill_at: int):
    def loss(logits, images, labels):
        calls.append(1)
        if len(calls) == kill_at:
            raise Killed
        return cross_entropy_loss(logits, labels=labels, images=images)

    return loss


def uninterrupted():
    model = stochastic_model()
    result = train(model, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3)
    return model, result


@pytest.mark.parametrize("kills", [[3], [5], [2, 9, 13]], ids=["mid-epoch", "epoch-end", "three-kills"])
def test_a_run_killed_and_resumed_ends_bit_identical(tmp_path, kills):
    reference, reference_result = uninterrupted()
    checkpoint = tmp_path / "training.pt"
    done = 0
    for number, kill_at in enumerate(kills):  # the n-th step of the whole run, counted from the start
        calls: list[int] = []
        # Restarts build the network from another seed: all that matters must come from the checkpoint.
        with pytest.raises(Killed):
            train(stochastic_model(seed=0 if number == 0 else 99), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
                  loss_fn=killed_at(calls, kill_at - done), checkpoint=checkpoint, checkpoint_interval_s=0)
        done = kill_at - 1  # every finished step was saved
    model = stochastic_model(seed=99)
    result = train(model, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3, checkpoint=checkpoint,
                   checkpoint_interval_s=0)
    assert_same_weights(model, reference)
    assert result.history == reference_result.history
    assert len(result.resumed_at) == len(kills)
    first = kills[0] - 1
    assert result.resumed_at[0] == {"epoch": first // STEPS_PER_EPOCH + 1, "batch": first % STEPS_PER_EPOCH}


@pytest.mark.parametrize("compiled", [None, pytest.param("network", marks=pytest.mark.slow),
                                      pytest.param("blocks", marks=pytest.mark.slow)],
                         ids=["eager", "compiled", "compiled-blocks"])
def test_masked_blocks_resume_bit_identical_too(tmp_path, compiled, monkeypatch):
    """Masks drawn on the device (drop_execution: mask) come from a generator the checkpoint holds;
    torch.compile, of the whole network or block by block, changes nothing of that. The whole network
    compiles with Inductor (its CPU path), whose random numbers come from seeds it draws itself; block
    by block with AOTAutograd's eager backend, which traces and guards the blocks as Inductor does
    (Inductor compiling blocks is tested in test_compiling.py; here it would cost a fresh machine another
    10 s or so of compiling)."""
    if compiled == "blocks":
        from tests.stages.training.test_compiling import compiling_with

        monkeypatch.setattr(torch, "compile", compiling_with("aot_eager"))
    recipe = RECIPE.model_copy(update={"drop_execution": "mask", "compile": bool(compiled) or None,
                                       "compile_scope": compiled})
    reference = stochastic_model()
    reference_result = train(reference, digits_like_data(), recipe, augmentation=AUGMENT, seed=3)
    checkpoint, calls = tmp_path / "training.pt", []
    with pytest.raises(Killed):
        train(stochastic_model(), digits_like_data(), recipe, augmentation=AUGMENT, seed=3,
              loss_fn=killed_at(calls, 7), checkpoint=checkpoint, checkpoint_interval_s=0)
    model = stochastic_model(seed=99)
    result = train(model, digits_like_data(), recipe, augmentation=AUGMENT, seed=3, checkpoint=checkpoint,
                   checkpoint_interval_s=0)
    assert_same_weights(model, reference)
    assert result.history == reference_result.history
    skipped = stochastic_model()
    train(skipped, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3)
    assert not torch.equal(skipped.state_dict()["fc.weight"], model.state_dict()["fc.weight"])  # other coins


def test_a_finished_checkpoint_skips_training(tmp_path):
    checkpoint = tmp_path / "training.pt"
    first = stochastic_model()
    train(first, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3, checkpoint=checkpoint,
          checkpoint_interval_s=3600)  # only the final save
    calls: list[int] = []
    again = stochastic_model(seed=5)
    result = train(again, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3, checkpoint=checkpoint,
                   loss_fn=killed_at(calls, 1))  # a step would raise
    assert calls == [] and result.resumed_at == [{"epoch": 4, "batch": 0}]
    assert_same_weights(again, first)


def assert_resumes_to_the_uninterrupted_weights(checkpoint):
    reference, _ = uninterrupted()
    model = stochastic_model()
    train(model, digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3, checkpoint=checkpoint)
    assert_same_weights(model, reference)


def test_ctrl_c_stops_between_steps_after_saving(tmp_path):
    import os
    import signal

    checkpoint = tmp_path / "training.pt"
    calls: list[int] = []
    # Python's own Ctrl-C handling, also where the suite runs as a background job (SIGINT ignored).
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)

    def loss_pressing_ctrl_c(logits, images, labels):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGINT)  # arrives during the step; the step still completes
        return cross_entropy_loss(logits, images, labels)

    with pytest.raises(TrainingInterrupted, match=r"stopped in epoch 1, after batch 4 of 5; its progress is "
                                                  r"saved in .*training.pt: rerun the same command to resume"):
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=loss_pressing_ctrl_c, checkpoint=checkpoint, checkpoint_interval_s=3600)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    signal.signal(signal.SIGINT, outside)
    assert_resumes_to_the_uninterrupted_weights(checkpoint)


def test_sigterm_stops_between_steps_after_saving_and_a_second_one_changes_nothing(tmp_path):
    import os
    import signal

    checkpoint = tmp_path / "training.pt"
    calls: list[int] = []
    outside = signal.getsignal(signal.SIGTERM)

    def loss_sending_sigterm(logits, images, labels):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # were it passed on to the default, the process would end here
        return cross_entropy_loss(logits, images, labels)

    with pytest.raises(TrainingInterrupted, match=r"stopped in epoch 1, after batch 2 of 5") as stopped:
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=loss_sending_sigterm, checkpoint=checkpoint, checkpoint_interval_s=3600)
    assert stopped.value.signum == signal.SIGTERM and exit_code_of(stopped.value) == 143
    progress = training_progress(tmp_path)  # what status shows
    assert progress["done"] == 2 / (RECIPE.epochs * STEPS_PER_EPOCH) and progress["device"]
    assert signal.getsignal(signal.SIGTERM) is outside  # handler restored
    assert_resumes_to_the_uninterrupted_weights(checkpoint)


def test_sighup_stops_between_steps_after_saving_and_drops_the_terminal(tmp_path, monkeypatch):
    import os
    import signal

    from stages.training import resume

    checkpoint = tmp_path / "training.pt"
    calls: list[int] = []
    detached: list[int] = []
    monkeypatch.setattr(resume, "detach_from_terminal", lambda: detached.append(1))  # not this test's output
    outside = signal.getsignal(signal.SIGHUP)

    def loss_hanging_up(logits, images, labels):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGHUP)  # a closed terminal; without a handler the process would end
        return cross_entropy_loss(logits, images, labels)

    with pytest.raises(TrainingInterrupted, match=r"stopped in epoch 1, after batch 3 of 5") as stopped:
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=loss_hanging_up, checkpoint=checkpoint, checkpoint_interval_s=3600)
    assert stopped.value.signum == signal.SIGHUP and exit_code_of(stopped.value) == 129
    assert detached == [1]
    assert signal.getsignal(signal.SIGHUP) is outside
    assert_resumes_to_the_uninterrupted_weights(checkpoint)


def test_a_sigterm_after_the_last_step_reaches_the_outer_handler_once_training_has_saved(tmp_path):
    import os
    import signal

    from stages.common.errors import Terminated, stop_signals_raise

    checkpoint = tmp_path / "training.pt"
    epochs_evaluated: list[int] = []

    def evaluate_then_sigterm():
        epochs_evaluated.append(1)
        if len(epochs_evaluated) == RECIPE.epochs:  # after the last step: no step boundary is left
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    with stop_signals_raise(), pytest.raises(Terminated):
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              evaluate=evaluate_then_sigterm, checkpoint=checkpoint, checkpoint_interval_s=3600)
    assert training_progress(tmp_path)["done"] == 1  # the final save came first


def test_each_rank_resumes_with_its_own_running_sums_or_rank_0_with_the_totals():
    from stages.training.run_state import own_sums

    like = (torch.zeros(()), torch.zeros(()), torch.full((), -1, dtype=torch.long))
    by_rank = [[3.5, 7.0, -1.0], [2.25, 5.0, 4.0]]
    assert [float(t) for t in own_sums(by_rank, 1, 2, like)] == [2.25, 5.0, 4]
    assert [float(t) for t in own_sums(by_rank, 0, 1, like)] == [5.75, 12.0, 4]  # resumed on one process
    assert [float(t) for t in own_sums(by_rank, 2, 4, like)] == [0.0, 0.0, -1]  # ... or on four
    assert [t.dtype for t in own_sums(by_rank, 0, 1, like)] == [torch.float32, torch.float32, torch.long]


def test_a_non_finite_loss_names_the_last_good_checkpoint(tmp_path):
    checkpoint = tmp_path / "training.pt"
    calls: list[int] = []

    def loss_going_bad_at_batch_8(logits, images, labels):
        calls.append(1)
        loss = cross_entropy_loss(logits, images, labels)
        return loss * float("inf") if len(calls) >= 8 else loss

    with pytest.raises(PipelineError, match=r"the loss became non-finite in epoch 2, batch 3 of 5; the last good "
                                            r"checkpoint \(epoch 2, batch 2\) is kept in .*training.pt"):
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=loss_going_bad_at_batch_8, checkpoint=checkpoint, checkpoint_interval_s=0)
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2)
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())


def test_a_non_finite_loss_after_a_resumption_names_its_batch_in_the_whole_epoch(tmp_path):
    checkpoint = tmp_path / "training.pt"
    with pytest.raises(Killed):  # in epoch 2, batch 3: saved after batch 2
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=killed_at([], 8), checkpoint=checkpoint, checkpoint_interval_s=0)
    calls: list[int] = []

    def loss_going_bad_at_the_second_batch(logits, images, labels):
        calls.append(1)
        loss = cross_entropy_loss(logits, images, labels)
        return loss * float("nan") if len(calls) == 2 else loss

    with pytest.raises(PipelineError, match=r"the loss became non-finite in epoch 2, batch 4 of 5; the last good "
                                            r"checkpoint \(epoch 2, batch 3\)"):
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              loss_fn=loss_going_bad_at_the_second_batch, checkpoint=checkpoint, checkpoint_interval_s=0)


def test_a_checkpoint_that_could_run_code_is_refused(tmp_path):
    checkpoint = tmp_path / "training.pt"

    class Planted:
        def __reduce__(self):
            return (print, ("planted code ran",))

    checkpoint.write_bytes(pickle.dumps({"format": 1, "x": Planted()}))
    with pytest.raises(ArtifactError, match=r"training.pt: training checkpoint refused \(it holds more than "
                                            r"tensors and could run code\); delete it to start this stage over"):
        train(stochastic_model(), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3, checkpoint=checkpoint)


@pytest.mark.parametrize("damaged", [b"", b"hi\n"], ids=["empty", "text"])
def test_a_damaged_checkpoint_is_refused_in_one_line(tmp_path, damaged):
    from stages.training.resume import load_state

    checkpoint = tmp_path / "training.pt"
    checkpoint.write_bytes(damaged)  # torch.load raises EOFError, and a bare KeyError for the text
    with pytest.raises(ArtifactError, match=r"training.pt: training checkpoint refused \(unreadable\); delete it "
                                            r"to start this stage over$"):
        load_state(checkpoint)


def test_a_checkpoint_of_another_network_is_refused(tmp_path):
    checkpoint = tmp_path / "training.pt"
    train(stochastic_model(), digits_like_data(), RECIPE.model_copy(update={"epochs": 1}), augmentation=AUGMENT,
          seed=3, checkpoint=checkpoint)
    with pytest.raises(ArtifactError, match=r"training checkpoint does not fit this run \(Error\(s\) in loading"):
        train(build_model("resnet14", 4, 1), digits_like_data(), RECIPE, augmentation=AUGMENT, seed=3,
              checkpoint=checkpoint)
