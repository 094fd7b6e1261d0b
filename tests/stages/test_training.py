import pytest

from pipeline.config import TrainingConfig
from stages.training import lr_factor


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
