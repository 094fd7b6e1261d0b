import pytest
import torch

from stages.common.config import TrainingConfig
from stages.training.loop import lr_factor


def test_step_schedule_divides_at_milestones():
    recipe = TrainingConfig(epochs=200, lr_schedule="step", lr_milestones=(60, 120, 180), lr_gamma=0.1)
    assert [lr_factor(recipe, e) for e in (0, 59, 60, 120, 199)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])


def test_cosine_schedule_anneals_to_zero():
    recipe = TrainingConfig(epochs=10, lr_schedule="cosine")
    assert lr_factor(recipe, 0) == 1.0 and lr_factor(recipe, 5) == pytest.approx(0.5)
    assert lr_factor(recipe, 10) == pytest.approx(0.0, abs=1e-12)


def test_warmup_ramps_linearly_then_hands_over_to_the_schedule():
    recipe = TrainingConfig(epochs=10, lr_schedule="step", lr_milestones=(5,), warmup_epochs=2)
    assert lr_factor(recipe, 0.5) == pytest.approx(0.25)
    assert lr_factor(recipe, 1.0) == pytest.approx(0.5)
    assert lr_factor(recipe, 2.0) == 1.0 and lr_factor(recipe, 6) == pytest.approx(0.1)


def test_a_diverging_loss_names_the_epoch_and_the_batch():
    import numpy as np
    import torch

    from stages.common.config import Augmentation
    from stages.common.errors import PipelineError
    from stages.nets.architectures import build_model
    from stages.training.data import ImageDataset
    from stages.training.loop import DeviceData, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 64)
    data = DeviceData(ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,)), torch.device("cpu"))
    calls = []

    def loss_going_bad_at_the_third_batch(logits, images, labels):
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, labels)
        return loss * float("nan") if len(calls) >= 3 else loss

    recipe = TrainingConfig(epochs=2, batch_size=16, lr=0.1)
    with pytest.raises(PipelineError, match=r"the loss became nan in epoch 1, batch 3 of 4; nothing was saved"):
        train(build_model("resnet8", 4, 1), data, recipe, augmentation=Augmentation(crop_padding=0,
              horizontal_flip=False), seed=0, loss_fn=loss_going_bad_at_the_third_batch)


def test_evaluating_after_each_epoch_records_curves_and_leaves_the_weights_alone():
    import numpy as np
    import torch

    from stages.common.config import Augmentation
    from stages.nets.architectures import build_model
    from stages.training.data import ImageDataset
    from stages.training.evaluation import accuracy, predict
    from stages.training.loop import DeviceData, train

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    y = rng.integers(0, 4, 64)
    images = ImageDataset(x, y, x, y, ("a", "b", "c", "d"), (0.5,), (0.25,))
    recipe = TrainingConfig(epochs=2, batch_size=16, lr=0.05)
    augmentation = Augmentation(crop_padding=2, horizontal_flip=True)
    weights, histories = [], []
    for evaluated in (False, True):
        torch.manual_seed(0)
        model = build_model("resnet8", 4, 1, 0.5)
        evaluate = (lambda: {"test_accuracy": accuracy(predict(model, x, (0.5,), (0.25,), torch.device("cpu")), y)}
                    ) if evaluated else None
        result = train(model, DeviceData(images, torch.device("cpu")), recipe, augmentation=augmentation, seed=1,
                       evaluate=evaluate)
        weights.append(model.state_dict())
        histories.append(result.history)
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert "test_accuracy" not in histories[0][0] and all("test_accuracy" in h for h in histories[1])


@pytest.mark.parametrize("gpus, device, message", [
    (0, "cuda:3", "--device cuda:3: no CUDA device is visible; use --device cpu or auto"),
    (2, "cuda:3", "--device cuda:3: this machine shows 2 CUDA devices (cuda:0 to cuda:1); choose one of them"),
    (1, "cuda:1", "--device cuda:1: this machine shows 1 CUDA device (cuda:0 to cuda:0); choose one of them"),
])
def test_a_gpu_that_is_not_there_is_named_in_one_line(monkeypatch, gpus, device, message):
    from stages.common.errors import PipelineError
    from stages.training.loop import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(PipelineError) as refused:
        select_device(device)
    assert str(refused.value) == message


def test_a_gpu_that_is_there_is_taken(monkeypatch):
    from stages.training.loop import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda:1") == torch.device("cuda", 1) and select_device("cpu") == torch.device("cpu")
