import math

import pytest
import torch

from pipeline.config import AnalysisConfig, Augmentation, DataConfig
from stages.analyze import analyze_teacher, mean_entropy
from stages.checkpoint import ModelSpec, save_model
from stages.context import StageContext, StageInput
from stages.data import load_dataset


def test_mean_entropy_matches_hand_computation():
    p = [0.7, 0.2, 0.1]
    expected = -sum(q * math.log(q) for q in p)
    logits = torch.log(torch.tensor([p, [1 / 3] * 3]))
    assert mean_entropy(logits) == pytest.approx((expected + math.log(3)) / 2, rel=1e-5)


def test_analysis_drops_each_stochastic_block_once(tmp_path):
    data_cfg = DataConfig(dataset="digits", augmentation=Augmentation(crop_padding=1, horizontal_flip=False))
    data = load_dataset(data_cfg)
    torch.manual_seed(0)
    spec = ModelSpec("resnet14", data.num_classes, data.in_channels, data.image_size, 0.5, "batch",
                     data.mean, data.std)
    teacher_dir = tmp_path / "teacher"
    teacher_dir.mkdir()
    save_model(spec.build(), spec, teacher_dir)
    config = AnalysisConfig(images=50, samples=3)
    out = tmp_path / "out"
    out.mkdir()
    metrics = analyze_teacher(StageContext(
        params={"seed": 0, "data": data_cfg, "images": config.images, "samples": config.samples},
        inputs={"teacher": StageInput(teacher_dir, {})}, output=out))
    blocks = metrics["single_block_dropped"]
    assert [b["stochastic_block"] for b in blocks] == [1, 2, 3, 4, 5]  # ResNet-14: blocks 2..6 can drop
    assert [b["survival"] for b in blocks] == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])
    assert metrics["images"] == 50 and metrics["samples"]["k"] == 3
    assert 0 <= metrics["samples"]["entropy_per_sample"] <= math.log(10)
    # Averaging distributions never lowers entropy (concavity).
    assert metrics["samples"]["entropy_of_average"] >= metrics["samples"]["entropy_per_sample"] - 1e-6
