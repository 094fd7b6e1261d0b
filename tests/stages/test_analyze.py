import math

import pytest
import torch

from stages.common.config import AnalysisConfig, Augmentation, DataConfig
from stages.analyze import analyze_teacher, log_average, mean_entropy
from stages.nets.checkpoint import ModelSpec, load_model, save_model
from stages.context import StageContext, StageInput
from stages.training.data import balanced_subset, load_dataset


def test_mean_entropy_matches_hand_computation():
    p = [0.7, 0.2, 0.1]
    expected = -sum(q * math.log(q) for q in p)
    logits = torch.log(torch.tensor([p, [1 / 3] * 3]))
    assert mean_entropy(logits) == pytest.approx((expected + math.log(3)) / 2, rel=1e-5)


def test_a_saturated_teacher_has_finite_entropies():
    # fp32 softmax underflows to exactly 0 here: 0·log 0 must count as 0, not nan
    saturated = torch.tensor([[0.0, -200.0, -200.0], [0.0, float("-inf"), -300.0]])
    assert mean_entropy(saturated) == pytest.approx(0.0, abs=1e-30)
    samples = torch.tensor([[[200.0, 0.0, 0.0]], [[0.0, 200.0, 0.0]]])  # two one-hot samples that disagree
    average = log_average(samples)
    assert torch.isfinite(average).all()
    assert average.exp().tolist()[0] == pytest.approx([0.5, 0.5, 0.0], abs=1e-6)
    assert mean_entropy(average) == pytest.approx(math.log(2), rel=1e-6)


def test_log_average_is_the_log_of_the_mean_probability():
    torch.manual_seed(0)
    samples = torch.randn(4, 6, 10) * 3
    expected = samples.softmax(-1).mean(0).log()
    assert torch.allclose(log_average(samples), expected, atol=1e-5)


DATA = DataConfig(dataset="digits", augmentation=Augmentation(crop_padding=1, horizontal_flip=False))


def analyze(tmp_path, trained_p_last: float, teaching_p_last: float | None):
    """A random ResNet-14 saved as if trained at ``trained_p_last``, analysed as it teaches."""
    data = load_dataset(DATA)
    torch.manual_seed(0)
    spec = ModelSpec("resnet14", data.num_classes, data.in_channels, data.image_size, trained_p_last, "batch",
                     data.mean, data.std)
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    save_model(spec.build(), spec, teacher_dir)
    config = AnalysisConfig(images=50, samples=3)
    out = tmp_path / "out"
    out.mkdir()
    metrics = analyze_teacher(StageContext(
        params={"seed": 0, "data": DATA, "images": config.images, "samples": config.samples,
                "p_last": teaching_p_last, "drop_mode": "batch", "kept_scale": "trained"},
        inputs={"teacher": StageInput(teacher_dir, {})}, output=out))
    return metrics, load_model(teacher_dir), data


def test_analysis_drops_each_stochastic_block_once(tmp_path):
    metrics, _, _ = analyze(tmp_path, 0.5, None)
    blocks = metrics["single_block_dropped"]
    assert [b["stochastic_block"] for b in blocks] == [1, 2, 3, 4, 5]  # ResNet-14: blocks 2..6 can drop
    assert [b["survival"] for b in blocks] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert metrics["images"] == 50 and metrics["samples"]["k"] == 3
    assert 0 <= metrics["samples"]["entropy_per_sample"] <= math.log(10)
    # Averaging distributions never lowers entropy (concavity).
    assert metrics["samples"]["entropy_of_average"] >= metrics["samples"]["entropy_per_sample"] - 1e-6


@pytest.mark.parametrize("trained_p_last", [1.0, 0.5])
def test_fig_3_is_the_deterministic_network_with_exactly_one_block_removed(tmp_path, trained_p_last):
    """Every other block keeps its evaluation output (no 1/q scaling), for a plain teacher sampled at
    p_n 0.5 as for one trained with stochastic depth."""
    metrics, model, data = analyze(tmp_path, trained_p_last, 0.5)
    assert metrics["teaching_p_last"] == 0.5
    chosen = balanced_subset(data.y_test, 50, data.num_classes)
    images = torch.from_numpy(data.normalized(data.x_test[chosen]))
    for entry in metrics["single_block_dropped"]:
        block = model.blocks[entry["stochastic_block"]]  # block 1 (p_1 = 1) never drops
        block.residual = lambda x: torch.zeros(())  # its residual branch removed: o_i = o_{i-1}
        with torch.inference_mode():
            expected = mean_entropy(model(images))
        del block.residual
        assert entry["entropy"] == pytest.approx(expected, rel=1e-5)
