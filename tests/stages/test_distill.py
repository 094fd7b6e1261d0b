import pytest
import torch

from stages.common.config import Augmentation, DataConfig, DistillConfig, StudentConfig, TrainingConfig
from stages.nets.checkpoint import ModelSpec, save_model
from stages.context import StageContext, StageInput
from stages.training.data import load_dataset
from stages.distill import train_student

DATA = DataConfig(dataset="digits", train_images=200, test_images=100,
                  augmentation=Augmentation(crop_padding=1, horizontal_flip=False))
STUDENT = StudentConfig(arch="resnet8", training=TrainingConfig(epochs=1, batch_size=64))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """An untrained ResNet-14 saved as if trained with stochastic depth at p_n 0.5."""
    data = load_dataset(DATA)
    torch.manual_seed(0)
    spec = ModelSpec("resnet14", data.num_classes, data.in_channels, data.image_size, 0.5, "batch",
                     data.mean, data.std)
    folder = tmp_path_factory.mktemp("teacher")
    save_model(spec.build(), spec, folder)
    return folder


def distilled_weights(tmp_path, teacher, name: str, **distill) -> dict:
    out = tmp_path / name
    out.mkdir()
    params = {"seed": 0, "data": DATA, "student": STUDENT, "distill": DistillConfig(teacher_samples=2, **distill)}
    train_student(StageContext(params=params, inputs={"teacher": StageInput(teacher, {})}, output=out))
    return torch.load(out / "model.pt", weights_only=True)


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_teaching_at_the_trained_p_n_gives_the_same_student_under_both_kept_scales(tmp_path, teacher):
    trained = distilled_weights(tmp_path, teacher, "trained", p_last=0.5, kept_scale="trained")
    expectation = distilled_weights(tmp_path, teacher, "expectation", p_last=0.5, kept_scale="expectation")
    unset = distilled_weights(tmp_path, teacher, "unset")  # p_last null: the teacher's own
    assert same(trained, expectation) and same(trained, unset)


def test_teaching_at_another_p_n_depends_on_the_kept_scale(tmp_path, teacher):
    trained = distilled_weights(tmp_path, teacher, "trained", p_last=0.8, kept_scale="trained")
    expectation = distilled_weights(tmp_path, teacher, "expectation", p_last=0.8, kept_scale="expectation")
    assert not same(trained, expectation)
